package main

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"hash"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Tests of the one-time passwords themselves: the RFCs' test vectors, the step window, the
// otpauth:// URI, and agreement with oathtool.

// TestHOTPVectors: RFC 4226 Appendix D, six digits.
func TestHOTPVectors(t *testing.T) {
	t.Parallel()
	key := []byte("12345678901234567890")
	want := []string{"755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"}
	for counter, code := range want {
		if got := hotp(sha1.New, key, uint64(counter), 6); got != code {
			t.Errorf("HOTP(count %d) = %s, want %s", counter, got, code)
		}
	}
}

// TestTOTPVectors: RFC 6238 Appendix B, eight digits with each of its three hashes, and the six
// digits of the service's codes, which truncation takes from the same value (its last six).
func TestTOTPVectors(t *testing.T) {
	t.Parallel()
	seeds := []struct {
		name    string
		newHash func() hash.Hash
		key     string
	}{
		{"SHA1", sha1.New, "12345678901234567890"},
		{"SHA256", sha256.New, "12345678901234567890123456789012"},
		{"SHA512", sha512.New, "1234567890123456789012345678901234567890123456789012345678901234"},
	}
	vectors := []struct {
		unix  int64
		codes [3]string // SHA1, SHA256, SHA512
	}{
		{59, [3]string{"94287082", "46119246", "90693936"}},
		{1111111109, [3]string{"07081804", "68084774", "25091201"}},
		{1111111111, [3]string{"14050471", "67062674", "99943326"}},
		{1234567890, [3]string{"89005924", "91819424", "93441116"}},
		{2000000000, [3]string{"69279037", "90698825", "38618901"}},
		{20000000000, [3]string{"65353130", "77737706", "47863826"}},
	}
	for _, v := range vectors {
		step := totpStep(time.Unix(v.unix, 0))
		for i, seed := range seeds {
			if got := hotp(seed.newHash, []byte(seed.key), uint64(step), 8); got != v.codes[i] {
				t.Errorf("TOTP %s at %d = %s, want %s", seed.name, v.unix, got, v.codes[i])
			}
		}
		if got, want := totpCode([]byte(seeds[0].key), step), v.codes[0][2:]; got != want {
			t.Errorf("6-digit TOTP at %d = %s, want %s", v.unix, got, want)
		}
	}
}

// TestTOTPWindow: codes of the previous, current and next step are accepted, and no others;
// the step returned is the code's own.
func TestTOTPWindow(t *testing.T) {
	t.Parallel()
	key := newTOTPSecret()
	now := time.Unix(1_800_000_015, 0) // mid-step
	current := totpStep(now)
	for offset := int64(-3); offset <= 3; offset++ {
		step, ok := matchTOTP(key, totpCode(key, current+offset), now)
		wantOK := offset >= -1 && offset <= 1
		if ok != wantOK || ok && step != current+offset {
			t.Errorf("code of step %+d: matched %v at step %d; want %v at %d", offset, ok, step-current, wantOK, offset)
		}
	}
	// A step lasts 30 s from the epoch: the last second of a step is still that step.
	if totpStep(time.Unix(59, 0)) != 1 || totpStep(time.Unix(60, 0)) != 2 {
		t.Errorf("steps: 59 s is %d, 60 s is %d; want 1 and 2", totpStep(time.Unix(59, 0)), totpStep(time.Unix(60, 0)))
	}
}

func TestOTPAuthURI(t *testing.T) {
	t.Parallel()
	secret := []byte("12345678901234567890")
	got := otpauthURI("Acme Corp", "alice", secret)
	want := "otpauth://totp/Acme%20Corp:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Acme%20Corp&algorithm=SHA1&digits=6&period=30"
	if got != want {
		t.Errorf("otpauth URI\n got %s\nwant %s", got, want)
	}
	if n := len(newTOTPSecret()) * 8; n != 160 {
		t.Errorf("secret of %d bits, want 160", n)
	}
	for _, issuer := range []string{"", "a:b", "tab\there", strings.Repeat("x", 65)} {
		if validIssuer(issuer) {
			t.Errorf("issuer %q accepted", issuer)
		}
	}
}

// TestTOTPMatchesOathtool: an independent implementation (Debian's oathtool, which
// scripts/setup.sh installs) makes the same codes from the same base32 secret.
func TestTOTPMatchesOathtool(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("oathtool"); err != nil {
		t.Fatal("oathtool is not installed: run `make test`, whose set-up installs it (apt-get install oathtool)")
	}
	for range 3 {
		key := newTOTPSecret()
		secret := totpEncoding.EncodeToString(key)
		now := time.Unix(1_700_000_000+int64(len(secret))*int64(key[0]), 0)
		out, err := exec.Command("oathtool", "--totp", "-b", secret, "-N", "@"+strconv.FormatInt(now.Unix(), 10)).Output()
		if err != nil {
			t.Fatalf("oathtool: %v", err)
		}
		if got, want := strings.TrimSpace(string(out)), totpCode(key, totpStep(now)); got != want {
			t.Errorf("oathtool says %s for %s at %d, we say %s", got, secret, now.Unix(), want)
		}
	}
}

func TestRecoveryCodes(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 50 {
		code := newRecoveryCode()
		if len(code) != 19 || strings.Count(code, "-") != 3 || !validRecoveryCode(code) {
			t.Fatalf("recovery code %q: want xxxx-xxxx-xxxx-xxxx", code)
		}
		if seen[code] {
			t.Fatalf("recovery code %q made twice", code)
		}
		seen[code] = true
		salt := []byte("salt")
		typed := strings.ToUpper(strings.ReplaceAll(code, "-", " "))
		if string(hashRecoveryCode(salt, typed)) != string(hashRecoveryCode(salt, code)) {
			t.Errorf("%q typed as %q does not match", code, typed)
		}
		if string(hashRecoveryCode([]byte("other"), code)) == string(hashRecoveryCode(salt, code)) {
			t.Errorf("the salt does not change the hash of %q", code)
		}
	}
	for _, bad := range []string{"", "abcd-efgh", "abcd-efgh-jkmn-pqrsx", "abcd-efgh-jkmn-pqr!", strings.Repeat("a", 100)} {
		if validRecoveryCode(bad) {
			t.Errorf("%q accepted as a recovery code", bad)
		}
	}
}
