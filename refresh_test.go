package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"
)

// Tests of refresh-token rotation: the chain a login starts, reuse detection, refusals, and
// concurrent refreshes of one token.

func TestLoginOpensSessionAndRefreshRotates(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)

	r := env.loginWith(t, "alice", testPassword, nil)
	first := pairOf(t, r)
	m := r.json(t)
	if m["token_type"] != "Bearer" || m["expires_in"] != env.cfg.accessTTL.Seconds() {
		t.Errorf("token_type %v, expires_in %v; want Bearer, %v", m["token_type"], m["expires_in"], env.cfg.accessTTL.Seconds())
	}
	if len(first.refresh) != 43 {
		t.Errorf("refresh token %q has %d characters, want 43 (256 bits, base64url)", first.refresh, len(first.refresh))
	}
	if n := env.liveSessionCount(t, alice.ID); n != 1 {
		t.Fatalf("%d live sessions after one login, want 1", n)
	}
	if n := env.sqlCount(t, "SELECT count(*) FROM refresh_tokens WHERE token_hash = $1", hashToken(first.refresh)); n != 1 {
		t.Errorf("%d refresh_tokens rows hold the token's hash, want 1", n)
	}

	// Past the access token's lifetime, but well within the refresh token's.
	env.clock.Advance(env.cfg.accessTTL + time.Minute)
	env.do(t, "GET", "/api/users/me", first.access, nil).expect(t, http.StatusUnauthorized)
	second := pairOf(t, env.refresh(t, first.refresh))
	if second.access == first.access || second.refresh == first.refresh {
		t.Fatalf("refresh returned an old token: %+v then %+v", first, second)
	}
	_, before := tokenParts(t, first.access)
	_, after := tokenParts(t, second.access)
	if after.Session != before.Session {
		t.Errorf("refresh moved to session %d, want the login's session %d", after.Session, before.Session)
	}
	me := env.do(t, "GET", "/api/users/me", second.access, nil).expect(t, http.StatusOK).json(t)
	if me["username"] != "alice" {
		t.Errorf("the refreshed access token is of %v, want alice", me["username"])
	}
	env.expectLive(t, second)
}

func TestRefreshTokenReuse(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	elsewhere := env.loginPair(t, "alice")
	first := env.loginPair(t, "alice")
	_, claims := tokenParts(t, first.access)
	sid := claims.Session
	second := pairOf(t, env.refresh(t, first.refresh)) // rotates first.refresh out
	reuses := func() int {
		return env.sqlCount(t, "SELECT count(*) FROM audit_log WHERE action = 'refresh_token_reused' AND target_id = $1", alice.ID)
	}

	// Within the interval, a retried or concurrent refresh gets a pair for the same session.
	env.clock.Advance(env.cfg.refreshReuseInterval - time.Second)
	retried := pairOf(t, env.refresh(t, first.refresh))
	for _, p := range []tokenPair{second, retried} {
		if _, c := tokenParts(t, p.access); c.Session != sid {
			t.Errorf("pair for session %d, want %d", c.Session, sid)
		}
		env.do(t, "GET", "/api/users/me", p.access, nil).expect(t, http.StatusOK)
	}
	if list := env.sessionList(t, retried.access); len(list) != 2 { // this session and elsewhere
		t.Errorf("%d sessions listed, want 2: %v", len(list), list)
	}
	if n := env.liveSessionCount(t, alice.ID); n != 2 {
		t.Errorf("%d live sessions after a refresh within the interval, want 2", n)
	}
	if n := reuses(); n != 0 {
		t.Errorf("%d refresh_token_reused audit rows within the interval, want 0", n)
	}

	// Past the interval, the rotated token is taken as stolen: its whole session ends.
	env.clock.Advance(2 * time.Second)
	env.refresh(t, first.refresh).expect(t, http.StatusUnauthorized)
	for _, p := range []tokenPair{first, second, retried} {
		env.expectEnded(t, p)
	}
	if n := reuses(); n != 1 {
		t.Errorf("%d refresh_token_reused audit rows, want 1", n)
	}
	n := env.sqlCount(t, `SELECT count(*) FROM audit_log WHERE action = 'refresh_token_reused'
		AND ip = '127.0.0.1' AND (details->>'session_id')::bigint = $1`, sid)
	if n != 1 {
		t.Errorf("the reuse audit row does not name session %d and the client address", sid)
	}
	env.expectLive(t, elsewhere) // the user's other session is not touched
}

func TestRefreshRejects(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "alice", roleUser)
	p := env.loginPair(t, "alice")
	cases := []struct {
		name   string
		body   any
		status int
	}{
		{"unknown token", map[string]string{"refresh_token": randomToken()}, http.StatusUnauthorized},
		{"garbage", map[string]string{"refresh_token": "not a token"}, http.StatusUnauthorized},
		{"access token", map[string]string{"refresh_token": p.access}, http.StatusUnauthorized},
		{"empty", map[string]string{"refresh_token": ""}, http.StatusBadRequest},
		{"missing field", map[string]string{}, http.StatusBadRequest},
		{"not JSON", "refresh please", http.StatusBadRequest},
		{"wrong type", map[string]int{"refresh_token": 7}, http.StatusBadRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env.do(t, "POST", "/api/auth/refresh", "", c.body).expect(t, c.status)
		})
	}
	t.Run("expired", func(t *testing.T) {
		early, late := env.loginPair(t, "alice"), env.loginPair(t, "alice")
		env.clock.Advance(env.cfg.refreshTTL - time.Second)
		pairOf(t, env.refresh(t, early.refresh))
		env.clock.Advance(2 * time.Second)
		env.refresh(t, late.refresh).expect(t, http.StatusUnauthorized)
	})
}

// refreshTogether presents one refresh token in n requests sent at the same moment.
func refreshTogether(t *testing.T, e *testEnv, token string, n int) []response {
	t.Helper()
	raw, err := json.Marshal(map[string]string{"refresh_token": token})
	if err != nil {
		t.Fatal(err)
	}
	replies, errs := make([]response, n), make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := http.Post(e.server.URL+"/api/auth/refresh", "application/json", bytes.NewReader(raw))
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			replies[i], errs[i] = response{status: resp.StatusCode, header: resp.Header, body: body}, err
		}()
	}
	close(start)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return replies
}

func TestConcurrentRefreshesKeepTheSession(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	p := env.loginPair(t, "alice")
	for round := range 6 {
		replies := refreshTogether(t, env, p.refresh, 2)
		var pairs []tokenPair
		for _, r := range replies {
			pairs = append(pairs, pairOf(t, r))
		}
		for _, q := range pairs {
			env.do(t, "GET", "/api/users/me", q.access, nil).expect(t, http.StatusOK)
		}
		if pairs[0].refresh == pairs[1].refresh {
			t.Fatalf("round %d: both replies carry the same refresh token", round)
		}
		// Either new refresh token goes on working; the first one carries the next round.
		next := pairOf(t, env.refresh(t, pairs[0].refresh))
		env.expectLive(t, pairs[1])
		p = next
		env.clock.Advance(time.Second)
	}
	if n := env.liveSessionCount(t, alice.ID); n != 1 {
		t.Errorf("%d live sessions, want 1", n)
	}
	if n := env.sqlCount(t, "SELECT count(*) FROM audit_log WHERE action = 'refresh_token_reused'"); n != 0 {
		t.Errorf("%d refresh_token_reused audit rows after concurrent refreshes, want 0", n)
	}
	env.expectLive(t, p)
}
