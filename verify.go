package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/jackc/pgx/v5"
)

// Email verification: the verification mail, its resend, the verification itself, and the mail
// sent when an address changes: handlers and their SQL.

// queueVerification issues a verification token for u's current address (replacing earlier
// ones) and queues the mail carrying it. Only the token's SHA-256 is stored.
func (s *store) queueVerification(ctx context.Context, tx pgx.Tx, u user) error {
	ttl := s.policy.verifyTTL
	token := randomToken()
	if _, err := tx.Exec(ctx, "DELETE FROM email_verification_tokens WHERE user_id = $1", u.ID); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `INSERT INTO email_verification_tokens (token_hash, user_id, email, expires_at)
		VALUES ($1, $2, $3, $4)`, hashToken(token), u.ID, u.Email, s.now().Add(ttl))
	if err != nil {
		return fmt.Errorf("verification token: %w", err)
	}
	return s.mailToken(ctx, tx, 0, u, tokenMail{mailVerifyEmail, ttl, auditVerificationRequested}, token)
}

// resendVerification queues a new verification mail for the active, unverified user with this
// address, unless there is none or it is past its cap: then nothing is sent, and that is no
// error (see sendAskedMail). An account that has the address but needs no mail (verified
// already, or deactivated) is named as the target of its mail_not_sent row.
func (s *store) resendVerification(ctx context.Context, email string) error {
	needsMail := func(u user) bool { return u.IsActive && !u.EmailVerified }
	_, err := s.sendAskedMail(ctx, email, auditVerificationRequested, needsMail, func(tx pgx.Tx, u user) error {
		return s.queueVerification(ctx, tx, u)
	})
	return err
}

// verifyEmail consumes a verification token and marks its address verified. A token works
// once, and only while the account still has the address it was sent to; otherwise errInvalid.
func (s *store) verifyEmail(ctx context.Context, token string) error {
	invalid := fail(errInvalid, "Invalid or expired verification token")
	var userID int64
	var email string
	err := s.pool.QueryRow(ctx, "SELECT user_id, email FROM email_verification_tokens WHERE token_hash = $1 AND expires_at > $2",
		hashToken(token), s.now()).Scan(&userID, &email)
	if errors.Is(err, pgx.ErrNoRows) {
		return invalid
	}
	if err != nil {
		return fmt.Errorf("look up verification token: %w", err)
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// The user row before the token, the order of every transaction that writes both.
		tag, err := tx.Exec(ctx, `UPDATE users SET email_verified = true, updated_at = now()
			WHERE id = $1 AND lower(email COLLATE "C") = lower($2 COLLATE "C")`, userID, email)
		if err != nil {
			return fmt.Errorf("verify email: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return invalid // the address changed after the token was mailed
		}
		if err := s.consumeToken(ctx, tx, "email_verification_tokens", token, userID, invalid); err != nil {
			return err
		}
		return s.audit(ctx, tx, auditEmailVerified, userID, userID, map[string]any{"email": email})
	})
}

// mailEmailChange, after an update, tells the old address of the change and asks the new one
// to verify itself (unless an admin marked it verified).
func (s *store) mailEmailChange(ctx context.Context, tx pgx.Tx, before, after user) error {
	if sameFold(before.Email, after.Email) {
		return nil // a change of case only: the same mailbox
	}
	err := s.checkNoticeCap(ctx, tx, before)
	if err == nil {
		d := newMailData(before)
		d.NewEmail = after.Email
		err = s.enqueueMail(ctx, tx, mailEmailChanged, before.ID, before.Email, d)
	}
	if err := ignoreMailCapped(err); err != nil {
		return err
	}
	if after.EmailVerified {
		return nil
	}
	return s.queueVerification(ctx, tx, after)
}

func handleVerifyEmail(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := st.verifyEmail(r.Context(), r.PathValue("token")); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, message{"Email verified"})
		return nil
	}
}

const resendVerificationReply = "If an unverified account with that email exists, a verification email has been sent."

func handleResendVerification(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		req, err := decodeValid[emailRequest](w, r)
		if err != nil {
			return err
		}
		// The same reply whether or not the account exists, is verified, or was capped.
		if err := st.resendVerification(r.Context(), req.Email); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, message{resendVerificationReply})
		return nil
	}
}
