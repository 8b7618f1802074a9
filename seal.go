package main

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
)

// Tokens waiting in the mail outbox are sealed (AES-256-GCM) under a key derived from
// JWT_SECRET_KEY, so that a copy of the database taken while mail waits holds no usable reset
// or verification token; a token sealed under JWT_SECRET_KEY_PREVIOUS still opens after a
// rotation.

// sealer seals with the current key and opens with the current or the previous one.
type sealer struct {
	current  cipher.AEAD
	previous cipher.AEAD // nil without a previous key
}

func newSealer(keys keySet) sealer {
	s := sealer{current: outboxAEAD(keys.current.secret)}
	if keys.previous != nil {
		s.previous = outboxAEAD(keys.previous.secret)
	}
	return s
}

// outboxAEAD derives the outbox's own key from a signing secret, so that the two uses never
// share a key.
func outboxAEAD(secret []byte) cipher.AEAD {
	key := sha256.Sum256(append([]byte("usermgmt mail outbox\x00"), secret...))
	block, _ := aes.NewCipher(key[:]) // a 32-byte key is always accepted
	aead, _ := cipher.NewGCM(block)   // so is the standard nonce size
	return aead
}

func (s sealer) seal(plain string) string {
	nonce := make([]byte, s.current.NonceSize())
	_, _ = rand.Read(nonce) // crypto/rand.Read never fails on supported platforms
	return base64.RawURLEncoding.EncodeToString(s.current.Seal(nonce, nonce, []byte(plain), nil))
}

var errUnsealable = errors.New("sealed token: not sealed by the current or previous key")

func (s sealer) open(sealed string) (string, error) {
	plain, _, err := s.openKey(sealed)
	return plain, err
}

// openKey is open, also reporting whether the previous key opened it: what is kept longer
// than a key rotation (webhook secrets) is then sealed again under the current one.
func (s sealer) openKey(sealed string) (plain string, byPrevious bool, err error) {
	raw, err := base64.RawURLEncoding.DecodeString(sealed)
	if err != nil {
		return "", false, errUnsealable
	}
	for _, aead := range []cipher.AEAD{s.current, s.previous} {
		if aead == nil || len(raw) < aead.NonceSize() {
			continue
		}
		if plain, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], nil); err == nil {
			return string(plain), aead != s.current, nil
		}
	}
	return "", false, errUnsealable
}
