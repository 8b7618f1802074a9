package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Caps on mail, so that no endpoint, and no number of accounts taking turns with an address,
// can be used to flood a mailbox. Each counts recent rows (audit rows, queued mail) and lifts
// when the row that makes it hold is a window old.

const (
	askedMailsPerMinute    = 1  // reset or verification mails anyone may ask for, per account and kind,
	askedMailsPerHour      = 5  // a minute and an hour
	emailChangesPerHour    = 5  // a user's own changes of address
	mailsPerAddressPerHour = 10 // mail to an address about other users than the one at hand
	passwordNoticesPerHour = 5  // "your password was changed" notices per account: the first tells the owner
)

var (
	// errMailCapped means a mail was not sent because of its cap.
	errMailCapped         = errors.New("mail cap reached")
	errEmailChangesCapped = fail(errTooMany, "Too many email changes; try again later")
)

// capEnd is when a cap of limit events per window lifts: a window after the limit-th latest
// event of the past window, or zero when there are fewer. from is the FROM and WHERE clause
// selecting the events (with their created_at), with args as $3 on.
func (s *store) capEnd(ctx context.Context, tx pgx.Tx, limit int, window time.Duration, from string, args ...any) (time.Time, error) {
	var nth time.Time
	err := tx.QueryRow(ctx, "SELECT created_at "+from+" AND created_at > $1 ORDER BY created_at DESC OFFSET $2 LIMIT 1",
		append([]any{s.now().Add(-window), limit - 1}, args...)...).Scan(&nth)
	if errors.Is(err, pgx.ErrNoRows) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("mail cap: %w", err)
	}
	return nth.Add(window), nil
}

// checkMailCap returns errMailCapped when the user was sent as many mails of action (one
// audit row each) as anyone may ask for, in the past minute or hour.
func (s *store) checkMailCap(ctx context.Context, tx pgx.Tx, userID int64, action string) error {
	for _, c := range []struct {
		limit  int
		window time.Duration
	}{{askedMailsPerMinute, time.Minute}, {askedMailsPerHour, time.Hour}} {
		end, err := s.capEnd(ctx, tx, c.limit, c.window, "FROM audit_log WHERE target_id = $3 AND action = $4", userID, action)
		if err != nil {
			return err
		}
		if end.After(s.now()) {
			return errMailCapped
		}
	}
	return nil
}

// addressCapEnd is when the cap on mail to email lifts for mail about the user userID; zero or
// past when it does not hold. Mail about that user does not count, so that accounts taking
// turns with an address are capped, not its holder.
func (s *store) addressCapEnd(ctx context.Context, tx pgx.Tx, email string, userID int64) (time.Time, error) {
	return s.capEnd(ctx, tx, mailsPerAddressPerHour, time.Hour,
		`FROM mail_outbox WHERE lower(recipient COLLATE "C") = lower($3 COLLATE "C") AND user_id IS DISTINCT FROM $4`, email, userID)
}

// checkAddressCap returns errMailCapped while u's address is past its cap (see addressCapEnd).
func (s *store) checkAddressCap(ctx context.Context, tx pgx.Tx, u user) error {
	end, err := s.addressCapEnd(ctx, tx, u.Email, u.ID)
	if err == nil && end.After(s.now()) {
		err = errMailCapped
	}
	return err
}

// checkNoticeCap returns errMailCapped when a notice to u's address (a changed address or
// password) must not go out: the address was never verified (the account never showed it owns
// it) and is past its cap; else registering with an address and changing it, over and over,
// would flood it. A verified address is always told.
func (s *store) checkNoticeCap(ctx context.Context, tx pgx.Tx, u user) error {
	if u.EmailVerified {
		return nil
	}
	return s.checkAddressCap(ctx, tx, u)
}

// checkPasswordNoticeCap returns errMailCapped past passwordNoticesPerHour notices to the
// account, or when checkNoticeCap says so.
func (s *store) checkPasswordNoticeCap(ctx context.Context, tx pgx.Tx, u user) error {
	end, err := s.capEnd(ctx, tx, passwordNoticesPerHour, time.Hour, "FROM mail_outbox WHERE kind = $3 AND user_id = $4",
		mailPasswordChanged, u.ID)
	if err != nil {
		return err
	}
	if end.After(s.now()) {
		return errMailCapped
	}
	return s.checkNoticeCap(ctx, tx, u)
}

// ignoreMailCapped is err, unless it only says that a mail was not sent for its cap.
func ignoreMailCapped(err error) error {
	if errors.Is(err, errMailCapped) {
		return nil
	}
	return err
}

// checkEmailChangeCap refuses the user's own change of address to email with a waitError
// while the user changed address emailChangesPerHour times in the past hour, or email is past
// its cap. Changes by an admin to another user's address are not capped.
func (s *store) checkEmailChangeCap(ctx context.Context, tx pgx.Tx, userID int64, email string) error {
	until, err := s.capEnd(ctx, tx, emailChangesPerHour, time.Hour, `FROM audit_log WHERE actor_id = $3 AND target_id = $3
		AND action = $4 AND details->'fields' ? 'email'`, userID, auditProfileUpdated)
	if err != nil {
		return err
	}
	addressEnd, err := s.addressCapEnd(ctx, tx, email, userID)
	if err != nil {
		return err
	}
	if addressEnd.After(until) {
		until = addressEnd
	}
	if until.After(s.now()) {
		return waitError{until.Sub(s.now()), errEmailChangesCapped}
	}
	return nil
}
