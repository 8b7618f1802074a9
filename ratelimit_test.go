package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Tests of the per-address limit on the authentication endpoints, the client address behind
// it (TRUSTED_PROXIES), the reset-mail cap and the bcrypt limiter.

// withAuthLimit turns the per-address limit on: 30 requests a minute (one token every 2 s),
// bursts of 10.
func withAuthLimit(cfg *config) {
	cfg.authRateLimit, cfg.authRateBurst = 30, 10
}

// badLogin sends a failing login for a username of its own (n), so that the per-account
// lockout never kicks in, from the given X-Forwarded-For ("" for none).
func (e *testEnv) badLogin(t testing.TB, n int, forwardedFor string) response {
	t.Helper()
	header := http.Header{}
	if forwardedFor != "" {
		header.Set("X-Forwarded-For", forwardedFor)
	}
	return e.loginWith(t, fmt.Sprintf("nobody%d", n), "wrong-password", header)
}

// expectLimited checks a refusal by the per-address limit: 429, Retry-After of the 2 s a token
// takes to come back, and a JSON message.
func expectLimited(t testing.TB, r response) {
	t.Helper()
	r.expect(t, http.StatusTooManyRequests)
	if got := r.header.Get("Retry-After"); got != "2" {
		t.Errorf("Retry-After = %q, want 2 (one token every 2 s)", got)
	}
	if msg := r.message(t); !strings.Contains(msg, "Too many requests") {
		t.Errorf("message = %q, want the limit's", msg)
	}
}

func TestAuthRateLimitBucket(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, withAuthLimit)
	token := env.tokenFor(t, env.addUser(t, "alice", roleUser))
	for i := range 10 {
		env.badLogin(t, i, "").expect(t, http.StatusUnauthorized)
	}
	expectLimited(t, env.badLogin(t, 10, ""))
	// Authenticated endpoints are not behind the limit.
	for range 3 {
		env.do(t, "GET", "/api/users/me", token, nil).expect(t, http.StatusOK)
	}

	env.clock.Advance(2 * time.Second) // one token back
	env.badLogin(t, 11, "").expect(t, http.StatusUnauthorized)
	expectLimited(t, env.badLogin(t, 12, ""))

	env.clock.Advance(time.Minute) // refilled up to the burst, not beyond
	for i := range 10 {
		env.badLogin(t, 20+i, "").expect(t, http.StatusUnauthorized)
	}
	expectLimited(t, env.badLogin(t, 30, ""))
}

func TestAuthRateLimitSharedByAuthEndpoints(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, withAuthLimit)
	token := env.tokenFor(t, env.addUser(t, "alice", roleUser))
	endpoints := []struct {
		path   string
		body   string
		status int // when not limited
	}{
		{"/api/auth/register", `{}`, http.StatusBadRequest},
		{"/api/auth/login", `{"username": "nobody", "password": "wrong-password"}`, http.StatusUnauthorized},
		{"/api/auth/refresh", `{"refresh_token": "not-a-token"}`, http.StatusUnauthorized},
		{"/api/auth/password-reset-request", `{"email": "nobody@example.com"}`, http.StatusOK},
		{"/api/auth/reset-password/not-a-token", `{"new_password": "new-password-1"}`, http.StatusBadRequest},
	}
	// Two rounds over the five endpoints spend the burst of ten...
	for range 2 {
		for _, ep := range endpoints {
			env.do(t, "POST", ep.path, "", ep.body).expect(t, ep.status)
		}
	}
	// ...after which every one of them is refused.
	for _, ep := range endpoints {
		t.Run(strings.TrimPrefix(ep.path, "/api/auth/"), func(t *testing.T) {
			expectLimited(t, env.do(t, "POST", ep.path, "", ep.body))
		})
	}
	for _, path := range []string{"/api/users/me", "/api/users/me/sessions"} {
		env.do(t, "GET", path, token, nil).expect(t, http.StatusOK)
	}
	env.do(t, "POST", "/api/auth/logout", token, nil).expect(t, http.StatusOK)
}

func TestAuthRateLimitZeroDisables(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(cfg *config) { cfg.authRateLimit = 0 })
	for i := range 50 {
		env.badLogin(t, i, "").expect(t, http.StatusUnauthorized)
	}
}

func TestAuthRateLimitAcrossInstances(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, withAuthLimit)
	other := env.anotherInstance(t, env.cfg)
	for i := range 5 {
		env.badLogin(t, i, "").expect(t, http.StatusUnauthorized)
		other.badLogin(t, 100+i, "").expect(t, http.StatusUnauthorized)
	}
	expectLimited(t, other.badLogin(t, 10, ""))
	expectLimited(t, env.badLogin(t, 11, ""))
	env.clock.Advance(2 * time.Second)
	other.badLogin(t, 12, "").expect(t, http.StatusUnauthorized)
	expectLimited(t, env.badLogin(t, 13, ""))
}

func TestAuthRateLimitForwardedFor(t *testing.T) {
	t.Parallel()
	t.Run("untrusted peer: X-Forwarded-For is ignored", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t, withAuthLimit)
		for i := range 10 {
			env.badLogin(t, i, fmt.Sprintf("203.0.113.%d", i+1)).expect(t, http.StatusUnauthorized)
		}
		expectLimited(t, env.badLogin(t, 10, "203.0.113.99"))
		expectLimited(t, env.badLogin(t, 11, ""))
	})
	t.Run("trusted proxy: one bucket per forwarded client", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t, withAuthLimit, func(cfg *config) {
			var err error
			if cfg.trustedProxies, err = parseCIDRs("127.0.0.1/32"); err != nil {
				t.Fatal(err)
			}
		})
		for i := range 10 {
			env.badLogin(t, i, "203.0.113.1").expect(t, http.StatusUnauthorized)
		}
		expectLimited(t, env.badLogin(t, 10, "203.0.113.1"))
		// A client cannot dodge its bucket by prepending an address of its choice.
		expectLimited(t, env.badLogin(t, 11, "198.51.100.1, 203.0.113.1"))
		env.badLogin(t, 12, "203.0.113.2").expect(t, http.StatusUnauthorized)
		env.badLogin(t, 13, "").expect(t, http.StatusUnauthorized) // the proxy itself
	})
}
