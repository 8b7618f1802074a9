package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Tests of the hand-written HS256 tokens: the pure functions, then the same rules through the
// real handler.

var (
	jwtTestKey  = []byte("jwt-test-key-jwt-test-key-0123456789")
	jwtTestKeys = newKeySet(jwtTestKey, nil)
	jwtTestNow  = time.Unix(1_900_000_000, 0)
)

// jwtSegment base64url-encodes one token segment, as RFC 7515 says: no padding.
func jwtSegment(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// jwtHS256 is an HMAC-SHA256 computed here, independently of jwt.go's mac.
func jwtHS256(key []byte, signingInput string) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(signingInput))
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}

// jwtForge builds a token from a raw header and payload, with a correct HS256 MAC under key:
// whatever rejects it, it is not the signature.
func jwtForge(key []byte, header, payload string) string {
	input := jwtSegment(header) + "." + jwtSegment(payload)
	return input + "." + jwtHS256(key, input)
}

// jwtOtherTrailingBits changes the last character of a token's signature so that only the 2
// bits past the 256 of the MAC differ: a strict decoder refuses it, a lax one reads the same MAC.
func jwtOtherTrailingBits(token string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, token[len(token)-1])
	return token[:len(token)-1] + string(alphabet[last^1])
}

// jwtClaims is a payload valid at jwtTestNow, with extra JSON members appended.
func jwtClaims(sub string) string {
	return fmt.Sprintf(`{"sub":%q,"iat":%d,"exp":%d,"ver":0}`, sub, jwtTestNow.Unix(), jwtTestNow.Add(time.Hour).Unix())
}

// jwtAccepts verifies a token the way requireAuth does: verifyToken, then the subject.
func jwtAccepts(token string) (tokenClaims, error) {
	claims, err := verifyToken(jwtTestKeys, token, jwtTestNow)
	if err == nil {
		_, err = claims.userID()
	}
	return claims, err
}

func TestJWTRoundTrip(t *testing.T) {
	t.Parallel()
	token := signToken(jwtTestKeys, 42, 7, 0, jwtTestNow, time.Hour)
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q has %d segments, want 3", token, len(parts))
	}
	var header map[string]any
	raw, _ := base64.RawURLEncoding.DecodeString(parts[0])
	if err := json.Unmarshal(raw, &header); err != nil || header["alg"] != "HS256" || header["typ"] != "JWT" {
		t.Errorf("header = %s (%v), want alg HS256, typ JWT", raw, err)
	}
	if parts[2] != jwtHS256(jwtTestKey, parts[0]+"."+parts[1]) {
		t.Errorf("signature %q is not the HS256 MAC of the signing input", parts[2])
	}
	claims, err := jwtAccepts(token)
	if err != nil {
		t.Fatalf("verifyToken: %v", err)
	}
	want := tokenClaims{Subject: "42", IssuedAt: jwtTestNow.Unix(), ExpiresAt: jwtTestNow.Add(time.Hour).Unix(), Version: 7, subjectID: 42}
	if !reflect.DeepEqual(claims, want) {
		t.Errorf("claims = %+v, want %+v", claims, want)
	}
	if id, err := claims.userID(); id != 42 || err != nil {
		t.Errorf("userID = %d, %v; want 42", id, err)
	}
}

func TestJWTExpiry(t *testing.T) {
	t.Parallel()
	token := signToken(jwtTestKeys, 42, 0, 0, jwtTestNow, time.Hour)
	for _, tt := range []struct {
		after time.Duration
		want  error
	}{
		{0, nil},
		{time.Hour - time.Second, nil},
		{time.Hour - time.Nanosecond, nil},
		{time.Hour, errTokenExpired}, // exp is the first instant at which the token is refused
		{time.Hour + time.Second, errTokenExpired},
		{365 * 24 * time.Hour, errTokenExpired},
	} {
		_, err := verifyToken(jwtTestKeys, token, jwtTestNow.Add(tt.after))
		if !errors.Is(err, tt.want) {
			t.Errorf("%v after issue: err = %v, want %v", tt.after, err, tt.want)
		}
	}
	// A past exp says nothing until the MAC is good: a forged expired token is just invalid.
	expired := signToken(jwtTestKeys, 42, 0, 0, jwtTestNow.Add(-2*time.Hour), time.Hour)
	if _, err := verifyToken(jwtTestKeys, expired, jwtTestNow); !errors.Is(err, errTokenExpired) {
		t.Errorf("expired token: err = %v, want errTokenExpired", err)
	}
	forged := signToken(newKeySet([]byte("some-other-key-some-other-key-0123"), nil), 42, 0, 0, jwtTestNow.Add(-2*time.Hour), time.Hour)
	if _, err := verifyToken(jwtTestKeys, forged, jwtTestNow); !errors.Is(err, errTokenInvalid) {
		t.Errorf("expired token under another key: err = %v, want errTokenInvalid", err)
	}
}

func TestJWTTampering(t *testing.T) {
	t.Parallel()
	valid := signToken(jwtTestKeys, 42, 0, 0, jwtTestNow, time.Hour)
	header, payload, sig := func() (string, string, string) {
		p := strings.Split(valid, ".")
		return p[0], p[1], p[2]
	}()
	hs256 := `{"alg":"HS256","typ":"JWT"}`
	none := `{"alg":"none","typ":"JWT"}`
	hs512 := `{"alg":"HS512","typ":"JWT"}`
	hs512Input := jwtSegment(hs512) + "." + payload
	hs512MAC := hmac.New(sha512.New, jwtTestKey)
	hs512MAC.Write([]byte(hs512Input))
	rawSig, _ := base64.RawURLEncoding.DecodeString(sig)

	tests := []struct{ name, token string }{
		{"alg none, no signature", jwtSegment(none) + "." + payload + "."},
		{"alg none, with the original signature", jwtSegment(none) + "." + payload + "." + sig},
		{"alg none, with its own MAC", jwtForge(jwtTestKey, none, jwtClaims("42"))},
		{"alg None", jwtForge(jwtTestKey, `{"alg":"None","typ":"JWT"}`, jwtClaims("42"))},
		{"alg NONE, no signature", jwtSegment(`{"alg":"NONE"}`) + "." + payload + "."},
		{"alg HS512 with an HS256 MAC", jwtForge(jwtTestKey, hs512, jwtClaims("42"))},
		{"alg HS512 with an HS512 MAC", hs512Input + "." + base64.RawURLEncoding.EncodeToString(hs512MAC.Sum(nil))},
		{"alg hs256 lowercase", jwtForge(jwtTestKey, `{"alg":"hs256","typ":"JWT"}`, jwtClaims("42"))},
		{"alg RS256", jwtForge(jwtTestKey, `{"alg":"RS256","typ":"JWT"}`, jwtClaims("42"))},
		{"alg missing", jwtForge(jwtTestKey, `{"typ":"JWT"}`, jwtClaims("42"))},
		{"alg not a string", jwtForge(jwtTestKey, `{"alg":["HS256"],"typ":"JWT"}`, jwtClaims("42"))},
		{"header not JSON", jwtForge(jwtTestKey, `HS256`, jwtClaims("42"))},
		{"header a JSON array", jwtForge(jwtTestKey, `["HS256"]`, jwtClaims("42"))},
		{"changed payload, old signature", header + "." + jwtSegment(jwtClaims("1")) + "." + sig},
		{"changed version, old signature", header + "." + jwtSegment(strings.Replace(jwtClaims("42"), `"ver":0`, `"ver":1`, 1)) + "." + sig},
		{"changed header, old signature", jwtSegment(`{"typ":"JWT","alg":"HS256"}`) + "." + payload + "." + sig},
		{"wrong key", signToken(newKeySet([]byte("some-other-key-some-other-key-0123"), nil), 42, 0, 0, jwtTestNow, time.Hour)},
		{"empty key", signToken(newKeySet(nil, nil), 42, 0, 0, jwtTestNow, time.Hour)},
		{"signature of another token", header + "." + payload + "." + strings.Split(signToken(jwtTestKeys, 43, 0, 0, jwtTestNow, time.Hour), ".")[2]},
		{"signature missing", header + "." + payload + "."},
		{"signature truncated by one", valid[:len(valid)-1]},
		{"signature truncated by half", valid[:len(valid)-len(sig)/2]},
		{"signature one byte short", header + "." + payload + "." + base64.RawURLEncoding.EncodeToString(rawSig[:31])},
		{"signature one byte long", header + "." + payload + "." + base64.RawURLEncoding.EncodeToString(append(rawSig, 0))},
		{"signature with padding", header + "." + payload + "." + base64.URLEncoding.EncodeToString(rawSig)},
		{"signature with standard base64 characters", header + "." + payload + "." + sig[:5] + "+/" + sig[7:]},
		{"signature with other trailing bits", jwtOtherTrailingBits(valid)},
		{"signature with a newline", header + "." + payload + "." + sig[:10] + "\n" + sig[10:]},
		{"signature with a carriage return", header + "." + payload + "." + sig[:10] + "\r" + sig[10:]},
		{"two segments", header + "." + payload},
		{"one segment", header},
		{"header and dot", header + "."},
		{"extra empty segment", valid + "."},
		{"extra segment", valid + "." + sig},
		{"leading dot", "." + valid},
		{"leading space", " " + valid},
		{"trailing space", valid + " "},
		{"empty string", ""},
		{"dots only", ".."},
		{"three dots", "..."},
		{"bad base64 header", "!!!" + valid[len(header):]},
		{"bad base64 payload, good MAC", func() string {
			input := header + ".!!!"
			return input + "." + jwtHS256(jwtTestKey, input)
		}()},
		{"padded payload, good MAC", func() string {
			claims := jwtClaims("42")
			for len(claims)%3 == 0 {
				claims += " "
			}
			input := header + "." + base64.URLEncoding.EncodeToString([]byte(claims))
			return input + "." + jwtHS256(jwtTestKey, input)
		}()},
		{"payload not JSON", jwtForge(jwtTestKey, hs256, `sub=42`)},
		{"payload a JSON array", jwtForge(jwtTestKey, hs256, `[42]`)},
		{"missing exp", jwtForge(jwtTestKey, hs256, fmt.Sprintf(`{"sub":"42","iat":%d,"ver":0}`, jwtTestNow.Unix()))},
		{"exp zero", jwtForge(jwtTestKey, hs256, fmt.Sprintf(`{"sub":"42","iat":%d,"exp":0,"ver":0}`, jwtTestNow.Unix()))},
		{"exp null", jwtForge(jwtTestKey, hs256, `{"sub":"42","exp":null,"ver":0}`)},
		{"exp a string", jwtForge(jwtTestKey, hs256, fmt.Sprintf(`{"sub":"42","exp":"%d","ver":0}`, jwtTestNow.Add(time.Hour).Unix()))},
		{"exp a fraction", jwtForge(jwtTestKey, hs256, fmt.Sprintf(`{"sub":"42","exp":%d.5,"ver":0}`, jwtTestNow.Add(time.Hour).Unix()))},
		{"sub non-numeric", jwtForge(jwtTestKey, hs256, jwtClaims("alice"))},
		{"sub empty", jwtForge(jwtTestKey, hs256, jwtClaims(""))},
		{"sub zero", jwtForge(jwtTestKey, hs256, jwtClaims("0"))},
		{"sub negative", jwtForge(jwtTestKey, hs256, jwtClaims("-42"))},
		{"sub with spaces", jwtForge(jwtTestKey, hs256, jwtClaims(" 42"))},
		{"sub a number, not a string", jwtForge(jwtTestKey, hs256, strings.Replace(jwtClaims("42"), `"42"`, `42`, 1))},
		{"sub missing", jwtForge(jwtTestKey, hs256, fmt.Sprintf(`{"exp":%d,"ver":0}`, jwtTestNow.Add(time.Hour).Unix()))},
		{"ver a string", jwtForge(jwtTestKey, hs256, strings.Replace(jwtClaims("42"), `"ver":0`, `"ver":"0"`, 1))},
	}
	for _, tt := range tests {
		if _, err := jwtAccepts(tt.token); !errors.Is(err, errTokenInvalid) {
			t.Errorf("%s: err = %v, want errTokenInvalid (token %q)", tt.name, err, tt.token)
		}
	}
	// The forging helper itself makes tokens that pass, so the cases above fail for their
	// one flaw.
	if _, err := jwtAccepts(jwtForge(jwtTestKey, hs256, jwtClaims("42"))); err != nil {
		t.Errorf("a well-formed forged-here token: %v, want it accepted", err)
	}
}

// jwtAuthReply checks a refusal of GET /api/users/me: 401, a Bearer challenge, and one of
// the wanted messages.
func jwtAuthReply(t *testing.T, r response, messages ...string) {
	t.Helper()
	if r.status != http.StatusUnauthorized {
		t.Errorf("status %d, want 401; body: %s", r.status, r.body)
		return
	}
	if got := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
		t.Errorf("WWW-Authenticate = %q, want a Bearer challenge", got)
	}
	body := r.json(t)
	msg, _ := body["message"].(string)
	for _, m := range messages {
		if msg == m {
			return
		}
	}
	t.Errorf("message = %q, want one of %q", msg, messages)
}

// jwtGetMe sends GET /api/users/me with the raw Authorization header value, if any.
func jwtGetMe(t testing.TB, env *testEnv, authorization string, set bool) response {
	t.Helper()
	req, err := http.NewRequest("GET", env.server.URL+"/api/users/me", nil)
	if err != nil {
		t.Fatal(err)
	}
	if set {
		req.Header.Set("Authorization", authorization)
	}
	return send(t, req)
}

const (
	jwtMissing = "Missing or invalid Authorization header"
	jwtInvalid = "Invalid or revoked token"
	jwtExpired = "Token has expired"
)

func TestJWTAuthorizationHeader(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	token := env.tokenFor(t, alice)
	parts := strings.Split(token, ".")

	jwtAuthReply(t, jwtGetMe(t, env, "", false), jwtMissing)
	for _, tt := range []struct {
		name, value string
		messages    []string // nil: accepted
	}{
		{"bearer", "Bearer " + token, nil},
		{"scheme in lower case", "bearer " + token, nil},
		{"empty", "", []string{jwtMissing}},
		{"basic", "Basic YWxpY2U6cGFzc3dvcmQxMjM=", []string{jwtMissing}},
		{"basic with the token", "Basic " + token, []string{jwtMissing}},
		{"bearer alone", "Bearer", []string{jwtMissing}},
		{"bearer and space", "Bearer ", []string{jwtMissing}},
		{"token alone", token, []string{jwtMissing}},
		{"garbage", "garbage", []string{jwtMissing}},
		{"bearer garbage", "Bearer garbage", []string{jwtMissing, jwtInvalid}},
		{"bearer three dots", "Bearer a.b.c", []string{jwtMissing, jwtInvalid}},
		{"two spaces", "Bearer  " + token, []string{jwtMissing, jwtInvalid}},
		{"tab", "Bearer\t" + token, []string{jwtMissing, jwtInvalid}},
		{"token twice", "Bearer " + token + " " + token, []string{jwtMissing, jwtInvalid}},
		{"scheme twice", "Bearer Bearer " + token, []string{jwtMissing, jwtInvalid}},
		{"alg none", "Bearer " + jwtSegment(`{"alg":"none","typ":"JWT"}`) + "." + parts[1] + ".", []string{jwtInvalid}},
		{"wrong key", "Bearer " + signToken(newKeySet([]byte("some-other-key-some-other-key-0123"), nil), alice.ID, 0, 0, env.clock.Now(), time.Hour), []string{jwtInvalid}},
		{"non-numeric sub", "Bearer " + jwtForge(env.cfg.keys.current.secret, `{"alg":"HS256","typ":"JWT"}`,
			fmt.Sprintf(`{"sub":"alice","exp":%d,"ver":0}`, env.clock.Now().Add(time.Hour).Unix())), []string{jwtInvalid}},
		{"unknown user", "Bearer " + signToken(env.cfg.keys, alice.ID+100, 0, 0, env.clock.Now(), time.Hour), []string{jwtInvalid}},
		{"signature with other trailing bits", "Bearer " + jwtOtherTrailingBits(token), []string{jwtInvalid}},
		{"old version", "Bearer " + signToken(env.cfg.keys, alice.ID, alice.TokenVersion+1, 0, env.clock.Now(), time.Hour), []string{jwtInvalid}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := jwtGetMe(t, env, tt.value, true)
			if tt.messages == nil {
				if r.expect(t, http.StatusOK).json(t)["username"] != "alice" {
					t.Errorf("accepted as someone else: %s", r.body)
				}
				return
			}
			jwtAuthReply(t, r, tt.messages...)
		})
	}
}

func TestJWTExpiredDeletedDeactivated(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	bob := env.addUser(t, "bob", roleUser)
	carol := env.addUser(t, "carol", roleUser)
	aliceToken, bobToken, carolToken := env.tokenFor(t, alice), env.tokenFor(t, bob), env.tokenFor(t, carol)
	ctx := context.Background()

	if _, err := env.st.pool.Exec(ctx, "DELETE FROM users WHERE id = $1", bob.ID); err != nil {
		t.Fatal(err)
	}
	jwtAuthReply(t, env.do(t, "GET", "/api/users/me", bobToken, nil), jwtInvalid)
	if _, err := env.st.pool.Exec(ctx, "UPDATE users SET is_active = false WHERE id = $1", carol.ID); err != nil {
		t.Fatal(err)
	}
	jwtAuthReply(t, env.do(t, "GET", "/api/users/me", carolToken, nil), jwtInvalid)

	env.clock.Advance(env.cfg.accessTTL - time.Second)
	env.do(t, "GET", "/api/users/me", aliceToken, nil).expect(t, http.StatusOK)
	env.clock.Advance(time.Second)
	jwtAuthReply(t, env.do(t, "GET", "/api/users/me", aliceToken, nil), jwtExpired)
	env.clock.Advance(24 * time.Hour)
	jwtAuthReply(t, env.do(t, "GET", "/api/users/me", aliceToken, nil), jwtExpired)
	// A fresh token works again: only the old one expired.
	env.do(t, "GET", "/api/users/me", env.tokenFor(t, alice), nil).expect(t, http.StatusOK)
}

// TestSignedClaimsReadWithoutReflection: the claims of every token signToken makes, whatever
// its numbers and methods, are read by readSignedClaims, into what encoding/json reads.
func TestSignedClaimsReadWithoutReflection(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		user, version, session int64
		amr                    []string
	}{
		{1, 0, 0, nil}, {42, 7, 3, amrPassword}, {9, 1, 10, amrTOTP}, {12345, 99, 678, amrRecovery},
		{math.MaxInt64, math.MaxInt64, math.MaxInt64, amrTOTP},
	} {
		token := signToken(jwtTestKeys, c.user, c.version, c.session, jwtTestNow, time.Hour, c.amr...)
		raw, _ := base64.RawURLEncoding.DecodeString(strings.Split(token, ".")[1])
		var fast, slow tokenClaims
		if !readSignedClaims(raw, &fast) {
			t.Errorf("readSignedClaims refused %s", raw)
			continue
		}
		if err := json.Unmarshal(raw, &slow); err != nil {
			t.Fatal(err)
		}
		slow.subjectID = c.user
		if !reflect.DeepEqual(fast, slow) {
			t.Errorf("readSignedClaims(%s) = %+v, encoding/json gives %+v", raw, fast, slow)
		}
	}
}

// FuzzSignedClaims: whatever readSignedClaims accepts, encoding/json reads the same claims
// from, so that the fast path changes no token's meaning.
func FuzzSignedClaims(f *testing.F) {
	for _, seed := range []string{
		`{"sub":"42","iat":1900000000,"exp":1900003600,"ver":7,"sid":3,"amr":["pwd","totp"]}`,
		`{"sub":"1","iat":-5,"exp":0,"ver":-9223372036854775808,"sid":9223372036854775807}`,
		`{"sub":"042","iat":1,"exp":2,"ver":3,"sid":4}`,
		`{"sub":"7","iat":1,"exp":2,"ver":3,"sid":4,"amr":["pwd"]} `,
		`{"sub":"7","iat":1,"exp":2,"ver":3,"sid":9223372036854775808}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var fast tokenClaims
		if !readSignedClaims(b, &fast) {
			return
		}
		var slow tokenClaims
		if err := json.Unmarshal(b, &slow); err != nil {
			t.Fatalf("readSignedClaims accepted %q, which encoding/json refuses: %v", b, err)
		}
		slow.subjectID, _ = strconv.ParseInt(slow.Subject, 10, 64)
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("readSignedClaims(%q) = %+v, encoding/json gives %+v", b, fast, slow)
		}
	})
}

func FuzzVerifyToken(f *testing.F) {
	valid := signToken(jwtTestKeys, 42, 3, 0, jwtTestNow, time.Hour)
	p := strings.Split(valid, ".")
	for _, seed := range []string{
		valid,
		signToken(jwtTestKeys, 1, 0, 0, jwtTestNow.Add(-time.Minute), time.Hour),
		signToken(jwtTestKeys, 9_223_372_036_854_775_807, 1<<40, 0, jwtTestNow, 24*time.Hour),
		signToken(jwtTestKeys, 42, 0, 0, jwtTestNow.Add(-2*time.Hour), time.Hour), // expired
		signToken(newKeySet([]byte("some-other-key-some-other-key-0123"), nil), 42, 0, 0, jwtTestNow, time.Hour),
		jwtSegment(`{"alg":"none","typ":"JWT"}`) + "." + p[1] + ".",
		jwtForge(jwtTestKey, `{"alg":"HS512","typ":"JWT"}`, jwtClaims("42")),
		jwtForge(jwtTestKey, `{"alg":"HS256"}`, jwtClaims("42")),
		jwtForge(jwtTestKey, `{"alg":"HS256","typ":"JWT"}`, `{"sub":"7","exp":1900003600}`),
		p[0] + "." + jwtSegment(jwtClaims("1")) + "." + p[2],
		valid + "." + p[2],
		"", ".", "..", "a.b.c",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, token string) {
		claims, err := verifyToken(jwtTestKeys, token, jwtTestNow)
		if err != nil {
			if !errors.Is(err, errTokenInvalid) && !errors.Is(err, errTokenExpired) {
				t.Fatalf("err = %v, want errTokenInvalid or errTokenExpired", err)
			}
			return
		}
		// Accepted: then it must be exactly header.payload.MAC, the MAC being HS256 under the
		// key over the first two segments, as re-signing them reproduces.
		parts := strings.Split(token, ".")
		if len(parts) != 3 {
			t.Fatalf("accepted a token of %d segments: %q", len(parts), token)
		}
		input := parts[0] + "." + parts[1]
		if resigned := input + "." + jwtHS256(jwtTestKey, input); resigned != token {
			t.Fatalf("accepted %q, but re-signing its header and claims gives %q", token, resigned)
		}
		rawHeader, _ := base64.RawURLEncoding.DecodeString(parts[0])
		var h struct{ Alg string }
		if json.Unmarshal(rawHeader, &h) != nil || h.Alg != "HS256" {
			t.Fatalf("accepted a token whose header is %q", rawHeader)
		}
		if claims.ExpiresAt <= jwtTestNow.Unix() {
			t.Fatalf("accepted a token with exp %d at %d", claims.ExpiresAt, jwtTestNow.Unix())
		}
	})
}

// jwtValidHeaderValue reports whether an HTTP client can send s as a header value (RFC 9110:
// no control characters other than tab).
func jwtValidHeaderValue(s string) bool {
	for i := range len(s) {
		if c := s[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

func FuzzAuthorizationHeader(f *testing.F) {
	env := newTestEnv(f)
	// A fixed clock makes the one valid token the same in every fuzzing worker.
	env.clock.Advance(jwtTestNow.Sub(env.clock.Now()))
	alice := env.addUser(f, "alice", roleUser)
	token := env.tokenFor(f, alice)
	p := strings.Split(token, ".")
	for _, seed := range []string{
		"Bearer " + token,
		"bearer " + token,
		"Bearer  " + token,
		"Bearer " + token + " ",
		"Basic " + token,
		"Bearer " + p[0] + "." + p[1] + ".",
		"Bearer " + jwtSegment(`{"alg":"none","typ":"JWT"}`) + "." + p[1] + ".",
		"Bearer " + p[0] + "." + jwtSegment(jwtClaims("1")) + "." + p[2],
		"Bearer " + signToken(env.cfg.keys, alice.ID, 0, 0, jwtTestNow.Add(-2*time.Hour), time.Hour),
		"Bearer", "Bearer ", "", "Basic YWxpY2U6cGFzc3dvcmQxMjM=", "Bearer garbage",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, value string) {
		if !jwtValidHeaderValue(value) {
			return // no client can send it
		}
		r := jwtGetMe(t, env, value, true)
		// The client and the server both drop surrounding spaces and tabs; the scheme is
		// case-insensitive (RFC 9110); the token must be exactly the one issued.
		scheme, rest, _ := strings.Cut(strings.Trim(value, " \t"), " ")
		exact := strings.EqualFold(scheme, "Bearer") && rest == token
		switch {
		case r.status >= 500:
			t.Fatalf("Authorization %q: status %d; body: %s", value, r.status, r.body)
		case r.status == http.StatusOK && !exact:
			t.Fatalf("Authorization %q accepted, but it is not the issued token %q", value, token)
		case r.status != http.StatusOK && exact:
			t.Fatalf("Authorization %q refused with %d: %s", value, r.status, r.body)
		case r.status != http.StatusOK && r.status != http.StatusUnauthorized:
			t.Fatalf("Authorization %q: status %d, want 401; body: %s", value, r.status, r.body)
		case r.status == http.StatusUnauthorized && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer"):
			t.Fatalf("Authorization %q: 401 without a Bearer challenge", value)
		}
	})
}

func TestKeyRotation(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "alice", roleUser)
	keyA := env.cfg.keys.current.secret
	keyB := []byte("rotated-secret-rotated-secret-0123456789")
	underA := env.loginPair(t, "alice")
	kidA, _ := tokenParts(t, underA.access)
	kidB := newSigningKey(keyB).id
	if kidA != env.cfg.keys.current.id || kidA == kidB {
		t.Fatalf("token kid %q, want key A's %q (key B's is %q)", kidA, env.cfg.keys.current.id, kidB)
	}

	rotated := env.cfg
	rotated.keys = newKeySet(keyB, keyA)
	second := env.anotherInstance(t, rotated)
	second.do(t, "GET", "/api/users/me", underA.access, nil).expect(t, http.StatusOK)
	fromRefresh := pairOf(t, second.refresh(t, underA.refresh))
	fromLogin := second.loginPair(t, "alice")
	for _, p := range []tokenPair{fromRefresh, fromLogin} {
		if kid, _ := tokenParts(t, p.access); kid != kidB {
			t.Errorf("new token signed with kid %q, want key B's %q", kid, kidB)
		}
		second.do(t, "GET", "/api/users/me", p.access, nil).expect(t, http.StatusOK)
	}

	onlyB := env.cfg
	onlyB.keys = newKeySet(keyB, nil)
	third := env.anotherInstance(t, onlyB)
	third.do(t, "GET", "/api/users/me", underA.access, nil).expect(t, http.StatusUnauthorized)
	third.do(t, "GET", "/api/users/me", fromLogin.access, nil).expect(t, http.StatusOK)
}
