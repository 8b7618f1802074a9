package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// Middleware around every route: the request log, the deadline, security headers, JSON replies
// for the router's own errors, and /healthz.

// statusRecorder remembers the status a handler wrote, for the request log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// logRequests writes one line per request: method, route pattern (never the raw path, which
// may hold a reset token), status, duration and a request id also returned as X-Request-Id;
// and counts the request in m.
func logRequests(logger *slog.Logger, m *metrics, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := newRequestID()
		w.Header().Set("X-Request-Id", id)
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		took := time.Since(start)
		m.observeRequest(route, r.Method, rec.status, took)
		logger.LogAttrs(r.Context(), slog.LevelInfo, "request",
			slog.String("id", id), slog.String("method", r.Method), slog.String("route", route),
			slog.Int("status", rec.status), slog.Duration("duration", took))
	})
}

// requestTimeout bounds the database work of one request: a database that hangs instead of
// refusing connections still yields a prompt 503 rather than a request stuck until the client
// gives up.
const requestTimeout = 10 * time.Second

// requestState is what the middleware learns of a request: its client (see withRequestState)
// and, once requireAuth admits it, who it acts as. It is one value in the request's context,
// set once, so that a request pays for one derived context rather than one per middleware
// (each is a copy of the request and allocations the collector must then reclaim).
type requestState struct {
	origin    origin
	principal principal
}

type requestStateKey struct{}

// stateOf returns the request's state, or nil outside withRequestState.
func stateOf(ctx context.Context) *requestState {
	s, _ := ctx.Value(requestStateKey{}).(*requestState)
	return s
}

// withRequestState gives each request its deadline and its state, with the client's address
// and user agent (see clientIP).
func withRequestState(trusted []netip.Prefix, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		s := &requestState{origin: origin{ip: clientIP(r, trusted), userAgent: storableText(r.UserAgent(), 512)}}
		next.ServeHTTP(w, r.WithContext(context.WithValue(ctx, requestStateKey{}, s)))
	})
}

func newRequestID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// secureHeaders sets headers every response should carry: no MIME sniffing, no caching of
// tokens or user data by browsers or proxies, no Referer leaking a reset link, and a policy
// under which a reply opened as a page runs nothing and cannot be framed (the /docs page sets
// its own).
func secureHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		for _, kv := range secureHeaderValues {
			h[kv.name] = kv.value
		}
		next.ServeHTTP(w, r)
	})
}

// secureHeaderValues are secureHeaders' headers with their values made once, shared by every
// reply: a header is a map of slices, and a one-element slice is never appended to in place
// (Header.Add copies it), so sharing saves an allocation per header and reply.
var secureHeaderValues = []struct {
	name  string
	value []string
}{
	{"X-Content-Type-Options", []string{"nosniff"}},
	{"Cache-Control", []string{"no-store"}},
	{"Referrer-Policy", []string{"no-referrer"}},
	{"Content-Security-Policy", []string{"default-src 'none'; frame-ancestors 'none'"}},
}

// jsonMuxErrors makes the mux's own replies (unknown route 404, wrong method 405 with its
// Allow header, 400 for "*") JSON like every other error. Its redirects of a path that is not
// clean (//api/users/me, /api/users/./me, /api/x/../users/me: 307 with an HTML body) become
// the JSON 404 of an unknown path: a resource has one spelling, as an id does, and a client
// never has to follow a redirect, or read HTML, to learn that it wrote a path wrong.
func jsonMuxErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mw := &muxErrorWriter{ResponseWriter: w}
		mux.ServeHTTP(mw, r)
		if mw.redirect {
			r.Pattern = "" // the mux set the clean path's route, which did not run: log it unmatched
		}
	})
}

// muxErrorWriter replaces the body of the mux's errors (plain text for a 404 or 405, none for
// the 400 of a request for "*") by a JSON message, and its redirects by a JSON 404. It tells
// the mux's replies from the handlers' by their headers: every handler's error and redirect
// is JSON, so an error that is not JSON, or a Location without JSON, is the mux's. (Asking the
// mux first whether a route matches would route every request twice.)
type muxErrorWriter struct {
	http.ResponseWriter
	replaced bool
	redirect bool // the mux redirected, and the reply is a 404 instead
}

func (w *muxErrorWriter) WriteHeader(status int) {
	var text string
	h := w.Header()
	switch {
	case h.Get("Content-Type") == "application/json" || http.StatusText(status) == "":
		// a handler's reply (its redirect of / included), or writeError's bodiless 499 for a
		// client that hung up
	case status >= 300 && status < 400 && h.Get("Location") != "":
		h.Del("Location")
		w.redirect = true
		status, text = http.StatusNotFound, "Not found"
	case status < 400:
		// a handler's reply that is not JSON: the /docs page and its files
	default: // "Not found", "Method not allowed", "Bad request" (the mux's 400 for a path of "*")
		text = strings.ToLower(http.StatusText(status))
		text = strings.ToUpper(text[:1]) + text[1:]
	}
	if text == "" {
		w.ResponseWriter.WriteHeader(status)
		return
	}
	w.replaced = true
	writeJSON(w.ResponseWriter, status, message{text})
}

func (w *muxErrorWriter) Write(b []byte) (int, error) {
	if w.replaced {
		return len(b), nil // the plain-text body is dropped
	}
	return w.ResponseWriter.Write(b)
}

func (w *muxErrorWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func handleHealth(st *store) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := st.ping(ctx); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "database": "unreachable"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
}
