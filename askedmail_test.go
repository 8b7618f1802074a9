package main

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The reset request and the verification resend must not tell, by the work they do, an
// address with no account from an account past its mail cap (issue 8, item 4): both run the
// same statements.

// statementLog is a pgx QueryTracer that keeps the SQL text of every statement run.
type statementLog struct {
	mu  sync.Mutex
	sql []string
}

func (l *statementLog) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sql = append(l.sql, strings.Join(strings.Fields(d.SQL), " "))
	return ctx
}

func (l *statementLog) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// take returns the statements logged since the last take.
func (l *statementLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	sql := l.sql
	l.sql = nil
	return sql
}

// tracedServer serves env's database through a second store and server, whose pool logs
// every statement in log.
func tracedServer(t *testing.T, env *testEnv, log *statementLog) *testEnv {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(env.cfg.databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.Tracer = log
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	traced := *env
	traced.st = &store{pool: pool, now: env.clock.Now, sealer: env.st.sealer, policy: env.st.policy, metrics: newMetrics()}
	traced.server = checkedServer(t, newServer(env.cfg, traced.st, env.pw, slog.New(slog.DiscardHandler)))
	t.Cleanup(func() {
		traced.server.Close()
		pool.Close()
	})
	return &traced
}

// TestAskedMailSameStatements: for the reset request and the resend, an address with no
// account, an account that may not get this mail (deactivated, or verified already) and an
// account past its per-minute, per-hour or address cap run the same statements, caps
// included; a mail sent runs those up to the caps and then its own.
func TestAskedMailSameStatements(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"/api/auth/password-reset-request", "/api/auth/resend-verification"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			env := newTestEnv(t)
			log := &statementLog{}
			traced := tracedServer(t, env, log)
			ask := func(email string) []string {
				t.Helper()
				log.take()
				traced.do(t, "POST", path, "", map[string]string{"email": email}).expect(t, http.StatusOK)
				return log.take()
			}
			sentAfter := func(id int64) bool {
				t.Helper()
				return slices.ContainsFunc(env.auditRowsAfter(t, id), func(r auditRow) bool { return r.Action != auditMailNotSent })
			}
			ctx := context.Background()
			root := env.addUser(t, "root", roleAdmin)
			gone := env.addUser(t, "gone", roleUser)
			env.do(t, "PATCH", "/api/users/"+strconv.FormatInt(gone.ID, 10), env.tokenFor(t, root), map[string]any{"is_active": false}).
				expect(t, http.StatusOK)
			verified := env.addUser(t, "checked", roleUser)
			if _, err := env.st.pool.Exec(ctx, "UPDATE users SET email_verified = true WHERE id = $1", verified.ID); err != nil {
				t.Fatal(err)
			}
			alice, carol := env.addUser(t, "alice", roleUser), env.addUser(t, "carol", roleUser)
			env.clock.Advance(time.Hour)       // past the caps of the registrations
			for range mailsPerAddressPerHour { // mail about another account fills the cap of carol's address
				err := pgx.BeginFunc(ctx, env.st.pool, func(tx pgx.Tx) error {
					return env.st.enqueueMail(ctx, tx, mailVerifyEmail, root.ID, carol.Email, newMailData(root))
				})
				if err != nil {
					t.Fatal(err)
				}
			}

			notSent := ask("nobody@example.com")
			t.Logf("no account: %q", notSent)
			if !slices.ContainsFunc(notSent, func(sql string) bool { return strings.Contains(sql, "GREATEST") }) {
				t.Errorf("no account runs no cap statement: %q", notSent)
			}
			same := func(name string, got []string) {
				t.Helper()
				if !slices.Equal(got, notSent) {
					t.Errorf("%s runs\n%q\nbut no account runs\n%q", name, got, notSent)
				}
			}
			same("another address with no account", ask("NoBody.Else@example.com"))
			same("a deactivated account", ask("gone@example.com"))
			if path == "/api/auth/resend-verification" {
				same("a verified account", ask(verified.Email))
			}

			last := env.lastAuditID(t)
			sent := ask(alice.Email)
			if !sentAfter(last) {
				t.Fatalf("no mail sent to alice: %q", sent)
			}
			t.Logf("a mail sent: %q", sent)
			if len(sent) <= len(notSent) || !slices.Equal(sent[:3], notSent[:3]) {
				t.Errorf("a sent mail does not begin like one not sent (begin, lookup, caps): %q", sent)
			}
			last = env.lastAuditID(t)
			same("an account whose address is past its cap", ask(carol.Email))
			same("an account past its per-minute cap", ask(alice.Email))
			for range askedMailsPerHour - 1 {
				env.clock.Advance(time.Minute + time.Second)
				ask(alice.Email)
			}
			env.clock.Advance(time.Minute + time.Second)
			same("an account past its per-hour cap", ask(alice.Email))
			if n := len(slices.DeleteFunc(env.auditRowsAfter(t, last), func(r auditRow) bool { return r.Action == auditMailNotSent })); n != askedMailsPerHour-1 {
				t.Errorf("%d mails sent to alice in the hour after the first, want %d", n, askedMailsPerHour-1)
			}
		})
	}
}
