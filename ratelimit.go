package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Where a request comes from, and the per-address limit on the authentication endpoints.

// origin is the client address and user agent of a request, for sessions, limits and audit.
type origin struct {
	ip        string // recorded in sessions and the audit log
	userAgent string
}

// network is what limits and lockouts count the client by (see clientNetwork).
func (o origin) network() string { return clientNetwork(o.ip) }

type originKey struct{}

func originOf(ctx context.Context) origin {
	o, _ := ctx.Value(originKey{}).(origin)
	return o
}

// withOrigin records the client of each request. X-Forwarded-For is believed only when the
// socket peer is one of the trusted proxies; otherwise any client could claim any address and
// walk around the limits.
func withOrigin(trusted []netip.Prefix, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o := origin{ip: clientIP(r, trusted), userAgent: storableText(r.UserAgent(), 512)}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), originKey{}, o)))
	})
}

// clientIP is the socket peer, or, when that peer is a trusted proxy, the right-most address
// of X-Forwarded-For that is not itself a trusted proxy (the left part is client-supplied).
func clientIP(r *http.Request, trusted []netip.Prefix) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	peer = peer.Unmap().WithZone("")
	if !isTrusted(peer, trusted) {
		return peer.String()
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		hop, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break // a garbled entry: trust nothing to its left
		}
		// A zone names an interface of whoever wrote it, not a client, and is free text.
		if hop = hop.Unmap().WithZone(""); !isTrusted(hop, trusted) {
			return hop.String()
		}
		peer = hop
	}
	return peer.String()
}

// clientNetwork is what limits and lockouts count a client by: its address, or for IPv6 the
// /64 the address is in, since one host commonly holds a whole /64 to pick addresses from.
func clientNetwork(ip string) string {
	addr, err := netip.ParseAddr(ip)
	if err != nil || !addr.Is6() {
		return ip
	}
	return netip.PrefixFrom(addr, 64).Masked().String()
}

func isTrusted(addr netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// parseCIDRs reads a comma-separated list of CIDR prefixes or single addresses.
func parseCIDRs(s string) ([]netip.Prefix, error) {
	var prefixes []netip.Prefix
	for _, field := range strings.Split(s, ",") {
		field = strings.TrimSpace(field)
		if field == "" {
			continue
		}
		if !strings.Contains(field, "/") {
			addr, err := netip.ParseAddr(field)
			if err != nil {
				return nil, err
			}
			prefixes = append(prefixes, netip.PrefixFrom(addr, addr.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(field)
		if err != nil {
			return nil, err
		}
		prefixes = append(prefixes, p.Masked())
	}
	return prefixes, nil
}

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
