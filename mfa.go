package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Two-factor login with TOTP: enrolment, the second step of a login, turning it off (by the
// user, or by an admin for a user who lost their device): handlers and their SQL. The codes
// themselves are in totp.go, recovery codes in recovery.go.

const (
	mfaTokenTTL         = 5 * time.Minute
	mfaTokenMaxFailures = 5 // wrong codes that void an mfa_token
)

var (
	errMFAOn           = fail(errConflict, "Two-factor login is already on")
	errMFAOff          = fail(errConflict, "Two-factor login is not on")
	errNoEnrolment     = fail(errConflict, "No two-factor enrolment to confirm: start one with POST /api/users/me/mfa/totp")
	errMFATokenInvalid = fail(errUnauthorized, "Invalid or expired MFA token")
	errWrongPassword   = fail(errInvalid, "Password is incorrect")

	// A second factor that was refused, before it becomes a reply: wrong, or a TOTP code of a
	// step already used.
	errCodeWrong  = errors.New("wrong code")
	errCodeReused = errors.New("code already used")
)

// hasSecondFactor reports whether a session's methods include a second factor.
func hasSecondFactor(amr []string) bool {
	return slices.Contains(amr, "totp") || slices.Contains(amr, "recovery")
}

// mfaChallenge is the reply to the right password of a user with TOTP on: no session yet.
type mfaChallenge struct {
	MFARequired bool   `json:"mfa_required"`
	MFAToken    string `json:"mfa_token"`
	ExpiresIn   int    `json:"expires_in"`
}

// startMFAChallenge issues the mfa_token of a login whose password was right. Only its
// SHA-256 is stored, with the token version the password was checked under.
func (s *store) startMFAChallenge(ctx context.Context, u user) (mfaChallenge, error) {
	token := randomToken()
	_, err := s.pool.Exec(ctx, `INSERT INTO mfa_tokens (token_hash, user_id, token_version, expires_at)
		VALUES ($1, $2, $3, $4)`, hashToken(token), u.ID, u.TokenVersion, s.now().Add(mfaTokenTTL))
	if err != nil {
		return mfaChallenge{}, fmt.Errorf("start mfa challenge: %w", err)
	}
	return mfaChallenge{MFARequired: true, MFAToken: token, ExpiresIn: int(mfaTokenTTL.Seconds())}, nil
}

// secondFactor is a TOTP code or a recovery code, as a request gives one.
type secondFactor struct {
	code, recoveryCode string
}

// problems adds the field rules of a second factor: exactly one of the two, each of its shape.
func (f secondFactor) problems(problems map[string]string) map[string]string {
	switch {
	case f.code == "" && f.recoveryCode == "":
		problems["code"] = "is required (or recovery_code)"
	case f.code != "" && f.recoveryCode != "":
		problems["recovery_code"] = "must not be given with code"
	case f.code != "" && !validTOTPCode(f.code):
		problems["code"] = "must be 6 digits"
	case f.recoveryCode != "" && !validRecoveryCode(f.recoveryCode):
		problems["recovery_code"] = "must be a recovery code, such as abcd-efgh-jkmn-pqrs"
	}
	return problems
}

// useSecondFactor checks f for u, whose row the caller locked, and uses it up: a TOTP code's
// step becomes the last accepted one, a recovery code is deleted (audited, and its owner told
// how many remain). It returns the session methods f stands for, or errCodeWrong or
// errCodeReused.
func (s *store) useSecondFactor(ctx context.Context, tx pgx.Tx, u user, f secondFactor) ([]string, error) {
	if f.recoveryCode != "" {
		return amrRecovery, s.useRecoveryCode(ctx, tx, u, f.recoveryCode)
	}
	key, err := s.totpKey(ctx, tx, u.ID, true)
	if errors.Is(err, errNotFound) {
		return nil, errCodeWrong // turned off meanwhile
	}
	if err != nil {
		return nil, err
	}
	step, ok := matchTOTP(key, f.code, s.now())
	if !ok {
		return nil, errCodeWrong
	}
	// Against replay (RFC 6238 section 5.2): a compare-and-set in one statement, so that of
	// requests racing with one code only the first to update the row gets in.
	tag, err := tx.Exec(ctx, `UPDATE mfa_totp SET last_step = $2
		WHERE user_id = $1 AND enabled_at IS NOT NULL AND last_step < $2`, u.ID, step)
	if err != nil {
		return nil, fmt.Errorf("accept totp code: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return nil, errCodeReused
	}
	return amrTOTP, nil
}

// totpKey returns the user's TOTP secret, enabled or pending, or errNotFound. A secret the
// previous JWT key sealed is sealed again under the current one on the way.
func (s *store) totpKey(ctx context.Context, tx pgx.Tx, userID int64, enabled bool) ([]byte, error) {
	var sealed string
	err := tx.QueryRow(ctx, "SELECT sealed_secret FROM mfa_totp WHERE user_id = $1 AND (enabled_at IS NOT NULL) = $2",
		userID, enabled).Scan(&sealed)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read totp secret: %w", err)
	}
	plain, byPrevious, err := s.sealer.openKey(sealed)
	if err != nil {
		// A JWT_SECRET_KEY changed without JWT_SECRET_KEY_PREVIOUS: see the README's key rotation.
		return nil, fmt.Errorf("totp secret of user %d: %w", userID, err)
	}
	if byPrevious {
		if _, err := tx.Exec(ctx, "UPDATE mfa_totp SET sealed_secret = $2 WHERE user_id = $1",
			userID, s.sealer.seal(plain)); err != nil {
			return nil, fmt.Errorf("reseal totp secret: %w", err)
		}
	}
	return totpEncoding.DecodeString(plain)
}

// resealTOTPSecrets seals every TOTP secret that the previous JWT key sealed again under the
// current one. Each instance does it at start: once every instance runs with the new key (step
// 2 of a rotation), none is left that only the old key opens, and removing it loses nothing.
func (s *store) resealTOTPSecrets(ctx context.Context) error {
	if s.sealer.previous == nil {
		return nil
	}
	type secret struct {
		UserID int64  `db:"user_id"`
		Sealed string `db:"sealed_secret"`
	}
	rows, _ := s.pool.Query(ctx, "SELECT user_id, sealed_secret FROM mfa_totp")
	secrets, err := pgx.CollectRows(rows, pgx.RowToStructByName[secret])
	if err != nil {
		return fmt.Errorf("read totp secrets: %w", err)
	}
	for _, sc := range secrets {
		plain, byPrevious, err := s.sealer.openKey(sc.Sealed)
		if err != nil || !byPrevious {
			continue // unreadable under both keys: resealing cannot mend it
		}
		// Only if unchanged: a new enrolment meanwhile is sealed under the current key already.
		if _, err := s.pool.Exec(ctx, "UPDATE mfa_totp SET sealed_secret = $3 WHERE user_id = $1 AND sealed_secret = $2",
			sc.UserID, sc.Sealed, s.sealer.seal(plain)); err != nil {
			return fmt.Errorf("reseal totp secret: %w", err)
		}
	}
	return nil
}

// lockMe locks and returns the user row of me as the request authenticated them: a password
// change, reset, deactivation or logout that landed since wins, and the request gets
// errRevokedToken. Every change to a user's second factor locks the user row first, so that
// they take turns and none deadlock.
func lockMe(ctx context.Context, tx pgx.Tx, me user, sessionID int64) (user, error) {
	u, err := queryUser(ctx, tx, "SELECT "+userColumns+` FROM users WHERE id = $1 AND token_version = $2 AND is_active
		AND EXISTS (SELECT 1 FROM sessions WHERE id = $3 AND user_id = $1 AND revoked_at IS NULL) FOR UPDATE`,
		me.ID, me.TokenVersion, sessionID)
	if errors.Is(err, errNotFound) {
		return user{}, errRevokedToken
	}
	return u, err
}

// removeMFA turns the user's TOTP off: the secret, the recovery codes and pending second steps
// of logins are deleted.
func removeMFA(ctx context.Context, tx pgx.Tx, userID int64) error {
	for _, sql := range []string{
		"DELETE FROM mfa_totp WHERE user_id = $1",
		"DELETE FROM mfa_recovery_codes WHERE user_id = $1",
		"DELETE FROM mfa_tokens WHERE user_id = $1",
		"UPDATE users SET mfa_enabled = false, updated_at = now() WHERE id = $1",
	} {
		if _, err := tx.Exec(ctx, sql, userID); err != nil {
			return fmt.Errorf("remove mfa: %w", err)
		}
	}
	return nil
}

// mailMFANotice queues a notice about the user's second factor, unless checkNoticeCap holds it.
func (s *store) mailMFANotice(ctx context.Context, tx pgx.Tx, u user, kind string, d mailData) error {
	if err := s.checkNoticeCap(ctx, tx, u); err != nil {
		return ignoreMailCapped(err)
	}
	return s.enqueueMail(ctx, tx, kind, u.ID, u.Email, d)
}

// codeRefused records a refused second factor of user (actor 0 when no one is logged in):
// a failure of its login's mfa_token (tokenHash, when there is one) and an audit row, and
// returns the reply.
func (s *store) codeRefused(ctx context.Context, actorID, userID int64, tokenHash []byte, refusal error, reply error) error {
	action := auditMFACodeFailed
	if errors.Is(refusal, errCodeReused) {
		action = auditMFACodeReused
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if tokenHash != nil {
			if _, err := tx.Exec(ctx, "UPDATE mfa_tokens SET failures = failures + 1 WHERE token_hash = $1", tokenHash); err != nil {
				return err
			}
		}
		return s.audit(ctx, tx, action, actorID, userID, nil)
	})
	if err != nil {
		return fmt.Errorf("record refused code: %w", err)
	}
	return reply
}

type mfaVerifyRequest struct {
	MFAToken     string `json:"mfa_token"`
	Code         string `json:"code"`
	RecoveryCode string `json:"recovery_code"`
}

func (r mfaVerifyRequest) valid() map[string]string {
	problems := map[string]string{}
	if r.MFAToken == "" {
		problems["mfa_token"] = "is required"
	}
	return secondFactor{r.Code, r.RecoveryCode}.problems(problems)
}

func handleMFAVerify(cfg config, st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[mfaVerifyRequest](w, r)
		if err != nil {
			return err
		}
		if err := invalidFields(req.valid()); err != nil {
			return err
		}
		resp, err := verifyMFA(r.Context(), cfg, st, req)
		st.metrics.observeLogin(resp, err)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, resp)
		return nil
	}
}

// verifyMFA is the second step of a login: the mfa_token and a second factor open a session.
// Each try counts towards the login lockout of the account from the client's network, and is
// given back unless the factor was wrong (a success clears the count, as a login does).
func verifyMFA(ctx context.Context, cfg config, st *store, req mfaVerifyRequest) (tokenResponse, error) {
	u, err := st.mfaTokenUser(ctx, req.MFAToken)
	if err != nil {
		return tokenResponse{}, err
	}
	attempt, err := st.reserveLoginAttempt(ctx, accountKey(u.ID))
	if err != nil {
		return tokenResponse{}, err
	}
	f := secondFactor{req.Code, req.RecoveryCode}
	sessionID, refreshToken, amr, err := st.completeMFALogin(ctx, req.MFAToken, u, f)
	if errors.Is(err, errCodeWrong) || errors.Is(err, errCodeReused) {
		return tokenResponse{}, st.codeRefused(ctx, 0, u.ID, hashToken(req.MFAToken), err, fail(errUnauthorized, "Invalid code"))
	}
	if err != nil {
		return tokenResponse{}, giveBack(ctx, st, attempt, err)
	}
	return newTokenResponse(cfg, st, u, sessionID, amr, refreshToken), nil
}

// mfaTokenUser returns the user of a usable mfa_token (unexpired, fewer than
// mfaTokenMaxFailures wrong codes, its user active and their password unchanged since);
// else errMFATokenInvalid.
func (s *store) mfaTokenUser(ctx context.Context, token string) (user, error) {
	var u user
	err := scanUser(s.pool.QueryRow(ctx, "SELECT "+qualifiedUserColumns+` FROM mfa_tokens t
		JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1 AND t.expires_at > $2 AND t.failures < $3
			AND u.is_active AND u.token_version = t.token_version`,
		hashToken(token), s.now(), mfaTokenMaxFailures), &u)
	if errors.Is(err, errNotFound) {
		return user{}, errMFATokenInvalid
	}
	return u, err
}

// completeMFALogin uses up the mfa_token and the second factor f of u and opens a session, in
// one transaction: a wrong factor leaves the token as it was (the caller counts the failure).
// A password change or reset since the token was looked up, or a deactivation, voids it.
func (s *store) completeMFALogin(ctx context.Context, token string, u user, f secondFactor) (int64, string, []string, error) {
	var sessionID int64
	var refreshToken string
	var amr []string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		current, err := queryUser(ctx, tx, "SELECT "+userColumns+" FROM users WHERE id = $1 FOR UPDATE", u.ID)
		if errors.Is(err, errNotFound) || err == nil && (current.TokenVersion != u.TokenVersion || !current.IsActive) {
			return errMFATokenInvalid
		}
		if err != nil {
			return err
		}
		// Deleted only when still usable: of two requests with one token, one gets through.
		tag, err := tx.Exec(ctx, `DELETE FROM mfa_tokens WHERE token_hash = $1 AND user_id = $2 AND expires_at > $3
			AND failures < $4`, hashToken(token), u.ID, s.now(), mfaTokenMaxFailures)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return errMFATokenInvalid
		}
		if amr, err = s.useSecondFactor(ctx, tx, current, f); err != nil {
			return err
		}
		sessionID, refreshToken, err = s.insertSession(ctx, tx, u, accountKey(u.ID), "", amr)
		return err
	})
	if err != nil {
		return 0, "", nil, fmt.Errorf("complete mfa login: %w", err)
	}
	return sessionID, refreshToken, amr, nil
}
