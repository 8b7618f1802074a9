package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Recovery codes: ten per user with TOTP on, each good for one login without the
// authenticator app, shown once and stored only as salted hashes (ASVS 4.0.3 2.6.2).

const recoveryCodeCount = 10

// recoveryEncoding is Crockford's base32 alphabet in lower case: no i, l, o or u to misread.
var recoveryEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// newRecoveryCode returns 80 random bits as 16 characters in groups of four: xxxx-xxxx-xxxx-xxxx.
func newRecoveryCode() string {
	b := make([]byte, 10)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	s := recoveryEncoding.EncodeToString(b)
	return s[0:4] + "-" + s[4:8] + "-" + s[8:12] + "-" + s[12:16]
}

// normalRecoveryCode is a recovery code as typed, in its stored form: without hyphens and
// spaces, in lower case, with the letters Crockford's alphabet leaves out read as the digits
// they look like.
func normalRecoveryCode(code string) string {
	code = strings.NewReplacer("-", "", " ", "").Replace(strings.ToLower(code))
	return strings.NewReplacer("i", "1", "l", "1", "o", "0").Replace(code)
}

// validRecoveryCode reports whether code has the shape of a recovery code.
func validRecoveryCode(code string) bool {
	if len(code) > 64 {
		return false
	}
	normal := normalRecoveryCode(code)
	_, err := recoveryEncoding.DecodeString(normal)
	return len(normal) == 16 && err == nil
}

// hashRecoveryCode is the stored form of a code. 80 random bits make guessing hopeless even
// against a fast hash, so SHA-256 serves where a password needs bcrypt; the salt keeps equal
// codes of two users apart.
func hashRecoveryCode(salt []byte, code string) []byte {
	sum := sha256.Sum256(append(append([]byte{}, salt...), normalRecoveryCode(code)...))
	return sum[:]
}

// replaceRecoveryCodes voids the user's recovery codes and returns ten new ones.
func replaceRecoveryCodes(ctx context.Context, tx pgx.Tx, userID int64) ([]string, error) {
	codes := make([]string, recoveryCodeCount)
	salts := make([][]byte, recoveryCodeCount)
	hashes := make([][]byte, recoveryCodeCount)
	for i := range codes {
		codes[i], salts[i] = newRecoveryCode(), make([]byte, 16)
		_, _ = rand.Read(salts[i])
		hashes[i] = hashRecoveryCode(salts[i], codes[i])
	}
	if _, err := tx.Exec(ctx, "DELETE FROM mfa_recovery_codes WHERE user_id = $1", userID); err != nil {
		return nil, fmt.Errorf("void recovery codes: %w", err)
	}
	_, err := tx.Exec(ctx, `INSERT INTO mfa_recovery_codes (user_id, salt, code_hash)
		SELECT $1, salt, code_hash FROM unnest($2::bytea[], $3::bytea[]) AS c (salt, code_hash)`, userID, salts, hashes)
	if err != nil {
		return nil, fmt.Errorf("store recovery codes: %w", err)
	}
	return codes, nil
}

// useRecoveryCode deletes the user's recovery code that code is, audits its use and mails the
// user how many remain; errCodeWrong when it is none of them. The caller locked the user row,
// so two uses of one code take turns and the second finds it gone.
func (s *store) useRecoveryCode(ctx context.Context, tx pgx.Tx, u user, code string) error {
	type stored struct {
		ID   int64  `db:"id"`
		Salt []byte `db:"salt"`
		Hash []byte `db:"code_hash"`
	}
	rows, _ := tx.Query(ctx, "SELECT id, salt, code_hash FROM mfa_recovery_codes WHERE user_id = $1", u.ID)
	codes, err := pgx.CollectRows(rows, pgx.RowToStructByName[stored])
	if err != nil {
		return fmt.Errorf("read recovery codes: %w", err)
	}
	var match int64
	for _, c := range codes {
		// Every code is compared, in constant time: the timing tells nothing of which matched.
		if subtle.ConstantTimeCompare(hashRecoveryCode(c.Salt, code), c.Hash) == 1 {
			match = c.ID
		}
	}
	if match == 0 {
		return errCodeWrong
	}
	if _, err := tx.Exec(ctx, "DELETE FROM mfa_recovery_codes WHERE id = $1", match); err != nil {
		return fmt.Errorf("use recovery code: %w", err)
	}
	left := len(codes) - 1
	if err := s.audit(ctx, tx, auditMFARecoveryCodeUsed, u.ID, u.ID, map[string]any{"left": left}); err != nil {
		return err
	}
	d := newMailData(u)
	d.Left = left
	return s.mailMFANotice(ctx, tx, u, mailRecoveryUsed, d)
}
