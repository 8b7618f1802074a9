package main

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// Numbers at the edges of the integer types, sent wherever the API reads a number (issue 8,
// item 6): a query parameter PostgreSQL typed as int4 by itself made user_id=2147483648 a 500.

// routeRecorder is a routeAdder that keeps the patterns addRoutes registers.
type routeRecorder []string

func (r *routeRecorder) Handle(pattern string, _ http.Handler) { *r = append(*r, pattern) }

// allRoutes returns the pattern of every route of the service, from addRoutes itself.
func allRoutes(t testing.TB, env *testEnv) []string {
	t.Helper()
	var routes routeRecorder
	addRoutes(&routes, env.cfg, env.st, env.pw, slog.New(slog.DiscardHandler))
	if len(routes) == 0 {
		t.Fatal("addRoutes registered no routes")
	}
	return routes
}

// boundaryNumbers are the int32, uint32, int64 and uint64 limits, one past each, and numbers
// that are not numbers.
var boundaryNumbers = []string{
	"-1", "0",
	"2147483647", "2147483648", "-2147483648", "-2147483649",
	"4294967295", "4294967296",
	"9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
	"18446744073709551615", "18446744073709551616", "99999999999999999999999999999999",
	"", "abc", "1.5", "1e3", "0x10", "+1", "01", " 1", "1 ", "NaN", "Infinity", "1%00", "%ff",
}

// numericQueryParameters are every query parameter of the service that holds a number.
var numericQueryParameters = []string{"page", "per_page", "user_id"}

var wildcard = regexp.MustCompile(`\{[^}]+\}`)

// TestBoundaryNumbersNever5xx sends every boundary number to every path wildcard and every
// numeric query parameter of every route, as an admin with a fresh session (a logout must not
// end the sessions of the cases after it): the reply is JSON 200, 400 or 404, never a 5xx.
func TestBoundaryNumbersNever5xx(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	admin := env.addUser(t, "root", roleAdmin)
	fill := strconv.FormatInt(env.addUser(t, "bob", roleUser).ID, 10) // for the wildcards not under test
	type request struct{ method, path string }
	var requests []request
	for _, route := range allRoutes(t, env) {
		if route == "GET /docs" || route == "GET /{$}" {
			continue // the Swagger UI page and the redirect to it take no numbers
		}
		method, pattern, _ := strings.Cut(route, " ")
		for _, w := range wildcard.FindAllStringIndex(pattern, -1) {
			for _, n := range boundaryNumbers {
				path := pattern[:w[0]] + url.PathEscape(n) + pattern[w[1]:]
				requests = append(requests, request{method, wildcard.ReplaceAllString(path, fill)})
			}
		}
		for _, param := range numericQueryParameters {
			for _, n := range boundaryNumbers {
				path := wildcard.ReplaceAllString(pattern, fill) + "?" + param + "=" + url.QueryEscape(n)
				requests = append(requests, request{method, path})
			}
		}
	}
	body := []byte(`{"first_name": "Renamed"}`) // a good change, so that an update reaches the store
	for _, req := range requests {
		t.Run(fmt.Sprintf("%s %s", req.method, req.path), func(t *testing.T) {
			var b []byte
			contentType := ""
			if req.method != "GET" {
				b, contentType = body, "application/json"
			}
			r := sendRaw(t, env, req.method, req.path, env.tokenFor(t, admin), contentType, b)
			checkReply(t, r)
			if r.status != http.StatusOK && r.status != http.StatusBadRequest && r.status != http.StatusNotFound {
				t.Errorf("status %d, want 200, 400 or 404; body: %s", r.status, r.body)
			}
		})
	}
}
