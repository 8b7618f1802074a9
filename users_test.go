package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests of the user endpoints: who may read, change and delete whom, the last-admin rules,
// token revocation, profile updates and /me. The admin list has list_test.go.

// usersObjectKeys are exactly the keys of the user object of every reply.
var usersObjectKeys = []string{"created_at", "email", "email_verified", "first_name", "id", "is_active", "last_name", "mfa_enabled", "role", "updated_at", "username"}

// usersDecodeObject fails unless raw is a user object with exactly usersObjectKeys and RFC 3339
// UTC timestamps, and returns it.
func usersDecodeObject(t testing.TB, raw []byte) user {
	t.Helper()
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatalf("not a JSON object: %v: %s", err, raw)
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if !slices.Equal(keys, usersObjectKeys) {
		t.Fatalf("user object keys %v, want %v: %s", keys, usersObjectKeys, raw)
	}
	if bytes.Contains(raw, []byte("$2a$")) || bytes.Contains(raw, []byte("$2b$")) {
		t.Fatalf("user object holds a bcrypt hash: %s", raw)
	}
	for _, k := range []string{"created_at", "updated_at"} {
		var s string
		if err := json.Unmarshal(fields[k], &s); err != nil {
			t.Fatalf("%s is not a string: %s", k, fields[k])
		}
		if _, err := time.Parse(time.RFC3339, s); err != nil || !strings.HasSuffix(s, "Z") {
			t.Fatalf("%s = %q, want RFC 3339 in UTC", k, s)
		}
	}
	var u user
	if err := json.Unmarshal(raw, &u); err != nil {
		t.Fatalf("decoding user object: %v: %s", err, raw)
	}
	return u
}

// usersReload returns the stored row of u.
func usersReload(t testing.TB, env *testEnv, u user) user {
	t.Helper()
	got, err := env.st.userByID(context.Background(), u.ID)
	if err != nil {
		t.Fatalf("loading user %d: %v", u.ID, err)
	}
	return got
}

// usersActiveAdmins counts the active admins in the database.
func usersActiveAdmins(t testing.TB, env *testEnv) int {
	t.Helper()
	var n int
	err := env.st.pool.QueryRow(context.Background(), "SELECT count(*) FROM users WHERE role = 'Admin' AND is_active").Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// usersErrorFields returns the sorted field names of a reply's "errors".
func usersErrorFields(t testing.TB, r response) []string {
	t.Helper()
	errs, _ := r.json(t)["errors"].(map[string]any)
	names := make([]string, 0, len(errs))
	for name := range errs {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

func TestUsersPermissions(t *testing.T) {
	t.Parallel()
	otherRole := map[string]string{roleAdmin: roleUser, roleUser: roleAdmin}
	actions := []struct {
		name   string
		method string
		body   func(target user) any // nil: no body
	}{
		{"get", "GET", nil},
		{"put profile", "PUT", func(user) any { return map[string]any{"first_name": "Renamed"} }},
		{"patch profile", "PATCH", func(user) any { return map[string]any{"last_name": "Renamed"} }},
		{"put role", "PUT", func(u user) any { return map[string]any{"role": otherRole[u.Role]} }},
		{"put same role", "PUT", func(u user) any { return map[string]any{"role": u.Role} }},
		{"put is_active", "PUT", func(user) any { return map[string]any{"is_active": false} }},
		{"put same is_active", "PUT", func(user) any { return map[string]any{"is_active": true} }},
		{"delete", "DELETE", nil},
	}
	// The expected status of each action above, in order, per actor and target. Every case
	// has another active admin besides the actor, so no last-admin rule applies here.
	want := map[[2]string][]int{
		{"user", "self"}:         {200, 200, 200, 403, 200, 403, 200, 403},
		{"user", "other user"}:   {403, 403, 403, 403, 403, 403, 403, 403},
		{"user", "other admin"}:  {403, 403, 403, 403, 403, 403, 403, 403},
		{"user", "missing id"}:   {403, 403, 403, 403, 403, 403, 403, 403},
		{"admin", "self"}:        {200, 200, 200, 200, 200, 200, 200, 200},
		{"admin", "other user"}:  {200, 200, 200, 200, 200, 200, 200, 200},
		{"admin", "other admin"}: {200, 403, 403, 403, 403, 403, 403, 403},
		{"admin", "missing id"}:  {404, 404, 404, 404, 404, 404, 404, 404},
	}
	for _, actorKind := range []string{"user", "admin"} {
		for _, targetKind := range []string{"self", "other user", "other admin", "missing id"} {
			for i, a := range actions {
				wantStatus := want[[2]string{actorKind, targetKind}][i]
				t.Run(actorKind+"/"+targetKind+"/"+a.name, func(t *testing.T) {
					t.Parallel()
					env := newTestEnv(t)
					actor := env.addUser(t, "actor", map[string]string{"user": roleUser, "admin": roleAdmin}[actorKind])
					targets := map[string]user{
						"self":        actor,
						"other user":  env.addUser(t, "peer", roleUser),
						"other admin": env.addUser(t, "boss", roleAdmin),
						"missing id":  {ID: 1 << 40, Role: roleUser, IsActive: true},
					}
					target := targets[targetKind]
					var body any
					if a.body != nil {
						body = a.body(target)
					}
					path := fmt.Sprintf("/api/users/%d", target.ID)
					r := env.do(t, a.method, path, env.tokenFor(t, actor), body)
					r.expect(t, wantStatus)

					if targetKind == "missing id" {
						return
					}
					switch {
					case wantStatus != http.StatusOK:
						if r.message(t) == "" {
							t.Errorf("error reply without a message: %s", r.body)
						}
						if got := usersReload(t, env, target); got != target {
							t.Errorf("refused %s changed the user:\n got %+v\nwant %+v", a.name, got, target)
						}
					case a.method == "DELETE":
						if msg := r.message(t); msg != "User deleted successfully" {
							t.Errorf("message %q", msg)
						}
						if _, err := env.st.userByID(context.Background(), target.ID); err != errNotFound {
							t.Errorf("after DELETE, loading the user: %v, want errNotFound", err)
						}
					default:
						got := usersDecodeObject(t, r.body)
						if got.ID != target.ID {
							t.Errorf("reply is user %d, want %d", got.ID, target.ID)
						}
						if a.body != nil {
							usersCheckApplied(t, got, a.body(target).(map[string]any))
							if stored := usersReload(t, env, target); stored.FirstName != got.FirstName || stored.Role != got.Role || stored.IsActive != got.IsActive || stored.LastName != got.LastName {
								t.Errorf("stored %+v differs from reply %+v", stored, got)
							}
						}
					}
				})
			}
		}
	}
}

// usersCheckApplied fails unless every field of patch has its value in u.
func usersCheckApplied(t testing.TB, u user, patch map[string]any) {
	t.Helper()
	raw, _ := json.Marshal(u)
	var got map[string]any
	_ = json.Unmarshal(raw, &got)
	for k, v := range patch {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

func TestUsersLastAdmin(t *testing.T) {
	t.Parallel()
	type step struct {
		actor, method, target string
		body                  any
		want                  int
	}
	demote := map[string]any{"role": "User"}
	deactivate := map[string]any{"is_active": false}
	cases := []struct {
		name   string
		admins []string
		steps  []step
	}{
		{"only admin", []string{"a"}, []step{
			{"a", "PUT", "a", demote, 409},
			{"a", "PATCH", "a", demote, 409},
			{"a", "PUT", "a", deactivate, 409},
			{"a", "PATCH", "a", map[string]any{"role": "user", "is_active": false}, 409},
			{"a", "DELETE", "a", nil, 409},
			{"a", "PUT", "a", map[string]any{"role": "ADMIN", "is_active": true}, 200}, // unchanged values
		}},
		{"other admin deactivated", []string{"a", "b"}, []step{
			{"b", "PATCH", "b", deactivate, 200},
			{"a", "PUT", "a", demote, 409},
			{"a", "PUT", "a", deactivate, 409},
			{"a", "DELETE", "a", nil, 409},
		}},
		{"other admin demoted", []string{"a", "b"}, []step{
			{"b", "PUT", "b", demote, 200},
			{"a", "PUT", "a", demote, 409},
			{"a", "PATCH", "a", deactivate, 409},
			{"a", "DELETE", "a", nil, 409},
		}},
		{"other admin deleted", []string{"a", "b"}, []step{
			{"b", "DELETE", "b", nil, 200},
			{"a", "DELETE", "a", nil, 409},
			{"a", "PUT", "a", demote, 409},
		}},
		{"three admins", []string{"a", "b", "c"}, []step{
			{"a", "PUT", "a", demote, 200},
			{"b", "PUT", "b", deactivate, 200},
			{"c", "PUT", "c", demote, 409},
			{"c", "DELETE", "c", nil, 409},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			env := newTestEnv(t)
			env.addUser(t, "plain", roleUser) // users never count as admins
			users := map[string]user{}
			for _, name := range c.admins {
				users[name] = env.addUser(t, name+"dmin", roleAdmin)
			}
			for i, s := range c.steps {
				actor := usersReload(t, env, users[s.actor])
				path := fmt.Sprintf("/api/users/%d", users[s.target].ID)
				r := env.do(t, s.method, path, env.tokenFor(t, actor), s.body)
				if r.status != s.want {
					t.Fatalf("step %d: %s %s by %s: status %d, want %d; body: %s", i, s.method, s.target, s.actor, r.status, s.want, r.body)
				}
			}
			if n := usersActiveAdmins(t, env); n != 1 {
				t.Errorf("%d active admins at the end, want 1", n)
			}
		})
	}
}

func TestUsersConcurrentSelfDemotion(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	changes := []struct {
		name   string
		method string
		body   any
	}{
		{"demote", "PUT", map[string]any{"role": "User"}},
		{"deactivate", "PATCH", map[string]any{"is_active": false}},
		{"delete", "DELETE", nil},
	}
	for round := range 20 {
		if _, err := env.st.pool.Exec(context.Background(), "DELETE FROM users"); err != nil {
			t.Fatal(err)
		}
		admins := []user{
			env.addUser(t, fmt.Sprintf("a%02d", round), roleAdmin),
			env.addUser(t, fmt.Sprintf("b%02d", round), roleAdmin),
		}
		chosen := [2]int{round % 3, (round / 3) % 3}
		requests := make([]*http.Request, 2)
		for i, u := range admins {
			c := changes[chosen[i]]
			var body []byte
			if c.body != nil {
				body, _ = json.Marshal(c.body)
			}
			req, err := http.NewRequest(c.method, fmt.Sprintf("%s/api/users/%d", env.server.URL, u.ID), bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+env.tokenFor(t, u))
			requests[i] = req
		}
		statuses := make([]int, 2)
		errs := make([]error, 2)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, req := range requests {
			wg.Go(func() {
				<-start
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					errs[i] = err
					return
				}
				resp.Body.Close()
				statuses[i] = resp.StatusCode
			})
		}
		close(start)
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		got := slices.Clone(statuses)
		slices.Sort(got)
		if !slices.Equal(got, []int{200, 409}) {
			t.Errorf("round %d (%s, %s): statuses %v, want one 200 and one 409",
				round, changes[chosen[0]].name, changes[chosen[1]].name, statuses)
		}
		if n := usersActiveAdmins(t, env); n != 1 {
			t.Fatalf("round %d (%s, %s): %d active admins left, want 1",
				round, changes[chosen[0]].name, changes[chosen[1]].name, n)
		}
	}
	if strings.Contains(env.logs.String(), "internal error") {
		t.Errorf("the server logged an internal error:\n%s", env.logs.String())
	}
}

func TestUsersRevocation(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		method string
		body   any
		revoke bool
	}{
		{"deactivate", "PUT", map[string]any{"is_active": false}, true},
		{"promote", "PATCH", map[string]any{"role": "admin"}, true},
		{"delete", "DELETE", nil, true},
		{"profile change", "PUT", map[string]any{"first_name": "Still", "email": "still@example.com"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			env := newTestEnv(t)
			env.addUser(t, "root", roleAdmin)
			alice := env.addUser(t, "alice", roleUser)
			adminToken, token := env.login(t, "root", testPassword), env.login(t, "alice", testPassword)
			env.do(t, "GET", "/api/users/me", token, nil).expect(t, http.StatusOK)
			env.do(t, c.method, fmt.Sprintf("/api/users/%d", alice.ID), adminToken, c.body).expect(t, http.StatusOK)
			want := http.StatusOK
			if c.revoke {
				want = http.StatusUnauthorized
			}
			env.do(t, "GET", "/api/users/me", token, nil).expect(t, want)
			env.do(t, "GET", fmt.Sprintf("/api/users/%d", alice.ID), token, nil).expect(t, want)
			env.do(t, "GET", "/api/users/me", adminToken, nil).expect(t, http.StatusOK)
		})
	}

	t.Run("admin demotes self", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t)
		env.addUser(t, "root", roleAdmin)
		second := env.addUser(t, "second", roleAdmin)
		token := env.login(t, "second", testPassword)
		env.do(t, "PUT", fmt.Sprintf("/api/users/%d", second.ID), token, map[string]any{"role": "User"}).expect(t, http.StatusOK)
		env.do(t, "GET", "/api/users/me", token, nil).expect(t, http.StatusUnauthorized)
		// A new login carries the new role.
		r := env.do(t, "GET", "/api/users/me", env.login(t, "second", testPassword), nil).expect(t, http.StatusOK)
		if got := usersDecodeObject(t, r.body); got.Role != roleUser {
			t.Errorf("role after demotion %q, want User", got.Role)
		}
	})

	t.Run("deactivated cannot log in until reactivated", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t)
		env.addUser(t, "root", roleAdmin)
		alice := env.addUser(t, "alice", roleUser)
		adminToken, oldToken := env.login(t, "root", testPassword), env.login(t, "alice", testPassword)
		path := fmt.Sprintf("/api/users/%d", alice.ID)
		env.do(t, "PATCH", path, adminToken, map[string]any{"is_active": false}).expect(t, http.StatusOK)

		for _, login := range []string{"alice", "alice@example.com"} {
			r := env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": login, "password": testPassword})
			r.expect(t, http.StatusUnauthorized)
			if msg := r.message(t); msg != "Invalid credentials" {
				t.Errorf("login of a deactivated user as %q: message %q, want %q", login, msg, "Invalid credentials")
			}
		}

		env.do(t, "PATCH", path, adminToken, map[string]any{"is_active": true}).expect(t, http.StatusOK)
		token := env.login(t, "alice", testPassword)
		env.do(t, "GET", "/api/users/me", token, nil).expect(t, http.StatusOK)
		// Reactivation does not bring back the tokens deactivation revoked.
		env.do(t, "GET", "/api/users/me", oldToken, nil).expect(t, http.StatusUnauthorized)
	})
}

func TestUsersUpdate(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		byAdmin    bool // otherwise alice updates herself
		method     string
		body       any
		want       int
		changed    map[string]any // for 200: the fields that must change to these values
		wantErrors []string       // for 400: exactly these fields in "errors", when not nil
	}{
		{"put one field", false, "PUT", map[string]any{"first_name": "Alicia"}, 200,
			map[string]any{"first_name": "Alicia"}, nil},
		{"patch two fields", false, "PATCH", map[string]any{"last_name": "Liddell", "email": "liddell@example.org"}, 200,
			map[string]any{"last_name": "Liddell", "email": "liddell@example.org"}, nil},
		{"put every profile field", false, "PUT", map[string]any{"username": "alice2", "first_name": "A", "last_name": "L", "email": "a2@example.com"}, 200,
			map[string]any{"username": "alice2", "first_name": "A", "last_name": "L", "email": "a2@example.com"}, nil},
		{"own username in other case", false, "PUT", map[string]any{"username": "ALICE"}, 200,
			map[string]any{"username": "ALICE"}, nil},
		{"own unchanged role in lower case", false, "PATCH", map[string]any{"role": "user"}, 200,
			map[string]any{"role": "User"}, nil},
		{"role lower case", true, "PUT", map[string]any{"role": "admin"}, 200,
			map[string]any{"role": "Admin"}, nil},
		{"role upper case", true, "PATCH", map[string]any{"role": "USER", "first_name": "Al"}, 200,
			map[string]any{"role": "User", "first_name": "Al"}, nil},
		{"role mixed case", true, "PUT", map[string]any{"role": "aDmIn"}, 200,
			map[string]any{"role": "Admin"}, nil},
		{"deactivate", true, "PATCH", map[string]any{"is_active": false}, 200,
			map[string]any{"is_active": false}, nil},
		{"bad role", true, "PUT", map[string]any{"role": "root"}, 400, nil, []string{"role"}},
		{"bad role by self", false, "PUT", map[string]any{"role": "Superuser"}, 400, nil, []string{"role"}},
		{"password field", false, "PUT", map[string]any{"password": "new-password-1"}, 400, nil, []string{"password"}},
		{"unknown fields with a good one", false, "PATCH", map[string]any{"password": "new-password-1", "is_admin": true, "first_name": "Ok"}, 400,
			nil, []string{"is_admin", "password"}},
		{"unknown fields by admin", true, "PUT", map[string]any{"password_hash": "x", "token_version": 0, "id": 7}, 400,
			nil, []string{"id", "password_hash", "token_version"}},
		{"username taken in other case", false, "PUT", map[string]any{"username": "BOB"}, 409, nil, nil},
		{"email taken in other case", false, "PATCH", map[string]any{"email": "BOB@EXAMPLE.COM"}, 409, nil, nil},
		{"username taken, by admin", true, "PATCH", map[string]any{"username": "Root"}, 409, nil, nil},
		{"empty object", false, "PUT", map[string]any{}, 400, nil, nil},
		{"empty object by patch", true, "PATCH", map[string]any{}, 400, nil, nil},
		{"every bad field named", false, "PUT", map[string]any{"username": "a b", "email": "nope", "first_name": "", "last_name": "x\ny"}, 400,
			nil, []string{"email", "first_name", "last_name", "username"}},
		{"null field", false, "PATCH", map[string]any{"first_name": nil}, 400, nil, []string{"first_name"}},
		{"wrong type", true, "PATCH", map[string]any{"is_active": "no"}, 400, nil, []string{"is_active"}},
		{"not an object", false, "PUT", "[]", 400, nil, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			env := newTestEnv(t)
			root := env.addUser(t, "root", roleAdmin)
			env.addUser(t, "bob", roleUser)
			alice := env.addUser(t, "alice", roleUser)
			actor := alice
			if c.byAdmin {
				actor = root
			}
			r := env.do(t, c.method, fmt.Sprintf("/api/users/%d", alice.ID), env.tokenFor(t, actor), c.body)
			r.expect(t, c.want)
			if c.want != http.StatusOK {
				if c.wantErrors != nil {
					if got := usersErrorFields(t, r); !slices.Equal(got, c.wantErrors) {
						t.Errorf("errors name %v, want %v; body: %s", got, c.wantErrors, r.body)
					}
				}
				if got := usersReload(t, env, alice); got != alice {
					t.Errorf("refused update changed the user:\n got %+v\nwant %+v", got, alice)
				}
				return
			}
			got := usersDecodeObject(t, r.body)
			want := alice
			raw, _ := json.Marshal(c.changed)
			if err := json.Unmarshal(raw, &want); err != nil {
				t.Fatal(err)
			}
			if got.ID != want.ID || got.Username != want.Username || got.FirstName != want.FirstName ||
				got.LastName != want.LastName || got.Email != want.Email || got.Role != want.Role || got.IsActive != want.IsActive {
				t.Errorf("reply\n got %+v\nwant %+v", got, want)
			}
			if !got.CreatedAt.Equal(alice.CreatedAt) {
				t.Errorf("created_at moved from %v to %v", alice.CreatedAt, got.CreatedAt)
			}
			if !got.UpdatedAt.After(alice.UpdatedAt) {
				t.Errorf("updated_at %v, want after %v", got.UpdatedAt, alice.UpdatedAt)
			}
			stored := usersReload(t, env, alice)
			stored.PasswordHash, stored.TokenVersion = "", 0
			if !stored.CreatedAt.Equal(got.CreatedAt) || !stored.UpdatedAt.Equal(got.UpdatedAt) {
				t.Errorf("stored times %v %v, reply %v %v", stored.CreatedAt, stored.UpdatedAt, got.CreatedAt, got.UpdatedAt)
			}
			stored.CreatedAt, stored.UpdatedAt = got.CreatedAt, got.UpdatedAt
			if stored != got {
				t.Errorf("stored user differs from the reply:\nstored %+v\n reply %+v", stored, got)
			}
		})
	}

	t.Run("updated_at moves forward each time", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t)
		alice := env.addUser(t, "alice", roleUser)
		previous := alice.UpdatedAt
		for i, method := range []string{"PUT", "PATCH", "PUT"} {
			r := env.do(t, method, fmt.Sprintf("/api/users/%d", alice.ID), env.tokenFor(t, alice), map[string]any{"last_name": fmt.Sprintf("L%d", i)})
			got := usersDecodeObject(t, r.expect(t, http.StatusOK).body)
			if !got.UpdatedAt.After(previous) {
				t.Errorf("update %d: updated_at %v, want after %v", i, got.UpdatedAt, previous)
			}
			previous = got.UpdatedAt
		}
	})
}

func TestUsersMe(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	for _, u := range []user{env.addUser(t, "alice", roleUser), env.addUser(t, "root", roleAdmin)} {
		token := env.tokenFor(t, u)
		me := env.do(t, "GET", "/api/users/me", token, nil).expect(t, http.StatusOK)
		got := usersDecodeObject(t, me.body)
		want := u
		want.PasswordHash, want.TokenVersion = "", 0
		if !got.CreatedAt.Equal(want.CreatedAt) || !got.UpdatedAt.Equal(want.UpdatedAt) {
			t.Errorf("%s: times %v %v, want %v %v", u.Username, got.CreatedAt, got.UpdatedAt, want.CreatedAt, want.UpdatedAt)
		}
		got.CreatedAt, got.UpdatedAt = want.CreatedAt, want.UpdatedAt
		if got != want {
			t.Errorf("/me\n got %+v\nwant %+v", got, want)
		}
		// The same object as GET /api/users/{own id}.
		byID := env.do(t, "GET", fmt.Sprintf("/api/users/%d", u.ID), token, nil).expect(t, http.StatusOK)
		if !bytes.Equal(byID.body, me.body) {
			t.Errorf("/me %s differs from /api/users/%d %s", me.body, u.ID, byID.body)
		}
	}
	env.do(t, "GET", "/api/users/me", "", nil).expect(t, http.StatusUnauthorized)
}

// TestOnlyAdminsSetEmailVerified: a user cannot keep a new address verified by sending
// email_verified with it, even as "unchanged".
func TestOnlyAdminsSetEmailVerified(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	admin := env.addUser(t, "root", roleAdmin)
	alice := env.addUser(t, "alice", roleUser)
	if _, err := env.st.pool.Exec(context.Background(), "UPDATE users SET email_verified = true WHERE id = $1", alice.ID); err != nil {
		t.Fatal(err)
	}
	path := fmt.Sprintf("/api/users/%d", alice.ID)
	env.do(t, "PATCH", path, env.tokenFor(t, alice), map[string]any{"email": "victim@example.com", "email_verified": true}).
		expect(t, http.StatusForbidden)
	r := env.do(t, "PATCH", path, env.tokenFor(t, alice), map[string]any{"email": "new@example.com"}).expect(t, http.StatusOK)
	if r.json(t)["email_verified"] != false {
		t.Errorf("a new address stayed verified: %s", r.body)
	}
	r = env.do(t, "PATCH", path, env.tokenFor(t, admin), map[string]any{"email_verified": true}).expect(t, http.StatusOK)
	if r.json(t)["email_verified"] != true {
		t.Errorf("an admin could not mark the address verified: %s", r.body)
	}
}
