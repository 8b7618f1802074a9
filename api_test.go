package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Every bad input gets a clear 4xx JSON reply, never a 500 (issue 2, "Input and errors"):
// malformed bodies on every JSON endpoint, bad ids, unknown routes and wrong methods, and fuzz
// targets that throw arbitrary input at the real handler.

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// padBody pads a JSON body with trailing whitespace (still valid JSON) to exactly n bytes.
func padBody(t testing.TB, b []byte, n int) []byte {
	t.Helper()
	if len(b) > n {
		t.Fatalf("body of %d bytes is already over %d", len(b), n)
	}
	return append(b, bytes.Repeat([]byte(" "), n-len(b))...)
}

// bodyEndpoint is a JSON endpoint: its fields by JSON type, the status of a good request, and
// setup, which prepares a fresh good request (a new user, a new reset token), so that cases
// never depend on one another.
type bodyEndpoint struct {
	name          string
	method        string
	stringFields  []string
	boolFields    []string
	unknownFields []string // fields other endpoints know that this one must refuse
	ok            int
	setup         func(t *testing.T) (path, token string, body map[string]any)
}

// bodyEndpoints lists every endpoint that reads a JSON body.
func bodyEndpoints(env *testEnv, adminToken string) []bodyEndpoint {
	fresh := func(t *testing.T) user { return env.addUser(t, "u"+newRequestID(), roleUser) }
	updateUser := func(method string) bodyEndpoint {
		return bodyEndpoint{
			name: method + " user", method: method, ok: http.StatusOK,
			stringFields:  []string{"username", "first_name", "last_name", "email", "role"},
			boolFields:    []string{"is_active"},
			unknownFields: []string{"password"},
			setup: func(t *testing.T) (string, string, map[string]any) {
				return "/api/users/" + strconv.FormatInt(fresh(t).ID, 10), adminToken, map[string]any{"first_name": "Renamed"}
			},
		}
	}
	return []bodyEndpoint{
		{
			name: "register", method: "POST", ok: http.StatusCreated,
			stringFields:  []string{"username", "first_name", "last_name", "email", "password"},
			unknownFields: []string{"role", "is_active"},
			setup: func(*testing.T) (string, string, map[string]any) {
				name := "u" + newRequestID()
				return "/api/auth/register", "", map[string]any{
					"username": name, "first_name": "New", "last_name": "User",
					"email": name + "@example.com", "password": testPassword,
				}
			},
		},
		{
			name: "login", method: "POST", ok: http.StatusOK,
			stringFields:  []string{"username", "password"},
			unknownFields: []string{"email"},
			setup: func(t *testing.T) (string, string, map[string]any) {
				return "/api/auth/login", "", map[string]any{"username": fresh(t).Username, "password": testPassword}
			},
		},
		{
			name: "password reset request", method: "POST", ok: http.StatusOK,
			stringFields:  []string{"email"},
			unknownFields: []string{"username"},
			setup: func(t *testing.T) (string, string, map[string]any) {
				return "/api/auth/password-reset-request", "", map[string]any{"email": fresh(t).Email}
			},
		},
		{
			name: "reset password", method: "POST", ok: http.StatusOK,
			stringFields:  []string{"new_password"},
			unknownFields: []string{"password", "token"},
			setup: func(t *testing.T) (string, string, map[string]any) {
				r := env.do(t, "POST", "/api/auth/password-reset-request", "", map[string]string{"email": fresh(t).Email})
				token, _ := r.expect(t, http.StatusOK).json(t)["token"].(string)
				if token == "" {
					t.Fatalf("no reset token in dummy mode: %s", r.body)
				}
				return "/api/auth/reset-password/" + token, "", map[string]any{"new_password": "brand-new-password"}
			},
		},
		{
			name: "change password", method: "POST", ok: http.StatusOK,
			stringFields:  []string{"current_password", "new_password"},
			unknownFields: []string{"password"},
			setup: func(t *testing.T) (string, string, map[string]any) {
				return "/api/auth/change-password", env.tokenFor(t, fresh(t)),
					map[string]any{"current_password": testPassword, "new_password": "brand-new-password"}
			},
		},
		updateUser("PUT"),
		updateUser("PATCH"),
		{
			name: "mfa enrol", method: "POST", ok: http.StatusOK,
			stringFields:  []string{"password"},
			unknownFields: []string{"code"},
			setup: func(t *testing.T) (string, string, map[string]any) {
				return "/api/users/me/mfa/totp", env.tokenFor(t, fresh(t)), map[string]any{"password": testPassword}
			},
		},
		{
			name: "mfa confirm", method: "POST", ok: http.StatusOK,
			stringFields:  []string{"code"},
			unknownFields: []string{"password"},
			setup: func(t *testing.T) (string, string, map[string]any) {
				u := fresh(t)
				token := env.tokenFor(t, u)
				return "/api/users/me/mfa/totp/confirm", token, map[string]any{"code": env.pendingTOTP(t, u, token)}
			},
		},
		{
			name: "mfa verify", method: "POST", ok: http.StatusOK,
			stringFields:  []string{"mfa_token", "code"},
			unknownFields: []string{"password"},
			setup: func(t *testing.T) (string, string, map[string]any) {
				u := fresh(t)
				key := env.totpFor(t, u)
				c, err := env.st.startMFAChallenge(context.Background(), u)
				if err != nil {
					t.Fatal(err)
				}
				return "/api/auth/mfa/verify", "", map[string]any{"mfa_token": c.MFAToken, "code": totpCode(key, totpStep(env.clock.Now()))}
			},
		},
		mfaChange("POST", "/api/users/me/mfa/recovery-codes", env, fresh),
		mfaChange("DELETE", "/api/users/me/mfa", env, fresh),
	}
}

// mfaChange is an endpoint that takes the password and a code of a user with TOTP on.
func mfaChange(method, path string, env *testEnv, fresh func(*testing.T) user) bodyEndpoint {
	return bodyEndpoint{
		name: method + " " + path, method: method, ok: http.StatusOK,
		stringFields:  []string{"password", "code"},
		unknownFields: []string{"mfa_token"},
		setup: func(t *testing.T) (string, string, map[string]any) {
			u := fresh(t)
			key := env.totpFor(t, u)
			return path, env.tokenFor(t, u), map[string]any{"password": testPassword, "code": totpCode(key, totpStep(env.clock.Now()))}
		},
	}
}

// bodyCase is one way a request body can be wrong.
type bodyCase struct {
	name        string
	contentType string
	body        func(t *testing.T, good map[string]any) []byte
	status      int
	fields      []string // names the reply's "errors" must hold
}

// badBodies lists the bad bodies for e: the shapes every endpoint refuses, then wrong
// types, nulls and unknown names for each of its fields.
func badBodies(e bodyEndpoint) []bodyCase {
	const jsonType = "application/json"
	raw := func(s string) func(*testing.T, map[string]any) []byte {
		return func(*testing.T, map[string]any) []byte { return []byte(s) }
	}
	with := func(extra map[string]any) func(*testing.T, map[string]any) []byte {
		return func(t *testing.T, good map[string]any) []byte {
			m := maps.Clone(good)
			maps.Copy(m, extra)
			return mustMarshal(t, m)
		}
	}
	good := with(nil)
	then := func(suffix string) func(*testing.T, map[string]any) []byte {
		return func(t *testing.T, g map[string]any) []byte { return append(good(t, g), suffix...) }
	}
	cases := []bodyCase{
		{"unclosed object", jsonType, raw(`{`), 400, nil},
		{"missing value", jsonType, raw(`{"a":}`), 400, nil},
		{"unquoted name", jsonType, raw(`{username: "x"}`), 400, nil},
		{"trailing comma", jsonType, raw(`{"a": 1,}`), 400, nil},
		{"trailing garbage", jsonType, then("garbage"), 400, nil},
		{"second object", jsonType, then(`{}`), 400, nil},
		{"trailing closing brace", jsonType, then(`}`), 400, nil},
		{"array", jsonType, raw(`[]`), 400, nil},
		{"array holding the good object", jsonType, func(t *testing.T, g map[string]any) []byte {
			return mustMarshal(t, []any{g})
		}, 400, nil},
		{"string", jsonType, raw(`"hello"`), 400, nil},
		{"number", jsonType, raw(`42`), 400, nil},
		{"boolean", jsonType, raw(`true`), 400, nil},
		{"null", jsonType, raw(`null`), 400, nil},
		{"empty body", jsonType, raw(``), 400, nil},
		{"only whitespace", jsonType, raw(" \n\t"), 400, nil},
		{"empty object", jsonType, raw(`{}`), 400, nil},
		{"invalid UTF-8 outside strings", jsonType, raw("{\xff}"), 400, nil},
		{"unknown fields", jsonType, with(map[string]any{"nickname": "x", "is_superuser": true, "": 1}), 400,
			[]string{"nickname", "is_superuser", ""}},
		{"text/plain", "text/plain", good, 415, nil},
		{"no Content-Type", "", good, 415, nil},
		{"form encoded", "application/x-www-form-urlencoded", raw("username=alice&password=password123"), 415, nil},
		{"multipart", "multipart/form-data; boundary=x", good, 415, nil},
		{"json-ish media type", "application/jsonp", good, 415, nil},
		{"over 64 KiB", jsonType, func(t *testing.T, g map[string]any) []byte { return padBody(t, good(t, g), 64<<10+1) }, 413, nil},
		{"256 KiB", jsonType, func(t *testing.T, g map[string]any) []byte { return padBody(t, good(t, g), 256<<10) }, 413, nil},
		{"over 64 KiB of garbage", jsonType, raw(strings.Repeat("x", 64<<10+1)), 413, nil},
	}
	for _, f := range e.unknownFields {
		cases = append(cases, bodyCase{"unknown field " + f, jsonType, with(map[string]any{f: "x"}), 400, []string{f}})
	}
	wrong := map[string]any{}
	for _, f := range e.stringFields {
		wrong[f] = 1 // several wrong fields at once: every one is named
		cases = append(cases,
			bodyCase{f + " as a number", jsonType, with(map[string]any{f: 42}), 400, []string{f}},
			bodyCase{f + " as an object", jsonType, with(map[string]any{f: map[string]any{"a": "b"}}), 400, []string{f}},
			bodyCase{f + " as an array", jsonType, with(map[string]any{f: []string{"x"}}), 400, []string{f}},
			bodyCase{f + " as a boolean", jsonType, with(map[string]any{f: true}), 400, []string{f}},
			bodyCase{f + " null", jsonType, with(map[string]any{f: nil}), 400, []string{f}},
		)
	}
	for _, f := range e.boolFields {
		wrong[f] = "true"
		cases = append(cases,
			bodyCase{f + " as a string", jsonType, with(map[string]any{f: "true"}), 400, []string{f}},
			bodyCase{f + " as a number", jsonType, with(map[string]any{f: 1}), 400, []string{f}},
			bodyCase{f + " as an object", jsonType, with(map[string]any{f: map[string]any{}}), 400, []string{f}},
			bodyCase{f + " null", jsonType, with(map[string]any{f: nil}), 400, []string{f}},
		)
	}
	return append(cases, bodyCase{"every field mistyped", jsonType, with(wrong), 400, slices.Sorted(maps.Keys(wrong))})
}

func TestBadBodiesGetClear4xx(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	adminToken := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	for _, e := range bodyEndpoints(env, adminToken) {
		for _, c := range badBodies(e) {
			t.Run(e.name+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				path, token, good := e.setup(t)
				r := sendRaw(t, env, e.method, path, token, c.contentType, c.body(t, good))
				expectError(t, r, c.status, c.fields...)
			})
		}
	}
}

// TestGoodBodiesAccepted: the edges of what decode lets through get the endpoint's normal
// reply: a charset parameter, a media type in capitals, exactly 64 KiB.
func TestGoodBodiesAccepted(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	adminToken := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	cases := []struct {
		name        string
		contentType string
		size        int // the body is padded with whitespace to this many bytes; 0 leaves it
	}{
		{"plain", "application/json", 0},
		{"charset", "application/json; charset=utf-8", 0},
		{"media type in capitals", "Application/JSON", 0},
		{"exactly 64 KiB", "application/json", 64 << 10},
	}
	for _, e := range bodyEndpoints(env, adminToken) {
		for _, c := range cases {
			t.Run(e.name+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				path, token, good := e.setup(t)
				body := mustMarshal(t, good)
				if c.size > 0 {
					body = padBody(t, body, c.size)
				}
				r := sendRaw(t, env, e.method, path, token, c.contentType, body)
				checkReply(t, r)
				r.expect(t, e.ok)
			})
		}
	}
}

// TestNULBytesNever500: a NUL byte (valid in JSON as \u0000, refused by PostgreSQL in text)
// in a string field is never a 500, and outside passwords it is refused.
func TestNULBytesNever500(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	adminToken := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	for _, e := range bodyEndpoints(env, adminToken) {
		for _, f := range e.stringFields {
			for _, suffix := range []string{"\x00", "\x00@example.com"} {
				t.Run(fmt.Sprintf("%s/%s/%q", e.name, f, suffix), func(t *testing.T) {
					t.Parallel()
					path, token, good := e.setup(t)
					value, _ := good[f].(string)
					good[f] = value + suffix
					r := sendRaw(t, env, e.method, path, token, "application/json", mustMarshal(t, good))
					checkReply(t, r)
					// A password is any bytes (bcrypt hashes them); every other field refuses control characters.
					if r.status < 400 && !strings.HasSuffix(f, "password") {
						t.Errorf("a NUL byte in %s was accepted: %d %s", f, r.status, r.body)
					}
				})
			}
		}
	}
}

// TestBadUserIDs: an id that is not a positive 64-bit integer is a 400 for every method on
// /api/users/{id}. Deleting is for admins only, so a user's DELETE is refused with 403 first.
func TestBadUserIDs(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	admin := env.addUser(t, "root", roleAdmin)
	alice := env.addUser(t, "alice", roleUser)
	actors := []struct {
		name  string
		token string
	}{{"admin", env.tokenFor(t, admin)}, {"user", env.tokenFor(t, alice)}}
	ids := []string{"abc", "-1", "0", "99999999999999999999", "9223372036854775808", "1.5", "1e3", "0x1", "%20", "1%00",
		"+" + strconv.FormatInt(alice.ID, 10), "0" + strconv.FormatInt(alice.ID, 10)} // each id has one spelling
	for _, actor := range actors {
		for _, method := range []string{"GET", "PUT", "PATCH", "DELETE"} {
			for _, id := range ids {
				t.Run(fmt.Sprintf("%s/%s/%s", actor.name, method, id), func(t *testing.T) {
					t.Parallel()
					var body []byte
					contentType := ""
					if method == "PUT" || method == "PATCH" {
						body, contentType = []byte(`{"first_name": "Renamed"}`), "application/json"
					}
					want := http.StatusBadRequest
					if method == "DELETE" && actor.name == "user" {
						want = http.StatusForbidden
					}
					expectError(t, sendRaw(t, env, method, "/api/users/"+id, actor.token, contentType, body), want)
				})
			}
		}
	}
	// The rows are untouched.
	for _, u := range []user{admin, alice} {
		env.do(t, "GET", "/api/users/"+strconv.FormatInt(u.ID, 10), env.tokenFor(t, admin), nil).expect(t, http.StatusOK)
	}
}

// TestListUsersBadQuery: every bad query parameter of the admin list is a 400 naming it.
func TestListUsersBadQuery(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	token := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	cases := []struct{ query, param string }{
		{"page=0", "page"}, {"page=-1", "page"}, {"page=x", "page"}, {"page=1.5", "page"},
		{"page=99999999999999999999", "page"}, {"per_page=0", "per_page"}, {"per_page=201", "per_page"},
		{"page=1&page=2", "page"}, {"sort=password_hash", "sort"}, {"sort=-", "sort"},
		{"sort=id%3BDROP%20TABLE%20users", "sort"}, {"role=root", "role"}, {"is_active=maybe", "is_active"},
		{"unknown=1", "unknown"}, {"q=" + strings.Repeat("a", 255), "q"},
		{"q=%00", "q"}, {"q=a%00b", "q"}, {"q=%ff", "q"}, {"q=%c3%28", "q"}, // NUL and invalid UTF-8
	}
	for _, c := range cases {
		t.Run(c.query, func(t *testing.T) {
			t.Parallel()
			expectError(t, sendRaw(t, env, "GET", "/api/admin/users?"+c.query, token, "", nil), http.StatusBadRequest, c.param)
		})
	}
}

// FuzzRegisterBody sends arbitrary bytes as a registration: whatever they are, the reply is a
// JSON object with a message, never a 5xx. Usernames repeat across inputs, so 409 is fine.
func FuzzRegisterBody(f *testing.F) {
	env := newTestEnv(f)
	for _, seed := range []string{
		`{"username": "alice", "first_name": "Alice", "last_name": "A", "email": "alice@example.com", "password": "` + testPassword + `"}`,
		`{"username": "alice", "first_name": "Alice", "last_name": "A", "email": "ALICE@example.com", "password": "` + testPassword + `"}`,
		`{"username": "b\u0000b", "first_name": "\u0000", "last_name": "\ud800", "email": "b\u0000@example.com", "password": "\u0000\u0000\u0000\u0000\u0000\u0000\u0000\u0000"}`,
		`{"username": 1, "first_name": {}, "last_name": [], "email": true, "password": null}`,
		`{"username": "ab", "email": "not-an-address", "password": "short", "role": "Admin"}`,
		`{"username": "carol"}{"username": "dave"}`,
		`{"username": "alice", "username": "bob"}`,
		`{`, `{"a":}`, `[]`, `"x"`, `1`, `null`, ``, `{}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		t.Parallel()
		r := sendRaw(t, env, "POST", "/api/auth/register", "", "application/json", body)
		checkReply(t, r)
		if r.message(t) == "" {
			t.Errorf("status %d without a message: %s", r.status, r.body)
		}
	})
}

// FuzzUserUpdateBody sends arbitrary bytes as an admin's PATCH of a fresh user: never a 5xx.
func FuzzUserUpdateBody(f *testing.F) {
	env := newTestEnv(f)
	adminToken := env.tokenFor(f, env.addUser(f, "root", roleAdmin))
	env.addUser(f, "taken", roleUser)
	for _, seed := range []string{
		`{"first_name": "New"}`,
		`{"username": "taken"}`,
		`{"email": "TAKEN@example.com"}`,
		`{"username": "renamed", "first_name": "F", "last_name": "L", "email": "r@example.com", "role": "admin", "is_active": false}`,
		`{"role": "ADMIN"}`, `{"role": "root"}`, `{"is_active": "true"}`, `{"password": "password123"}`,
		`{"username": "\u0000", "first_name": "a\u0000", "last_name": "\u007f", "email": "a@b\u0000"}`,
		`{"first_name": null}`, `{"is_active": 1}`,
		`{`, `[]`, `null`, ``, `{}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		t.Parallel()
		target := env.addUser(t, "u"+newRequestID(), roleUser) // fresh, whatever earlier inputs did
		r := sendRaw(t, env, "PATCH", "/api/users/"+strconv.FormatInt(target.ID, 10), adminToken, "application/json", body)
		checkReply(t, r)
	})
}

// FuzzListUsersQuery sends arbitrary raw query strings to the admin user list: never a 5xx.
func FuzzListUsersQuery(f *testing.F) {
	env := newTestEnv(f)
	adminToken := env.tokenFor(f, env.addUser(f, "root", roleAdmin))
	for _, name := range []string{"alice", "bob", "carol"} {
		env.addUser(f, name, roleUser)
	}
	for _, seed := range []string{
		"", "page=2&per_page=1", "q=ali&role=user&is_active=true&sort=-username", "sort=-created_at",
		"page=0", "page=-1", "page=2147483648", "per_page=201", "page=x", "page=1&page=2", "sort=password_hash",
		"sort=id%3BDROP%20TABLE%20users", "q=%25_%5C", "role=root", "is_active=maybe", "unknown=1",
		"%zz", "q=a+b", ";", "&&&", "=",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, query string) {
		t.Parallel()
		req, err := http.NewRequest("GET", env.server.URL+"/api/admin/users", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.URL.RawQuery = query
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return // the client refused to send it (a control character): the server never saw it
		}
		defer resp.Body.Close()
		if resp.StatusCode >= 500 {
			t.Errorf("query %q: status %d", query, resp.StatusCode)
		}
	})
}
