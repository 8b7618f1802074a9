package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
)

// The per-address limit on the authentication endpoints: a token bucket per client network,
// kept in PostgreSQL so that every instance shares it.

// limitAuth applies the per-address token bucket (AUTH_RATE_LIMIT per minute, AUTH_RATE_BURST)
// to an authentication endpoint. The bucket lives in PostgreSQL so the limit holds however
// many instances share the load.
func limitAuth(cfg config, st *store, logger *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		if cfg.authRateLimit == 0 {
			return next
		}
		perSecond := float64(cfg.authRateLimit) / 60
		refill := time.Duration(float64(time.Second) / perSecond) // until the bucket has a token again
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			allowed, err := st.takeToken(r.Context(), "auth:"+originOf(r.Context()).network(), float64(cfg.authRateBurst), perSecond)
			if err != nil {
				writeError(w, r, logger, err)
				return
			}
			if !allowed {
				st.metrics.rateLimited.Add(1)
				writeError(w, r, logger, waitError{refill, fail(errTooMany, "Too many requests, slow down")})
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// takeToken takes one token from the named bucket, refilled at perSecond up to burst, and
// reports whether there was one. One statement, so concurrent requests cannot both take the
// last token. It commits without waiting for the disk (synchronous_commit off, for this
// transaction only): a bucket update lost in a crash costs nothing, and the flush would
// otherwise be the largest part of every limited request. The four statements travel as one
// batch: one round trip.
func (s *store) takeToken(ctx context.Context, key string, burst, perSecond float64) (bool, error) {
	batch := &pgx.Batch{}
	batch.Queue("BEGIN")
	batch.Queue("SET LOCAL synchronous_commit = off")
	batch.Queue(`INSERT INTO rate_limits AS b (key, tokens, updated_at) VALUES ($1, $2::float8 - 1, $3)
		ON CONFLICT (key) DO UPDATE
			SET tokens = LEAST($2::float8, b.tokens + extract(epoch FROM $3::timestamptz - b.updated_at)::float8 * $4::float8) - 1,
				updated_at = $3
			WHERE LEAST($2::float8, b.tokens + extract(epoch FROM $3::timestamptz - b.updated_at)::float8 * $4::float8) >= 1`,
		key, burst, s.now(), perSecond)
	batch.Queue("COMMIT")
	results := s.pool.SendBatch(ctx, batch)
	var taken int64
	for i := range batch.Len() {
		tag, err := results.Exec()
		if err != nil {
			results.Close()
			return false, fmt.Errorf("rate limit: %w", err)
		}
		if i == 2 {
			taken = tag.RowsAffected()
		}
	}
	if err := results.Close(); err != nil {
		return false, fmt.Errorf("rate limit: %w", err)
	}
	return taken == 1, nil
}
