package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Email verification, and the notices mailed when an address or a password changes.

// queueVerification issues a verification token for u's current address (replacing earlier
// ones) and queues the mail carrying it. Only the token's SHA-256 is stored.
func (s *store) queueVerification(ctx context.Context, tx pgx.Tx, u user, ttl time.Duration) error {
	token := randomToken()
	if _, err := tx.Exec(ctx, "DELETE FROM email_verification_tokens WHERE user_id = $1", u.ID); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `INSERT INTO email_verification_tokens (token_hash, user_id, email, expires_at)
		VALUES ($1, $2, $3, $4)`, hashToken(token), u.ID, u.Email, s.now().Add(ttl))
	if err != nil {
		return fmt.Errorf("verification token: %w", err)
	}
	d := newMailData(u)
	d.Token, d.Expires = token, humanDuration(ttl)
	if err := s.enqueueMail(ctx, tx, mailVerifyEmail, u.ID, u.Email, d); err != nil {
		return err
	}
	return s.audit(ctx, tx, auditVerificationRequested, 0, u.ID, nil)
}

// resendVerification queues a new verification mail for the active, unverified user with this
// address. errNotFound when there is none, errMailCapped past the cap.
func (s *store) resendVerification(ctx context.Context, email string, ttl time.Duration) error {
	lookup := "SELECT " + userColumns + " FROM users WHERE lower(email) = lower($1) AND is_active AND NOT email_verified FOR UPDATE"
	return s.sendAskedMail(ctx, lookup, email, auditVerificationRequested, func(tx pgx.Tx, u user) error {
		return s.queueVerification(ctx, tx, u, ttl)
	})
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
			WHERE id = $1 AND lower(email) = lower($2)`, userID, email)
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

// Caps on the mail users can make the service send to an address by changing to it and away
// (each change mails the new address and the old one), registering with it, or asking for
// resets and verification, so that no mailbox can be flooded, from one account or from many.
const (
	emailChangesPerHour    = 5  // a user's own changes of address
	mailsPerAddressPerHour = 10 // mail to an address about other users than the one at hand
)

var errEmailChangesCapped = fail(errTooMany, "Too many email changes; try again later")

// checkEmailChangeCap refuses the user's own change of address to email with a waitError
// while either cap holds. Changes by an admin to another user's address are not capped.
func (s *store) checkEmailChangeCap(ctx context.Context, tx pgx.Tx, userID int64, email string) error {
	ownEnd, err := s.hourCapEnd(ctx, tx, emailChangesPerHour, `FROM audit_log WHERE actor_id = $3 AND target_id = $3
		AND action = $4 AND details->'fields' ? 'email'`, userID, auditProfileUpdated)
	if err != nil {
		return err
	}
	addressEnd, err := s.addressCapEnd(ctx, tx, email, userID)
	if err != nil {
		return err
	}
	until := ownEnd
	if addressEnd.After(until) {
		until = addressEnd
	}
	if until.After(s.now()) {
		return waitError{until.Sub(s.now()), errEmailChangesCapped}
	}
	return nil
}

// addressCapEnd is when the cap on mail to email lifts for mail about the user userID; zero or
// past when it does not hold. Mail about that user does not count: an owner's own resends
// never keep them from their address, while accounts taking turns with it are capped.
func (s *store) addressCapEnd(ctx context.Context, tx pgx.Tx, email string, userID int64) (time.Time, error) {
	return s.hourCapEnd(ctx, tx, mailsPerAddressPerHour,
		"FROM mail_outbox WHERE lower(recipient) = lower($3) AND user_id IS DISTINCT FROM $4", email, userID)
}

// hourCapEnd is when a cap of limit events an hour lifts: an hour after the limit-th latest
// event of the past hour, or zero when there are fewer. from is the FROM and WHERE clause
// selecting the events (with their created_at), with args as $3 on.
func (s *store) hourCapEnd(ctx context.Context, tx pgx.Tx, limit int, from string, args ...any) (time.Time, error) {
	var nth time.Time
	err := tx.QueryRow(ctx, "SELECT created_at "+from+" AND created_at > $1 ORDER BY created_at DESC OFFSET $2 LIMIT 1",
		append([]any{s.now().Add(-time.Hour), limit - 1}, args...)...).Scan(&nth)
	if errors.Is(err, pgx.ErrNoRows) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("mail cap: %w", err)
	}
	return nth.Add(time.Hour), nil
}

// mailEmailChange, after an update, tells the old address of the change and asks the new one
// to verify itself (unless an admin marked it verified).
func (s *store) mailEmailChange(ctx context.Context, tx pgx.Tx, before, after user, verifyTTL time.Duration) error {
	if strings.EqualFold(before.Email, after.Email) {
		return nil // a change of case only: the same mailbox
	}
	// The old address is told, unless it was never verified (the account never showed it
	// owns it) and has had its share of mail: else registering with an address and changing
	// away, over and over, would flood it.
	capEnd, err := s.addressCapEnd(ctx, tx, before.Email, before.ID)
	if err != nil {
		return err
	}
	if before.EmailVerified || !capEnd.After(s.now()) {
		d := newMailData(before)
		d.NewEmail = after.Email
		if err := s.enqueueMail(ctx, tx, mailEmailChanged, before.ID, before.Email, d); err != nil {
			return err
		}
	}
	if after.EmailVerified {
		return nil
	}
	return s.queueVerification(ctx, tx, after, verifyTTL)
}

// passwordNoticesPerHour bounds the notices of changed passwords an account is sent: the
// first tells the owner, and changing a password over and over must not flood an address.
const passwordNoticesPerHour = 5

// mailPasswordChanged queues the notice that the user's password was changed or reset, unless
// the account had its share of them in the past hour, or its address was never verified and
// is past its cap (as for the notice of a change of address).
func (s *store) mailPasswordChanged(ctx context.Context, tx pgx.Tx, userID int64, how string) error {
	u, err := queryUser(ctx, tx, "SELECT "+userColumns+" FROM users WHERE id = $1", userID)
	if err != nil {
		return err
	}
	capEnd, err := s.hourCapEnd(ctx, tx, passwordNoticesPerHour, "FROM mail_outbox WHERE kind = $3 AND user_id = $4",
		mailPasswordChanged, u.ID)
	if err != nil || capEnd.After(s.now()) {
		return err
	}
	if !u.EmailVerified {
		if err := s.checkAddressCap(ctx, tx, u); err != nil {
			return ignoreMailCapped(err)
		}
	}
	d := newMailData(u)
	d.How = how
	return s.enqueueMail(ctx, tx, mailPasswordChanged, u.ID, u.Email, d)
}

// humanDuration writes a token lifetime for people: "1 hour", "24 hours", "90 minutes".
func humanDuration(d time.Duration) string {
	unit, n := "minute", int(d.Minutes())
	if d >= time.Hour && d%time.Hour == 0 {
		unit, n = "hour", int(d.Hours())
	}
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

func handleVerifyEmail(st *store, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := st.verifyEmail(r.Context(), r.PathValue("token")); err != nil {
			writeError(w, r, logger, err)
			return
		}
		writeJSON(w, http.StatusOK, message{"Email verified"})
	})
}

const resendVerificationReply = "If an unverified account with that email exists, a verification email has been sent."

func handleResendVerification(cfg config, st *store, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := decode[resetRequest](w, r)
		if err == nil {
			err = invalidFields(check(map[string]string{}, "email", emailProblem(req.Email)))
		}
		if err == nil {
			err = st.resendVerification(r.Context(), req.Email, cfg.verifyTTL)
		}
		// The same reply whether or not the account exists, is verified, or was capped.
		if err != nil && !errors.Is(err, errNotFound) && !errors.Is(err, errMailCapped) {
			writeError(w, r, logger, err)
			return
		}
		writeJSON(w, http.StatusOK, message{resendVerificationReply})
	})
}
