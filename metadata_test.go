package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// user_metadata and app_metadata (issue 13, part 2): who may write them, their limits, the
// audit of their changes and the admin list's filter, through the real handlers.

// metadataOf reads the user's two metadata objects as stored, as compact JSON.
func (e *testEnv) metadataOf(t testing.TB, id int64) (userMetadata, appMetadata string) {
	t.Helper()
	u, err := e.st.userByID(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	compact := func(raw json.RawMessage) string {
		var out strings.Builder
		e := json.NewEncoder(&out)
		e.SetEscapeHTML(false)
		if err := e.Encode(raw); err != nil {
			t.Fatal(err)
		}
		return strings.TrimSuffix(out.String(), "\n")
	}
	return compact(u.UserMetadata), compact(u.AppMetadata)
}

// TestMetadataPermissions: both objects start empty; a user writes their own user_metadata,
// never app_metadata (403 even when unchanged, and nothing changes); admins write both for
// users and themselves, not for other admins; PUT and PATCH replace an object whole.
func TestMetadataPermissions(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	root := env.addUser(t, "root", roleAdmin)
	boss := env.addUser(t, "boss", roleAdmin)
	bob := env.addUser(t, "bob", roleUser)
	aliceToken, rootToken := env.tokenFor(t, alice), env.tokenFor(t, root)
	path := func(u user) string { return fmt.Sprintf("/api/users/%d", u.ID) }

	me := env.do(t, "GET", "/api/users/me", aliceToken, nil).expect(t, http.StatusOK).json(t)
	if fmt.Sprint(me["user_metadata"], me["app_metadata"]) != "map[] map[]" {
		t.Errorf("a new user's metadata: %v %v, want {} {}", me["user_metadata"], me["app_metadata"])
	}

	for _, c := range []struct {
		name, method, token, path string
		body                      string
		status                    int
		user, app                 string // alice's metadata afterwards ("" for bob's / unchanged)
	}{
		{"user writes own user_metadata", "PATCH", aliceToken, path(alice), `{"user_metadata": {"theme": "dark", "lang": "en"}}`, 200,
			`{"lang":"en","theme":"dark"}`, `{}`},
		{"PATCH replaces it whole", "PATCH", aliceToken, path(alice), `{"user_metadata": {"theme": "light"}}`, 200, `{"theme":"light"}`, `{}`},
		{"PUT replaces it whole", "PUT", aliceToken, path(alice), `{"user_metadata": {"font": 12}}`, 200, `{"font":12}`, `{}`},
		{"user writes own app_metadata", "PATCH", aliceToken, path(alice), `{"app_metadata": {"plan": "pro"}}`, 403, `{"font":12}`, `{}`},
		{"user writes app_metadata unchanged", "PATCH", aliceToken, path(alice), `{"app_metadata": {}}`, 403, `{"font":12}`, `{}`},
		{"user writes both", "PATCH", aliceToken, path(alice), `{"user_metadata": {}, "app_metadata": {"plan": "pro"}}`, 403, `{"font":12}`, `{}`},
		{"user writes another's user_metadata", "PATCH", aliceToken, path(bob), `{"user_metadata": {"x": 1}}`, 403, "", ""},
		{"admin writes a user's app_metadata", "PATCH", rootToken, path(alice), `{"app_metadata": {"plan": "pro", "tenant": 7}}`, 200,
			`{"font":12}`, `{"plan":"pro","tenant":7}`},
		{"admin writes a user's user_metadata", "PUT", rootToken, path(alice), `{"user_metadata": {}}`, 200, `{}`, `{"plan":"pro","tenant":7}`},
		{"admin writes another admin's app_metadata", "PATCH", rootToken, path(boss), `{"app_metadata": {"plan": "pro"}}`, 403, "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := env.do(t, c.method, c.path, c.token, c.body).expect(t, c.status)
			if c.user == "" {
				return
			}
			if userMeta, appMeta := env.metadataOf(t, alice.ID); userMeta != c.user || appMeta != c.app {
				t.Errorf("alice's metadata %s %s, want %s %s", userMeta, appMeta, c.user, c.app)
			}
			if c.status == http.StatusOK {
				body := r.json(t)
				if got, _ := json.Marshal(body["user_metadata"]); string(got) != c.user {
					t.Errorf("reply's user_metadata %s, want %s", got, c.user)
				}
			}
		})
	}
	rootMeta := `{"app_metadata": {"role": "owner"}, "user_metadata": {"theme": "dark"}}`
	env.do(t, "PATCH", path(root), rootToken, rootMeta).expect(t, http.StatusOK)
	if userMeta, appMeta := env.metadataOf(t, root.ID); userMeta != `{"theme":"dark"}` || appMeta != `{"role":"owner"}` {
		t.Errorf("an admin's own metadata: %s %s", userMeta, appMeta)
	}
	if userMeta, appMeta := env.metadataOf(t, boss.ID); userMeta != `{}` || appMeta != `{}` {
		t.Errorf("a refused write changed another admin: %s %s", userMeta, appMeta)
	}
}

// TestMetadataLimits: objects only, at most 8 KiB as compact JSON (as stored, too), keys of at
// most 64 characters at every level, at most 5 levels; and nothing jsonb would refuse with an
// error reaches it (NUL, numbers out of range), so bad input is a 400, never a 500.
func TestMetadataLimits(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	token := env.tokenFor(t, alice)
	nested := func(levels int) string { // an object nesting levels deep
		return strings.Repeat(`{"a":`, levels-1) + "{}" + strings.Repeat("}", levels-1)
	}
	// {"k":"xxx..."} of exactly n bytes
	sized := func(n int) string { return `{"k":"` + strings.Repeat("x", n-8) + `"}` }
	for _, c := range []struct {
		name   string
		value  string
		status int
		stored string // when 200: the stored object, if not value itself
	}{
		{"an array", `[1, 2]`, 400, ""},
		{"a string", `"pro"`, 400, ""},
		{"a number", `7`, 400, ""},
		{"a boolean", `true`, 400, ""},
		{"null", `null`, 400, ""},
		{"8192 bytes", sized(8192), 200, ""},
		{"8193 bytes", sized(8193), 400, ""},
		{"8192 bytes with spaces around", ` { "k" : "` + strings.Repeat("x", 8184) + `" } `, 200, sized(8192)},
		{"small but long once stored", `{"a":[` + strings.Repeat(`1e300,`, 40) + `1]}`, 400, ""},
		{"key of 64 characters", `{"` + strings.Repeat("é", 64) + `":1}`, 200, ""},
		{"key of 65 characters", `{"` + strings.Repeat("é", 65) + `":1}`, 400, ""},
		{"inner key of 65 characters", `{"a":{"` + strings.Repeat("k", 65) + `":1}}`, 400, ""},
		{"5 levels", nested(5), 200, ""},
		{"6 levels", nested(6), 400, ""},
		{"6 levels through arrays", `{"a":[[[[{}]]]]}`, 400, ""},
		{"5 levels through arrays", `{"a":[[[1]]]}`, 200, ""},
		{"NUL in a value", `{"a":"x\u0000y"}`, 400, ""},
		{"NUL in a key", `{"a\u0000":1}`, 400, ""},
		{"a lone surrogate", `{"a":"\ud800"}`, 200, `{"a":"` + "\uFFFD" + `"}`},
		{"a huge number", `{"a":1e400}`, 400, ""},
		{"a tiny number", `{"a":1e-400}`, 400, ""},
		{"a long integer keeps its digits", `{"a":123456789012345678901234567890}`, 200, ""},
		{"zero written long", `{"a":[0.000e-999, -0, 0e-20000]}`, 200, `{"a":[0,0,0]}`},
		{"HTML characters", `{"a":"<b>&</b>"}`, 200, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			before, _ := env.metadataOf(t, alice.ID)
			r := env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", alice.ID), token, `{"user_metadata": `+c.value+`}`).expect(t, c.status)
			after, _ := env.metadataOf(t, alice.ID)
			if c.status != http.StatusOK {
				if errs, _ := r.json(t)["errors"].(map[string]any); errs["user_metadata"] == nil {
					t.Errorf("no user_metadata error: %s", r.body)
				}
				if after != before {
					t.Errorf("a refused write changed the metadata from %s to %s", before, after)
				}
				return
			}
			want := c.stored
			if want == "" {
				want = c.value
			}
			if after != want {
				t.Errorf("stored %s, want %s", after, want)
			}
		})
	}
	// The same rules for app_metadata, written by an admin.
	admin := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	r := env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", alice.ID), admin, `{"app_metadata": [], "user_metadata": 1}`).expect(t, 400)
	if errs, _ := r.json(t)["errors"].(map[string]any); errs["app_metadata"] == nil || errs["user_metadata"] == nil {
		t.Errorf("errors do not name both fields: %s", r.body)
	}
}

// TestMetadataAudited: a change of metadata is a profile_updated row naming the object and the
// top-level keys added, changed or removed, never a value.
func TestMetadataAudited(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	root := env.addUser(t, "root", roleAdmin)
	path := fmt.Sprintf("/api/users/%d", alice.ID)
	rootToken, aliceToken := env.tokenFor(t, root), env.tokenFor(t, alice)
	env.do(t, "PATCH", path, rootToken, `{"app_metadata": {"plan": "secret-plan", "same": 1, "gone": true}}`).expect(t, 200)

	last := env.lastAuditID(t)
	env.do(t, "PATCH", path, rootToken,
		`{"app_metadata": {"plan": "other-plan", "same": 1, "new": {"x": 1}}, "user_metadata": {"theme": "dark"}, "first_name": "Alicia"}`).
		expect(t, 200)
	want := []auditRow{{auditProfileUpdated, idp(root.ID), idp(alice.ID), "127.0.0.1", map[string]any{
		"fields":             []string{"first_name", "user_metadata", "app_metadata"},
		"user_metadata_keys": []string{"theme"},
		"app_metadata_keys":  []string{"gone", "new", "plan"},
	}}}
	got := env.auditRowsAfter(t, last)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("audit rows\n got %v\nwant %v", got, want)
	}
	if strings.Contains(fmt.Sprint(got), "plan\":\"") || strings.Contains(fmt.Sprint(got), "dark") {
		t.Errorf("the audit row holds a value: %v", got)
	}

	// Unchanged metadata (in another spelling) is no change.
	last = env.lastAuditID(t)
	env.do(t, "PATCH", path, aliceToken, `{"user_metadata": { "theme" : "dark" }}`).expect(t, 200)
	if rows := env.auditRowsAfter(t, last); len(rows) != 0 {
		t.Errorf("an unchanged object was audited: %v", rows)
	}
}

// TestAppMetadataFilter: ?app_metadata.<key>=<value> lists the users whose app_metadata has
// that top-level key with exactly that string, through the GIN index; bad keys are 400s.
func TestAppMetadataFilter(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	admin := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	for _, u := range []struct{ name, app string }{
		{"pro1", `{"plan": "pro", "tenant": "acme"}`},
		{"pro2", `{"plan": "pro", "tenant": "initech"}`},
		{"upper", `{"plan": "Pro"}`},
		{"spaced", `{"plan": "pro "}`},
		{"array", `{"plan": ["pro"]}`},
		{"nested", `{"billing": {"plan": "pro"}}`},
		{"number", `{"plan": 7}`},
		{"none", `{}`},
	} {
		id := env.addUser(t, u.name, roleUser).ID
		env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", id), admin, `{"app_metadata": `+u.app+`}`).expect(t, 200)
	}
	list := func(query string) []string {
		t.Helper()
		r := env.do(t, "GET", "/api/admin/users?"+query, admin, nil).expect(t, http.StatusOK)
		var users []map[string]any
		if err := json.Unmarshal(r.body, &users); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, u := range users {
			names = append(names, u["username"].(string))
		}
		if total := r.header.Get("X-Total-Count"); total != fmt.Sprint(len(names)) {
			t.Errorf("%s: X-Total-Count %s for %d users", query, total, len(names))
		}
		return names
	}
	for query, want := range map[string]string{
		"app_metadata.plan=pro":                          "[pro1 pro2]",
		"app_metadata.plan=pro&app_metadata.tenant=acme": "[pro1]",
		"app_metadata.plan=7":                            "[]",
		"app_metadata.plan=Pro":                          "[upper]",
		"app_metadata.tenant=acme&role=User":             "[pro1]",
		"app_metadata.plan=pro&q=pro2":                   "[pro2]",
		"app_metadata.billing=pro":                       "[]",
		"app_metadata.plan=":                             "[]",
	} {
		if got := fmt.Sprint(list(query)); got != want {
			t.Errorf("%s: %s, want %s", query, got, want)
		}
	}
	for _, query := range []string{"app_metadata.=pro", "app_metadata." + strings.Repeat("k", 65) + "=pro", "app_metadata.plan=a%00b",
		"app_metadata.plan=%ff", "app_metadata.plan=pro&app_metadata.plan=max", "app_metadatax=1"} {
		r := env.do(t, "GET", "/api/admin/users?"+query, admin, nil).expect(t, http.StatusBadRequest)
		if errs, _ := r.json(t)["errors"].(map[string]any); len(errs) == 0 {
			t.Errorf("%s: no field error: %s", query, r.body)
		}
	}

	// The filter's condition is served by the GIN index (sequential scans priced out, as on a
	// table large enough for the planner to prefer the index).
	where, args := userFilter{AppMetadata: map[string]string{"plan": "pro"}}.where()
	ctx := context.Background()
	conn, err := env.st.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SET enable_seqscan = off"); err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, "EXPLAIN SELECT id FROM users"+where, args...)
	if err != nil {
		t.Fatal(err)
	}
	var plan []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, line)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(plan, "\n"), "users_app_metadata_idx") {
		t.Errorf("the filter does not use users_app_metadata_idx:\n%s", strings.Join(plan, "\n"))
	}
}
