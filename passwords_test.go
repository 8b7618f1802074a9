package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestAuthPasswordResetRequest(t *testing.T) {
	t.Parallel()
	t.Run("dummy", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t)
		env.addUser(t, "alice", roleUser)
		for _, email := range []string{"alice@example.com", "ALICE@example.com"} {
			token := resetTokenFor(t, env, email)
			if raw, err := base64.RawURLEncoding.DecodeString(token); err != nil || len(raw) != 32 {
				t.Errorf("token %q is not 256 bits in base64url (%v)", token, err)
			}
		}
		for _, email := range []string{"nobody@example.com", "alice@example.org"} {
			if body := requestReset(t, env, email); len(body) != 1 {
				t.Errorf("reply for unknown %s = %v, want only the message", email, body)
			}
		}
	})
	t.Run("log backend", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t, func(c *config) { c.mail.backend = mailLog })
		env.addUser(t, "alice", roleUser)
		for _, email := range []string{"alice@example.com", "nobody@example.com"} {
			if body := requestReset(t, env, email); len(body) != 1 {
				t.Errorf("MAIL_BACKEND=log: reply for %s = %v, want only the message", email, body)
			}
		}
	})
}

func TestAuthPasswordReset(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	before := []string{env.tokenFor(t, alice), env.login(t, "alice", testPassword)}

	token := resetTokenFor(t, env, "alice@example.com")
	r := postReset(t, env, token, "short").expect(t, http.StatusBadRequest)
	if got := errorFields(t, r); !slices.Equal(got, []string{"new_password"}) {
		t.Errorf("short new password: errors keys = %v, want [new_password]", got)
	}
	r = postReset(t, env, token, "brand-new-password").expect(t, http.StatusOK)
	if msg := r.message(t); msg != "Password reset successful" {
		t.Errorf("message = %q, want %q", msg, "Password reset successful")
	}
	env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "alice", "password": testPassword}).
		expect(t, http.StatusUnauthorized)
	env.login(t, "alice", "brand-new-password")
	// The reset revoked every access token issued before it.
	for _, old := range before {
		env.do(t, "GET", "/api/users/me", old, nil).expect(t, http.StatusUnauthorized)
	}

	// A token works once.
	postReset(t, env, token, "another-password").expect(t, http.StatusBadRequest)
	env.login(t, "alice", "brand-new-password")
}

func TestAuthPasswordResetTokenRules(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "alice", roleUser)

	t.Run("newer request invalidates older", func(t *testing.T) {
		older := resetTokenFor(t, env, "alice@example.com")
		newer := resetTokenFor(t, env, "alice@example.com")
		postReset(t, env, older, "password-one").expect(t, http.StatusBadRequest)
		postReset(t, env, newer, "password-two").expect(t, http.StatusOK)
		env.login(t, "alice", "password-two")
	})
	t.Run("malformed or unknown token", func(t *testing.T) {
		for _, token := range []string{"x", "not-a-token", randomToken(), strings.Repeat("A", 43), strings.Repeat("A", 2000), "%20", "a%2Fb"} {
			r := postReset(t, env, token, "password-three")
			if r.status != http.StatusBadRequest {
				t.Errorf("token %q: status %d, want 400; body: %s", token, r.status, r.body)
			}
		}
		env.login(t, "alice", "password-two")
	})
	t.Run("stored only as a hash", func(t *testing.T) {
		token := resetTokenFor(t, env, "alice@example.com")
		raw, _ := base64.RawURLEncoding.DecodeString(token)
		rows, err := env.st.pool.Query(context.Background(), "SELECT * FROM password_reset_tokens")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		n := 0
		for rows.Next() {
			n++
			values, err := rows.Values()
			if err != nil {
				t.Fatal(err)
			}
			for i, v := range values {
				text := fmt.Sprint(v)
				if b, ok := v.([]byte); ok {
					text = string(b)
				}
				if strings.Contains(text, token) || text == string(raw) {
					t.Errorf("column %s holds the plaintext token", rows.FieldDescriptions()[i].Name)
				}
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Error("no row in password_reset_tokens after a reset request")
		}
	})
	t.Run("expires", func(t *testing.T) {
		token := resetTokenFor(t, env, "alice@example.com")
		env.clock.Advance(env.cfg.resetTTL + time.Second)
		postReset(t, env, token, "password-four").expect(t, http.StatusBadRequest)
		env.login(t, "alice", "password-two")

		token = resetTokenFor(t, env, "alice@example.com")
		env.clock.Advance(env.cfg.resetTTL - time.Second)
		postReset(t, env, token, "password-five").expect(t, http.StatusOK)
		env.login(t, "alice", "password-five")
	})
}

// TestAuthPasswordResetVoidedByAccountChanges: a reset link stops working once the account
// moves to another email address (the old mailbox may be why) or is deactivated; other
// changes leave it alone.
func TestAuthPasswordResetVoidedByAccountChanges(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	root := env.addUser(t, "root", roleAdmin)
	alice := env.addUser(t, "alice", roleUser)
	rootToken := env.tokenFor(t, root)
	patch := func(body map[string]any) {
		t.Helper()
		env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", alice.ID), rootToken, body).expect(t, http.StatusOK)
	}
	requestReset := func(email string) string {
		t.Helper()
		env.clock.Advance(2 * time.Minute) // past the one-mail-a-minute cap
		return resetTokenFor(t, env, email)
	}

	token := requestReset("alice@example.com")
	patch(map[string]any{"email": "alice-new@example.com"})
	postReset(t, env, token, "password-one").expect(t, http.StatusBadRequest)

	token = requestReset("alice-new@example.com")
	patch(map[string]any{"is_active": false})
	patch(map[string]any{"is_active": true})
	postReset(t, env, token, "password-two").expect(t, http.StatusBadRequest)
	env.login(t, "alice", testPassword)

	token = requestReset("alice-new@example.com")
	patch(map[string]any{"first_name": "Alicia", "role": "Admin"})
	postReset(t, env, token, "password-three").expect(t, http.StatusOK)
	env.login(t, "alice", "password-three")
}

func TestAuthChangePassword(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "alice", roleUser)
	old := env.login(t, "alice", testPassword)
	change := func(token string, body any) response {
		return env.do(t, "POST", "/api/auth/change-password", token, body)
	}

	r := change(old, map[string]string{"current_password": "wrong-password", "new_password": "new-password-1"})
	r.expect(t, http.StatusBadRequest)
	if msg := r.message(t); msg != "Current password is incorrect" {
		t.Errorf("wrong current password: message = %q, want %q", msg, "Current password is incorrect")
	}

	for _, tt := range []struct {
		name string
		body map[string]string
		want []string
	}{
		{"new too short", map[string]string{"current_password": testPassword, "new_password": "1234567"}, []string{"new_password"}},
		{"new over 72 bytes", map[string]string{"current_password": testPassword, "new_password": strings.Repeat("p", 73)}, []string{"new_password"}},
		{"new missing", map[string]string{"current_password": testPassword}, []string{"new_password"}},
		{"current missing", map[string]string{"new_password": "new-password-1"}, []string{"current_password"}},
		{"both missing", map[string]string{}, []string{"current_password", "new_password"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := change(old, tt.body).expect(t, http.StatusBadRequest)
			if got := errorFields(t, r); !slices.Equal(got, tt.want) {
				t.Errorf("errors keys = %v, want %v; body: %s", got, tt.want, r.body)
			}
		})
	}

	for _, token := range []string{"", "garbage"} {
		r := change(token, map[string]string{"current_password": testPassword, "new_password": "new-password-1"})
		r.expect(t, http.StatusUnauthorized)
	}
	// None of the refusals changed anything.
	env.do(t, "GET", "/api/users/me", old, nil).expect(t, http.StatusOK)

	r = change(old, map[string]string{"current_password": testPassword, "new_password": "new-password-1"}).expect(t, http.StatusOK)
	body := r.json(t)
	fresh, _ := body["access_token"].(string)
	if body["message"] != "Password changed successfully" || fresh == "" {
		t.Fatalf("body = %s, want the message and an access_token", r.body)
	}
	env.do(t, "GET", "/api/users/me", fresh, nil).expect(t, http.StatusOK)
	env.do(t, "GET", "/api/users/me", old, nil).expect(t, http.StatusUnauthorized)
	change(old, map[string]string{"current_password": "new-password-1", "new_password": "new-password-2"}).
		expect(t, http.StatusUnauthorized)
	env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "alice", "password": testPassword}).
		expect(t, http.StatusUnauthorized)
	env.login(t, "alice", "new-password-1")
}

func TestChangePasswordKeepsOnlyTheCurrentSession(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	current, other := env.loginPair(t, "alice"), env.loginPair(t, "alice")

	r := env.do(t, "POST", "/api/auth/change-password", current.access,
		map[string]string{"current_password": testPassword, "new_password": "new-password-456"})
	kept := pairOf(t, r)
	env.do(t, "GET", "/api/users/me", current.access, nil).expect(t, http.StatusUnauthorized)
	// The session goes on with the reply's refresh token; the one issued before is retired.
	env.refresh(t, current.refresh).expect(t, http.StatusUnauthorized)
	env.expectLive(t, kept)
	env.expectEnded(t, other)
	if n := env.liveSessionCount(t, alice.ID); n != 1 {
		t.Errorf("%d live sessions after change-password, want 1", n)
	}
	pairOf(t, env.loginWith(t, "alice", "new-password-456", nil))
}

// TestChangePasswordEndsAForkedChain: a thief who replayed a refresh token within the reuse
// interval holds a chain of their own in the owner's session; a password change in that
// session ends it, now and after the interval, and leaves the owner's session live.
func TestChangePasswordEndsAForkedChain(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "alice", roleUser)
	first := env.loginPair(t, "alice")
	owner := pairOf(t, env.refresh(t, first.refresh))
	thief := pairOf(t, env.refresh(t, first.refresh)) // a replay within the interval: a fork

	r := env.do(t, "POST", "/api/auth/change-password", owner.access,
		map[string]string{"current_password": testPassword, "new_password": "new-password-456"})
	kept := pairOf(t, r)
	for _, stale := range []string{thief.refresh, owner.refresh, first.refresh} {
		env.refresh(t, stale).expect(t, http.StatusUnauthorized)
	}
	env.clock.Advance(2 * env.cfg.refreshReuseInterval)
	env.refresh(t, thief.refresh).expect(t, http.StatusUnauthorized)
	env.do(t, "GET", "/api/users/me", thief.access, nil).expect(t, http.StatusUnauthorized)
	env.expectLive(t, kept) // the thief's tries did not end the owner's session
}
