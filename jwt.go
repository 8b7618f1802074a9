package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
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

// jwtHeader is the only header this service signs; verification parses headers rather than
// comparing bytes, but accepts no alg other than HS256.
var jwtHeader = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))

// tokenClaims are the claims of an access token. Version must equal the user's
// token_version for the token to be accepted, which is how tokens are revoked.
type tokenClaims struct {
	Subject   string `json:"sub"`
	IssuedAt  int64  `json:"iat"`
	ExpiresAt int64  `json:"exp"`
	Version   int64  `json:"ver"`
}

// userID returns the numeric user id held in the subject claim.
func (c tokenClaims) userID() (int64, error) {
	id, err := strconv.ParseInt(c.Subject, 10, 64)
	if err != nil || id <= 0 {
		return 0, errTokenInvalid
	}
	return id, nil
}

// signToken returns a signed access token for the user, valid for ttl from now.
func signToken(key []byte, userID, version int64, now time.Time, ttl time.Duration) string {
	claims, _ := json.Marshal(tokenClaims{ // a struct of strings and integers always marshals
		Subject:   strconv.FormatInt(userID, 10),
		IssuedAt:  now.Unix(),
		ExpiresAt: now.Add(ttl).Unix(),
		Version:   version,
	})
	signingInput := jwtHeader + "." + base64.RawURLEncoding.EncodeToString(claims)
	return signingInput + "." + base64.RawURLEncoding.EncodeToString(mac(key, signingInput))
}

// verifyToken checks the token's structure, algorithm, signature and expiry, and returns its
// claims. It returns errTokenExpired for a well-signed but expired token and errTokenInvalid
// for everything else.
func verifyToken(key []byte, token string, now time.Time) (tokenClaims, error) {
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
	if !isHS256Header(header) {
		return claims, errTokenInvalid
	}
	gotMAC, err := base64.RawURLEncoding.DecodeString(signature)
	if err != nil {
		return claims, errTokenInvalid
	}
	// hmac.Equal compares in constant time, so the MAC cannot be guessed byte by byte.
	if !hmac.Equal(gotMAC, mac(key, token[:len(header)+1+len(payload)])) {
		return claims, errTokenInvalid
	}
	if err := decodeClaims(payload, &claims); err != nil {
		return claims, errTokenInvalid
	}
	if claims.ExpiresAt == 0 {
		return claims, errTokenInvalid
	}
	if now.Unix() >= claims.ExpiresAt {
		return claims, errTokenExpired
	}
	return claims, nil
}

func isHS256Header(segment string) bool {
	if segment == jwtHeader {
		return true // the common case: our own header, no JSON parsing needed
	}
	raw, err := base64.RawURLEncoding.DecodeString(segment)
	if err != nil {
		return false
	}
	var h struct {
		Alg string `json:"alg"`
		Typ string `json:"typ"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return false
	}
	return h.Alg == "HS256" && (h.Typ == "" || h.Typ == "JWT")
}

func decodeClaims(segment string, claims *tokenClaims) error {
	raw, err := base64.RawURLEncoding.DecodeString(segment)
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, claims)
}

func mac(key []byte, signingInput string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(signingInput))
	return h.Sum(nil)
}
