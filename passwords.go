package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/jackc/pgx/v5"
)

// Passwords: the reset request, the reset, the change, and the notice mailed after either:
// handlers and their SQL.

// createResetToken replaces any earlier reset token of the active user with this email by a
// new one, queues the reset mail, and returns the token; only its SHA-256 is stored. An invited
// user, who has no password to reset, is sent a new invitation instead, and the token returned
// is that invitation's. It returns "" and no error when nothing was sent (no such active user,
// or it had its share of reset mails): see sendAskedMail.
func (s *store) createResetToken(ctx context.Context, email string) (string, error) {
	ttl := s.policy.resetTTL
	token := randomToken()
	isActive := func(u user) bool { return u.IsActive }
	sent, err := s.sendAskedMail(ctx, email, auditPasswordResetRequest, isActive, func(tx pgx.Tx, u user) error {
		if u.Invited {
			// The reply stays the same, so a reset request does not tell invited accounts
			// apart; the request's audit row counts it against the reset caps.
			if err := s.sendInvitation(ctx, tx, u, token, 0); err != nil {
				return err
			}
			return s.audit(ctx, tx, auditPasswordResetRequest, 0, u.ID, map[string]any{"sent": mailInvite})
		}
		if _, err := tx.Exec(ctx, "DELETE FROM password_reset_tokens WHERE user_id = $1", u.ID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "INSERT INTO password_reset_tokens (token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
			hashToken(token), u.ID, s.now().Add(ttl))
		if err != nil {
			return err
		}
		return s.mailToken(ctx, tx, 0, u, tokenMail{mailPasswordReset, ttl, auditPasswordResetRequest}, token)
	})
	if err != nil || !sent {
		return "", err
	}
	return token, nil
}

// sendAskedMail runs send, in a transaction, for the user with this address and reports that
// it did, unless there is none, wanted says it needs no such mail (deactivated, say), or it had
// its share of the mails counted by action: then it records auditMailNotSent (naming the
// account when one has the address) and reports nothing sent, which is no error, so that
// callers give the same reply either way. Against enumeration by timing, every such path runs
// the same statements (the lookup, the caps in one statement, for no account too, and the
// audit row, committed), and a mail sent runs only a few more.
func (s *store) sendAskedMail(ctx context.Context, email, action string, wanted func(user) bool, send func(pgx.Tx, user) error) (sent bool, err error) {
	lookup := "SELECT " + userColumns + ` FROM users WHERE lower(email COLLATE "C") = lower($1 COLLATE "C") FOR UPDATE`
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		u, err := queryUser(ctx, tx, lookup, email)
		sent = err == nil && wanted(u)
		if errors.Is(err, errNotFound) {
			u = user{Email: email} // an id of 0, which no row names
		} else if err != nil {
			return err
		}
		capped := s.checkCaps(ctx, tx, askedMailCaps(u.ID, u.Email, action)...)
		if capped != nil && !errors.Is(capped, errMailCapped) {
			return capped
		}
		sent = sent && capped == nil
		if !sent {
			return s.audit(ctx, tx, auditMailNotSent, 0, u.ID, map[string]any{"for": action})
		}
		return send(tx, u)
	})
	return sent && err == nil, err
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

// resetPassword consumes a reset token and sets the password to the hash newHash returns for
// the token's user. newHash runs only for a good token, so bad tokens cost no bcrypt work, and
// before the transaction, so no lock is held while it runs; its error (a password refused for
// that user) is returned with the token unused, for another try. A token works once; an
// unknown or expired one is errInvalid. Every session of the user is revoked.
func (s *store) resetPassword(ctx context.Context, token string, newHash func(user) (string, error)) error {
	invalid := fail(errInvalid, "Invalid or expired reset token")
	u, err := queryUser(ctx, s.pool, `SELECT `+qualifiedUserColumns+` FROM password_reset_tokens t
		JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1 AND t.expires_at > $2`, hashToken(token), s.now())
	if errors.Is(err, errNotFound) {
		return invalid
	}
	if err != nil {
		return fmt.Errorf("look up reset token: %w", err)
	}
	userID := u.ID
	passwordHash, err := newHash(u)
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
		if err := s.revokeSessions(ctx, tx, userID); err != nil {
			return err
		}
		if err := s.mailPasswordChanged(ctx, tx, userID, "reset"); err != nil {
			return err
		}
		return s.audit(ctx, tx, auditPasswordReset, userID, userID, nil)
	})
}

// changePassword sets a new password hash for the user me, authenticated through session
// keepSession, and returns the new token version and a new refresh token of keepSession:
// every earlier access token and every earlier refresh token stops working, and every
// session but keepSession is revoked. The change applies only if me is still what the request
// was authenticated as (same token version, active, session live): a reset, deactivation or
// logout that lands while the new hash is computed wins, and the request gets
// errRevokedToken. The account's login failures from the request's address are cleared.
func (s *store) changePassword(ctx context.Context, me user, passwordHash string, keepSession int64) (int64, string, error) {
	var version int64
	var refreshToken string
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
		if refreshToken, err = s.revokeOtherSessions(ctx, tx, id, keepSession); err != nil {
			return err
		}
		// The right current password was checked: like a login, it clears the failure count.
		if err := forgetLoginFailures(ctx, tx, accountKey(id)); err != nil {
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
	return version, refreshToken, err
}

// emailRequest asks for mail to an address: a password reset, or the verification resent.
type emailRequest struct {
	Email string `json:"email"`
}

func (r emailRequest) valid() map[string]string {
	return check(map[string]string{}, "email", emailProblem(r.Email))
}

const resetRequestReply = "If an account with that email exists, a password reset email has been sent."

func handlePasswordResetRequest(cfg config, st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		req, err := decodeValid[emailRequest](w, r)
		if err != nil {
			return err
		}
		token, err := st.createResetToken(r.Context(), req.Email)
		if err != nil {
			return err
		}
		// The same reply whether or not the account exists or was capped: no user enumeration.
		// The mail is queued with the token; the reply never waits for (or reveals by its
		// timing) a mail server. Only the dummy backend, for testing, returns the token.
		if token == "" || cfg.mail.backend != mailDummy {
			writeJSON(w, http.StatusOK, message{resetRequestReply})
			return nil
		}
		writeJSON(w, http.StatusOK, struct {
			Message string `json:"message"`
			Token   string `json:"token"`
		}{resetRequestReply, token})
		return nil
	}
}

// newPasswordRequest sets a password with a mailed token: a reset, or an invitation accepted.
type newPasswordRequest struct {
	NewPassword string `json:"new_password"`
}

// decodeNewPassword reads a newPasswordRequest and checks the rules that need no user, and
// returns what the store calls once the token names its user: the new password is refused if
// it is guessable for that user, and hashed otherwise.
func decodeNewPassword(w http.ResponseWriter, r *http.Request, cfg config, pw *hasher) (func(user) (string, error), error) {
	req, err := decode[newPasswordRequest](w, r)
	if err != nil {
		return nil, err
	}
	problems := check(map[string]string{}, "new_password", passwordProblem(req.NewPassword, cfg.passwordMinLength))
	if err := invalidFields(problems); err != nil {
		return nil, err
	}
	return func(u user) (string, error) {
		problems := checkGuessable(map[string]string{}, "new_password", req.NewPassword, cfg.commonPasswords, u.Username, u.Email)
		if err := invalidFields(problems); err != nil {
			return "", err
		}
		return pw.hash(r.Context(), req.NewPassword)
	}, nil
}

func handleResetPassword(cfg config, st *store, pw *hasher) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		hashFor, err := decodeNewPassword(w, r, cfg, pw)
		if err != nil {
			return err
		}
		err = st.resetPassword(r.Context(), r.PathValue("token"), hashFor)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, message{"Password reset successful"})
		return nil
	}
}

type changePasswordRequest struct {
	CurrentPassword string `json:"current_password"`
	NewPassword     string `json:"new_password"`
}

func (r changePasswordRequest) valid(passwordMinLength int) map[string]string {
	problems := map[string]string{}
	if r.CurrentPassword == "" {
		problems["current_password"] = "is required"
	}
	check(problems, "new_password", passwordProblem(r.NewPassword, passwordMinLength))
	return problems
}

func handleChangePassword(cfg config, st *store, pw *hasher) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		me, sessionID := currentUser(r.Context()), currentSession(r.Context())
		req, err := decode[changePasswordRequest](w, r)
		if err != nil {
			return err
		}
		problems := checkGuessable(req.valid(cfg.passwordMinLength), "new_password", req.NewPassword, cfg.commonPasswords, me.Username, me.Email)
		if err := invalidFields(problems); err != nil {
			return err
		}
		version, refreshToken, err := changeOwnPassword(r.Context(), cfg, st, pw, me, sessionID, req)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, struct {
			Message      string `json:"message"`
			AccessToken  string `json:"access_token"`
			RefreshToken string `json:"refresh_token"`
		}{"Password changed successfully", signToken(cfg.keys, me.ID, version, sessionID, st.now(), cfg.accessTTL, currentAMR(r.Context())...), refreshToken})
		return nil
	}
}

// changeOwnPassword checks me's current password and sets the new one, keeping the session
// sessionID; it returns what the store's changePassword does. Checking the current password
// is a login in all but name: it shares the login's lockout, so that a stolen access token
// cannot be used to guess the password. The new password is hashed in the bcrypt slot of the
// check.
func changeOwnPassword(ctx context.Context, cfg config, st *store, pw *hasher, me user, sessionID int64, req changePasswordRequest) (int64, string, error) {
	current := me.PasswordHash
	if len(req.CurrentPassword) > 72 {
		current = "" // bcrypt reads 72 bytes: a longer password whose first 72 match is wrong
	}
	var attempt loginAttempt
	matches, hash, err := pw.check(ctx, current, req.CurrentPassword, req.NewPassword, func() (err error) {
		attempt, err = st.reserveLoginAttempt(ctx, accountKey(me.ID))
		return err
	})
	if err == nil && !matches {
		if err := st.auditFailure(ctx, auditPasswordChangeFailed, me.ID, me.ID); err != nil {
			return 0, "", err
		}
		return 0, "", fail(errInvalid, "Current password is incorrect")
	}
	var version int64
	var refreshToken string
	if err == nil {
		version, refreshToken, err = st.changePassword(ctx, me, hash, sessionID)
	}
	return version, refreshToken, giveBack(ctx, st, attempt, err)
}

// mailPasswordChanged queues the notice that the user's password was changed or reset, within
// its caps.
func (s *store) mailPasswordChanged(ctx context.Context, tx pgx.Tx, userID int64, how string) error {
	u, err := queryUser(ctx, tx, "SELECT "+userColumns+" FROM users WHERE id = $1", userID)
	if err != nil {
		return err
	}
	if err := s.checkPasswordNoticeCap(ctx, tx, u); err != nil {
		return ignoreMailCapped(err)
	}
	d := newMailData(u)
	d.How = how
	return s.enqueueMail(ctx, tx, mailPasswordChanged, u.ID, u.Email, d)
}
