package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// The mail outbox: the store queues messages in the transaction of their cause, and each
// instance runs a worker that sends them, retrying with back-off. A message is locked while it
// is being sent (FOR UPDATE SKIP LOCKED), so two instances never send it both; if the process
// dies mid-send the lock goes with it and the message is sent again later: at least once,
// never zero times.

// enqueueMail queues a message of kind, about the user userID, to the address inside tx.
func (s *store) enqueueMail(ctx context.Context, tx pgx.Tx, kind string, userID int64, to string, d mailData) error {
	if d.Token != "" {
		d.Sealed = s.sealer.seal(d.Token)
	}
	raw, err := jsonText(d)
	if err == nil {
		_, err = tx.Exec(ctx, `INSERT INTO mail_outbox (kind, user_id, recipient, data, created_at, next_attempt_at)
			VALUES ($1, $2, $3, $4, $5, $5)`, kind, userID, to, raw, s.now())
	}
	if err != nil {
		return fmt.Errorf("queue %s mail: %w", kind, err)
	}
	return nil
}

// queuedMail is a message waiting in the outbox.
// tokenMail is a mail that carries a token: its kind, how long the token lasts, and the audit
// action that records it.
type tokenMail struct {
	kind   string
	ttl    time.Duration
	action string
}

// mailToken queues the mail m that carries token to u, and records its action on behalf of
// actorID (0: u's own request): what a reset, a verification and an invitation do once their
// token is stored.
func (s *store) mailToken(ctx context.Context, tx pgx.Tx, actorID int64, u user, m tokenMail, token string) error {
	d := newMailData(u)
	d.Token, d.Expires = token, humanDuration(m.ttl)
	if err := s.enqueueMail(ctx, tx, m.kind, u.ID, u.Email, d); err != nil {
		return err
	}
	return s.audit(ctx, tx, m.action, actorID, u.ID, nil)
}

type queuedMail struct {
	ID        int64
	Kind      string
	Recipient string
	Data      mailData
	Attempts  int
}

// mailRetryDelay is the wait before the next attempt after a message failed attempts times:
// 30 s, doubling, at most an hour.
func mailRetryDelay(attempts int) time.Duration {
	return min(30*time.Second<<min(attempts-1, 10), time.Hour)
}

// deliverNext sends the oldest due message with send and records the outcome; it reports
// whether there was a message. A message that fails maxAttempts times is kept as failed
// with its last error.
func (s *store) deliverNext(ctx context.Context, maxAttempts int, send func(queuedMail) error) (bool, error) {
	found := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var m queuedMail
		err := tx.QueryRow(ctx, `SELECT id, kind, recipient, data, attempts FROM mail_outbox
			WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $1
			ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED`, s.now()).
			Scan(&m.ID, &m.Kind, &m.Recipient, &m.Data, &m.Attempts)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		var sendErr error
		if m.Data.Sealed != "" {
			m.Data.Token, sendErr = s.sealer.open(m.Data.Sealed)
		}
		if sendErr == nil {
			sendErr = send(m)
		}
		now, attempts := s.now(), m.Attempts+1
		switch {
		case sendErr == nil:
			_, err = tx.Exec(ctx, `UPDATE mail_outbox SET sent_at = $2, attempts = $3, data = '{}', last_error = NULL
				WHERE id = $1`, m.ID, now, attempts)
		case attempts >= maxAttempts:
			_, err = tx.Exec(ctx, `UPDATE mail_outbox SET failed_at = $2, attempts = $3, data = '{}', last_error = $4
				WHERE id = $1`, m.ID, now, attempts, sendErr.Error())
		default:
			_, err = tx.Exec(ctx, `UPDATE mail_outbox SET next_attempt_at = $2, attempts = $3, last_error = $4
				WHERE id = $1`, m.ID, now.Add(mailRetryDelay(attempts)), attempts, sendErr.Error())
		}
		return err
	})
	return found, err
}

// sendQueued renders a queued message and hands it to the backend, logging a failure (never
// the message itself, which may hold a token).
func sendQueued(cfg mailConfig, logger *slog.Logger, m queuedMail) (mailMessage, error) {
	msg, err := render(cfg, m.Kind, m.Recipient, m.Data)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), cfg.totalTimeout)
		defer cancel()
		err = deliver(ctx, cfg, logger, msg)
	}
	if err != nil {
		logger.Warn("mail not sent", "id", m.ID, "kind", m.Kind, "attempt", m.Attempts+1, "err", err)
	}
	return msg, err
}

// mailPollInterval is how often a worker looks for due mail.
const mailPollInterval = time.Second

// runOutbox sends due mail until ctx is done. A message being sent when ctx ends is finished
// first, so shutdown does not cut a conversation with the mail server in half.
func runOutbox(ctx context.Context, cfg mailConfig, st *store, logger *slog.Logger) {
	send := func(m queuedMail) error {
		_, err := sendQueued(cfg, logger, m)
		return err
	}
	ticker := time.NewTicker(mailPollInterval)
	defer ticker.Stop()
	for {
		for ctx.Err() == nil {
			sent, err := st.deliverNext(context.WithoutCancel(ctx), cfg.maxAttempts, send)
			if err != nil && !isUnavailable(err) {
				logger.Error("mail outbox", "err", err)
			}
			if !sent || err != nil {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}
