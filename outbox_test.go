package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

type outboxRow struct {
	ID            int64      `db:"id"`
	Kind          string     `db:"kind"`
	Recipient     string     `db:"recipient"`
	Data          string     `db:"data"`
	Attempts      int        `db:"attempts"`
	NextAttemptAt time.Time  `db:"next_attempt_at"`
	SentAt        *time.Time `db:"sent_at"`
	FailedAt      *time.Time `db:"failed_at"`
	LastError     *string    `db:"last_error"`
}

// outboxRows returns the outbox in the order it was written.
func outboxRows(t *testing.T, st *store) []outboxRow {
	t.Helper()
	rows, err := st.pool.Query(context.Background(), `SELECT id, kind, recipient, data::text AS data, attempts,
		next_attempt_at, sent_at, failed_at, last_error FROM mail_outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var out []outboxRow
	for rows.Next() {
		var r outboxRow
		if err := rows.Scan(&r.ID, &r.Kind, &r.Recipient, &r.Data, &r.Attempts, &r.NextAttemptAt, &r.SentAt, &r.FailedAt, &r.LastError); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// startOutbox runs the background worker on st. stop ends it and returns once the message it
// was sending, if any, is finished and recorded; it also runs when the test ends.
func startOutbox(t *testing.T, cfg mailConfig, st *store, logs io.Writer) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		runOutbox(ctx, cfg, st, slog.New(slog.NewTextHandler(logs, nil)))
		close(done)
	}()
	stop = sync.OnceFunc(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(smtpWaitLimit):
			t.Error("the outbox worker did not stop")
		}
	})
	t.Cleanup(stop)
	return stop
}

// TestOutboxRetry: a message the server refuses is retried after a back-off and sent once the
// server recovers; one refused maxAttempts times is given up with its last error. Either way
// the data (with its token) is emptied when the message is done with.
func TestOutboxRetry(t *testing.T) {
	t.Parallel()
	srv := newSMTPServer(t, smtpOptions{refuse: map[string]string{"MAIL": "451 4.3.0 try again later"}})
	env := newTestEnv(t, srv.use)
	env.addUser(t, "alice", roleUser) // queues a verification mail

	if sent := env.deliverMail(t); len(sent) != 0 {
		t.Fatalf("sent %d messages through a refusing server", len(sent))
	}
	row := outboxRows(t, env.st)[0]
	if row.Attempts != 1 || row.LastError == nil || !strings.Contains(*row.LastError, "451") ||
		!row.NextAttemptAt.After(env.clock.Now()) || row.SentAt != nil || row.FailedAt != nil || row.Data == "{}" {
		t.Fatalf("after a refusal: %+v (last error %v), want attempts 1, the 451, a later attempt, the data kept", row, deref(row.LastError))
	}

	srv.refuse("MAIL", "")
	if sent := env.deliverMail(t); len(sent) != 0 {
		t.Errorf("sent %d messages before the back-off elapsed", len(sent))
	}
	env.clock.Advance(row.NextAttemptAt.Sub(env.clock.Now()))
	if sent := env.deliverMail(t); len(sent) != 1 || len(srv.delivered()) != 1 {
		t.Fatalf("sent %d (received %d) once due and the server recovered, want 1", len(sent), len(srv.delivered()))
	}
	row = outboxRows(t, env.st)[0]
	if row.SentAt == nil || row.Attempts != 2 || row.LastError != nil || row.Data != "{}" {
		t.Errorf("after sending: %+v (last error %v), want sent, attempts 2, no error, data {}", row, deref(row.LastError))
	}

	t.Run("given up", func(t *testing.T) {
		srv.refuse("RCPT", "550 5.1.1 no such user")
		env.addUser(t, "bob", roleUser)
		var delays []time.Duration
		for attempt := 1; attempt <= env.cfg.mail.maxAttempts; attempt++ {
			if sent := env.deliverMail(t); len(sent) != 0 {
				t.Fatalf("attempt %d: sent through a refusing server", attempt)
			}
			row = outboxRows(t, env.st)[1]
			if row.Attempts != attempt {
				t.Fatalf("attempt %d: row has attempts %d", attempt, row.Attempts)
			}
			if row.FailedAt == nil {
				delays = append(delays, row.NextAttemptAt.Sub(env.clock.Now()))
				env.clock.Advance(delays[len(delays)-1])
			}
		}
		if row.FailedAt == nil || row.SentAt != nil || row.LastError == nil || !strings.Contains(*row.LastError, "550") || row.Data != "{}" {
			t.Errorf("after %d refusals: %+v (last error %v), want failed with the 550 and data {}",
				env.cfg.mail.maxAttempts, row, deref(row.LastError))
		}
		if len(delays) != 2 || delays[1] <= delays[0] || delays[0] <= 0 {
			t.Errorf("back-off delays %v, want two, growing", delays)
		}
		env.clock.Advance(24 * time.Hour)
		env.deliverMail(t)
		if row = outboxRows(t, env.st)[1]; row.Attempts != env.cfg.mail.maxAttempts {
			t.Errorf("a failed message was tried again: attempts %d", row.Attempts)
		}
		if n := len(srv.delivered()); n != 1 {
			t.Errorf("the server received %d messages, want only alice's", n)
		}
	})
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

// TestOutboxWorkerLogsFailures: the background worker logs a refused message with the
// server's reply and never with its token.
func TestOutboxWorkerLogsFailures(t *testing.T) {
	t.Parallel()
	srv := newSMTPServer(t, smtpOptions{refuse: map[string]string{"RCPT": "550 5.1.1 mailbox unavailable"}})
	env := newTestEnv(t, srv.use)
	env.addUser(t, "alice", roleUser)
	requestReset(t, env, "alice@example.com")
	logs := &syncBuffer{}
	stop := startOutbox(t, env.cfg.mail, env.st, logs)
	srv.nextSession(t) // the verification mail
	srv.nextSession(t) // the reset mail
	stop()

	text := logs.String()
	if strings.Count(text, "mail not sent") != 2 || !strings.Contains(text, "550") {
		t.Errorf("the two failures are not logged with the reply:\n%s", text)
	}
	for _, row := range outboxRows(t, env.st) {
		var d mailData
		if err := json.Unmarshal([]byte(row.Data), &d); err != nil || d.Sealed == "" {
			t.Fatalf("outbox data %q (%v), want a sealed token kept for the retry", row.Data, err)
		}
		var err error
		if d.Token, err = env.st.sealer.open(d.Sealed); err != nil {
			t.Fatalf("opening the sealed token: %v", err)
		}
		if strings.Contains(row.Data, d.Token) {
			t.Errorf("the outbox holds the %s mail's token in clear: %s", row.Kind, row.Data)
		}
		if strings.Contains(text, d.Token) {
			t.Errorf("the log holds the token of the %s mail:\n%s", row.Kind, text)
		}
	}
}

// TestOutboxTwoWorkers: two instances on one database, sending at once, send every message
// exactly once.
func TestOutboxTwoWorkers(t *testing.T) {
	t.Parallel()
	const messages = 20
	srv := newSMTPServer(t, smtpOptions{})
	env := newTestEnv(t, srv.use)
	for i := range messages {
		env.addUser(t, fmt.Sprintf("user%02d", i), roleUser)
	}
	other, err := openStore(context.Background(), env.cfg, env.clock.Now, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer other.close()

	logger := slog.New(slog.NewTextHandler(env.logs, nil))
	sendOne := func(m queuedMail) error {
		msg, err := render(env.cfg.mail, m.Kind, m.Recipient, m.Data)
		if err != nil {
			return err
		}
		return deliver(context.Background(), env.cfg.mail, logger, msg)
	}
	var wg sync.WaitGroup
	for _, st := range []*store{env.st, other} {
		wg.Go(func() {
			for {
				found, err := st.deliverNext(context.Background(), env.cfg.mail.maxAttempts, sendOne)
				if err != nil {
					t.Errorf("deliverNext: %v", err)
					return
				}
				if !found {
					return
				}
			}
		})
	}
	wg.Wait()

	counts := map[string]int{}
	for _, m := range srv.delivered() {
		counts[strings.Join(m.to, ",")]++
	}
	for i := range messages {
		if to := fmt.Sprintf("TO:<user%02d@example.com>", i); counts[to] != 1 {
			t.Errorf("%s received %d times, want once", to, counts[to])
		}
	}
	if n := len(srv.delivered()); n != messages {
		t.Errorf("the server received %d messages, want %d", n, messages)
	}
	for _, row := range outboxRows(t, env.st) {
		if row.SentAt == nil || row.Attempts != 1 {
			t.Errorf("row %+v, want sent at the first attempt", row)
		}
	}
}

// TestOutboxSurvivesRestart: mail queued by an instance that stopped before sending it is
// sent by the worker of the next one.
func TestOutboxSurvivesRestart(t *testing.T) {
	t.Parallel()
	srv := newSMTPServer(t, smtpOptions{})
	env := newTestEnv(t, srv.use)
	env.addUser(t, "alice", roleUser)
	requestReset(t, env, "alice@example.com")
	env.server.Close()
	env.st.close()
	if srv.contacted() {
		t.Fatal("mail was sent before the restart")
	}

	st, err := openStore(context.Background(), env.cfg, env.clock.Now, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	stop := startOutbox(t, env.cfg.mail, st, env.logs)
	var subjects []string
	for range 2 {
		for _, m := range srv.nextSession(t).messages {
			subjects = append(subjects, parseMail(t, m.data).header.Get("Subject"))
		}
	}
	stop()
	if want := []string{mailSubjects[mailVerifyEmail], mailSubjects[mailPasswordReset]}; !slices.Equal(subjects, want) {
		t.Errorf("received %q after the restart, want %q", subjects, want)
	}
	for _, row := range outboxRows(t, st) {
		if row.SentAt == nil {
			t.Errorf("row %+v not marked sent", row)
		}
	}
}

// TestOutboxTLS sends through the outbox with each TLS setting: a message goes only over the
// encryption asked for, and credentials only over TLS (or to localhost); a refusal is recorded
// in the row's last_error.
func TestOutboxTLS(t *testing.T) {
	t.Parallel()
	credentials := "\x00mailer\x00s3cret"
	withCredentials := func(c *mailConfig) { c.username, c.password = "mailer", "s3cret" }
	tests := []struct {
		name     string
		opts     smtpOptions
		change   func(*mailConfig)
		wantErr  string // in last_error; "" for a delivery
		wantAuth string
	}{
		{name: "STARTTLS required but not offered", change: func(c *mailConfig) { c.useTLS = true }, wantErr: "STARTTLS"},
		{name: "STARTTLS with the test certificate", opts: smtpOptions{startTLS: true},
			change: func(c *mailConfig) { c.useTLS, c.insecureTLS = true, true }},
		{name: "STARTTLS with an untrusted certificate", opts: smtpOptions{startTLS: true},
			change: func(c *mailConfig) { c.useTLS = true }, wantErr: "failed to verify certificate"},
		{name: "implicit TLS with the test certificate", opts: smtpOptions{implicitTLS: true},
			change: func(c *mailConfig) { c.useSSL, c.insecureTLS = true, true }},
		{name: "implicit TLS with an untrusted certificate", opts: smtpOptions{implicitTLS: true},
			change: func(c *mailConfig) { c.useSSL = true }, wantErr: "failed to verify certificate"},
		{name: "implicit TLS to a plain server", change: func(c *mailConfig) { c.useSSL, c.insecureTLS = true, true },
			wantErr: "does not look like a TLS handshake"},
		// net/smtp exempts only the names localhost, 127.0.0.1 and ::1; 127.0.0.2 stands for
		// any other server, reachable here without DNS.
		{name: "credentials in plain text to a non-local server", opts: smtpOptions{host: "127.0.0.2"},
			change: withCredentials, wantErr: "unencrypted"},
		{name: "credentials over STARTTLS to a non-local server", opts: smtpOptions{host: "127.0.0.2", startTLS: true},
			change: func(c *mailConfig) { withCredentials(c); c.useTLS, c.insecureTLS = true, true }, wantAuth: credentials},
		{name: "credentials over implicit TLS to a non-local server", opts: smtpOptions{host: "127.0.0.2", implicitTLS: true},
			change: func(c *mailConfig) { withCredentials(c); c.useSSL, c.insecureTLS = true, true }, wantAuth: credentials},
		{name: "credentials in plain text to localhost", change: withCredentials, wantAuth: credentials},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := newSMTPServer(t, tt.opts)
			env := newTestEnv(t, srv.use, func(c *config) { tt.change(&c.mail) })
			env.addUser(t, "alice", roleUser)
			sent := env.deliverMail(t)
			row := outboxRows(t, env.st)[0]
			sess := srv.nextSession(t)
			if tt.wantErr != "" {
				if len(sent) != 0 || row.SentAt != nil || row.LastError == nil || !strings.Contains(*row.LastError, tt.wantErr) {
					t.Errorf("sent %d, row %+v, last error %q; want not sent, error mentioning %q", len(sent), row, deref(row.LastError), tt.wantErr)
				}
				if len(srv.delivered()) > 0 || sess.has("MAIL") || sess.has("AUTH") || sess.auth != "" {
					t.Errorf("the server got mail or credentials: %q", sess.commands)
				}
				if strings.Contains(strings.Join(sess.commands, "\n"), base64.StdEncoding.EncodeToString([]byte(credentials))) {
					t.Error("the credentials were sent")
				}
				return
			}
			if len(sent) != 1 || row.SentAt == nil || len(srv.delivered()) != 1 {
				t.Fatalf("sent %d, received %d, row %+v, last error %q; want delivered", len(sent), len(srv.delivered()), row, deref(row.LastError))
			}
			if encrypted := tt.opts.startTLS || tt.opts.implicitTLS; srv.delivered()[0].encrypted != encrypted {
				t.Errorf("delivered encrypted: %v, want %v", srv.delivered()[0].encrypted, encrypted)
			}
			if sess.auth != tt.wantAuth {
				t.Errorf("AUTH PLAIN response %q, want %q", sess.auth, tt.wantAuth)
			}
		})
	}
}

// TestResetRequestDoesNotWaitForSMTP: while the worker is stuck on a mail server that holds
// back its greeting, a reset request still gets its reply; the mail goes once the server
// answers.
func TestResetRequestDoesNotWaitForSMTP(t *testing.T) {
	t.Parallel()
	stall := make(chan struct{})
	release := sync.OnceFunc(func() { close(stall) })
	srv := newSMTPServer(t, smtpOptions{stall: stall})
	env := newTestEnv(t, srv.use, func(c *config) {
		// Longer than the request may take: a reply that waited for SMTP would not arrive.
		c.mail.commandTimeout, c.mail.totalTimeout = 4*smtpWaitLimit, 4*smtpWaitLimit
	})
	env.addUser(t, "alice", roleUser) // its verification mail keeps the worker busy
	stop := startOutbox(t, env.cfg.mail, env.st, env.logs)
	t.Cleanup(release) // before stop: a stalled worker cannot stop
	select {
	case <-srv.accepted:
	case <-time.After(smtpWaitLimit):
		t.Fatal("the worker never connected")
	}

	ctx, cancel := context.WithTimeout(context.Background(), smtpWaitLimit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", env.server.URL+"/api/auth/password-reset-request",
		strings.NewReader(`{"email": "alice@example.com"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	r := send(t, req).expect(t, http.StatusOK)
	if msg := r.message(t); msg != resetRequestReply {
		t.Errorf("message %q", msg)
	}
	rows := outboxRows(t, env.st)
	if len(rows) != 2 || rows[1].Kind != mailPasswordReset || rows[1].SentAt != nil {
		t.Fatalf("outbox %+v, want the reset mail queued behind the stalled one", rows)
	}

	release()
	for range 2 {
		if sess := srv.nextSession(t); len(sess.messages) != 1 {
			t.Errorf("%d messages in a session after the stall, want 1", len(sess.messages))
		}
	}
	stop()
	for _, row := range outboxRows(t, env.st) {
		if row.SentAt == nil {
			t.Errorf("row %+v not sent after the stall", row)
		}
	}
}

// sendTestMail sends one message through srv with cfg changed by change.
