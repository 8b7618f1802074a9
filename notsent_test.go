package main

import (
	"context"
	"net/http"
	"testing"
)

// TestMailNotSentNamesAnExistingAccount: a reset or verification mail asked for and not sent
// is recorded with the account as target whenever one has the address: verified already,
// deactivated, or active; only an unknown address has none.
func TestMailNotSentNamesAnExistingAccount(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	verified := env.addUser(t, "verified", roleUser)
	inactive := env.addUser(t, "inactive", roleUser)
	ctx := context.Background()
	if _, err := env.st.pool.Exec(ctx, "UPDATE users SET email_verified = (id = $1), is_active = (id <> $2)", verified.ID, inactive.ID); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path, email string
		target            *int64
		action            string
	}{
		{"resend for a verified account", "/api/auth/resend-verification", "VERIFIED@example.com", idp(verified.ID), auditVerificationRequested},
		{"resend for a deactivated account", "/api/auth/resend-verification", "inactive@example.com", idp(inactive.ID), auditVerificationRequested},
		{"resend for an unknown address", "/api/auth/resend-verification", "nobody@example.com", nil, auditVerificationRequested},
		{"reset for a deactivated account", "/api/auth/password-reset-request", "inactive@example.com", idp(inactive.ID), auditPasswordResetRequest},
		{"reset for an unknown address", "/api/auth/password-reset-request", "nobody@example.com", nil, auditPasswordResetRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := env.lastAuditID(t)
			var queued int
			if err := env.st.pool.QueryRow(ctx, "SELECT count(*) FROM mail_outbox").Scan(&queued); err != nil {
				t.Fatal(err)
			}
			r := env.do(t, "POST", tt.path, "", map[string]string{"email": tt.email}).expect(t, http.StatusOK)
			if _, ok := r.json(t)["token"]; ok {
				t.Errorf("reply carries a token: %s", r.body)
			}
			want := auditRow{Action: auditMailNotSent, Target: tt.target, IP: "127.0.0.1", Details: map[string]any{"for": tt.action}}
			rows := env.auditRowsAfter(t, before)
			if len(rows) != 1 || rows[0].String() != want.String() {
				t.Errorf("audit rows %v, want [%v]", rows, want)
			}
			var after int
			if err := env.st.pool.QueryRow(ctx, "SELECT count(*) FROM mail_outbox").Scan(&after); err != nil {
				t.Fatal(err)
			}
			if after != queued {
				t.Errorf("%d mails queued, want none", after-queued)
			}
		})
	}
}
