package main

import (
	"net/http"
	"slices"
	"strings"
	"testing"
)

// CORS_ALLOWED_ORIGINS: its parsing, the preflights, and the headers of other replies.

const testOrigin = "https://app.example.com"

// TestCORSOriginsSetting: origins are kept as browsers send them; anything that is not an
// origin, or * among others, refuses to start with a message naming the setting.
func TestCORSOriginsSetting(t *testing.T) {
	t.Parallel()
	valid := []struct {
		value string
		want  []string
		any   bool
	}{
		{"", nil, false},
		{"*", nil, true},
		{" * ", nil, true},
		{"https://app.example.com", []string{"https://app.example.com"}, false},
		{"https://App.Example.COM, HTTP://localhost:3000", []string{"https://app.example.com", "http://localhost:3000"}, false},
		{"https://app.example.com:443,http://a.example:80", []string{"https://app.example.com", "http://a.example"}, false},
		{"https://app.example.com:8443", []string{"https://app.example.com:8443"}, false},
		{"http://127.0.0.1:8080,http://[::1]:3000,http://[::1]", []string{"http://127.0.0.1:8080", "http://[::1]:3000", "http://[::1]"}, false},
	}
	for _, c := range valid {
		p, err := parseCORSOrigins(c.value)
		if err != nil {
			t.Errorf("%q: %v", c.value, err)
			continue
		}
		var got []string
		for origin := range p.origins {
			got = append(got, origin)
		}
		slices.Sort(got)
		want := slices.Sorted(slices.Values(c.want))
		if !slices.Equal(got, want) || p.anyOrigin != c.any {
			t.Errorf("%q: origins %q any %t, want %q any %t", c.value, got, p.anyOrigin, want, c.any)
		}
	}
	invalid := []string{
		"https://app.example.com/", "https://app.example.com/app", "https://app.example.com?x", "https://app.example.com#x",
		"app.example.com", "//app.example.com", "ftp://app.example.com", "https://", "https://user@app.example.com",
		"https://app.example.com:0", "https://app.example.com:65536", "https://app.example.com:x", "https://app.example.com:",
		"https://app.example.com:080", "null", "*,https://app.example.com", "https://app.example.com,", ",", "https://a b.example",
		"https://-app.example.com", "https://app.example.com.", "http://[fe80::1%25eth0]", "https://app.example.com https://b.example",
	}
	for _, v := range invalid {
		if p, err := parseCORSOrigins(v); err == nil {
			t.Errorf("%q accepted as %+v", v, p)
		}
		_, err := loadConfig(envOf(configEnv(map[string]string{"CORS_ALLOWED_ORIGINS": v})))
		if err == nil || !strings.Contains(err.Error(), "CORS_ALLOWED_ORIGINS must be") {
			t.Errorf("%q: loadConfig said %v, want a problem naming CORS_ALLOWED_ORIGINS", v, err)
		}
	}
}

// corsRequest sends method path with an Origin, and for a preflight the method it asks for.
func corsRequest(t testing.TB, env *testEnv, method, path, origin, token, preflightMethod string) response {
	t.Helper()
	req, err := http.NewRequest(method, env.server.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if preflightMethod != "" {
		req.Header.Set("Access-Control-Request-Method", preflightMethod)
		req.Header.Set("Access-Control-Request-Headers", "authorization,content-type")
	}
	return send(t, req)
}

// corsHeaders lists the Access-Control-* headers of a reply.
func corsHeaders(r response) []string {
	var names []string
	for name := range r.header {
		if strings.HasPrefix(name, "Access-Control-") {
			names = append(names, name)
		}
	}
	return names
}

func expectVaryOrigin(t testing.TB, r response) {
	t.Helper()
	if !slices.Contains(r.header.Values("Vary"), "Origin") {
		t.Errorf("Vary %q, want Origin", r.header.Values("Vary"))
	}
}

// TestCORSPreflight: an allowed origin's preflight of any route is answered 204 with that
// route's methods, before authentication and without spending the rate budget.
func TestCORSPreflight(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) {
		c.cors, _ = parseCORSOrigins(testOrigin + ",http://localhost:3000")
		c.authRateLimit, c.authRateBurst = 1, 1 // a single request would spend the budget
	})
	methods := map[string]string{ // the routes the mux matches for each path, as its Allow header lists them
		"/api/users/me":            "DELETE, GET, PATCH, PUT",
		"/api/users/7":             "DELETE, GET, PATCH, PUT",
		"/api/users/me/sessions/3": "DELETE",
		"/api/auth/login":          "POST",
		"/api/admin/users":         "GET, POST",
		"/healthz":                 "GET",
	}
	for _, route := range allRoutes(t, env) {
		method, pattern, _ := strings.Cut(route, " ")
		path := wildcard.ReplaceAllString(strings.TrimSuffix(pattern, "{$}"), "7")
		t.Run(route, func(t *testing.T) {
			for range 3 {
				r := corsRequest(t, env, "OPTIONS", path, testOrigin, "", method)
				r.expect(t, http.StatusNoContent)
				allowed := strings.Split(r.header.Get("Access-Control-Allow-Methods"), ", ")
				if want, ok := methods[path]; ok && strings.Join(allowed, ", ") != want || !slices.Contains(allowed, method) {
					t.Errorf("Access-Control-Allow-Methods %q, want %q", allowed, cmpOr(methods[path], method))
				}
				for name, want := range map[string]string{
					"Access-Control-Allow-Origin":  testOrigin,
					"Access-Control-Allow-Headers": "Authorization, Content-Type",
					"Access-Control-Max-Age":       "600",
				} {
					if got := r.header.Get(name); got != want {
						t.Errorf("%s %q, want %q", name, got, want)
					}
				}
				if len(r.body) != 0 || r.header.Get("Access-Control-Allow-Credentials") != "" {
					t.Errorf("body %q, credentials %q: want neither", r.body, r.header.Get("Access-Control-Allow-Credentials"))
				}
				expectVaryOrigin(t, r)
			}
		})
	}
	// The budget of one request is still there for the login after all those preflights.
	u := env.addUser(t, "alice", roleUser)
	env.login(t, u.Username, testPassword)
	env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "alice", "password": testPassword}).expect(t, http.StatusTooManyRequests)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// TestCORSReplies: every other reply to an allowed origin, errors included, names it and the
// headers the page may read; another origin gets no CORS header and the reply of today; every
// reply says it varies by Origin.
func TestCORSReplies(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.cors, _ = parseCORSOrigins(testOrigin) })
	admin := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	exposed := "X-Total-Count, Link, Retry-After, X-Request-Id, WWW-Authenticate"
	for _, c := range []struct {
		method, path, token string
		status              int
	}{
		{"GET", "/api/users/me", admin, http.StatusOK},
		{"GET", "/api/users/me", "", http.StatusUnauthorized},
		{"GET", "/api/admin/users", admin, http.StatusOK},
		{"DELETE", "/api/users/abc", admin, http.StatusBadRequest},
		{"GET", "/api/nope", "", http.StatusNotFound},
		{"POST", "/api/users/me", admin, http.StatusMethodNotAllowed},
		{"OPTIONS", "/api/users/me", "", http.StatusMethodNotAllowed}, // not a preflight: no method asked for
		{"OPTIONS", "//api/users/me", "", http.StatusNotFound},
	} {
		r := corsRequest(t, env, c.method, c.path, testOrigin, c.token, "").expect(t, c.status)
		if got := r.header.Get("Access-Control-Allow-Origin"); got != testOrigin {
			t.Errorf("%s %s: Access-Control-Allow-Origin %q, want %q", c.method, c.path, got, testOrigin)
		}
		if got := r.header.Get("Access-Control-Expose-Headers"); got != exposed {
			t.Errorf("%s %s: Access-Control-Expose-Headers %q, want %q", c.method, c.path, got, exposed)
		}
		expectVaryOrigin(t, r)
	}
	for _, origin := range []string{"https://evil.example", "https://app.example.com.evil.example", "http://app.example.com", "null", ""} {
		for _, preflight := range []string{"", "POST"} {
			r := corsRequest(t, env, "OPTIONS", "/api/auth/login", origin, "", preflight).expect(t, http.StatusMethodNotAllowed)
			if names := corsHeaders(r); len(names) > 0 {
				t.Errorf("origin %q: CORS headers %q on a preflight, want none", origin, names)
			}
			expectVaryOrigin(t, r)
		}
		r := corsRequest(t, env, "GET", "/api/users/me", origin, admin, "").expect(t, http.StatusOK)
		if names := corsHeaders(r); len(names) > 0 {
			t.Errorf("origin %q: CORS headers %q, want none", origin, names)
		}
		expectVaryOrigin(t, r)
	}
}

// TestCORSAnyOrigin: with *, every origin may call, and is told so with *.
func TestCORSAnyOrigin(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.cors, _ = parseCORSOrigins("*") })
	r := corsRequest(t, env, "OPTIONS", "/api/auth/login", "https://anyone.example", "", "POST").expect(t, http.StatusNoContent)
	if got := r.header.Get("Access-Control-Allow-Origin"); got != "*" {
		t.Errorf("preflight: Access-Control-Allow-Origin %q, want *", got)
	}
	r = corsRequest(t, env, "GET", "/api/users/me", "http://localhost:5173", "", "").expect(t, http.StatusUnauthorized)
	if got := r.header.Get("Access-Control-Allow-Origin"); got != "*" {
		t.Errorf("Access-Control-Allow-Origin %q, want *", got)
	}
}

// TestCORSOffByDefault: without CORS_ALLOWED_ORIGINS no reply has a CORS header, and a
// preflight is the 405 it always was.
func TestCORSOffByDefault(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	for _, preflight := range []string{"", "GET"} {
		r := corsRequest(t, env, "OPTIONS", "/api/users/me", testOrigin, "", preflight).expect(t, http.StatusMethodNotAllowed)
		if names := corsHeaders(r); len(names) > 0 {
			t.Errorf("CORS headers %q, want none", names)
		}
	}
	r := corsRequest(t, env, "GET", "/healthz", testOrigin, "", "").expect(t, http.StatusOK)
	if names := corsHeaders(r); len(names) > 0 {
		t.Errorf("CORS headers %q, want none", names)
	}
}
