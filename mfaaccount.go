package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/jackc/pgx/v5"
)

// Managing one's own two-factor login (enrolment, confirmation, new recovery codes, turning it
// off) and an admin's removal of it: handlers and their SQL.

type mfaEnrolRequest struct {
	Password string `json:"password"`
}

func handleMFAEnrol(cfg config, st *store, pw *hasher) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		me, sessionID := currentUser(r.Context()), currentSession(r.Context())
		req, err := decode[mfaEnrolRequest](w, r)
		if err != nil {
			return err
		}
		if req.Password == "" {
			return invalidFields(map[string]string{"password": "is required"})
		}
		if me.MFAEnabled {
			return errMFAOn
		}
		secret := newTOTPSecret()
		err = withOwnPassword(r.Context(), cfg, st, pw, me, req.Password, func() error {
			return st.startEnrolment(r.Context(), me, sessionID, secret)
		})
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, struct {
			Secret     string `json:"secret"`
			OTPAuthURI string `json:"otpauth_uri"`
		}{totpEncoding.EncodeToString(secret), otpauthURI(cfg.mfaIssuer, me.Username, secret)})
		return nil
	}
}

// withOwnPassword checks the password of me, then runs change. Like change-password, the check
// shares the login's lockout, so that a stolen access token cannot be used to guess the
// password: the attempt counts when the password, or the second factor change checks, is
// wrong (errCodeWrong, errCodeReused: audited and refused), and is given back otherwise.
func withOwnPassword(ctx context.Context, cfg config, st *store, pw *hasher, me user, password string, change func() error) error {
	hash := me.PasswordHash
	if len(password) > 72 {
		hash = "" // bcrypt reads 72 bytes: a longer password whose first 72 match is wrong
	}
	var attempt loginAttempt
	matches, _, err := pw.check(ctx, hash, password, "", func() (err error) {
		attempt, err = st.reserveLoginAttempt(ctx, accountKey(me.ID))
		return err
	})
	if err != nil {
		return giveBack(ctx, st, attempt, err)
	}
	if !matches {
		if err := st.auditFailure(ctx, auditMFAPasswordFailed, me.ID, me.ID); err != nil {
			return err
		}
		return errWrongPassword
	}
	err = change()
	if errors.Is(err, errCodeWrong) || errors.Is(err, errCodeReused) {
		return st.codeRefused(ctx, me.ID, me.ID, nil, err, fail(errInvalid, "Invalid code"))
	}
	if err != nil {
		return giveBack(ctx, st, attempt, err)
	}
	return st.releaseLoginAttempt(context.WithoutCancel(ctx), attempt)
}

// startEnrolment stores a new TOTP secret for me, sealed, replacing any pending one. Nothing is
// enabled until confirmEnrolment; errMFAOn when TOTP is on already.
func (s *store) startEnrolment(ctx context.Context, me user, sessionID int64, secret []byte) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		u, err := lockMe(ctx, tx, me, sessionID)
		if err != nil {
			return err
		}
		if u.MFAEnabled {
			return errMFAOn
		}
		_, err = tx.Exec(ctx, `INSERT INTO mfa_totp (user_id, sealed_secret, created_at) VALUES ($1, $2, $3)
			ON CONFLICT (user_id) DO UPDATE SET sealed_secret = EXCLUDED.sealed_secret, created_at = EXCLUDED.created_at,
				last_step = 0`, u.ID, s.sealer.seal(totpEncoding.EncodeToString(secret)), s.now())
		if err != nil {
			return fmt.Errorf("start totp enrolment: %w", err)
		}
		return nil
	})
}

type mfaConfirmRequest struct {
	Code string `json:"code"`
}

func handleMFAConfirm(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[mfaConfirmRequest](w, r)
		if err != nil {
			return err
		}
		if !validTOTPCode(req.Code) {
			return invalidFields(map[string]string{"code": "must be 6 digits"})
		}
		codes, refreshToken, err := st.confirmEnrolment(r.Context(), currentUser(r.Context()), currentSession(r.Context()), req.Code)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, struct {
			RecoveryCodes []string `json:"recovery_codes"`
			RefreshToken  string   `json:"refresh_token"`
		}{codes, refreshToken})
		return nil
	}
}

// confirmEnrolment turns TOTP on for me when code is right for the pending secret, and returns
// the recovery codes and a new refresh token of the session sessionID. Every other session
// ends, and the kept session's refresh tokens are replaced, as after a password change: a
// chain forked off it by a thief must not outlive the second factor.
func (s *store) confirmEnrolment(ctx context.Context, me user, sessionID int64, code string) ([]string, string, error) {
	var codes []string
	var refreshToken string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		u, err := lockMe(ctx, tx, me, sessionID)
		if err != nil {
			return err
		}
		if u.MFAEnabled {
			return errMFAOn
		}
		key, err := s.totpKey(ctx, tx, u.ID, false)
		if errors.Is(err, errNotFound) {
			return errNoEnrolment
		}
		if err != nil {
			return err
		}
		step, ok := matchTOTP(key, code, s.now())
		if !ok {
			return fail(errInvalid, "Invalid code")
		}
		if _, err := tx.Exec(ctx, "UPDATE mfa_totp SET enabled_at = $2, last_step = $3 WHERE user_id = $1", u.ID, s.now(), step); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE users SET mfa_enabled = true, updated_at = now() WHERE id = $1", u.ID); err != nil {
			return err
		}
		if codes, err = replaceRecoveryCodes(ctx, tx, u.ID); err != nil {
			return err
		}
		if refreshToken, err = s.revokeOtherSessions(ctx, tx, u.ID, sessionID); err != nil {
			return err
		}
		if err := s.mailMFANotice(ctx, tx, u, mailMFAEnabled, newMailData(u)); err != nil {
			return err
		}
		return s.audit(ctx, tx, auditMFAEnabled, u.ID, u.ID, nil)
	})
	return codes, refreshToken, err
}

// mfaChangeRequest is the password and a second factor, which turning TOTP off and making new
// recovery codes both take.
type mfaChangeRequest struct {
	Password     string `json:"password"`
	Code         string `json:"code"`
	RecoveryCode string `json:"recovery_code"`
}

func (r mfaChangeRequest) valid() map[string]string {
	problems := map[string]string{}
	if r.Password == "" {
		problems["password"] = "is required"
	}
	return secondFactor{r.Code, r.RecoveryCode}.problems(problems)
}

// handleMFAChange serves an mfaChangeRequest of a user with TOTP on: after the password is
// checked, a transaction locks the user row, uses up the second factor, and runs change, whose
// result is the reply.
func handleMFAChange(cfg config, st *store, pw *hasher, change func(context.Context, pgx.Tx, user) (any, error)) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		me, sessionID := currentUser(r.Context()), currentSession(r.Context())
		req, err := decode[mfaChangeRequest](w, r)
		if err != nil {
			return err
		}
		if err := invalidFields(req.valid()); err != nil {
			return err
		}
		if !me.MFAEnabled {
			return errMFAOff
		}
		var reply any
		err = withOwnPassword(r.Context(), cfg, st, pw, me, req.Password, func() error {
			return pgx.BeginFunc(r.Context(), st.pool, func(tx pgx.Tx) error {
				u, err := lockMe(r.Context(), tx, me, sessionID)
				if err != nil {
					return err
				}
				if !u.MFAEnabled {
					return errMFAOff
				}
				if _, err := st.useSecondFactor(r.Context(), tx, u, secondFactor{req.Code, req.RecoveryCode}); err != nil {
					return err
				}
				reply, err = change(r.Context(), tx, u)
				return err
			})
		})
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, reply)
		return nil
	}
}

func handleMFADisable(cfg config, st *store, pw *hasher) apiFunc {
	return handleMFAChange(cfg, st, pw, func(ctx context.Context, tx pgx.Tx, u user) (any, error) {
		if err := removeMFA(ctx, tx, u.ID); err != nil {
			return nil, err
		}
		d := newMailData(u)
		d.How = "turned off by you"
		if err := st.mailMFANotice(ctx, tx, u, mailMFADisabled, d); err != nil {
			return nil, err
		}
		return message{"Two-factor login turned off"}, st.audit(ctx, tx, auditMFADisabled, u.ID, u.ID, nil)
	})
}

func handleMFARecoveryCodes(cfg config, st *store, pw *hasher) apiFunc {
	return handleMFAChange(cfg, st, pw, func(ctx context.Context, tx pgx.Tx, u user) (any, error) {
		codes, err := replaceRecoveryCodes(ctx, tx, u.ID)
		if err != nil {
			return nil, err
		}
		return struct {
			RecoveryCodes []string `json:"recovery_codes"`
		}{codes}, st.audit(ctx, tx, auditMFARecoveryCodesGenerated, u.ID, u.ID, nil)
	})
}

func handleMFAAdminRemove(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, ok := parseID(r.PathValue("id"))
		if !ok {
			return fail(errInvalid, "User id must be a positive integer")
		}
		if err := st.removeMFAByAdmin(r.Context(), currentUser(r.Context()), id); err != nil {
			return userNotFound(err)
		}
		writeJSON(w, http.StatusOK, message{"Two-factor login removed"})
		return nil
	}
}

// removeMFAByAdmin turns off the TOTP of user id, for a user who lost their device, on behalf
// of the admin actor (never of another admin: as for every admin action). Every session of the
// user ends, since one of them may be the lost device's.
func (s *store) removeMFAByAdmin(ctx context.Context, actor user, id int64) error {
	return s.adminChange(ctx, actor, id, func(tx pgx.Tx, target user) error {
		if actor.ID != target.ID && target.Role == roleAdmin {
			return fail(errForbidden, "Admins cannot modify other admins")
		}
		if !target.MFAEnabled {
			return errMFAOff
		}
		if err := removeMFA(ctx, tx, id); err != nil {
			return err
		}
		if err := s.revokeSessions(ctx, tx, id); err != nil {
			return err
		}
		d := newMailData(target)
		d.How = "removed by an administrator"
		if err := s.mailMFANotice(ctx, tx, target, mailMFADisabled, d); err != nil {
			return err
		}
		return s.audit(ctx, tx, auditMFADisabled, actor.ID, id, nil)
	})
}
