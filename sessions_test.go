package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// Tests of sessions: the absolute session lifetime, logout, the session list and revocation
// by account changes, with the session helpers the other tests use. Refresh rotation has
// refresh_test.go, the lockout lockout_test.go.

// tokenPair is the access and refresh token of one session, as login and refresh return them.
type tokenPair struct{ access, refresh string }

// pairOf checks that r is a 200 carrying a token pair and returns the pair.
func pairOf(t testing.TB, r response) tokenPair {
	t.Helper()
	m := r.expect(t, http.StatusOK).json(t)
	access, _ := m["access_token"].(string)
	refresh, _ := m["refresh_token"].(string)
	if access == "" || refresh == "" {
		t.Fatalf("no access and refresh token in %s", r.body)
	}
	return tokenPair{access, refresh}
}

// loginWith sends a login with extra request headers (User-Agent, X-Forwarded-For).
func (e *testEnv) loginWith(t testing.TB, username, password string, header http.Header) response {
	t.Helper()
	raw, err := json.Marshal(map[string]string{"username": username, "password": password})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest("POST", e.server.URL+"/api/auth/login", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	for name, values := range header {
		req.Header[name] = values
	}
	req.Header.Set("Content-Type", "application/json")
	return send(t, req)
}

// loginPair logs username in with testPassword and returns the session's tokens.
func (e *testEnv) loginPair(t testing.TB, username string) tokenPair {
	t.Helper()
	return pairOf(t, e.loginWith(t, username, testPassword, nil))
}

// refresh presents a refresh token.
func (e *testEnv) refresh(t testing.TB, token string) response {
	t.Helper()
	return e.do(t, "POST", "/api/auth/refresh", "", map[string]string{"refresh_token": token})
}

// expectLive checks that p's access token is accepted and its refresh token exchanged, and
// returns the pair the exchange gave (p.refresh is spent by it).
func (e *testEnv) expectLive(t testing.TB, p tokenPair) tokenPair {
	t.Helper()
	e.do(t, "GET", "/api/users/me", p.access, nil).expect(t, http.StatusOK)
	next := pairOf(t, e.refresh(t, p.refresh))
	e.do(t, "GET", "/api/users/me", next.access, nil).expect(t, http.StatusOK)
	return next
}

// expectEnded checks that both tokens of p are refused.
func (e *testEnv) expectEnded(t testing.TB, p tokenPair) {
	t.Helper()
	e.do(t, "GET", "/api/users/me", p.access, nil).expect(t, http.StatusUnauthorized)
	e.refresh(t, p.refresh).expect(t, http.StatusUnauthorized)
}

// sqlCount runs a SELECT count(*) against the test's database.
func (e *testEnv) sqlCount(t testing.TB, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := e.st.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// liveSessionCount counts the user's sessions that are not revoked.
func (e *testEnv) liveSessionCount(t testing.TB, userID int64) int {
	t.Helper()
	return e.sqlCount(t, "SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL", userID)
}

// sessionList returns GET /api/users/me/sessions as seen with token.
func (e *testEnv) sessionList(t testing.TB, token string) []map[string]any {
	t.Helper()
	r := e.do(t, "GET", "/api/users/me/sessions", token, nil).expect(t, http.StatusOK)
	var list []map[string]any
	if err := json.Unmarshal(r.body, &list); err != nil {
		t.Fatalf("session list is not a JSON array: %v: %s", err, r.body)
	}
	return list
}

// tokenParts decodes the key id and claims of an access token, without verifying it.
func tokenParts(t testing.TB, token string) (string, tokenClaims) {
	t.Helper()
	parts := strings.Split(token, ".")
	var header struct {
		Kid string `json:"kid"`
	}
	var claims tokenClaims
	if len(parts) != 3 || decodeSegment(parts[0], &header) != nil || decodeSegment(parts[1], &claims) != nil {
		t.Fatalf("not a JWT: %q", token)
	}
	return header.Kid, claims
}

// anotherInstance starts a second server with cfg on e's database and clock, as a second
// instance behind a load balancer would be; the returned env shares the rest with e.
func (e *testEnv) anotherInstance(t testing.TB, cfg config) *testEnv {
	t.Helper()
	cfg.databaseURL = e.cfg.databaseURL
	st, err := openStore(context.Background(), cfg, e.clock.Now, 5*time.Second)
	if err != nil {
		t.Fatalf("opening second store: %v", err)
	}
	logger := slog.New(slog.NewTextHandler(e.logs, nil))
	other := *e
	other.cfg, other.st, other.pw = cfg, st, newHasher(cfg.bcryptCost, cfg.bcryptConcurrency)
	other.server = checkedServer(t, newServer(cfg, st, other.pw, logger))
	t.Cleanup(func() {
		other.server.Close()
		st.close()
	})
	return &other
}

// TestSessionLifetimeIsAbsolute checks that refreshing keeps a session alive only until
// SESSION_MAX_LIFETIME after its login: then its tokens are refused (access tokens too, though
// they live longer here), and logging in again works.
func TestSessionLifetimeIsAbsolute(t *testing.T) {
	limits := func(idle, lifetime time.Duration) func(*config) {
		return func(c *config) { c.accessTTL, c.refreshTTL, c.sessionLifetime = 7*24*time.Hour, idle, lifetime }
	}
	env := newTestEnv(t, limits(24*time.Hour, 72*time.Hour))
	env.addUser(t, "alice", roleUser)
	p := env.loginPair(t, "alice")
	for range 3 { // refreshed every 20 hours: never idle for a day, 60 hours in all
		env.clock.Advance(20 * time.Hour)
		p = env.expectLive(t, p)
	}
	sessions := env.sessionList(t, p.access)
	if len(sessions) != 1 || sessions[0]["expires_at"] != env.clock.Now().Add(12*time.Hour).Format(time.RFC3339) {
		t.Errorf("sessions %v: want one, expiring 72 hours after login", sessions)
	}
	env.clock.Advance(12*time.Hour - time.Second)
	p = env.expectLive(t, p)
	env.clock.Advance(2 * time.Second)
	env.expectEnded(t, p)
	env.expectLive(t, env.loginPair(t, "alice"))

	t.Run("lowered", func(t *testing.T) { // by an operator, or by an upgrade from a version without it
		p := env.loginPair(t, "alice")
		env.clock.Advance(20 * time.Hour)
		p = env.expectLive(t, p)
		env.clock.Advance(20 * time.Hour)
		next := pairOf(t, env.refresh(t, p.refresh)) // under the old lifetime; p.refresh is rotated out
		cfg := env.cfg
		cfg.sessionLifetime = 24 * time.Hour
		lowered := env.anotherInstance(t, cfg)
		lowered.expectEnded(t, next)
		// A retry of the refresh just made is refused as well, but it is no theft: nothing is
		// revoked, and the session lives on where the old lifetime holds.
		lowered.refresh(t, p.refresh).expect(t, http.StatusUnauthorized)
		if n := env.sqlCount(t, "SELECT count(*) FROM audit_log WHERE action = $1", auditRefreshTokenReused); n != 0 {
			t.Errorf("%d refresh_token_reused rows, want none", n)
		}
		_, claims := tokenParts(t, next.access)
		old := claims.Session
		env.expectLive(t, next)
		fresh := lowered.loginPair(t, "alice")
		for _, s := range lowered.sessionList(t, fresh.access) {
			if s["id"] == float64(old) {
				t.Errorf("session %d listed past its lifetime: %v", old, s)
			}
		}
		lowered.do(t, "DELETE", fmt.Sprintf("/api/users/me/sessions/%d", old), fresh.access, nil).expect(t, http.StatusNotFound)
	})
	t.Run("shorter than the idle limit", func(t *testing.T) {
		env := newTestEnv(t, limits(24*time.Hour, time.Hour))
		env.addUser(t, "bob", roleUser)
		p := env.loginPair(t, "bob")
		env.clock.Advance(time.Hour - time.Second)
		p = env.expectLive(t, p)
		env.clock.Advance(2 * time.Second)
		env.expectEnded(t, p)
	})
}

func TestLogout(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	env.addUser(t, "bob", roleUser)
	one, two := env.loginPair(t, "alice"), env.loginPair(t, "alice")
	bob := env.loginPair(t, "bob")

	env.do(t, "POST", "/api/auth/logout", "", nil).expect(t, http.StatusUnauthorized)
	env.do(t, "POST", "/api/auth/logout", one.access, nil).expect(t, http.StatusOK)
	env.expectEnded(t, one)
	env.do(t, "POST", "/api/auth/logout", one.access, nil).expect(t, http.StatusUnauthorized)
	two = env.expectLive(t, two)

	three := env.loginPair(t, "alice")
	env.do(t, "POST", "/api/auth/logout-all", "", nil).expect(t, http.StatusUnauthorized)
	env.do(t, "POST", "/api/auth/logout-all", two.access, nil).expect(t, http.StatusOK)
	env.expectEnded(t, two)
	env.expectEnded(t, three)
	if n := env.liveSessionCount(t, alice.ID); n != 0 {
		t.Errorf("%d live sessions after logout-all, want 0", n)
	}
	env.expectLive(t, bob)
	env.expectLive(t, env.loginPair(t, "alice")) // a new login is unaffected
}

// TestLogoutOfAnEndedSession: a logout authenticated while its session was live, whose
// session a logout-all, a revocation or a deletion ends before the logout's own write, still
// succeeds. The handler runs as requireAuth would have left it, after the session ended.
func TestLogoutOfAnEndedSession(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	admin := env.addUser(t, "root", roleAdmin)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	cases := []struct {
		name string
		end  func(u user, sessionID int64) error
	}{
		{"logout-all", func(u user, _ int64) error { return env.st.endAllSessions(context.Background(), u.ID) }},
		{"revoked", func(u user, sessionID int64) error {
			return env.st.endSession(context.Background(), u.ID, sessionID, auditSessionRevoked)
		}},
		{"deleted", func(u user, _ int64) error { return env.st.deleteUser(context.Background(), admin, u.ID) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			u := env.addUser(t, "user-"+c.name, roleUser)
			_, claims := tokenParts(t, env.tokenFor(t, u))
			if err := c.end(u, claims.Session); err != nil {
				t.Fatal(err)
			}
			req := httptest.NewRequest("POST", "/api/auth/logout", nil)
			state := &requestState{principal: principal{user: u, sessionID: claims.Session}}
			req = req.WithContext(context.WithValue(req.Context(), requestStateKey{}, state))
			w := httptest.NewRecorder()
			serveAPI(logger)(handleLogout(env.st)).ServeHTTP(w, req)
			if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "Logged out") {
				t.Errorf("logout of a session ended by %s: %d %s, want 200", c.name, w.Code, w.Body)
			}
		})
	}
}

func TestSessionList(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "alice", roleUser)
	env.addUser(t, "bob", roleUser)
	laptop := pairOf(t, env.loginWith(t, "alice", testPassword, http.Header{"User-Agent": {"laptop-browser/1.0"}}))
	env.clock.Advance(time.Minute)
	phone := pairOf(t, env.loginWith(t, "alice", testPassword, http.Header{"User-Agent": {"phone-app/2.0"}}))
	bob := env.loginPair(t, "bob")

	// byAgent indexes a session list by user agent.
	byAgent := func(list []map[string]any) map[string]map[string]any {
		m := map[string]map[string]any{}
		for _, s := range list {
			agent, _ := s["user_agent"].(string)
			m[agent] = s
		}
		return m
	}
	list := env.sessionList(t, laptop.access)
	if len(list) != 2 {
		t.Fatalf("%d sessions listed, want 2: %v", len(list), list)
	}
	for _, s := range list {
		for _, key := range []string{"id", "created_at", "last_used_at", "expires_at", "ip", "user_agent", "current"} {
			if _, ok := s[key]; !ok {
				t.Errorf("session %v has no %q", s, key)
			}
		}
		if s["ip"] != "127.0.0.1" {
			t.Errorf("session ip %v, want 127.0.0.1", s["ip"])
		}
		created, err1 := time.Parse(time.RFC3339, fmt.Sprint(s["created_at"]))
		expires, err2 := time.Parse(time.RFC3339, fmt.Sprint(s["expires_at"]))
		if err1 != nil || err2 != nil || expires.Sub(created) != env.cfg.refreshTTL {
			t.Errorf("session created %v, expires %v: want RFC 3339 times %v apart", s["created_at"], s["expires_at"], env.cfg.refreshTTL)
		}
	}
	fromLaptop := byAgent(list)
	if fromLaptop["laptop-browser/1.0"]["current"] != true || fromLaptop["phone-app/2.0"]["current"] != false {
		t.Errorf("seen from the laptop, current is wrong: %v", list)
	}
	fromPhone := byAgent(env.sessionList(t, phone.access))
	if fromPhone["laptop-browser/1.0"]["current"] != false || fromPhone["phone-app/2.0"]["current"] != true {
		t.Errorf("seen from the phone, current is wrong: %v", fromPhone)
	}
	phoneID := fmt.Sprint(fromPhone["phone-app/2.0"]["id"])
	bobID := fmt.Sprint(env.sessionList(t, bob.access)[0]["id"])

	cases := []struct {
		name   string
		id     string
		status int
	}{
		{"another user's session", bobID, http.StatusNotFound},
		{"unknown id", "999999", http.StatusNotFound},
		{"not a number", "abc", http.StatusBadRequest},
		{"zero", "0", http.StatusBadRequest},
		{"negative", "-1", http.StatusBadRequest},
		{"with a sign", "+" + phoneID, http.StatusBadRequest},
		{"with a leading zero", "0" + phoneID, http.StatusBadRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env.do(t, "DELETE", "/api/users/me/sessions/"+c.id, laptop.access, nil).expect(t, c.status)
		})
	}
	bob = env.expectLive(t, bob)

	env.do(t, "DELETE", "/api/users/me/sessions/"+phoneID, laptop.access, nil).expect(t, http.StatusOK)
	env.expectEnded(t, phone)
	if list := env.sessionList(t, laptop.access); len(list) != 1 || list[0]["user_agent"] != "laptop-browser/1.0" {
		t.Errorf("after revoking the phone, sessions listed: %v", list)
	}
	env.do(t, "DELETE", "/api/users/me/sessions/"+phoneID, laptop.access, nil).expect(t, http.StatusNotFound)
	env.expectLive(t, laptop)
}

func TestAccountChangesRevokeEverySession(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	admin := env.tokenFor(t, env.addUser(t, "admin", roleAdmin))
	patch := func(t *testing.T, u user, body any) {
		env.do(t, "PATCH", fmt.Sprint("/api/users/", u.ID), admin, body).expect(t, http.StatusOK)
	}
	cases := []struct {
		name   string
		change func(t *testing.T, u user)
	}{
		{"password reset", func(t *testing.T, u user) {
			r := env.do(t, "POST", "/api/auth/password-reset-request", "", map[string]string{"email": u.Email})
			token, _ := r.expect(t, http.StatusOK).json(t)["token"].(string)
			env.do(t, "POST", "/api/auth/reset-password/"+token, "", map[string]string{"new_password": "new-password-456"}).
				expect(t, http.StatusOK)
		}},
		// Activated again at once, so that only the revocation can refuse the old tokens.
		{"deactivation", func(t *testing.T, u user) {
			patch(t, u, map[string]bool{"is_active": false})
			patch(t, u, map[string]bool{"is_active": true})
		}},
		{"role change", func(t *testing.T, u user) { patch(t, u, map[string]string{"role": roleAdmin}) }},
		{"deletion", func(t *testing.T, u user) {
			env.do(t, "DELETE", fmt.Sprint("/api/users/", u.ID), admin, nil).expect(t, http.StatusOK)
		}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			u := env.addUser(t, fmt.Sprint("target", i), roleUser)
			sessions := []tokenPair{env.loginPair(t, u.Username), env.loginPair(t, u.Username)}
			c.change(t, u)
			for _, p := range sessions {
				env.expectEnded(t, p)
			}
			if n := env.liveSessionCount(t, u.ID); n != 0 {
				t.Errorf("%d live sessions left, want 0", n)
			}
		})
	}
}
