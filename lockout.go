package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The login lockout: failures counted per (account, client network), shared by login and the
// current-password checks, so that no endpoint gives an attacker extra guesses.

// accountKey names a known account in the lockout, whether it was named by username or email.
func accountKey(userID int64) string { return "user:" + strconv.FormatInt(userID, 10) }

// giveBack releases the attempt when err, which is no wrong password, ended the request that
// reserved it: only a wrong password counts towards a lockout, so that a right password that
// meets a 503 (or is told to verify its address first) cannot lock its owner out.
func giveBack(ctx context.Context, st *store, attempt loginAttempt, err error) error {
	if err == nil {
		return nil
	}
	// Released even when the client has hung up: the count must not outlive the request.
	if releaseErr := st.releaseLoginAttempt(context.WithoutCancel(ctx), attempt); releaseErr != nil {
		return errors.Join(err, releaseErr)
	}
	return err
}

// loginAttempt is an attempt reserveLoginAttempt counted (or, when not counted, nothing).
type loginAttempt struct {
	counted     bool
	login, ip   string
	lockedUntil *time.Time // the lock the attempt set, if it set one
}

// reserveLoginAttempt counts an attempt to log in as login from the request's address as a
// failure, before its password is checked (a success then clears the count, and any other
// outcome but a wrong password releases the attempt), and refuses it with errLockedOut while
// the pair is locked. From the policy's loginMaxFailures-th consecutive failure on, the pair
// is locked for a back-off that doubles from one minute up to fifteen. Counting is one statement: attempts
// made in parallel are counted one by one, and once one of them locks the pair the others
// are refused.
func (s *store) reserveLoginAttempt(ctx context.Context, login string) (loginAttempt, error) {
	for {
		attempt, lockedUntil, err := s.countLoginAttempt(ctx, login)
		switch {
		case err != nil:
			return loginAttempt{}, err
		case attempt.counted:
			return attempt, nil
		case lockedUntil.After(s.now()):
			return loginAttempt{}, waitError{lockedUntil.Sub(s.now()), errLockedOut}
		}
		// A successful login lifted the lock, or it ran out, between the two statements of
		// countLoginAttempt: count the attempt afresh.
	}
}

// countLoginAttempt counts an attempt unless the pair is locked, and then returns the lock's
// end (zero if it was lifted meanwhile).
func (s *store) countLoginAttempt(ctx context.Context, login string) (loginAttempt, time.Time, error) {
	ip, now := originOf(ctx).network(), s.now()
	attempt := loginAttempt{counted: true, login: login, ip: ip}
	err := s.pool.QueryRow(ctx, `INSERT INTO login_failures AS f (login, ip, failures, locked_until, updated_at)
		VALUES ($1, $2, 1, CASE WHEN $4::int <= 1 THEN $3::timestamptz + interval '1 minute' END, $3)
		ON CONFLICT (login, ip) DO UPDATE SET failures = f.failures + 1, updated_at = $3,
			locked_until = CASE WHEN f.failures + 1 >= $4::int THEN $3::timestamptz +
				interval '1 minute' * LEAST(power(2, LEAST(f.failures + 1 - $4::int, 4)), 15) END
		WHERE f.locked_until IS NULL OR f.locked_until <= $3
		RETURNING locked_until`, login, ip, now, s.policy.loginMaxFailures).Scan(&attempt.lockedUntil)
	if err == nil {
		return attempt, time.Time{}, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return loginAttempt{}, time.Time{}, fmt.Errorf("count login attempt: %w", err)
	}
	var lockedUntil time.Time
	err = s.pool.QueryRow(ctx, "SELECT locked_until FROM login_failures WHERE login = $1 AND ip = $2 AND locked_until IS NOT NULL",
		login, ip).Scan(&lockedUntil)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return loginAttempt{}, time.Time{}, fmt.Errorf("read login lock: %w", err)
	}
	return loginAttempt{}, lockedUntil, nil
}

// releaseLoginAttempt undoes a counted attempt that turned out to be no wrong password: its
// count, and the lock it set (a lock a later failure set stays). Then the attempt has
// changed nothing, as a 503 promises.
func (s *store) releaseLoginAttempt(ctx context.Context, a loginAttempt) error {
	if !a.counted {
		return nil
	}
	_, err := s.pool.Exec(ctx, `UPDATE login_failures SET failures = failures - 1,
			locked_until = CASE WHEN locked_until = $3 THEN NULL ELSE locked_until END
		WHERE login = $1 AND ip = $2 AND failures > 0`, a.login, a.ip, a.lockedUntil)
	if err != nil {
		return fmt.Errorf("release login attempt: %w", err)
	}
	return nil
}

// forgetLoginFailures clears the failure count of login from the request's address, through
// db: the pool, or the transaction of a login.
func forgetLoginFailures(ctx context.Context, db interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, login string) error {
	_, err := db.Exec(ctx, "DELETE FROM login_failures WHERE login = $1 AND ip = $2", login, originOf(ctx).network())
	return err
}
