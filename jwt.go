package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"
)

// HS256 JSON Web Tokens (RFC 7519), written out by hand so that the whole of token handling
// can be read on one screen. Only HS256 is ever produced or accepted.

var (
	errTokenInvalid = errors.New("invalid token")
	errTokenExpired = errors.New("token has expired")
)

// signingKey is an HMAC secret and the id ("kid") that names it in token headers.
type signingKey struct {
	id     string
	secret []byte
	header string // the encoded header of tokens signed with this key
}

func newSigningKey(secret []byte) signingKey {
	// The id is a digest of the secret: it tells keys apart without revealing them.
	sum := sha256.Sum256(secret)
	id := hex.EncodeToString(sum[:8])
	header, _ := json.Marshal(map[string]string{"alg": "HS256", "typ": "JWT", "kid": id})
	return signingKey{id: id, secret: secret, header: base64.RawURLEncoding.EncodeToString(header)}
}

// keySet signs with the current key and also accepts tokens of the previous one, so that the
// secret can be rotated without logging everyone out.
type keySet struct {
	current  signingKey
	previous *signingKey
}

func newKeySet(current, previous []byte) keySet {
	ks := keySet{current: newSigningKey(current)}
	if len(previous) > 0 {
		p := newSigningKey(previous)
		ks.previous = &p
	}
	return ks
}

// tokenClaims are the claims of an access token. Version must equal the user's token_version
// and Session must name a live session for the token to be accepted. AMR says how the session
// was authenticated (RFC 8176 method names: "pwd", then "totp" or "recovery").
type tokenClaims struct {
	Subject   string   `json:"sub"`
	IssuedAt  int64    `json:"iat"`
	ExpiresAt int64    `json:"exp"`
	Version   int64    `json:"ver"`
	Session   int64    `json:"sid"`
	AMR       []string `json:"amr,omitempty"`
}

// userID returns the numeric user id held in the subject claim.
func (c tokenClaims) userID() (int64, error) {
	id, err := strconv.ParseInt(c.Subject, 10, 64)
	if err != nil || id <= 0 {
		return 0, errTokenInvalid
	}
	return id, nil
}

// signToken returns an access token for the user's session, valid for ttl from now, naming
// the methods amr that authenticated the session.
func signToken(keys keySet, userID, version, sessionID int64, now time.Time, ttl time.Duration, amr ...string) string {
	claims, _ := json.Marshal(tokenClaims{ // a struct of strings and integers always marshals
		Subject:   strconv.FormatInt(userID, 10),
		IssuedAt:  now.Unix(),
		ExpiresAt: now.Add(ttl).Unix(),
		Version:   version,
		Session:   sessionID,
		AMR:       amr,
	})
	signingInput := keys.current.header + "." + base64.RawURLEncoding.EncodeToString(claims)
	return signingInput + "." + base64.RawURLEncoding.EncodeToString(mac(keys.current.secret, signingInput))
}

// verifyToken checks the token's structure, algorithm, key, signature and expiry, and returns
// its claims. It returns errTokenExpired for a well-signed but expired token and
// errTokenInvalid for everything else.
func verifyToken(keys keySet, token string, now time.Time) (tokenClaims, error) {
	var claims tokenClaims
	header, rest, ok := strings.Cut(token, ".")
	if !ok {
		return claims, errTokenInvalid
	}
	payload, signature, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(signature, ".") {
		return claims, errTokenInvalid
	}
	// Algorithm confusion ("alg":"none", RS256 with the secret as public key) is refused here.
	key, ok := keys.forHeader(header)
	if !ok {
		return claims, errTokenInvalid
	}
	// The signature is compared in its encoded form: base64 decoding would accept variants
	// (other trailing bits, line breaks) of one signature, so a token would not be unique.
	// hmac.Equal compares in constant time, so the MAC cannot be guessed byte by byte.
	wantMAC := base64.RawURLEncoding.EncodeToString(mac(key.secret, token[:len(header)+1+len(payload)]))
	if !hmac.Equal([]byte(signature), []byte(wantMAC)) {
		return claims, errTokenInvalid
	}
	if err := decodeSegment(payload, &claims); err != nil || claims.ExpiresAt == 0 {
		return claims, errTokenInvalid
	}
	if now.Unix() >= claims.ExpiresAt {
		return claims, errTokenExpired
	}
	return claims, nil
}

// forHeader returns the key a token header names, accepting only HS256.
func (ks keySet) forHeader(segment string) (signingKey, bool) {
	if segment == ks.current.header {
		return ks.current, true // the common case: no JSON to parse
	}
	var h struct {
		Alg string `json:"alg"`
		Typ string `json:"typ"`
		Kid string `json:"kid"`
	}
	if decodeSegment(segment, &h) != nil || h.Alg != "HS256" || h.Typ != "" && h.Typ != "JWT" {
		return signingKey{}, false
	}
	switch {
	case h.Kid == ks.current.id || h.Kid == "": // no kid: a token from before keys had ids
		return ks.current, true
	case ks.previous != nil && h.Kid == ks.previous.id:
		return *ks.previous, true
	}
	return signingKey{}, false
}

func decodeSegment(segment string, v any) error {
	raw, err := base64.RawURLEncoding.DecodeString(segment)
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, v)
}

func mac(secret []byte, signingInput string) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(signingInput))
	return h.Sum(nil)
}
