package main

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// Benchmarks of the hot paths; `make bench` runs them next to the load tests (bench/run.sh).
// None asserts a timing: they report, a profile explains.

// BenchmarkVerifyJWT verifies a valid access token: the CPU cost every authenticated request
// pays before its database query.
func BenchmarkVerifyJWT(b *testing.B) {
	env := newTestEnv(b)
	token := env.tokenFor(b, env.addUser(b, "alice", roleUser))
	now := env.clock.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := verifyToken(env.cfg.keys, token, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAuthenticatedRequest serves GET /api/users/me through newServer's whole handler
// (middleware, routing, token check, the database query, JSON, the request log line in the
// production format) on a real database, without the socket and without the tests' contract
// check: what the server spends on one authenticated read.
func BenchmarkAuthenticatedRequest(b *testing.B) {
	env := newTestEnv(b)
	token := env.tokenFor(b, env.addUser(b, "alice", roleUser))
	handler := newServer(env.cfg, env.st, env.pw, slog.New(slog.NewTextHandler(io.Discard, nil)))
	req := httptest.NewRequest("GET", "/api/users/me", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
	}
}

// BenchmarkRequestLog is logRequests around a handler that does nothing: the request id, the
// status recorder, the metrics and the log line in the production format.
func BenchmarkRequestLog(b *testing.B) {
	handler := logRequests(slog.New(slog.NewTextHandler(io.Discard, nil)), newMetrics(),
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	req := httptest.NewRequest("GET", "/api/users/me", nil)
	w := discardWriter{header: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		handler.ServeHTTP(w, req)
		clear(w.header)
	}
}

// discardWriter is a ResponseWriter that keeps nothing but its header map, reused between
// requests, as net/http reuses a connection's.
type discardWriter struct{ header http.Header }

func (w discardWriter) Header() http.Header         { return w.header }
func (w discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w discardWriter) WriteHeader(int)             {}

// BenchmarkBcryptCompare checks one password against its bcrypt hash at the cost the server
// runs with (BCRYPT_COST, default 12). Its time per op t gives the bound of login and
// register: cores / t requests per second.
func BenchmarkBcryptCompare(b *testing.B) {
	cfg, _ := loadConfig(os.Getenv) // only the cost is used; other settings may be missing
	if cfg.bcryptCost < bcrypt.MinCost || cfg.bcryptCost > bcrypt.MaxCost {
		b.Fatalf("BCRYPT_COST=%q is not a bcrypt cost", os.Getenv("BCRYPT_COST"))
	}
	password := []byte(testPassword)
	hash, err := bcrypt.GenerateFromPassword(password, cfg.bcryptCost)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := bcrypt.CompareHashAndPassword(hash, password); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cfg.bcryptCost), "cost") // after the loop, which resets reported metrics
}
