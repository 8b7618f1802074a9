package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Metrics: counters kept in memory by each instance, and GET /metrics on METRICS_ADDR, which
// writes them in the Prometheus text exposition format (version 0.0.4) along with gauges read
// at scrape time (bcrypt slots, the database pool, the mail outbox and webhook deliveries, the Go runtime). Every label
// value comes from a fixed set (route patterns, methods, status classes, outcomes), never from
// the request's path or body, so a client cannot make the series grow without bound.

// metrics holds the counters the request path updates.
type metrics struct {
	mu       sync.Mutex
	requests map[requestKey]uint64
	latency  map[string]*histogram // by route pattern

	logins      [len(loginOutcomes)]atomic.Uint64
	rateLimited atomic.Uint64
}

type requestKey struct{ route, method, status string }

// latencyBuckets are the upper bounds, in seconds, of the request latency histogram: from a
// cached read to a request that waited for a bcrypt slot (2 s) and a slow database.
var latencyBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

type histogram struct {
	counts []uint64 // per bucket, not cumulative
	count  uint64
	sum    float64
}

func newMetrics() *metrics {
	return &metrics{requests: map[requestKey]uint64{}, latency: map[string]*histogram{}}
}

// knownMethods are the methods a request is counted under by name; any other is "other", so
// that made-up methods cannot add series.
var knownMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

// observeRequest counts a finished request under its route pattern ("unmatched" when the mux
// found none), method and status class.
func (m *metrics) observeRequest(route, method string, status int, took time.Duration) {
	if !slices.Contains(knownMethods, method) {
		method = "other"
	}
	if status == 0 {
		status = http.StatusOK // the handler wrote nothing: net/http sends 200
	}
	class := strconv.Itoa(min(max(status/100, 1), 5)) + "xx"
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests[requestKey{route, method, class}]++
	h := m.latency[route]
	if h == nil {
		h = &histogram{counts: make([]uint64, len(latencyBuckets))}
		m.latency[route] = h
	}
	seconds := took.Seconds()
	if i, _ := slices.BinarySearch(latencyBuckets, seconds); i < len(latencyBuckets) {
		h.counts[i]++
	}
	h.count++
	h.sum += seconds
}

// loginOutcomes are the outcomes a login is counted under: its password step, and the second
// step of a login with two-factor login on.
var loginOutcomes = [...]string{"success", "failure", "locked", "unverified", "error", "mfa_required"}

// observeLogin counts a login step by its reply and the error it ended with. A failure is any
// refusal of what was presented: a wrong password, an invalid mfa_token or a wrong code.
func (m *metrics) observeLogin(reply any, err error) {
	outcome := 0 // success
	switch {
	case err == nil:
		if _, ok := reply.(mfaChallenge); ok {
			outcome = 5
		}
	case errors.Is(err, errLockedOut):
		outcome = 2
	case errors.Is(err, errUnauthorized):
		outcome = 1
	case errors.Is(err, errUnverified):
		outcome = 3
	default: // busy, database unavailable, client gone
		outcome = 4
	}
	m.logins[outcome].Add(1)
}

// serveMetrics serves GET /metrics on addr until ctx is done. It has no authentication: addr
// belongs on a private network or loopback, where only the monitoring system reaches it.
func serveMetrics(addr string, st *store, pw *hasher, logger *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen METRICS_ADDR: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", handleMetrics(st, pw))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second}
	logger.Info("metrics listening", "addr", ln.Addr().String())
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			logger.Warn("metrics server stopped", "err", err)
		}
	}()
	return func() { _ = srv.Close() }, nil
}

func handleMetrics(st *store, pw *hasher) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		out := bufio.NewWriter(w)
		e := &exposition{w: out}
		st.metrics.write(e)
		writeBcrypt(e, pw)
		writePool(e, st)
		writeQueues(r.Context(), e, st)
		writeRuntime(e)
		_ = out.Flush()
	})
}

// exposition writes metric families in the text format.
type exposition struct{ w io.Writer }

// family starts a metric family: its HELP and TYPE lines.
func (e *exposition) family(name, kind, help string) {
	fmt.Fprintf(e.w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
}

// sample writes one sample; labels alternate names and values.
func (e *exposition) sample(name string, value float64, labels ...string) {
	var b strings.Builder
	b.WriteString(name)
	for i := 0; i+1 < len(labels); i += 2 {
		sep := ","
		if i == 0 {
			sep = "{"
		}
		b.WriteString(sep + labels[i] + `="` + labelEscaper.Replace(labels[i+1]) + `"`)
	}
	if len(labels) > 0 {
		b.WriteString("}")
	}
	fmt.Fprintf(e.w, "%s %s\n", b.String(), strconv.FormatFloat(value, 'g', -1, 64))
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// single writes a family of one unlabelled sample.
func (e *exposition) single(name, kind, help string, value float64) {
	e.family(name, kind, help)
	e.sample(name, value)
}

// write writes the counters of the request path, in a stable order.
func (m *metrics) write(e *exposition) {
	m.mu.Lock()
	keys := make([]requestKey, 0, len(m.requests))
	for k := range m.requests {
		keys = append(keys, k)
	}
	requests := make(map[requestKey]uint64, len(m.requests))
	for k, v := range m.requests {
		requests[k] = v
	}
	latency := make(map[string]histogram, len(m.latency))
	for route, h := range m.latency {
		latency[route] = histogram{counts: slices.Clone(h.counts), count: h.count, sum: h.sum}
	}
	m.mu.Unlock()

	slices.SortFunc(keys, func(a, b requestKey) int {
		return strings.Compare(a.route+"\x00"+a.method+"\x00"+a.status, b.route+"\x00"+b.method+"\x00"+b.status)
	})
	e.family("usermgmt_http_requests_total", "counter", "Requests answered, by route pattern, method and status class.")
	for _, k := range keys {
		e.sample("usermgmt_http_requests_total", float64(requests[k]), "route", k.route, "method", k.method, "status", k.status)
	}
	routes := make([]string, 0, len(latency))
	for route := range latency {
		routes = append(routes, route)
	}
	slices.Sort(routes)
	e.family("usermgmt_http_request_duration_seconds", "histogram", "Time from a request's arrival to its reply, by route pattern.")
	for _, route := range routes {
		h := latency[route]
		var cumulative uint64
		for i, bound := range latencyBuckets {
			cumulative += h.counts[i]
			e.sample("usermgmt_http_request_duration_seconds_bucket", float64(cumulative),
				"route", route, "le", strconv.FormatFloat(bound, 'g', -1, 64))
		}
		e.sample("usermgmt_http_request_duration_seconds_bucket", float64(h.count), "route", route, "le", "+Inf")
		e.sample("usermgmt_http_request_duration_seconds_sum", h.sum, "route", route)
		e.sample("usermgmt_http_request_duration_seconds_count", float64(h.count), "route", route)
	}
	e.family("usermgmt_logins_total", "counter", "Login attempts, by outcome.")
	for i, outcome := range loginOutcomes {
		e.sample("usermgmt_logins_total", float64(m.logins[i].Load()), "outcome", outcome)
	}
	e.single("usermgmt_rate_limited_total", "counter", "Requests refused by the per-address rate limit (429).", float64(m.rateLimited.Load()))
}

func writeBcrypt(e *exposition, pw *hasher) {
	e.single("usermgmt_bcrypt_slots", "gauge", "bcrypt slots (BCRYPT_CONCURRENCY).", float64(cap(pw.slots)))
	e.single("usermgmt_bcrypt_slots_in_use", "gauge", "bcrypt slots hashing or checking a password now.", float64(len(pw.slots)))
	e.single("usermgmt_bcrypt_waiting", "gauge", "Requests waiting for a bcrypt slot now.", float64(pw.waiting.Load()))
	e.single("usermgmt_bcrypt_waits_total", "counter", "Requests that found every bcrypt slot taken and waited.", float64(pw.waits.Load()))
	e.single("usermgmt_bcrypt_wait_seconds_total", "counter", "Time requests spent waiting for a bcrypt slot.",
		time.Duration(pw.waitedNanos.Load()).Seconds())
	e.single("usermgmt_bcrypt_busy_total", "counter", "Requests refused with 503 after waiting 2 s for a bcrypt slot.", float64(pw.busy.Load()))
}

func writePool(e *exposition, st *store) {
	s := st.pool.Stat()
	e.single("usermgmt_db_pool_max_connections", "gauge", "Most connections the pool opens.", float64(s.MaxConns()))
	e.single("usermgmt_db_pool_connections", "gauge", "Connections open now (idle, acquired or being opened).", float64(s.TotalConns()))
	e.single("usermgmt_db_pool_idle_connections", "gauge", "Open connections no request is using.", float64(s.IdleConns()))
	e.single("usermgmt_db_pool_acquired_connections", "gauge", "Connections in use by requests now.", float64(s.AcquiredConns()))
	e.single("usermgmt_db_pool_acquires_total", "counter", "Connections taken from the pool.", float64(s.AcquireCount()))
	e.single("usermgmt_db_pool_waits_total", "counter", "Acquires that found no idle connection and waited.", float64(s.EmptyAcquireCount()))
	e.single("usermgmt_db_pool_wait_seconds_total", "counter", "Time acquires spent waiting for a connection.", s.EmptyAcquireWaitTime().Seconds())
}

// writeQueues counts the mail and the webhook deliveries waiting to be sent and those given up
// on, with one query, bounded by a short timeout so that a scrape never hangs on a database
// that does not answer; usermgmt_database_up says whether it did.
func writeQueues(ctx context.Context, e *exposition, st *store) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	q, err := st.queueCounts(ctx)
	up := 1.0
	if err != nil {
		up = 0
	}
	e.single("usermgmt_database_up", "gauge", "1 if the database answered this scrape's query, else 0.", up)
	if err != nil {
		return
	}
	e.single("usermgmt_mail_outbox_pending", "gauge", "Messages in the outbox waiting to be sent (due or retrying).", float64(q.mailPending))
	e.single("usermgmt_mail_outbox_failed", "gauge", "Messages given up on after MAIL_MAX_ATTEMPTS (kept 30 days).", float64(q.mailFailed))
	e.single("usermgmt_webhook_deliveries_pending", "gauge", "Webhook deliveries waiting to be sent (due or retrying).", float64(q.webhooksPending))
	e.single("usermgmt_webhook_deliveries_failed", "gauge", "Webhook deliveries given up on after WEBHOOK_MAX_ATTEMPTS (kept until retried or deleted).", float64(q.webhooksFailed))
}

// queueCounts is how much mail and how many webhook deliveries wait, and how many were given up on.
type queueCounts struct {
	mailPending, mailFailed, webhooksPending, webhooksFailed int64
}

func (s *store) queueCounts(ctx context.Context) (queueCounts, error) {
	var q queueCounts
	err := s.pool.QueryRow(ctx, `SELECT
			(SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL AND failed_at IS NULL),
			(SELECT count(*) FROM mail_outbox WHERE failed_at IS NOT NULL),
			(SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'),
			(SELECT count(*) FROM webhook_deliveries WHERE status = 'failed')`).
		Scan(&q.mailPending, &q.mailFailed, &q.webhooksPending, &q.webhooksFailed)
	if err != nil {
		return queueCounts{}, fmt.Errorf("queue counts: %w", err)
	}
	return q, nil
}

func writeRuntime(e *exposition) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	e.single("go_goroutines", "gauge", "Goroutines that currently exist.", float64(runtime.NumGoroutine()))
	e.single("go_memstats_heap_alloc_bytes", "gauge", "Bytes of allocated heap objects.", float64(ms.HeapAlloc))
	e.single("go_memstats_heap_inuse_bytes", "gauge", "Bytes in in-use heap spans.", float64(ms.HeapInuse))
	e.single("go_memstats_sys_bytes", "gauge", "Bytes of memory obtained from the OS.", float64(ms.Sys))
	e.single("go_gc_cycles_total", "counter", "Completed GC cycles.", float64(ms.NumGC))
	e.single("go_gc_pause_seconds_total", "counter", "Total time the GC stopped the world.", time.Duration(ms.PauseTotalNs).Seconds())
}
