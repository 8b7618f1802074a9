package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// Tests of the middleware: security headers, JSON replies for unknown routes, wrong methods and
// unclean paths, and the headers of every reply.

func TestSecurityHeaders(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	login := env.loginWith(t, "alice", testPassword, nil)
	p := pairOf(t, login)
	cases := []struct {
		name    string
		reply   func(t *testing.T) response
		private bool // carries a token or a user
	}{
		{"login", func(t *testing.T) response { return login }, true},
		{"refresh", func(t *testing.T) response { return env.refresh(t, p.refresh) }, true},
		{"me", func(t *testing.T) response { return env.do(t, "GET", "/api/users/me", p.access, nil) }, true},
		{"user by id", func(t *testing.T) response {
			return env.do(t, "GET", fmt.Sprint("/api/users/", alice.ID), p.access, nil)
		}, true},
		{"sessions", func(t *testing.T) response { return env.do(t, "GET", "/api/users/me/sessions", p.access, nil) }, true},
		{"unauthenticated", func(t *testing.T) response { return env.do(t, "GET", "/api/users/me", "", nil) }, false},
		{"failed login", func(t *testing.T) response { return env.loginWith(t, "alice", "wrong-password", nil) }, false},
		{"bad request", func(t *testing.T) response { return env.do(t, "POST", "/api/auth/refresh", "", "{") }, false},
		{"unknown route", func(t *testing.T) response { return env.do(t, "GET", "/nowhere", "", nil) }, false},
		{"wrong method", func(t *testing.T) response { return env.do(t, "DELETE", "/api/auth/login", "", nil) }, false},
		{"health", func(t *testing.T) response { return env.do(t, "GET", "/healthz", "", nil) }, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := c.reply(t).header
			if got := h.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options %q, want nosniff", got)
			}
			if got := h.Get("Referrer-Policy"); got != "no-referrer" {
				t.Errorf("Referrer-Policy %q, want no-referrer", got)
			}
			if got := h.Get("Cache-Control"); c.private && got != "no-store" {
				t.Errorf("Cache-Control %q, want no-store", got)
			}
		})
	}
}

// TestUnknownRoutes: anything the API does not define is a JSON 404, with or without a token.
func TestUnknownRoutes(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	token := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	paths := []string{"/nope", "/api", "/api/", "/api/users", "/api/users/", "/api/users/1/extra",
		"/api/users/me/extra", "/api/auth", "/api/auth/logoff", "/api/auth/reset-password/", "/api/admin",
		"/api/admin/users/1", "/healthz/x", "/API/users/me"}
	for _, path := range paths {
		for _, method := range []string{"GET", "POST"} {
			for _, tok := range []string{"", token} {
				t.Run(fmt.Sprintf("%s %s token=%t", method, path, tok != ""), func(t *testing.T) {
					t.Parallel()
					r := sendRaw(t, env, method, path, tok, "application/json", []byte(`{}`))
					expectError(t, r, http.StatusNotFound)
					if got := r.message(t); got != "Not found" {
						t.Errorf("message %q, want %q", got, "Not found")
					}
				})
			}
		}
	}
}

// TestUncleanPaths: a path the mux would redirect to its clean form (// or a . or ..
// segment) is the JSON 404 of an unknown path, for every method, not a 307 with an HTML body.
func TestUncleanPaths(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	token := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	paths := []string{"//api/users/me", "/api//users/me", "/api/users/me//", "/api/users/./me", "/api/users/../users/me",
		"/api/x/../users/me", "/./healthz", "/healthz/.", "/api/admin/users/..", "/api/users/me/sessions/./1", "//",
		"/api/auth//login", "/api/auth/./reset-password/sometoken", "//api/users/me?page=1", "/api/users/%2e/me"}
	noRedirects := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, path := range paths {
		for _, method := range []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} {
			t.Run(method+" "+path, func(t *testing.T) {
				t.Parallel()
				req, err := http.NewRequest(method, env.server.URL+path, strings.NewReader(`{}`))
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+token)
				resp, err := noRedirects.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				r := response{status: resp.StatusCode, header: resp.Header, body: body}
				if loc := r.header.Get("Location"); loc != "" {
					t.Errorf("Location %q: the path was redirected", loc)
				}
				if method == "HEAD" { // no body to read
					if r.status != http.StatusNotFound || r.header.Get("Content-Type") != "application/json" {
						t.Errorf("status %d, Content-Type %q; want 404 and application/json", r.status, r.header.Get("Content-Type"))
					}
					return
				}
				expectError(t, r, http.StatusNotFound)
				if got := r.message(t); got != "Not found" {
					t.Errorf("message %q, want %q", got, "Not found")
				}
			})
		}
	}
	if strings.Contains(env.logs.String(), `route="GET /api/users/me" status=404`) {
		t.Error("an unclean path is logged as the route of its clean form")
	}
}

// TestAsteriskRequests: a request for "*", which the mux refuses with a bodiless 400, gets a
// JSON 400. (OPTIONS * is answered by net/http itself, before any handler: an empty 200.)
func TestAsteriskRequests(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	for _, method := range []string{"GET", "POST", "DELETE", "PRI"} {
		t.Run(method, func(t *testing.T) {
			t.Parallel()
			conn, err := net.Dial("tcp", strings.TrimPrefix(env.server.URL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, method+" * HTTP/1.1\r\nHost: localhost\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			r := response{status: resp.StatusCode, header: resp.Header, body: body}
			expectError(t, r, http.StatusBadRequest)
			if got := r.message(t); got != "Bad request" {
				t.Errorf("message %q, want %q", got, "Bad request")
			}
		})
	}
}

// TestWrongMethods: a known path with a method it does not serve is a JSON 405 whose Allow
// header lists the methods it does serve.
func TestWrongMethods(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	token := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	cases := []struct {
		method, path string
		allow        []string
	}{
		{"GET", "/api/auth/login", []string{"POST"}},
		{"PUT", "/api/auth/register", []string{"POST"}},
		{"GET", "/api/auth/password-reset-request", []string{"POST"}},
		{"GET", "/api/auth/reset-password/sometoken", []string{"POST"}},
		{"DELETE", "/api/auth/change-password", []string{"POST"}},
		{"DELETE", "/api/admin/users", []string{"GET", "POST"}},
		{"PUT", "/api/admin/users", []string{"GET", "POST"}},
		{"GET", "/api/admin/users/1/invite", []string{"POST"}},
		{"GET", "/api/auth/accept-invite/sometoken", []string{"POST"}},
		{"POST", "/api/users/1", []string{"GET", "PUT", "PATCH", "DELETE"}},
		{"POST", "/healthz", []string{"GET"}},
	}
	for _, c := range cases {
		for _, tok := range []string{"", token} {
			t.Run(fmt.Sprintf("%s %s token=%t", c.method, c.path, tok != ""), func(t *testing.T) {
				t.Parallel()
				r := sendRaw(t, env, c.method, c.path, tok, "application/json", []byte(`{}`))
				expectError(t, r, http.StatusMethodNotAllowed)
				allow := strings.Split(strings.ReplaceAll(r.header.Get("Allow"), " ", ""), ",")
				for _, m := range c.allow {
					if !slices.Contains(allow, m) {
						t.Errorf("Allow %q does not list %s", r.header.Get("Allow"), m)
					}
				}
				if slices.Contains(allow, c.method) {
					t.Errorf("Allow %q lists the refused method %s", r.header.Get("Allow"), c.method)
				}
			})
		}
	}
}

// TestResponseHeaders: replies of every kind carry a request id (a new one each time) and the
// security headers.
func TestResponseHeaders(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	adminToken := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	cases := []struct {
		name, method, path, token string
		body                      []byte
		status                    int
	}{
		{"health", "GET", "/healthz", "", nil, 200},
		{"register", "POST", "/api/auth/register", "", []byte(`{"username": "bob", "first_name": "B", "last_name": "Ob",
			"email": "bob@example.com", "password": "` + testPassword + `"}`), 201},
		{"login", "POST", "/api/auth/login", "", []byte(`{"username": "alice", "password": "` + testPassword + `"}`), 200},
		{"me", "GET", "/api/users/me", env.tokenFor(t, alice), nil, 200},
		{"list", "GET", "/api/admin/users", adminToken, nil, 200},
		{"bad login", "POST", "/api/auth/login", "", []byte(`{"username": "alice", "password": "wrong-password"}`), 401},
		{"no token", "GET", "/api/users/me", "", nil, 401},
		{"not an admin", "GET", "/api/admin/users", env.tokenFor(t, alice), nil, 403},
		{"bad body", "POST", "/api/auth/login", "", []byte(`{`), 400},
		{"missing user", "GET", "/api/users/999999", adminToken, nil, 404},
		{"unknown route", "GET", "/nope", "", nil, 404},
		{"wrong method", "GET", "/api/auth/login", "", nil, 405},
		{"too large", "POST", "/api/auth/login", "", bytes.Repeat([]byte(" "), 64<<10+1), 413},
	}
	seen := map[string]bool{}
	for _, c := range cases {
		contentType := ""
		if c.body != nil {
			contentType = "application/json"
		}
		r := sendRaw(t, env, c.method, c.path, c.token, contentType, c.body)
		checkReply(t, r)
		r.expect(t, c.status)
		id := r.header.Get("X-Request-Id")
		if seen[id] {
			t.Errorf("%s: X-Request-Id %q reused", c.name, id)
		}
		seen[id] = true
	}
}
