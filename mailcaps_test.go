package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Tests of the caps on asked-for mail.

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
