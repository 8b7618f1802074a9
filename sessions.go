package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
)

// Sessions: one per login, holding rotating refresh tokens; every access token names its
// session, so revoking a session ends it everywhere at the next request.

// session is a login as its owner sees it in the session list.
type session struct {
	ID         int64     `json:"id" db:"id"`
	CreatedAt  time.Time `json:"created_at" db:"created_at"`
	LastUsedAt time.Time `json:"last_used_at" db:"last_used_at"`
	ExpiresAt  time.Time `json:"expires_at" db:"expires_at"`
	IP         string    `json:"ip" db:"ip"`
	UserAgent  string    `json:"user_agent" db:"user_agent"`
	Current    bool      `json:"current" db:"-"`
}

// startSession records a successful login of u, who typed login: it clears the login's
// failure count, re-hashes the password when rehash is set, and opens a session with a fresh
// refresh token, all in one transaction. The user is read again under a lock first: a login
// whose password was checked against a hash that a concurrent reset or change replaced (both
// bump the token version), or whose account was deactivated meanwhile, gets errBadCredentials
// rather than a session. A re-hash by a concurrent login of the same user changes the hash but
// not the password, and spoils nothing: only the hash that was checked is replaced.
func (s *store) startSession(ctx context.Context, u user, login, rehash string, amr []string) (int64, string, error) {
	var sessionID int64
	var token string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) (err error) {
		sessionID, token, err = s.insertSession(ctx, tx, u, login, rehash, amr)
		return err
	})
	if err != nil {
		return 0, "", fmt.Errorf("start session: %w", err)
	}
	return sessionID, token, nil
}

// Authentication methods a session records (RFC 8176 names, and "recovery" for a recovery code).
var (
	amrPassword = []string{"pwd"}
	amrTOTP     = []string{"pwd", "totp"}
	amrRecovery = []string{"pwd", "recovery"}
)

// insertSession is startSession inside tx, for a session authenticated by amr.
func (s *store) insertSession(ctx context.Context, tx pgx.Tx, u user, login, rehash string, amr []string) (int64, string, error) {
	var current user
	err := scanUser(tx.QueryRow(ctx, "SELECT "+userColumns+" FROM users WHERE id = $1 FOR UPDATE", u.ID), &current)
	if errors.Is(err, errNotFound) || err == nil && (current.TokenVersion != u.TokenVersion || !current.IsActive) {
		return 0, "", errBadCredentials
	}
	if err != nil {
		return 0, "", err
	}
	if err := forgetLoginFailures(ctx, tx, login); err != nil {
		return 0, "", err
	}
	if rehash != "" {
		if _, err := tx.Exec(ctx, "UPDATE users SET password_hash = $2 WHERE id = $1 AND password_hash = $3",
			u.ID, rehash, u.PasswordHash); err != nil {
			return 0, "", err
		}
	}
	var sessionID int64
	token := randomToken()
	o, now := originOf(ctx), s.now()
	// A session cannot outlive its lifetime, so neither can its first refresh token.
	refreshTTL := min(s.policy.refreshTTL, s.policy.sessionLifetime)
	err = tx.QueryRow(ctx, `INSERT INTO sessions (user_id, created_at, last_used_at, expires_at, ip, user_agent, amr)
		VALUES ($1, $2, $2, $3, $4, $5, $6) RETURNING id`, u.ID, now, now.Add(refreshTTL), o.ip, o.userAgent, amr).Scan(&sessionID)
	if err != nil {
		return 0, "", err
	}
	if err := insertRefreshToken(ctx, tx, sessionID, token, now.Add(refreshTTL)); err != nil {
		return 0, "", err
	}
	return sessionID, token, s.audit(ctx, tx, auditLoginSucceeded, u.ID, u.ID, map[string]any{"session_id": sessionID})
}

func insertRefreshToken(ctx context.Context, tx pgx.Tx, sessionID int64, token string, expiresAt time.Time) error {
	_, err := tx.Exec(ctx, "INSERT INTO refresh_tokens (token_hash, session_id, expires_at) VALUES ($1, $2, $3)",
		hashToken(token), sessionID, expiresAt)
	return err
}

var (
	errRefreshInvalid = fail(errUnauthorized, "Invalid or expired refresh token")
	errLockedOut      = fail(errTooMany, "Too many failed logins; try again later")
)

// refreshSQL rotates a refresh token in one statement, so a refresh costs one round trip.
// It locks the token's session, then the token (concurrent refreshes of one session take
// turns; session before token is the order of every statement that locks both, such as a
// user's deletion, so none deadlock), and reads them with the user. When the token may be
// used (live session within its lifetime of $6 seconds from login, active user, unexpired, not
// rotated, or rotated at most $5 seconds ago), it marks it rotated (keeping its first rotation
// time), issues the successor $3 and extends the session until $4, but never beyond its
// lifetime. It returns the token's row either way, with issued telling whether the successor
// was made.
var refreshSQL = `WITH session AS MATERIALIZED (
		SELECT id, revoked_at IS NULL AS live, user_id, created_at, amr FROM sessions
		WHERE id = (SELECT session_id FROM refresh_tokens WHERE token_hash = $1) FOR NO KEY UPDATE
	), token AS (
		SELECT t.token_hash, t.session_id, t.expires_at AS token_expires_at, t.rotated_at,
			s.live AS session_live, s.amr, s.user_id, LEAST($4, s.created_at + $6 * interval '1 second') AS new_expires_at
		FROM session s JOIN refresh_tokens t ON t.session_id = s.id
		WHERE t.token_hash = $1 FOR UPDATE OF t
	), usable AS (
		SELECT token.* FROM token JOIN users ON users.id = token.user_id
		WHERE token.session_live AND users.is_active AND token.token_expires_at > $2 AND token.new_expires_at > $2
			AND (token.rotated_at IS NULL OR token.rotated_at >= $2 - $5 * interval '1 second')
	), rotated AS (
		UPDATE refresh_tokens t SET rotated_at = $2 FROM usable
		WHERE t.token_hash = usable.token_hash AND t.rotated_at IS NULL
	), issued AS (
		INSERT INTO refresh_tokens (token_hash, session_id, expires_at) SELECT $3, session_id, new_expires_at FROM usable
	), extended AS (
		UPDATE sessions s SET last_used_at = $2, expires_at = new_expires_at FROM usable WHERE s.id = usable.session_id
	)
	SELECT ` + qualifiedUserColumns + `, token.session_id, token.token_expires_at, token.rotated_at,
		token.session_live, token.amr, EXISTS (SELECT 1 FROM usable) AS issued
	FROM token JOIN users u ON u.id = token.user_id`

// refreshRow is a refresh token with its session and user, as refreshSQL returns it.
type refreshRow struct {
	user
	SessionID      int64
	TokenExpiresAt time.Time
	RotatedAt      *time.Time
	SessionLive    bool
	AMR            []string
	Issued         bool
}

// refresh exchanges a refresh token for a new one in the same session and returns the
// session with its user, and the new token. The new token lasts the policy's refreshTTL, but
// the session ends its sessionLifetime after its login however often it is refreshed, so that
// a stolen session cannot be kept forever. A token already rotated out is answered the same way
// within the reuseInterval of its rotation (concurrent or retried refreshes); later, its reuse
// means it was stolen: the session is revoked and the event audited.
func (s *store) refresh(ctx context.Context, token string) (refreshRow, string, error) {
	newToken := randomToken()
	now, reuseInterval := s.now(), s.policy.reuseInterval
	var r refreshRow
	err := scanUser(s.pool.QueryRow(ctx, refreshSQL, hashToken(token), now, hashToken(newToken), now.Add(s.policy.refreshTTL),
		reuseInterval.Seconds(), s.policy.sessionLifetime.Seconds()),
		&r.user, &r.SessionID, &r.TokenExpiresAt, &r.RotatedAt, &r.SessionLive, &r.AMR, &r.Issued)
	switch {
	case errors.Is(err, errNotFound):
		return refreshRow{}, "", errRefreshInvalid
	case err != nil:
		return refreshRow{}, "", fmt.Errorf("refresh: %w", err)
	case r.Issued:
		return r, newToken, nil
	case r.SessionLive && r.IsActive && now.Before(r.TokenExpiresAt) && r.RotatedAt != nil && now.Sub(*r.RotatedAt) > reuseInterval:
		// Rotated out longer ago than the reuse interval: a copy of the token is in other hands.
		// (Within it, a token is refused only when the session's lifetime is over: no theft.)
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if _, err := s.revokeSession(ctx, tx, r.ID, r.SessionID); err != nil {
				return err
			}
			return s.audit(ctx, tx, auditRefreshTokenReused, 0, r.ID, map[string]any{"session_id": r.SessionID})
		})
		if err != nil {
			return refreshRow{}, "", fmt.Errorf("revoke reused session: %w", err)
		}
	}
	return refreshRow{}, "", errRefreshInvalid
}

// revokeSessions revokes every live session of the user.
func (s *store) revokeSessions(ctx context.Context, tx pgx.Tx, userID int64) error {
	_, err := tx.Exec(ctx, "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL", userID, s.now())
	return err
}

// revokeOtherSessions revokes every live session of the user but keep, and replaces every
// refresh token of keep by one fresh token, which it returns. This defends against a chain
// forked off keep by a thief who replayed a token within the reuse interval: it lives in the
// kept session, and must not outlive a password change. The kept session is locked before
// its tokens are replaced, in the order of refreshSQL: a concurrent refresh either commits
// first, and the token it issued is replaced too, or then finds its token gone.
func (s *store) revokeOtherSessions(ctx context.Context, tx pgx.Tx, userID, keep int64) (string, error) {
	_, err := tx.Exec(ctx, "UPDATE sessions SET revoked_at = $3 WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL",
		userID, keep, s.now())
	if err != nil {
		return "", fmt.Errorf("revoke other sessions: %w", err)
	}
	var expiresAt time.Time
	err = tx.QueryRow(ctx, "SELECT expires_at FROM sessions WHERE id = $1 AND user_id = $2 FOR NO KEY UPDATE",
		keep, userID).Scan(&expiresAt)
	if err != nil {
		return "", fmt.Errorf("lock kept session: %w", err)
	}
	if _, err := tx.Exec(ctx, "DELETE FROM refresh_tokens WHERE session_id = $1", keep); err != nil {
		return "", fmt.Errorf("retire refresh tokens: %w", err)
	}
	token := randomToken()
	if err := insertRefreshToken(ctx, tx, keep, token, expiresAt); err != nil {
		return "", fmt.Errorf("issue refresh token: %w", err)
	}
	return token, nil
}

// sessionIsLive is the SQL condition of a live session: not revoked, not expired, and within
// its lifetime of its login, even if it began when the lifetime was longer. Its queries take
// $3 and $4 from liveAt.
const sessionIsLive = "revoked_at IS NULL AND expires_at > $3 AND created_at > $4"

// liveAt is the arguments $3 and $4 of sessionIsLive: now, and the oldest login still live.
func (s *store) liveAt() (now, bornAfter time.Time) {
	now = s.now()
	return now, now.Add(-s.policy.sessionLifetime)
}

// revokeSession revokes one live session of the user and reports whether there was one.
func (s *store) revokeSession(ctx context.Context, tx pgx.Tx, userID, sessionID int64) (bool, error) {
	now, bornAfter := s.liveAt()
	tag, err := tx.Exec(ctx, "UPDATE sessions SET revoked_at = $3 WHERE id = $2 AND user_id = $1 AND "+sessionIsLive,
		userID, sessionID, now, bornAfter)
	return tag.RowsAffected() == 1, err
}

// endSession revokes one session of the user (logout, or revocation from the session list),
// recording action. Another user's session, or one already ended, is errNotFound.
func (s *store) endSession(ctx context.Context, userID, sessionID int64, action string) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		found, err := s.revokeSession(ctx, tx, userID, sessionID)
		if err != nil {
			return err
		}
		if !found {
			return fail(errNotFound, "Session not found")
		}
		return s.audit(ctx, tx, action, userID, userID, map[string]any{"session_id": sessionID})
	})
}

// endAllSessions revokes every session of the user.
func (s *store) endAllSessions(ctx context.Context, userID int64) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := s.revokeSessions(ctx, tx, userID); err != nil {
			return err
		}
		return s.audit(ctx, tx, auditLogoutAll, userID, userID, nil)
	})
}

// liveSessions lists the user's live sessions, latest used first.
func (s *store) liveSessions(ctx context.Context, userID int64) ([]session, error) {
	now, bornAfter := s.liveAt()
	rows, _ := s.pool.Query(ctx, `SELECT id, created_at, last_used_at, ip, user_agent,
			LEAST(expires_at, created_at + $2 * interval '1 second') AS expires_at
		FROM sessions WHERE user_id = $1 AND `+sessionIsLive+`
		ORDER BY last_used_at DESC, id DESC`, userID, s.policy.sessionLifetime.Seconds(), now, bornAfter)
	sessions, err := pgx.CollectRows(rows, pgx.RowToStructByNameLax[session])
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	return sessions, nil
}

// sessionUser loads the user of an access token together with whether its session is live:
// the one query behind every authenticated request.
func (s *store) sessionUser(ctx context.Context, userID, sessionID int64) (user, bool, error) {
	var u user
	var live bool
	now, bornAfter := s.liveAt()
	err := scanUser(s.pool.QueryRow(ctx, "SELECT "+userColumns+`, EXISTS (SELECT 1 FROM sessions
		WHERE id = $2 AND user_id = $1 AND `+sessionIsLive+`) FROM users WHERE id = $1`,
		userID, sessionID, now, bornAfter), &u, &live)
	return u, live, err
}

type refreshRequest struct {
	RefreshToken string `json:"refresh_token"`
}

func handleRefresh(cfg config, st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[refreshRequest](w, r)
		if err != nil {
			return err
		}
		if req.RefreshToken == "" {
			return invalidFields(map[string]string{"refresh_token": "is required"})
		}
		s, refreshToken, err := st.refresh(r.Context(), req.RefreshToken)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, newTokenResponse(cfg, st, s.user, s.SessionID, s.AMR, refreshToken))
		return nil
	}
}

func handleLogout(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		err := st.endSession(r.Context(), currentUser(r.Context()).ID, currentSession(r.Context()), auditLogout)
		// errNotFound: the session was live when the request was authenticated, and a
		// logout-all, a revocation or the user's deletion ended it since. Logging out of an
		// ended session has nothing left to do, and is no error.
		if err != nil && !errors.Is(err, errNotFound) {
			return err
		}
		writeJSON(w, http.StatusOK, message{"Logged out"})
		return nil
	}
}

func handleLogoutAll(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := st.endAllSessions(r.Context(), currentUser(r.Context()).ID); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, message{"Logged out of every session"})
		return nil
	}
}

func handleListSessions(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		sessions, err := st.liveSessions(r.Context(), currentUser(r.Context()).ID)
		if err != nil {
			return err
		}
		for i := range sessions {
			sessions[i].Current = sessions[i].ID == currentSession(r.Context())
		}
		writeJSON(w, http.StatusOK, sessions)
		return nil
	}
}

func handleRevokeSession(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, ok := parseID(r.PathValue("id"))
		if !ok {
			return fail(errInvalid, "Session id must be a positive integer")
		}
		if err := st.endSession(r.Context(), currentUser(r.Context()).ID, id, auditSessionRevoked); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, message{"Session revoked"})
		return nil
	}
}
