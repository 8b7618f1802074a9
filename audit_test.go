package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Tests of the audit log: a row for every action, written in the transaction of the change,
// never holding a secret, and the admin endpoint that lists it.

// auditRow is the part of an audit_log row the tests compare; nil ids are NULL.
type auditRow struct {
	Action  string
	Actor   *int64
	Target  *int64
	IP      string
	Details map[string]any
}

func idp(id int64) *int64 { return &id }

// String renders a row as JSON, with the details' numbers and field lists in one form, so that
// an expected and a stored row compare as text.
func (r auditRow) String() string {
	raw, _ := json.Marshal(r.Details)
	var details map[string]any
	_ = json.Unmarshal(raw, &details)
	if fields, ok := details["fields"].([]any); ok {
		slices.SortFunc(fields, func(a, b any) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
	}
	r.Details = details
	out, _ := json.Marshal(r)
	return string(out)
}

// auditRowsAfter returns the audit rows with an id above afterID, oldest first.
func (e *testEnv) auditRowsAfter(t testing.TB, afterID int64) []auditRow {
	t.Helper()
	rows, err := e.st.pool.Query(context.Background(),
		"SELECT action, actor_id, target_id, ip, details FROM audit_log WHERE id > $1 ORDER BY id", afterID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []auditRow
	for rows.Next() {
		var r auditRow
		if err := rows.Scan(&r.Action, &r.Actor, &r.Target, &r.IP, &r.Details); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// lastAuditID is the id of the newest audit row (0 for none).
func (e *testEnv) lastAuditID(t testing.TB) int64 {
	t.Helper()
	return int64(e.sqlCount(t, "SELECT COALESCE(max(id), 0) FROM audit_log"))
}

// loggedIn is a login through the API: its tokens and the session id its access token names.
type loggedIn struct {
	access, refresh string
	sessionID       int64
}

func (e *testEnv) loginSession(t testing.TB, username, password string) loggedIn {
	t.Helper()
	body := e.do(t, "POST", "/api/auth/login", "", map[string]string{"username": username, "password": password}).
		expect(t, http.StatusOK).json(t)
	l := loggedIn{}
	l.access, _ = body["access_token"].(string)
	l.refresh, _ = body["refresh_token"].(string)
	claims, err := verifyToken(e.cfg.keys, l.access, e.clock.Now())
	if err != nil {
		t.Fatalf("login returned a bad access token: %v", err)
	}
	l.sessionID = claims.Session
	return l
}

func TestAuditRowForEveryAction(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	ctx := context.Background()
	const ip = "127.0.0.1"
	passwords := []string{"alice-password-1", "alice-password-2", "alice-password-3"}
	secrets := append([]string{testPassword, "wrong-password", "$2a$"}, passwords...)
	keep := func(tokens ...string) {
		for _, token := range tokens {
			secrets = append(secrets, token, fmt.Sprintf("%x", hashToken(token)))
		}
	}
	var rootID, aliceID, bobID, carolID, daveID int64
	var alice, admin loggedIn
	var resetToken, inviteToken string
	var erinID int64
	none := map[string]any{}

	steps := []struct {
		action string
		setup  func(t *testing.T) // work before the step whose own audit rows do not count
		act    func(t *testing.T) []auditRow
	}{
		{action: auditAdminCreated, act: func(t *testing.T) []auditRow {
			hash, err := newHasher(env.cfg.bcryptCost, 1).hash(ctx, testPassword)
			if err != nil {
				t.Fatal(err)
			}
			rootID, err = env.st.createFirstAdmin(ctx, newUser{"root", "Root", "Admin", "root@example.com"}, hash)
			if err != nil {
				t.Fatal(err)
			}
			return []auditRow{{auditAdminCreated, nil, idp(rootID), "", map[string]any{"username": "root"}}}
		}},
		{action: auditRegister, act: func(t *testing.T) []auditRow {
			body := env.do(t, "POST", "/api/auth/register", "", map[string]string{
				"username": "alice", "first_name": "Alice", "last_name": "Liddell", "email": "alice@example.com", "password": passwords[0],
			}).expect(t, http.StatusCreated).json(t)
			aliceID = int64(body["id"].(float64))
			return []auditRow{
				{auditVerificationRequested, nil, idp(aliceID), ip, none}, // the verification mail
				{auditRegister, idp(aliceID), idp(aliceID), ip, none},
			}
		}},
		{action: auditLoginSucceeded, act: func(t *testing.T) []auditRow {
			alice = env.loginSession(t, "alice", passwords[0])
			keep(alice.access, alice.refresh)
			return []auditRow{{auditLoginSucceeded, idp(aliceID), idp(aliceID), ip, map[string]any{"session_id": alice.sessionID}}}
		}},
		{action: auditProfileUpdated, act: func(t *testing.T) []auditRow {
			env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", aliceID), alice.access, map[string]string{
				"first_name": "Alicia", "last_name": "Liddell", "email": "alicia@example.com", // last_name unchanged
			}).expect(t, http.StatusOK)
			return []auditRow{
				{auditVerificationRequested, nil, idp(aliceID), ip, none}, // the new address is verified anew
				{auditProfileUpdated, idp(aliceID), idp(aliceID), ip, map[string]any{"fields": []string{"first_name", "email"}}},
			}
		}},
		{action: auditSessionRevoked, act: func(t *testing.T) []auditRow {
			env.do(t, "DELETE", fmt.Sprintf("/api/users/me/sessions/%d", alice.sessionID), alice.access, nil).expect(t, http.StatusOK)
			return []auditRow{{auditSessionRevoked, idp(aliceID), idp(aliceID), ip, map[string]any{"session_id": alice.sessionID}}}
		}},
		{action: auditLogout, setup: func(t *testing.T) {
			alice = env.loginSession(t, "alice", passwords[0])
			keep(alice.access, alice.refresh)
		}, act: func(t *testing.T) []auditRow {
			env.do(t, "POST", "/api/auth/logout", alice.access, nil).expect(t, http.StatusOK)
			return []auditRow{{auditLogout, idp(aliceID), idp(aliceID), ip, map[string]any{"session_id": alice.sessionID}}}
		}},
		{action: auditLogoutAll, setup: func(t *testing.T) {
			alice = env.loginSession(t, "alice", passwords[0])
			keep(alice.access, alice.refresh)
		}, act: func(t *testing.T) []auditRow {
			env.do(t, "POST", "/api/auth/logout-all", alice.access, nil).expect(t, http.StatusOK)
			return []auditRow{{auditLogoutAll, idp(aliceID), idp(aliceID), ip, none}}
		}},
		{action: auditPasswordChanged, setup: func(t *testing.T) {
			alice = env.loginSession(t, "alice", passwords[0])
			keep(alice.access, alice.refresh)
		}, act: func(t *testing.T) []auditRow {
			body := env.do(t, "POST", "/api/auth/change-password", alice.access, map[string]string{
				"current_password": passwords[0], "new_password": passwords[1],
			}).expect(t, http.StatusOK).json(t)
			token, _ := body["access_token"].(string)
			keep(token)
			return []auditRow{{auditPasswordChanged, idp(aliceID), idp(aliceID), ip, none}}
		}},
		{action: auditPasswordChangeFailed, setup: func(t *testing.T) {
			alice = env.loginSession(t, "alice", passwords[1])
			keep(alice.access, alice.refresh)
		}, act: func(t *testing.T) []auditRow {
			env.do(t, "POST", "/api/auth/change-password", alice.access, map[string]string{
				"current_password": "wrong-password", "new_password": passwords[2],
			}).expect(t, http.StatusBadRequest)
			return []auditRow{{auditPasswordChangeFailed, idp(aliceID), idp(aliceID), ip, none}}
		}},
		{action: auditPasswordResetRequest, act: func(t *testing.T) []auditRow {
			body := env.do(t, "POST", "/api/auth/password-reset-request", "", map[string]string{"email": "alicia@example.com"}).
				expect(t, http.StatusOK).json(t)
			resetToken, _ = body["token"].(string)
			keep(resetToken)
			return []auditRow{{auditPasswordResetRequest, nil, idp(aliceID), ip, none}}
		}},
		{action: auditPasswordReset, act: func(t *testing.T) []auditRow {
			env.do(t, "POST", "/api/auth/reset-password/"+resetToken, "", map[string]string{"new_password": passwords[2]}).
				expect(t, http.StatusOK)
			return []auditRow{{auditPasswordReset, idp(aliceID), idp(aliceID), ip, none}}
		}},
		{action: auditRoleChanged, setup: func(t *testing.T) {
			bobID = env.addUser(t, "bob", roleUser).ID
			carolID = env.addUser(t, "carol", roleUser).ID
			daveID = env.addUser(t, "dave", roleUser).ID
			admin = env.loginSession(t, "root", testPassword)
			keep(admin.access, admin.refresh)
		}, act: func(t *testing.T) []auditRow {
			env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", bobID), admin.access, map[string]string{"role": "Admin"}).
				expect(t, http.StatusOK)
			return []auditRow{{auditRoleChanged, idp(rootID), idp(bobID), ip, map[string]any{"from": roleUser, "to": roleAdmin}}}
		}},
		{action: auditActivationChanged, act: func(t *testing.T) []auditRow {
			env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", carolID), admin.access, map[string]any{"is_active": false}).
				expect(t, http.StatusOK)
			return []auditRow{{auditActivationChanged, idp(rootID), idp(carolID), ip, map[string]any{"is_active": false}}}
		}},
		{action: auditUserDeleted, act: func(t *testing.T) []auditRow {
			env.do(t, "DELETE", fmt.Sprintf("/api/users/%d", daveID), admin.access, nil).expect(t, http.StatusOK)
			return []auditRow{{auditUserDeleted, idp(rootID), idp(daveID), ip, map[string]any{"username": "dave"}}}
		}},
		{action: auditUserCreated, act: func(t *testing.T) []auditRow {
			body := env.do(t, "POST", "/api/admin/users", admin.access, map[string]any{
				"username": "erin", "first_name": "Erin", "last_name": "E", "email": "erin@example.com",
			}).expect(t, http.StatusCreated).json(t)
			erinID = int64(body["id"].(float64))
			return []auditRow{
				{auditUserCreated, idp(rootID), idp(erinID), ip, map[string]any{"username": "erin", "role": roleUser, "invited": true}},
				{auditInvitationSent, idp(rootID), idp(erinID), ip, none},
			}
		}},
		{action: auditInvitationSent, setup: func(t *testing.T) {
			env.clock.Advance(time.Minute + time.Second) // past the cap of the invitation at creation
		}, act: func(t *testing.T) []auditRow {
			env.do(t, "POST", fmt.Sprintf("/api/admin/users/%d/invite", erinID), admin.access, nil).expect(t, http.StatusOK)
			return []auditRow{{auditInvitationSent, idp(rootID), idp(erinID), ip, none}}
		}},
		{action: auditInvitationAccepted, setup: func(t *testing.T) {
			msgs := mailsOf(env.deliverMail(t), mailInvite, "erin@example.com")
			inviteToken = tokenInMail(t, msgs[len(msgs)-1].text)
			keep(inviteToken)
		}, act: func(t *testing.T) []auditRow {
			body := env.do(t, "POST", "/api/auth/accept-invite/"+inviteToken, "", map[string]string{"new_password": passwords[0]}).
				expect(t, http.StatusOK).json(t)
			access, _ := body["access_token"].(string)
			refresh, _ := body["refresh_token"].(string)
			keep(access, refresh)
			claims, err := verifyToken(env.cfg.keys, access, env.clock.Now())
			if err != nil {
				t.Fatal(err)
			}
			return []auditRow{
				{auditInvitationAccepted, idp(erinID), idp(erinID), ip, map[string]any{"email": "erin@example.com"}},
				{auditLoginSucceeded, idp(erinID), idp(erinID), ip, map[string]any{"session_id": claims.Session}},
			}
		}},
		{action: auditRefreshTokenReused, setup: func(t *testing.T) {
			alice = env.loginSession(t, "alice", passwords[2])
			keep(alice.access, alice.refresh)
			body := env.do(t, "POST", "/api/auth/refresh", "", map[string]string{"refresh_token": alice.refresh}).
				expect(t, http.StatusOK).json(t)
			access, _ := body["access_token"].(string)
			refresh, _ := body["refresh_token"].(string)
			keep(access, refresh)
		}, act: func(t *testing.T) []auditRow {
			env.clock.Advance(env.cfg.refreshReuseInterval + time.Second)
			env.do(t, "POST", "/api/auth/refresh", "", map[string]string{"refresh_token": alice.refresh}).
				expect(t, http.StatusUnauthorized)
			return []auditRow{{auditRefreshTokenReused, nil, idp(aliceID), ip, map[string]any{"session_id": alice.sessionID}}}
		}},
		// Failed logins come last: a failing step does not stop the others, but the ones after
		// it would see its rows.
		{action: auditLoginFailed + " (known account)", act: func(t *testing.T) []auditRow {
			env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "alice", "password": "wrong-password"}).
				expect(t, http.StatusUnauthorized)
			return []auditRow{{auditLoginFailed, nil, idp(aliceID), ip, none}}
		}},
		{action: auditLoginFailed + " (unknown account)", act: func(t *testing.T) []auditRow {
			env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "nobody", "password": "wrong-password"}).
				expect(t, http.StatusUnauthorized)
			return []auditRow{{auditLoginFailed, nil, nil, ip, none}}
		}},
	}
	for _, s := range steps {
		t.Run(s.action, func(t *testing.T) {
			if s.setup != nil {
				s.setup(t)
			}
			before := env.lastAuditID(t)
			want := s.act(t)
			got := env.auditRowsAfter(t, before)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("audit rows\n got %v\nwant %v", got, want)
			}
		})
	}

	// No row holds a password, a token, a token's hash or a password hash.
	var dump string
	if err := env.st.pool.QueryRow(ctx, "SELECT string_agg(a::text, E'\\n') FROM audit_log a").Scan(&dump); err != nil {
		t.Fatal(err)
	}
	for _, secret := range secrets {
		if secret != "" && strings.Contains(dump, secret) {
			t.Errorf("the audit log holds the secret %q:\n%s", secret, dump)
		}
	}
}

// TestAuditInTheChangesTransaction: a change that fails leaves no audit row, and an audit row
// that cannot be written undoes its change.
func TestAuditInTheChangesTransaction(t *testing.T) {
	t.Parallel()
	t.Run("failed changes leave no row", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t)
		root := env.addUser(t, "root", roleAdmin)
		alice := env.addUser(t, "alice", roleUser)
		env.addUser(t, "bob", roleUser)
		rootToken, aliceToken := env.tokenFor(t, root), env.tokenFor(t, alice)
		tests := []struct {
			name                string
			method, path, token string
			body                any
			status              int
			action              string
		}{
			{"profile update to a taken username", "PATCH", fmt.Sprintf("/api/users/%d", alice.ID), aliceToken,
				map[string]string{"first_name": "Alicia", "username": "bob"}, http.StatusConflict, auditProfileUpdated},
			{"registration with a taken email", "POST", "/api/auth/register", "", map[string]string{
				"username": "alice2", "first_name": "A", "last_name": "L", "email": "alice@example.com", "password": testPassword,
			}, http.StatusConflict, auditRegister},
			{"last admin demoting themself", "PATCH", fmt.Sprintf("/api/users/%d", root.ID), rootToken,
				map[string]string{"role": "User"}, http.StatusConflict, auditRoleChanged},
			{"last admin deleting themself", "DELETE", fmt.Sprintf("/api/users/%d", root.ID), rootToken,
				nil, http.StatusConflict, auditUserDeleted},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				count := "SELECT count(*) FROM audit_log WHERE action = $1"
				before := env.sqlCount(t, count, tc.action)
				env.do(t, tc.method, tc.path, tc.token, tc.body).expect(t, tc.status)
				if after := env.sqlCount(t, count, tc.action); after != before {
					t.Errorf("%d %s rows after the failed change, want %d", after, tc.action, before)
				}
			})
		}
		if u, _ := env.st.userByID(context.Background(), alice.ID); u.FirstName != alice.FirstName {
			t.Errorf("first name %q after the failed update, want %q unchanged", u.FirstName, alice.FirstName)
		}
	})
	t.Run("an audit row that cannot be written undoes the change", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t)
		root := env.addUser(t, "root", roleAdmin)
		alice := env.addUser(t, "alice", roleUser)
		rootToken := env.tokenFor(t, root)
		// This test's own database refuses these two actions in the audit log.
		_, err := env.st.pool.Exec(context.Background(), `ALTER TABLE audit_log ADD CONSTRAINT refuse_for_test
			CHECK (action NOT IN ('profile_updated', 'user_deleted'))`)
		if err != nil {
			t.Fatal(err)
		}
		path := fmt.Sprintf("/api/users/%d", alice.ID)
		env.do(t, "PATCH", path, rootToken, map[string]string{"first_name": "Alicia"}).expect(t, http.StatusInternalServerError)
		env.do(t, "DELETE", path, rootToken, nil).expect(t, http.StatusInternalServerError)
		u, err := env.st.userByID(context.Background(), alice.ID)
		if err != nil {
			t.Fatalf("alice after a delete whose audit row failed: %v, want her still there", err)
		}
		if u.FirstName != alice.FirstName {
			t.Errorf("first name %q after an update whose audit row failed, want %q", u.FirstName, alice.FirstName)
		}
	})
}

// auditEntry is an event as GET /api/admin/audit-log shows it.
type auditEntry struct {
	ID        int64          `json:"id"`
	CreatedAt time.Time      `json:"created_at"`
	Action    string         `json:"action"`
	ActorID   *int64         `json:"actor_id"`
	TargetID  *int64         `json:"target_id"`
	IP        string         `json:"ip"`
	Details   map[string]any `json:"details"`
}

func (e *testEnv) auditLog(t testing.TB, token, query string) ([]auditEntry, response) {
	t.Helper()
	r := e.do(t, "GET", "/api/admin/audit-log?"+query, token, nil).expect(t, http.StatusOK)
	var entries []auditEntry
	if err := json.Unmarshal(r.body, &entries); err != nil || entries == nil {
		t.Fatalf("audit log body is not a JSON array (%v): %s", err, r.body)
	}
	return entries, r
}

func entryIDs(entries []auditEntry) []int64 {
	ids := make([]int64, len(entries))
	for i, e := range entries {
		ids[i] = e.ID
	}
	return ids
}

func TestAuditLogEndpoint(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(cfg *config) { cfg.accessTTL = 24 * time.Hour }) // outlives the clock moves
	root := env.addUser(t, "root", roleAdmin)
	alice := env.addUser(t, "alice", roleUser)
	bob := env.addUser(t, "bob", roleUser)
	rootToken, aliceToken := env.tokenFor(t, root), env.tokenFor(t, alice)
	t0 := env.clock.Now()
	env.clock.Advance(time.Hour)
	env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", alice.ID), rootToken, map[string]string{"first_name": "Alicia"}).expect(t, http.StatusOK)
	env.clock.Advance(time.Hour)
	env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", alice.ID), aliceToken, map[string]string{"last_name": "L"}).expect(t, http.StatusOK)
	env.clock.Advance(time.Hour)
	env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", bob.ID), rootToken, map[string]any{"is_active": false}).expect(t, http.StatusOK)
	t1, t2, t3 := t0.Add(time.Hour), t0.Add(2*time.Hour), t0.Add(3*time.Hour)

	t.Run("admins only", func(t *testing.T) {
		env.do(t, "GET", "/api/admin/audit-log", "", nil).expect(t, http.StatusUnauthorized)
		env.do(t, "GET", "/api/admin/audit-log", aliceToken, nil).expect(t, http.StatusForbidden)
	})

	all, _ := env.auditLog(t, rootToken, "")
	if len(all) != 11 { // 3 registrations with their verification mails, 2 logins, 2 profile updates, 1 deactivation
		t.Fatalf("%d events, want 11: %+v", len(all), all)
	}
	for i := 1; i < len(all); i++ {
		if all[i].ID >= all[i-1].ID || all[i].CreatedAt.After(all[i-1].CreatedAt) {
			t.Fatalf("events not newest first: %v", entryIDs(all))
		}
	}
	is := func(id *int64, want int64) bool { return id != nil && *id == want }
	newest := all[0]
	if newest.Action != auditActivationChanged || !is(newest.ActorID, root.ID) || !is(newest.TargetID, bob.ID) ||
		newest.IP != "127.0.0.1" || newest.Details["is_active"] != false || !newest.CreatedAt.Equal(t3) {
		t.Errorf("newest event %+v, want bob's deactivation by root from 127.0.0.1 at %v", newest, t3)
	}

	filters := []struct {
		query string
		keep  func(auditEntry) bool
	}{
		{"user_id=" + strconv.FormatInt(alice.ID, 10), func(e auditEntry) bool { return is(e.ActorID, alice.ID) || is(e.TargetID, alice.ID) }},
		{"user_id=" + strconv.FormatInt(root.ID, 10), func(e auditEntry) bool { return is(e.ActorID, root.ID) || is(e.TargetID, root.ID) }},
		{"action=profile_updated", func(e auditEntry) bool { return e.Action == auditProfileUpdated }},
		{"action=profile_updated&user_id=" + strconv.FormatInt(root.ID, 10), func(e auditEntry) bool {
			return e.Action == auditProfileUpdated && is(e.ActorID, root.ID)
		}},
		{"since=" + t1.Format(time.RFC3339), func(e auditEntry) bool { return !e.CreatedAt.Before(t1) }},
		{"until=" + t2.Format(time.RFC3339), func(e auditEntry) bool { return e.CreatedAt.Before(t2) }},
		{"since=" + url.QueryEscape(t1.In(time.FixedZone("", 2*3600)).Format(time.RFC3339)) + "&until=" + t3.Format(time.RFC3339),
			func(e auditEntry) bool { return !e.CreatedAt.Before(t1) && e.CreatedAt.Before(t3) }},
		{"action=" + auditMailNotSent, func(auditEntry) bool { return false }},
		// The ends of what RFC 3339 can write are bounds like any other: the zero time too.
		{"until=0001-01-01T00:00:00Z", func(auditEntry) bool { return false }},
		{"since=0001-01-01T00:00:00Z", func(auditEntry) bool { return true }},
		{"since=0000-01-01T00:00:00" + url.QueryEscape("+23:59"), func(auditEntry) bool { return true }},
		{"until=0000-01-01T00:00:00" + url.QueryEscape("+23:59"), func(auditEntry) bool { return false }},
		{"until=9999-12-31T23:59:59.999999999Z", func(auditEntry) bool { return true }},
		{"since=9999-12-31T23:59:59Z", func(auditEntry) bool { return false }},
		{"since=9999-12-31T23:59:59-23:59", func(auditEntry) bool { return false }},
		{"user_id=2147483648", func(auditEntry) bool { return false }},
		{"user_id=9223372036854775807", func(auditEntry) bool { return false }},
	}
	for _, f := range filters {
		t.Run(f.query, func(t *testing.T) {
			var want []int64
			for _, e := range all {
				if f.keep(e) {
					want = append(want, e.ID)
				}
			}
			got, r := env.auditLog(t, rootToken, f.query)
			if !slices.Equal(entryIDs(got), want) {
				t.Errorf("ids %v, want %v", entryIDs(got), want)
			}
			if r.header.Get("X-Total-Count") != strconv.Itoa(len(want)) {
				t.Errorf("X-Total-Count %q, want %d", r.header.Get("X-Total-Count"), len(want))
			}
		})
	}
	if got, _ := env.auditLog(t, rootToken, "since="+t1.Format(time.RFC3339)+"&until="+t1.Format(time.RFC3339)); len(got) != 0 {
		t.Errorf("an empty time range gave %v", entryIDs(got))
	}

	t.Run("pages", func(t *testing.T) {
		got, r := env.auditLog(t, rootToken, "page=2&per_page=3")
		if !slices.Equal(entryIDs(got), entryIDs(all[3:6])) {
			t.Errorf("page 2 ids %v, want %v", entryIDs(got), entryIDs(all[3:6]))
		}
		link := func(page int, rel string) string {
			return fmt.Sprintf(`</api/admin/audit-log?page=%d&per_page=3>; rel="%s"`, page, rel)
		}
		wantLink := strings.Join([]string{link(1, "first"), link(1, "prev"), link(3, "next"), link(4, "last")}, ", ")
		if r.header.Get("X-Total-Count") != "11" || r.header.Get("Link") != wantLink {
			t.Errorf("X-Total-Count %q, Link %q; want 11 and %q", r.header.Get("X-Total-Count"), r.header.Get("Link"), wantLink)
		}
		if got, r := env.auditLog(t, rootToken, "page=9&per_page=3"); len(got) != 0 || r.header.Get("X-Total-Count") != "11" {
			t.Errorf("past the last page: %v, X-Total-Count %q; want none and 11", entryIDs(got), r.header.Get("X-Total-Count"))
		}
	})

	t.Run("bad parameters", func(t *testing.T) {
		tests := []struct {
			query string
			names []string
		}{
			{"user_id=abc", []string{"user_id"}},
			{"user_id=0", []string{"user_id"}},
			{"since=yesterday", []string{"since"}},
			{"until=2026-01-02", []string{"until"}},
			{"since=10000-01-01T00:00:00Z", []string{"since"}},
			{"since=-0001-01-01T00:00:00Z", []string{"since"}},
			{"until=2026-13-01T00:00:00Z", []string{"until"}},
			{"until=2026-02-30T00:00:00Z", []string{"until"}},
			{"until=2026-01-01T24:00:00Z", []string{"until"}},
			{"until=2026-01-01T23:59:60Z", []string{"until"}},
			{"until=", []string{"until"}},
			{"user_id=9223372036854775808", []string{"user_id"}},
			{"user_id=-1", []string{"user_id"}},
			{"per_page=0", []string{"per_page"}},
			{"per_page=201", []string{"per_page"}},
			{"page=0", []string{"page"}},
			{"unknown=1", []string{"unknown"}},
			{"action=a&action=b", []string{"action"}},
			{"action=nothing_like_this", []string{"action"}},
			{"action=LOGIN_FAILED", []string{"action"}},
			{"user_id=abc&since=yesterday&per_page=0&unknown=1", []string{"per_page", "since", "unknown", "user_id"}},
		}
		for _, tc := range tests {
			r := env.do(t, "GET", "/api/admin/audit-log?"+tc.query, rootToken, nil)
			if r.status != http.StatusBadRequest {
				t.Errorf("%s: status %d, want 400", tc.query, r.status)
				continue
			}
			fields, _ := r.json(t)["errors"].(map[string]any)
			var names []string
			for name := range fields {
				names = append(names, name)
			}
			slices.Sort(names)
			if !slices.Equal(names, tc.names) {
				t.Errorf("%s: errors name %v, want %v", tc.query, names, tc.names)
			}
		}
	})
}
