package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
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

// mailCap is a cap of limit events per window. from is the FROM and WHERE clause selecting
// the events (with their created_at), its parameters numbered from $1 as if it stood alone.
type mailCap struct {
	limit  int
	window time.Duration
	from   string
	args   []any
}

var sqlParameter = regexp.MustCompile(`\$([0-9]+)`)

// capEnd is when the last of caps to lift lifts, each a window after the limit-th latest of
// its events of the past window; zero when none holds. One statement for all of them, so that
// one cap or three cost the same round trip, and the caller that checks them for no account
// at all runs what it runs for a capped one.
func (s *store) capEnd(ctx context.Context, tx pgx.Tx, caps ...mailCap) (time.Time, error) {
	args := []any{s.now()}
	ends := make([]string, len(caps))
	for i, c := range caps {
		offset := len(args)
		from := sqlParameter.ReplaceAllStringFunc(c.from, func(p string) string {
			n, _ := strconv.Atoi(p[1:])
			return "$" + strconv.Itoa(n+offset)
		})
		args = append(args, c.args...)
		window := fmt.Sprintf("interval '%d microseconds'", c.window.Microseconds())
		ends[i] = fmt.Sprintf("(SELECT created_at + %[1]s %[2]s AND created_at > $1::timestamptz - %[1]s "+
			"ORDER BY created_at DESC OFFSET %[3]d LIMIT 1)", window, from, c.limit-1)
	}
	var end *time.Time
	if err := tx.QueryRow(ctx, "SELECT GREATEST("+strings.Join(ends, ", ")+")", args...).Scan(&end); err != nil {
		return time.Time{}, fmt.Errorf("mail cap: %w", err)
	}
	if end == nil {
		return time.Time{}, nil
	}
	return *end, nil
}

// checkCaps returns errMailCapped while one of caps holds.
func (s *store) checkCaps(ctx context.Context, tx pgx.Tx, caps ...mailCap) error {
	end, err := s.capEnd(ctx, tx, caps...)
	if err == nil && end.After(s.now()) {
		err = errMailCapped
	}
	return err
}

// askedMailCaps are the caps on mail of action (one audit row each) that anyone may ask for
// to the user userID at email: per account, a minute and an hour, and the address's cap.
func askedMailCaps(userID int64, email, action string) []mailCap {
	asked := "FROM audit_log WHERE target_id = $1::bigint AND action = $2::text"
	return []mailCap{
		{askedMailsPerMinute, time.Minute, asked, []any{userID, action}},
		{askedMailsPerHour, time.Hour, asked, []any{userID, action}},
		addressCap(email, userID),
	}
}

// addressCap is the cap on mail to email about other users than userID: accounts taking
// turns with an address are capped, not its holder.
func addressCap(email string, userID int64) mailCap {
	return mailCap{mailsPerAddressPerHour, time.Hour,
		`FROM mail_outbox WHERE lower(recipient COLLATE "C") = lower($1::text COLLATE "C") AND user_id IS DISTINCT FROM $2::bigint`,
		[]any{email, userID}}
}

// checkAddressCap returns errMailCapped while u's address is past its cap (see addressCap).
func (s *store) checkAddressCap(ctx context.Context, tx pgx.Tx, u user) error {
	return s.checkCaps(ctx, tx, addressCap(u.Email, u.ID))
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
	err := s.checkCaps(ctx, tx, mailCap{passwordNoticesPerHour, time.Hour,
		"FROM mail_outbox WHERE kind = $1::text AND user_id = $2::bigint", []any{mailPasswordChanged, u.ID}})
	if err != nil {
		return err
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
	until, err := s.capEnd(ctx, tx, mailCap{emailChangesPerHour, time.Hour, `FROM audit_log WHERE actor_id = $1::bigint
		AND target_id = $1::bigint AND action = $2::text AND details->'fields' ? 'email'`, []any{userID, auditProfileUpdated}},
		addressCap(email, userID))
	if err != nil {
		return err
	}
	if until.After(s.now()) {
		return waitError{until.Sub(s.now()), errEmailChangesCapped}
	}
	return nil
}
