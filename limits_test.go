package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
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

func TestClientIP(t *testing.T) {
	t.Parallel()
	trusted, err := parseCIDRs("10.0.0.0/8, 2001:db8:1::/48")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name         string
		remoteAddr   string
		forwardedFor []string // one X-Forwarded-For header per element
		want         string
	}{
		{"no proxy", "198.51.100.7:4000", nil, "198.51.100.7"},
		{"untrusted peer: header ignored", "198.51.100.7:4000", []string{"203.0.113.1"}, "198.51.100.7"},
		{"trusted peer, one hop", "10.0.0.2:4000", []string{"203.0.113.1"}, "203.0.113.1"},
		{"trusted peer without header", "10.0.0.2:4000", nil, "10.0.0.2"},
		{"chain through a second trusted proxy", "10.0.0.2:4000", []string{"203.0.113.1, 10.0.0.3"}, "203.0.113.1"},
		{"spoofed left part ignored", "10.0.0.2:4000", []string{"192.0.2.66, 203.0.113.1"}, "203.0.113.1"},
		{"several headers form one chain", "10.0.0.2:4000", []string{"192.0.2.66", "203.0.113.1"}, "203.0.113.1"},
		{"garbage entry: nothing to its left believed", "10.0.0.2:4000", []string{"203.0.113.1, garbage"}, "10.0.0.2"},
		{"garbage behind a trusted hop", "10.0.0.2:4000", []string{"garbage, 10.0.0.3"}, "10.0.0.3"},
		{"garbage left of the client", "10.0.0.2:4000", []string{"garbage, 203.0.113.1"}, "203.0.113.1"},
		{"IPv6 peer, untrusted", "[2001:db8:2::5]:4000", []string{"203.0.113.1"}, "2001:db8:2::5"},
		{"IPv6 peer, trusted", "[2001:db8:1::5]:4000", []string{"2001:db8:3::9"}, "2001:db8:3::9"},
		{"IPv4-mapped IPv6 peer, untrusted", "[::ffff:198.51.100.7]:4000", []string{"203.0.113.1"}, "198.51.100.7"},
		{"IPv4-mapped IPv6 peer, trusted", "[::ffff:10.0.0.2]:4000", []string{"203.0.113.1"}, "203.0.113.1"},
		{"IPv4-mapped forwarded client", "10.0.0.2:4000", []string{"::ffff:203.0.113.1"}, "203.0.113.1"},
		{"zone of a forwarded client dropped", "10.0.0.2:4000", []string{"fe80::1%\xff"}, "fe80::1"},
		{"zone of the peer dropped", "[fe80::1%eth0]:4000", nil, "fe80::1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r.RemoteAddr = tc.remoteAddr
			for _, h := range tc.forwardedFor {
				r.Header.Add("X-Forwarded-For", h)
			}
			if got := clientIP(r, trusted); got != tc.want {
				t.Errorf("clientIP = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestClientNetwork(t *testing.T) {
	t.Parallel()
	for ip, want := range map[string]string{
		"198.51.100.7":            "198.51.100.7",
		"2001:db8:1:2::1":         "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::9":    "2001:db8:1:2::/64",
		"2001:db8:1:3::1":         "2001:db8:1:3::/64",
		"not an address (a test)": "not an address (a test)",
	} {
		if got := clientNetwork(ip); got != want {
			t.Errorf("clientNetwork(%q) = %q, want %q", ip, got, want)
		}
	}
}

func TestParseCIDRs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{"", nil, false},
		{"10.0.0.0/8", []string{"10.0.0.0/8"}, false},
		{" 10.0.0.0/8 , 192.168.1.1 ", []string{"10.0.0.0/8", "192.168.1.1/32"}, false},
		{"10.1.2.3/8", []string{"10.0.0.0/8"}, false},
		{"2001:db8::/32,::1", []string{"2001:db8::/32", "::1/128"}, false},
		{"garbage", nil, true},
		{"10.0.0.0/8, garbage", nil, true},
		{"10.0.0.0/33", nil, true},
		{"10.0.0.0/", nil, true},
		{"300.0.0.1", nil, true},
	}
	for _, tc := range tests {
		got, err := parseCIDRs(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("parseCIDRs(%q) error = %v, want error: %v", tc.in, err, tc.wantErr)
			continue
		}
		var gotStrings []string
		for _, p := range got {
			gotStrings = append(gotStrings, p.String())
		}
		if !tc.wantErr && !slices.Equal(gotStrings, tc.want) {
			t.Errorf("parseCIDRs(%q) = %v, want %v", tc.in, gotStrings, tc.want)
		}
	}
}

func TestResetMailCap(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	// request asks for a reset mail for alice and reports whether one went out: a token in
	// the reply (dummy mail mode), a new token row and a mail in the log, or none of them.
	request := func(t *testing.T) bool {
		t.Helper()
		before := env.resetTokenHash(t, alice.ID)
		mailsBefore := strings.Count(env.logs.String(), "msg=mail ")
		r := env.do(t, "POST", "/api/auth/password-reset-request", "", map[string]string{"email": alice.Email})
		body := r.expect(t, http.StatusOK).json(t)
		if body["message"] != resetRequestReply {
			t.Errorf("message = %v, want the usual reply", body["message"])
		}
		env.deliverMail(t)
		mailed := strings.Count(env.logs.String(), "msg=mail ") > mailsBefore
		token, sent := body["token"].(string)
		after := env.resetTokenHash(t, alice.ID)
		switch {
		case sent && (!mailed || after != fmt.Sprintf("%x", hashToken(token))):
			t.Errorf("reply has a token, but mail sent %v and stored token changed %v", mailed, after != before)
		case !sent && (mailed || after != before):
			t.Errorf("no token in the reply, but mail sent %v and stored token changed %v", mailed, after != before)
		}
		return sent
	}
	steps := []struct {
		advance time.Duration
		sent    bool
	}{
		{0, true},                 // 1st in the hour
		{30 * time.Second, false}, // within a minute of the last
		{31 * time.Second, true},  // 2nd, 61 s after the first
		{61 * time.Second, true},  // 3rd
		{61 * time.Second, true},  // 4th
		{61 * time.Second, true},  // 5th, at 244 s
		{61 * time.Second, false}, // 6th in the hour: capped although a minute has passed
		{30 * time.Minute, false}, // still within the hour of the first
		{25 * time.Minute, true},  // 3605 s: the first left the hour window
	}
	for i, s := range steps {
		env.clock.Advance(s.advance)
		if got := request(t); got != s.sent {
			t.Fatalf("step %d: mail sent %v, want %v", i+1, got, s.sent)
		}
	}
	// An unknown address gets the very same reply.
	r := env.do(t, "POST", "/api/auth/password-reset-request", "", map[string]string{"email": "nobody@example.com"})
	if got := r.expect(t, http.StatusOK).json(t); len(got) != 1 || got["message"] != resetRequestReply {
		t.Errorf("unknown address: reply %v, want only the usual message", got)
	}
}

// resetTokenHash returns the hex SHA-256 of the user's stored reset token ("" for none).
func (e *testEnv) resetTokenHash(t testing.TB, userID int64) string {
	t.Helper()
	var hash string
	err := e.st.pool.QueryRow(context.Background(),
		"SELECT COALESCE(string_agg(encode(token_hash, 'hex'), ','), '') FROM password_reset_tokens WHERE user_id = $1",
		userID).Scan(&hash)
	if err != nil {
		t.Fatal(err)
	}
	return hash
}

func TestHasherBusy(t *testing.T) {
	t.Parallel()
	h := newHasher(4, 1)
	held, release, done := make(chan struct{}), make(chan struct{}), make(chan error)
	go func() {
		done <- h.withSlot(context.Background(), nil, func() error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held

	_, err := h.hash(context.Background(), testPassword)
	if !errors.Is(err, errBusy) {
		t.Fatalf("hash with the only slot held: err = %v, want errBusy", err)
	}
	// A login turned away as busy is not admitted: it does not count towards a lockout.
	admitted := 0
	admit := func() error { admitted++; return nil }
	if _, _, err := h.check(context.Background(), "$2a$04$", testPassword, "", admit); !errors.Is(err, errBusy) || admitted != 0 {
		t.Fatalf("check with the only slot held: err = %v, admitted %d times; want errBusy, never admitted", err, admitted)
	}
	w := httptest.NewRecorder()
	writeError(w, httptest.NewRequest("POST", "/api/auth/login", nil), slog.New(slog.NewTextHandler(io.Discard, nil)), err)
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Errorf("busy error answered %d with Retry-After %q, want 503 with Retry-After", w.Code, w.Header().Get("Retry-After"))
	}
	// A request that gives up waiting gets its own error, not errBusy.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.hash(ctx, testPassword); !errors.Is(err, context.Canceled) {
		t.Errorf("hash with a cancelled context: err = %v, want context.Canceled", err)
	}

	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	hash, err := h.hash(context.Background(), testPassword)
	if err != nil {
		t.Fatalf("hash once the slot is free: %v", err)
	}
	if ok, _, err := h.check(context.Background(), hash, testPassword, "", admit); !ok || err != nil || admitted != 1 {
		t.Errorf("check = %v, %v, admitted %d times; want true, admitted once", ok, err, admitted)
	}
	refused := errors.New("locked out")
	if ok, _, err := h.check(context.Background(), hash, testPassword, "", func() error { return refused }); ok || err != refused {
		t.Errorf("check refused by admit = %v, %v; want false and admit's error", ok, err)
	}
}

// TestLoginFloodGets503 floods a server with one bcrypt slot with logins: those that cannot
// get the slot within 2 s get 503, and authenticated requests, which need no bcrypt, go on.
// The flood is sized from a measured hash so that it outlasts the 2 s wait several times over.
func TestLoginFloodGets503(t *testing.T) {
	t.Parallel()
	const cost = 10
	env := newTestEnv(t, func(cfg *config) {
		cfg.bcryptConcurrency, cfg.bcryptCost, cfg.loginMaxFailures = 1, cost, 1000
	})
	start := time.Now()
	alice := env.addUser(t, "alice", roleUser) // one hash at the server's cost
	perHash := max(time.Since(start), time.Millisecond)
	n := min(128, 3*int(bcryptWait/perHash)+4)
	token := env.tokenFor(t, alice)

	// The logins run outside the test goroutine, so they report errors instead of failing.
	statuses := make(chan response, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			body := `{"username": "alice", "password": "` + testPassword + `"}`
			resp, err := http.Post(env.server.URL+"/api/auth/login", "application/json", strings.NewReader(body))
			if err != nil {
				t.Errorf("login: %v", err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses <- response{status: resp.StatusCode, header: resp.Header}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	meanwhile := 0
	for flooding := true; flooding; {
		env.do(t, "GET", "/api/users/me", token, nil).expect(t, http.StatusOK)
		meanwhile++
		select {
		case <-done:
			flooding = false
		case <-time.After(100 * time.Millisecond):
		}
	}
	close(statuses)

	counts := map[int]int{}
	for r := range statuses {
		counts[r.status]++
		if r.status == http.StatusServiceUnavailable {
			if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s <= 0 {
				t.Errorf("503 with Retry-After %q, want a number of seconds", r.header.Get("Retry-After"))
			}
		}
	}
	t.Logf("%d logins (one hash took %v): %v; %d requests to /api/users/me meanwhile", n, perHash, counts, meanwhile)
	if counts[http.StatusOK]+counts[http.StatusServiceUnavailable] != n {
		t.Errorf("statuses %v, want only 200 and 503", counts)
	}
	if counts[http.StatusServiceUnavailable] == 0 {
		t.Errorf("no login got 503 although %d competed for one bcrypt slot", n)
	}
	if counts[http.StatusOK] == 0 {
		t.Errorf("no login succeeded")
	}
}
