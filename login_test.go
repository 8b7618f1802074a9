package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// Login and password change under concurrency and odd input.

func TestLoginOddInput(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "alice", roleUser)
	long := strings.Repeat("a", 3000)
	env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": long, "password": testPassword}).
		expect(t, http.StatusBadRequest)

	// bcrypt reads 72 bytes: a longer password must not pass for one that shares them.
	env.addUser(t, "bob", roleUser)
	password72 := strings.Repeat("p", 72)
	if _, err := env.st.pool.Exec(context.Background(), "UPDATE users SET password_hash = $2 WHERE username = $1",
		"bob", mustHash(t, password72)); err != nil {
		t.Fatal(err)
	}
	env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "bob", "password": password72 + "x"}).
		expect(t, http.StatusUnauthorized)
	env.login(t, "bob", password72)

	// A user agent that is not valid UTF-8, or long, is stored mended, not refused.
	for _, agent := range []string{"curl/\xff\xfe", strings.Repeat("é", 400)} {
		req, err := http.NewRequest("POST", env.server.URL+"/api/auth/login",
			strings.NewReader(`{"username": "alice", "password": "`+testPassword+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", agent)
		send(t, req).expect(t, http.StatusOK)
	}
}

func mustHash(t *testing.T, password string) string {
	t.Helper()
	hash, err := newHasher(4, 1).hash(context.Background(), password)
	if err != nil {
		t.Fatal(err)
	}
	return hash
}

// TestStaleLoginsAndChangesLose: a login whose password was checked against a hash replaced
// meanwhile gets no session, and a password change authenticated before a reset does not
// undo the reset.
func TestStaleLoginsAndChangesLose(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	ctx := context.Background()
	alice := env.addUser(t, "alice", roleUser) // as read before the change below
	token := env.tokenFor(t, alice)
	var session int64
	if err := env.st.pool.QueryRow(ctx, "SELECT max(id) FROM sessions").Scan(&session); err != nil {
		t.Fatal(err)
	}
	if _, err := env.st.pool.Exec(ctx, "UPDATE users SET password_hash = $2, token_version = token_version + 1 WHERE id = $1",
		alice.ID, mustHash(t, "reset-password")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := env.st.startSession(ctx, alice, "user:1", "", env.cfg.refreshTTL); !errors.Is(err, errUnauthorized) {
		t.Errorf("session for a login checked against the old hash: %v, want unauthorized", err)
	}
	if _, _, err := env.st.changePassword(ctx, alice, mustHash(t, "attacker-password"), session); !errors.Is(err, errUnauthorized) {
		t.Errorf("password change authenticated before the reset: %v, want unauthorized", err)
	}
	env.do(t, "GET", "/api/users/me", token, nil).expect(t, http.StatusUnauthorized)
	env.login(t, "alice", "reset-password")
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
