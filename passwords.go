package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Password resets and changes in the store.

// createResetToken replaces any earlier reset token of the active user with this email by a
// new one and returns it. Only its SHA-256 is stored. errNotFound when there is no such user
// (a deactivated one is still named by its mail_not_sent row), errMailCapped when it has had
// its share of reset mails.
func (s *store) createResetToken(ctx context.Context, email string, ttl time.Duration) (string, error) {
	token := randomToken()
	lookup := "SELECT " + userColumns + " FROM users WHERE lower(email) = lower($1) FOR UPDATE"
	inactive := false
	err := s.sendAskedMail(ctx, lookup, email, auditPasswordResetRequest, func(tx pgx.Tx, u user) error {
		if !u.IsActive {
			inactive = true
			return s.audit(ctx, tx, auditMailNotSent, 0, u.ID, map[string]any{"for": auditPasswordResetRequest})
		}
		if _, err := tx.Exec(ctx, "DELETE FROM password_reset_tokens WHERE user_id = $1", u.ID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "INSERT INTO password_reset_tokens (token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
			hashToken(token), u.ID, s.now().Add(ttl))
		if err != nil {
			return err
		}
		d := newMailData(u)
		d.Token, d.Expires = token, humanDuration(ttl)
		if err := s.enqueueMail(ctx, tx, mailPasswordReset, u.ID, u.Email, d); err != nil {
			return err
		}
		return s.audit(ctx, tx, auditPasswordResetRequest, 0, u.ID, nil)
	})
	if err == nil && inactive {
		return "", errNotFound
	}
	return token, err
}

// sendAskedMail runs send, in a transaction, for the user that lookup (a query of userColumns
// taking the address as $1) finds, unless the user had their share of the mails counted by
// action. Otherwise it records auditMailNotSent and returns errNotFound or errMailCapped;
// either way a row is written and committed, so that the reply's timing says little about
// whether the account exists.
func (s *store) sendAskedMail(ctx context.Context, lookup, email, action string, send func(pgx.Tx, user) error) error {
	var notSent error
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		u, err := queryUser(ctx, tx, lookup, email)
		if err == nil {
			err = s.checkMailCap(ctx, tx, u.ID, action)
		}
		if err == nil {
			err = s.checkAddressCap(ctx, tx, u)
		}
		if errors.Is(err, errNotFound) || errors.Is(err, errMailCapped) {
			notSent = err
			return s.audit(ctx, tx, auditMailNotSent, 0, u.ID, map[string]any{"for": action})
		}
		if err != nil {
			return err
		}
		return send(tx, u)
	})
	if err == nil {
		err = notSent
	}
	return err
}

// consumeToken deletes the user's unexpired token from table (password_reset_tokens or
// email_verification_tokens), after the caller locked the user. A concurrent use of the same
// token, or a change that voided it since it was looked up, leaves nothing to delete: then
// the caller's transaction is undone with invalid.
func (s *store) consumeToken(ctx context.Context, tx pgx.Tx, table, token string, userID int64, invalid error) error {
	tag, err := tx.Exec(ctx, "DELETE FROM "+table+" WHERE token_hash = $1 AND user_id = $2 AND expires_at > $3",
		hashToken(token), userID, s.now())
	if err != nil {
		return fmt.Errorf("consume token: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return invalid
	}
	return nil
}

// resetPassword consumes a reset token and sets the password to the hash newHash returns.
// newHash runs only for a good token, so bad tokens cost no bcrypt work, and before the
// transaction, so no lock is held while it runs. A token works once; an unknown or expired
// one is errInvalid. Every session of the user is revoked.
func (s *store) resetPassword(ctx context.Context, token string, newHash func() (string, error)) error {
	invalid := fail(errInvalid, "Invalid or expired reset token")
	var userID int64
	err := s.pool.QueryRow(ctx, "SELECT user_id FROM password_reset_tokens WHERE token_hash = $1 AND expires_at > $2",
		hashToken(token), s.now()).Scan(&userID)
	if errors.Is(err, pgx.ErrNoRows) {
		return invalid
	}
	if err != nil {
		return fmt.Errorf("look up reset token: %w", err)
	}
	passwordHash, err := newHash()
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// The user row is locked before the token, in the order of every other transaction
		// that writes both (a reset request, a password or email change), so none deadlock.
		tag, err := tx.Exec(ctx, `UPDATE users SET password_hash = $2, token_version = token_version + 1,
			updated_at = now() WHERE id = $1 AND is_active`, userID, passwordHash)
		if err != nil {
			return fmt.Errorf("reset password: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return invalid // the account was deactivated after the token was issued
		}
		if err := s.consumeToken(ctx, tx, "password_reset_tokens", token, userID, invalid); err != nil {
			return err
		}
		if err := s.revokeSessions(ctx, tx, userID, 0); err != nil {
			return err
		}
		if err := s.mailPasswordChanged(ctx, tx, userID, "reset"); err != nil {
			return err
		}
		return s.audit(ctx, tx, auditPasswordReset, userID, userID, nil)
	})
}

// changePassword sets a new password hash for the user me, authenticated through session
// keepSession, and returns the new token version: every earlier access token stops working,
// and every session but keepSession is revoked. The change applies only if me is still what
// the request was authenticated as (same token version, active, session live): a reset,
// deactivation or logout that lands while the new hash is computed wins, and the request
// gets errRevokedToken.
func (s *store) changePassword(ctx context.Context, me user, passwordHash string, keepSession int64) (int64, error) {
	var version int64
	id := me.ID
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `UPDATE users SET password_hash = $2, token_version = token_version + 1,
			updated_at = now() WHERE id = $1 AND token_version = $3 AND is_active
				AND EXISTS (SELECT 1 FROM sessions WHERE id = $4 AND user_id = $1 AND revoked_at IS NULL)
			RETURNING token_version`, id, passwordHash, me.TokenVersion, keepSession).Scan(&version)
		if errors.Is(err, pgx.ErrNoRows) {
			return errRevokedToken
		}
		if err != nil {
			return err
		}
		if err := s.revokeSessions(ctx, tx, id, keepSession); err != nil {
			return err
		}
		// A reset link mailed before the change must not undo it.
		if _, err := tx.Exec(ctx, "DELETE FROM password_reset_tokens WHERE user_id = $1", id); err != nil {
			return err
		}
		if err := s.mailPasswordChanged(ctx, tx, id, "changed"); err != nil {
			return err
		}
		return s.audit(ctx, tx, auditPasswordChanged, id, id, nil)
	})
	return version, err
}
