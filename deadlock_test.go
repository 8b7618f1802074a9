package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// Requests whose transactions lock the same rows, racing each other: each must lock them in
// the one order the store uses (a user, then their reset or verification tokens; refresh
// tokens, then their session), or PostgreSQL breaks a deadlock by failing one of them.

// expectNoDeadlock fails the test if a reply is a 5xx or the log records a deadlock.
func expectNoDeadlock(t *testing.T, env *testEnv, replies map[string]response) {
	t.Helper()
	for name, r := range replies {
		if r.status >= 500 {
			t.Errorf("%s: %d %s", name, r.status, r.body)
		}
	}
	if logs := env.logs.String(); strings.Contains(logs, "40P01") {
		t.Fatalf("the log records a deadlock:\n%s", logs)
	}
}

// TestResetRacesOtherPasswordWrites: a reset computes its hash (cost 11 here, a tenth of a
// second or more) while a new reset request or a password change for the same user comes in.
// Either may win; neither may fail with a deadlock.
func TestResetRacesOtherPasswordWrites(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.bcryptCost = 11 })
	alice := env.addUser(t, "alice", roleUser)
	cases := []struct {
		name      string
		other     func(access string) response
		passwords []string // one of these is alice's password afterwards
	}{
		{"reset request", func(string) response {
			return env.do(t, "POST", "/api/auth/password-reset-request", "", map[string]string{"email": "alice@example.com"})
		}, []string{"new-password-1", testPassword}},
		{"change password", func(access string) response {
			return env.do(t, "POST", "/api/auth/change-password", access,
				map[string]string{"current_password": testPassword, "new_password": "new-password-2"})
		}, []string{"new-password-1", "new-password-2"}},
	}
	for _, c := range cases {
		if _, err := env.st.pool.Exec(context.Background(), "UPDATE users SET password_hash = $2 WHERE id = $1",
			alice.ID, mustHash(t, testPassword)); err != nil {
			t.Fatal(err)
		}
		access := env.tokenFor(t, reload(t, env, alice))
		env.clock.Advance(2 * time.Minute) // past the one-mail-a-minute cap
		token := resetTokenFor(t, env, "alice@example.com")
		env.clock.Advance(2 * time.Minute)
		var reset, other response
		var wg sync.WaitGroup
		wg.Go(func() { reset = postReset(t, env, token, "new-password-1") })
		wg.Go(func() {
			time.Sleep(30 * time.Millisecond) // while the reset computes its hash
			other = c.other(access)
		})
		wg.Wait()
		expectNoDeadlock(t, env, map[string]response{"reset": reset, c.name: other})
		loggedIn := false
		for _, password := range c.passwords {
			r := env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "alice", "password": password})
			loggedIn = loggedIn || r.status == http.StatusOK
		}
		if !loggedIn {
			t.Errorf("after a reset and a %s at once, none of %q logs in", c.name, c.passwords)
		}
	}
}

// TestRefreshRacesDeletion: chains of refreshes (each presenting the token the one before
// returned) in every session of a user, racing an admin deleting the user.
func TestRefreshRacesDeletion(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	admin := env.addUser(t, "root", roleAdmin)
	for i := range 30 {
		adminToken := env.tokenFor(t, admin)
		u := env.addUser(t, fmt.Sprintf("user%d", i), roleUser)
		replies := map[string]response{}
		var mu sync.Mutex
		record := func(name string, r response) { mu.Lock(); replies[name] = r; mu.Unlock() }
		var wg sync.WaitGroup
		for j := range 4 {
			_, token, err := env.st.startSession(context.Background(), u, u.Username, "", amrPassword)
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				for n := range 50 {
					r := env.refresh(t, token)
					if r.status != http.StatusOK { // the user is gone: the chain ends
						record(fmt.Sprintf("refresh %d of session %d", n, j), r)
						return
					}
					token, _ = r.json(t)["refresh_token"].(string)
				}
			})
		}
		wg.Go(func() { record("delete", env.do(t, "DELETE", fmt.Sprintf("/api/users/%d", u.ID), adminToken, nil)) })
		wg.Wait()
		expectNoDeadlock(t, env, replies)
		if replies["delete"].status != http.StatusOK {
			t.Fatalf("delete: %d %s", replies["delete"].status, replies["delete"].body)
		}
	}
}

// TestVerifyRacesResend: a verification racing a request for a new verification mail.
func TestVerifyRacesResend(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	for i := range 30 {
		email := fmt.Sprintf("user%d@example.com", i)
		env.do(t, "POST", "/api/auth/register", "", map[string]string{
			"username": fmt.Sprintf("user%d", i), "first_name": "F", "last_name": "L", "email": email, "password": testPassword,
		}).expect(t, http.StatusCreated)
		token := verificationToken(t, env, email)
		env.clock.Advance(time.Minute + time.Second) // past the one-mail-a-minute cap
		var verify, resend response
		var wg sync.WaitGroup
		wg.Go(func() { verify = verifyWith(t, env, token) })
		wg.Go(func() {
			resend = env.do(t, "POST", "/api/auth/resend-verification", "", map[string]string{"email": email})
		})
		wg.Wait()
		expectNoDeadlock(t, env, map[string]response{"verify": verify, "resend": resend})
	}
}
