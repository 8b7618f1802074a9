package main

import (
	"errors"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"strconv"
	"strings"
)

// CORS: which browser pages of other origins may call the API (CORS_ALLOWED_ORIGINS), the
// answers to their preflights, and the headers that let them read the replies.

// corsPolicy is CORS_ALLOWED_ORIGINS: the origins whose pages may read the API's replies.
type corsPolicy struct {
	anyOrigin bool            // "*"
	origins   map[string]bool // serialised origins, as browsers send them: https://app.example.com
}

// allows reports whether a page of origin (a request's Origin header) may read the reply.
func (p corsPolicy) allows(origin string) bool {
	return origin != "" && (p.anyOrigin || p.origins[origin])
}

const (
	// corsAllowHeaders are the request headers a page may send: tokens travel in Authorization
	// (never in cookies, so there is no credentials mode), bodies are JSON.
	corsAllowHeaders = "Authorization, Content-Type"
	// corsExposeHeaders are the reply headers besides the CORS-safelisted ones that a page may read.
	corsExposeHeaders = "X-Total-Count, Link, Retry-After, X-Request-Id, WWW-Authenticate"
	corsMaxAge        = "600" // seconds a browser may reuse a preflight's answer
)

var errCORSOrigins = errors.New("CORS_ALLOWED_ORIGINS must be * alone, or a comma-separated list of origins such as " +
	"https://app.example.com,http://localhost:3000 (http or https, a host and an optional port; no path, not even /)")

// parseCORSOrigins reads CORS_ALLOWED_ORIGINS. Each origin is stored as a browser serialises
// it (scheme and host in lower case, no default port), so that matching the Origin header is
// an exact comparison.
func parseCORSOrigins(v string) (corsPolicy, error) {
	if strings.TrimSpace(v) == "" {
		return corsPolicy{}, nil
	}
	if strings.TrimSpace(v) == "*" {
		return corsPolicy{anyOrigin: true}, nil
	}
	p := corsPolicy{origins: map[string]bool{}}
	for _, entry := range strings.Split(v, ",") {
		origin, ok := serialisedOrigin(strings.TrimSpace(entry))
		if !ok {
			return corsPolicy{}, errCORSOrigins
		}
		p.origins[origin] = true
	}
	return p, nil
}

// serialisedOrigin returns an origin written as scheme://host[:port] the way a browser sends
// it, or false when s is not an origin (a path, a query, user information, "null", "*" among
// others). "null", the origin of sandboxed pages and local files, is refused: any page can
// make itself one.
func serialisedOrigin(s string) (string, bool) {
	u, err := url.Parse(s)
	if err != nil || u.Opaque != "" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.ForceQuery ||
		u.Fragment != "" || strings.ContainsAny(s, "#?") {
		return "", false
	}
	scheme := strings.ToLower(u.Scheme)
	defaultPort := map[string]string{"http": "80", "https": "443"}[scheme]
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if defaultPort == "" || host == "" || strings.HasSuffix(u.Host, ":") {
		return "", false
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port[0] == '0' {
			return "", false
		}
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		if addr.Zone() != "" {
			return "", false
		}
	} else if !validHostname(host) || strings.HasSuffix(host, ".") {
		return "", false
	}
	if port == defaultPort {
		port = ""
	}
	if port != "" || strings.Contains(host, ":") {
		host = net.JoinHostPort(host, port)
		host = strings.TrimSuffix(host, ":") // an IPv6 literal without a port: [::1]
	}
	return scheme + "://" + host, true
}

// withCORS lets pages of the allowed origins call the API. It answers their preflights itself,
// before any route's guard, so that a preflight needs no token and spends none of the
// per-address rate budget (browsers send it without credentials, and at every new call shape).
// Replies to every other request of an allowed origin, errors included, name that origin and
// the headers it may read. Any other origin gets no CORS header at all, and its browser keeps
// the reply from the page. routes is the mux, asked which of methods each path has.
func withCORS(p corsPolicy, routes *http.ServeMux, methods []string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// Replies differ by Origin: a shared cache must not give one origin's reply to another.
		h.Add("Vary", "Origin")
		origin := r.Header.Get("Origin")
		if !p.allows(origin) {
			next.ServeHTTP(w, r)
			return
		}
		allowOrigin := origin
		if p.anyOrigin {
			allowOrigin = "*"
		}
		h.Set("Access-Control-Allow-Origin", allowOrigin)
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			if allowed, pattern := routeMethods(routes, methods, r); len(allowed) > 0 {
				r.Pattern = "OPTIONS " + pattern // for the request log
				h.Set("Access-Control-Allow-Methods", strings.Join(allowed, ", "))
				h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
				h.Set("Access-Control-Max-Age", corsMaxAge)
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
		next.ServeHTTP(w, r)
	})
}

// routeMethods returns those of methods that a route of routes has for r's path, as the mux
// matches it (so /api/users/me also has the methods of /api/users/{id}, as its Allow header
// says), and the path of the pattern that matched. A path the mux would redirect (not written
// clean) has none, as it is not a route.
func routeMethods(routes *http.ServeMux, methods []string, r *http.Request) ([]string, string) {
	if !isCleanPath(r.URL.EscapedPath()) {
		return nil, ""
	}
	var allowed []string
	var matched string
	for _, method := range methods {
		probe := &http.Request{Method: method, URL: r.URL, Host: r.Host, Header: http.Header{}}
		if _, pattern := routes.Handler(probe); pattern != "" {
			allowed = append(allowed, method)
			if matched == "" {
				_, matched, _ = strings.Cut(pattern, " ")
			}
		}
	}
	return allowed, matched
}

// isCleanPath reports whether the mux serves p as it is, rather than redirecting it to its
// clean form (no //, . or .. segments).
func isCleanPath(p string) bool {
	clean := path.Clean(p)
	if strings.HasSuffix(p, "/") && clean != "/" {
		clean += "/"
	}
	return clean == p
}
