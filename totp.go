package main

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/base32"
	"encoding/binary"
	"hash"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Time-based one-time passwords (RFC 6238 over RFC 4226), written out by hand: HMAC-SHA1,
// 6 digits, 30-second steps from the Unix epoch, the way every authenticator app makes them.

const (
	totpDigits = 6
	totpPeriod = 30 // seconds per time step
)

// totpEncoding is base32 without padding, as otpauth:// URIs carry secrets.
var totpEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// hotp is the RFC 4226 one-time password of counter under key, with digits decimal digits,
// made with the HMAC of newHash (RFC 6238 allows SHA-256 and SHA-512 beside SHA-1).
func hotp(newHash func() hash.Hash, key []byte, counter uint64, digits int) string {
	mac := hmac.New(newHash, key)
	_ = binary.Write(mac, binary.BigEndian, counter) // a hash's Write never fails
	sum := mac.Sum(nil)
	// Dynamic truncation (RFC 4226 section 5.3): 31 bits from the offset the last nibble names.
	offset := sum[len(sum)-1] & 0x0f
	value := binary.BigEndian.Uint32(sum[offset:offset+4]) & 0x7fffffff
	code := make([]byte, digits)
	for i := digits - 1; i >= 0; i-- {
		code[i] = byte('0' + value%10)
		value /= 10
	}
	return string(code)
}

// totpStep is the RFC 6238 time step of t.
func totpStep(t time.Time) int64 { return t.Unix() / totpPeriod }

// totpCode is the code of step under key, as an authenticator app shows it.
func totpCode(key []byte, step int64) string {
	return hotp(sha1.New, key, uint64(step), totpDigits)
}

// matchTOTP returns the step whose code code is, among the previous, current and next step at
// now (a clock a step off either way still works), and whether there is one. All three are
// compared in constant time, so the timing does not tell how much of a code was right.
func matchTOTP(key []byte, code string, now time.Time) (int64, bool) {
	current := totpStep(now)
	found, matched := int64(0), 0
	for step := current - 1; step <= current+1; step++ {
		if subtle.ConstantTimeCompare([]byte(totpCode(key, step)), []byte(code)) == 1 {
			found, matched = step, 1
		}
	}
	return found, matched == 1
}

// validTOTPCode reports whether code has the shape of a code: six ASCII digits.
func validTOTPCode(code string) bool {
	if len(code) != totpDigits {
		return false
	}
	for _, c := range []byte(code) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// newTOTPSecret returns 160 random bits, the key length RFC 4226 recommends for HMAC-SHA1.
func newTOTPSecret() []byte {
	b := make([]byte, 20)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return b
}

// otpauthURI is the Key URI an authenticator app reads from a QR code: the label
// ISSUER:USERNAME, and the secret in base32 without padding.
func otpauthURI(issuer, username string, secret []byte) string {
	// Spaces are %20 in both parts, as the Key URI format wants, not the query's '+'.
	query := func(s string) string { return strings.ReplaceAll(url.QueryEscape(s), "+", "%20") }
	return "otpauth://totp/" + url.PathEscape(issuer) + ":" + url.PathEscape(username) +
		"?secret=" + totpEncoding.EncodeToString(secret) + "&issuer=" + query(issuer) +
		"&algorithm=SHA1&digits=6&period=30"
}

// validIssuer reports whether issuer may name the service in otpauth:// URIs: printable, short,
// and without the ':' that ends the issuer part of a label.
func validIssuer(issuer string) bool {
	if n := utf8.RuneCountInString(issuer); n < 1 || n > 64 || !utf8.ValidString(issuer) {
		return false
	}
	for _, c := range issuer {
		if c == ':' || !unicode.IsPrint(c) {
			return false
		}
	}
	return true
}
