package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"hash"
	"slices"
	"strconv"
	"strings"
	"sync"
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
	header string     // the encoded header of tokens signed with this key
	macs   *sync.Pool // of *macState keyed with the secret: no key schedule or allocation per token
}

func newSigningKey(secret []byte) signingKey {
	// The id is a digest of the secret: it tells keys apart without revealing them.
	sum := sha256.Sum256(secret)
	id := hex.EncodeToString(sum[:8])
	header, _ := json.Marshal(map[string]string{"alg": "HS256", "typ": "JWT", "kid": id})
	macs := &sync.Pool{New: func() any { return &macState{mac: hmac.New(sha256.New, secret)} }}
	return signingKey{id: id, secret: secret, header: base64.RawURLEncoding.EncodeToString(header), macs: macs}
}

// macState is an HMAC-SHA256 of one key with the buffers verifying a token needs, reused
// between tokens.
type macState struct {
	mac     hash.Hash
	input   []byte // the signing input, copied: hash.Hash.Write takes bytes
	sum     [sha256.Size]byte
	encoded [signatureLen]byte // sum in base64url
	claims  []byte             // the decoded claims segment
}

// signatureLen is the length of an HS256 signature in unpadded base64url.
const signatureLen = (sha256.Size*8 + 5) / 6

// encodedMAC computes the HS256 signature of signingInput into m.encoded.
func (m *macState) encodedMAC(signingInput string) []byte {
	m.input = append(m.input[:0], signingInput...)
	m.mac.Reset()
	m.mac.Write(m.input)
	base64.RawURLEncoding.Encode(m.encoded[:], m.mac.Sum(m.sum[:0]))
	return m.encoded[:]
}

// signature returns the encoded HS256 signature of signingInput under k.
func (k signingKey) signature(signingInput string) string {
	m := k.macs.Get().(*macState)
	defer k.macs.Put(m)
	return string(m.encodedMAC(signingInput))
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
	subjectID int64    // Subject as a number, set by verifyToken; 0 when it is not one
}

// userID returns the numeric user id held in the subject claim.
func (c tokenClaims) userID() (int64, error) {
	if c.subjectID <= 0 {
		return 0, errTokenInvalid
	}
	return c.subjectID, nil
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
	return signingInput + "." + keys.current.signature(signingInput)
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
	m := key.macs.Get().(*macState)
	defer key.macs.Put(m)
	// The signature is compared in its encoded form: base64 decoding would accept variants
	// (other trailing bits, line breaks) of one signature, so a token would not be unique.
	// hmac.Equal compares in constant time, so the MAC cannot be guessed byte by byte (the
	// length it checks first is public).
	var got [signatureLen]byte
	if len(signature) != signatureLen || !hmac.Equal(got[:copy(got[:], signature)], m.encodedMAC(token[:len(header)+1+len(payload)])) {
		return claims, errTokenInvalid
	}
	if !m.decodeClaims(payload, &claims) || claims.ExpiresAt == 0 {
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

// decodeClaims decodes a signed claims segment into c, reading the layout signToken writes
// without reflection (readSignedClaims), and any other JSON with encoding/json.
func (m *macState) decodeClaims(segment string, c *tokenClaims) bool {
	m.input = append(m.input[:0], segment...)
	n := base64.RawURLEncoding.DecodedLen(len(segment))
	m.claims = slices.Grow(m.claims[:0], n)[:n]
	n, err := base64.RawURLEncoding.Decode(m.claims, m.input)
	if err != nil {
		return false
	}
	if readSignedClaims(m.claims[:n], c) {
		return true
	}
	*c = tokenClaims{}
	if json.Unmarshal(m.claims[:n], c) != nil {
		return false
	}
	c.subjectID, _ = strconv.ParseInt(c.Subject, 10, 64)
	return true
}

// readSignedClaims reads claims in exactly the layout signToken writes (json.Marshal of
// tokenClaims: its fields in order, no spaces, "sub" a positive number in a string, "amr" one of
// the sessions' method lists) into c, and reports whether b had it; anything else is left to
// encoding/json. It yields what json.Unmarshal would for every b it accepts (FuzzSignedClaims).
func readSignedClaims(b []byte, c *tokenClaims) bool {
	r := claimsReader{b: b}
	ok := r.literal(`{"sub":"`) && r.number(&c.subjectID) && c.subjectID > 0 && r.literal(`","iat":`) &&
		r.number(&c.IssuedAt) && r.literal(`,"exp":`) && r.number(&c.ExpiresAt) && r.literal(`,"ver":`) &&
		r.number(&c.Version) && r.literal(`,"sid":`) && r.number(&c.Session)
	if !ok {
		return false
	}
	switch {
	case r.literal(`}`):
		c.AMR = nil
	case r.literal(`,"amr":["pwd"]}`):
		c.AMR = amrPassword
	case r.literal(`,"amr":["pwd","totp"]}`):
		c.AMR = amrTOTP
	case r.literal(`,"amr":["pwd","recovery"]}`):
		c.AMR = amrRecovery
	default:
		return false
	}
	if len(r.b) != 0 {
		return false
	}
	c.Subject = strconv.FormatInt(c.subjectID, 10)
	return true
}

// claimsReader consumes a claims segment from its front.
type claimsReader struct{ b []byte }

func (r *claimsReader) literal(s string) bool {
	if len(r.b) < len(s) || string(r.b[:len(s)]) != s {
		return false
	}
	r.b = r.b[len(s):]
	return true
}

// number reads a JSON integer that fits an int64, without leading zeros.
func (r *claimsReader) number(v *int64) bool {
	i, negative := 0, len(r.b) > 0 && r.b[0] == '-'
	if negative {
		i++
	}
	start := i
	var n uint64
	for ; i < len(r.b) && r.b[i] >= '0' && r.b[i] <= '9'; i++ {
		if n > (1<<63)/10 {
			return false
		}
		n = n*10 + uint64(r.b[i]-'0')
	}
	if i == start || r.b[start] == '0' && i > start+1 || n > 1<<63 || !negative && n == 1<<63 {
		return false
	}
	*v = int64(n)
	if negative {
		*v = -int64(n)
	}
	r.b = r.b[i:]
	return true
}
