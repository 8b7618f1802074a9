package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// tcpProxy stands between the service and PostgreSQL so a test can cut the database off (every
// connection dropped, new ones refused) and bring it back, as a crash or restart would.
type tcpProxy struct {
	network string
	target  string
	addr    string
	mu      sync.Mutex
	ln      net.Listener
	conns   []net.Conn
}

func startProxy(t *testing.T, network, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{network: network, target: target, addr: ln.Addr().String()}
	p.serve(ln)
	t.Cleanup(p.stop)
	return p
}

func (p *tcpProxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial(p.network, p.target)
			if err != nil {
				client.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, client, server)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(server, client); server.Close() }()
			go func() { _, _ = io.Copy(client, server); client.Close() }()
		}
	}()
}

// stop refuses new connections and breaks every open one.
func (p *tcpProxy) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// restart accepts connections again on the same address.
func (p *tcpProxy) restart(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatalf("proxy relisten: %v", err)
	}
	p.serve(ln)
}

// proxiedEnv starts a service whose database connections go through a tcpProxy.
func proxiedEnv(t *testing.T) (*testEnv, *tcpProxy) {
	t.Helper()
	proxiedURL, proxy := proxiedDatabase(t, newTestDatabase(t))
	env := newTestEnv(t, func(c *config) { c.databaseURL = proxiedURL })
	return env, proxy
}

// proxiedDatabase starts a tcpProxy to the database of databaseURL and returns the URL that
// reaches that database through it, over TCP.
func proxiedDatabase(t *testing.T, databaseURL string) (string, *tcpProxy) {
	t.Helper()
	direct, err := pgconn.ParseConfig(databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	// The proxy reaches PostgreSQL the way DATABASE_URL does: over TCP, or over the local
	// socket (where peer authentication sees the test process, as it would have).
	network, address := "tcp", net.JoinHostPort(direct.Host, strconv.Itoa(int(direct.Port)))
	if strings.HasPrefix(direct.Host, "/") {
		network, address = "unix", fmt.Sprintf("%s/.s.PGSQL.%d", direct.Host, direct.Port)
	}
	proxy := startProxy(t, network, address)
	proxied, err := url.Parse(databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	query := proxied.Query()
	query.Del("host")
	query.Del("port")
	proxied.Host, proxied.RawQuery = proxy.addr, query.Encode()
	if proxied.User == nil {
		proxied.User = url.User(direct.User) // the socket's default user, named for TCP
	}
	return proxied.String(), proxy
}

func TestDatabaseOutageGives503AndRecovers(t *testing.T) {
	t.Parallel()
	env, proxy := proxiedEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	token := env.tokenFor(t, alice)
	env.do(t, "GET", "/api/users/me", token, nil).expect(t, http.StatusOK)

	proxy.stop()
	requests := []struct {
		method, path, token string
		body                any
	}{
		{"GET", "/api/users/me", token, nil},
		{"GET", "/api/users/me", token, nil}, // a second time: the pool now has no connection at all
		{"POST", "/api/auth/login", "", map[string]string{"username": "alice", "password": testPassword}},
		{"POST", "/api/auth/register", "", map[string]string{"username": "bob", "first_name": "B", "last_name": "B",
			"email": "bob@example.com", "password": testPassword}},
		{"POST", "/api/auth/password-reset-request", "", map[string]string{"email": "alice@example.com"}},
	}
	for _, rq := range requests {
		r := env.do(t, rq.method, rq.path, rq.token, rq.body)
		if r.status != http.StatusServiceUnavailable || r.message(t) == "" || r.header.Get("Retry-After") == "" {
			t.Errorf("%s %s with the database down: %d %s (Retry-After %q), want 503 with a message and Retry-After",
				rq.method, rq.path, r.status, r.body, r.header.Get("Retry-After"))
		}
	}
	health := env.do(t, "GET", "/healthz", "", nil).expect(t, http.StatusServiceUnavailable)
	if got := health.json(t)["status"]; got != "unavailable" {
		t.Errorf("healthz status %q, want unavailable", got)
	}

	proxy.restart(t)
	waitFor(t, "the service to recover", func() bool {
		return env.do(t, "GET", "/healthz", "", nil).status == http.StatusOK
	})
	env.do(t, "GET", "/api/users/me", token, nil).expect(t, http.StatusOK)
	env.login(t, "alice", testPassword)
}

// TestConnectionLostMidTransactionIsUnavailable: when the database goes away inside a
// transaction, the statements after the one that met the break fail with pgx's "conn closed";
// that is the database being unavailable (a 503), like the break itself, not an internal error.
func TestConnectionLostMidTransactionIsUnavailable(t *testing.T) {
	t.Parallel()
	proxied, proxy := proxiedDatabase(t, newTestDatabase(t))
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, proxied)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	proxy.stop()
	for n := range 3 {
		_, err := tx.Exec(ctx, "SELECT 1")
		if err == nil || !isUnavailable(err) {
			t.Errorf("statement %d after the break: %v, want an error isUnavailable knows", n+1, err)
		}
	}
	if err := tx.Commit(ctx); err == nil || !isUnavailable(err) {
		t.Errorf("commit after the break: %v, want an error isUnavailable knows", err)
	}
}

// waitFor polls cond until it holds, failing the test after a generous deadline. It measures
// nothing: the deadline only stops a broken test from hanging.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
