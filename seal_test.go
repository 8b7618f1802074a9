package main

import (
	"strings"
	"testing"
)

// TestSealer: sealed tokens open with the current key, and with the previous one after a
// rotation; not with an unrelated key, and not when altered.
func TestSealer(t *testing.T) {
	t.Parallel()
	a, b := []byte(strings.Repeat("a", 32)), []byte(strings.Repeat("b", 32))
	token := randomToken()
	sealedA := newSealer(newKeySet(a, nil)).seal(token)
	flip := map[bool]string{true: "B", false: "A"}[sealedA[10] == 'A']
	if strings.Contains(sealedA, token) {
		t.Fatal("the sealed form contains the token")
	}
	for _, tt := range []struct {
		name   string
		keys   keySet
		sealed string
		ok     bool
	}{
		{"same key", newKeySet(a, nil), sealedA, true},
		{"after rotation", newKeySet(b, a), sealedA, true},
		{"unrelated key", newKeySet(b, nil), sealedA, false},
		{"altered", newKeySet(a, nil), sealedA[:10] + flip + sealedA[11:], false},
		{"truncated", newKeySet(a, nil), sealedA[:8], false},
		{"not base64", newKeySet(a, nil), "%%%", false},
	} {
		got, err := newSealer(tt.keys).open(tt.sealed)
		if tt.ok && (err != nil || got != token) || !tt.ok && err == nil {
			t.Errorf("%s: %q, %v", tt.name, got, err)
		}
	}
}
