package main

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"unicode/utf8"
)

// TestFoldCaseAgreesWithPostgreSQL: foldCase and the SQL of every comparison and unique index,
// lower(x COLLATE "C"), give the same result for every character (lower() by the database's
// collation folds U+0130, U+00C0 and U+212A, strings.EqualFold U+017F and U+212A).
func TestFoldCaseAgreesWithPostgreSQL(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	var in []string
	for r := rune(1); r <= utf8.MaxRune; r++ {
		if utf8.ValidRune(r) && (r < 0x3000 || r >= 0x1f000 && r < 0x1f100 || r >= 0xfb00 && r < 0x10500) {
			in = append(in, "A"+string(r)+"z")
		}
	}
	var out []string
	err := env.st.pool.QueryRow(context.Background(),
		`SELECT array_agg(lower(x COLLATE "C") ORDER BY n) FROM unnest($1::text[]) WITH ORDINALITY AS t(x, n)`, in).Scan(&out)
	if err != nil || len(out) != len(in) {
		t.Fatalf("folding %d strings in SQL: %d back, %v", len(in), len(out), err)
	}
	for i := range in {
		if got := foldCase(in[i]); got != out[i] {
			t.Errorf("%q: foldCase %q, PostgreSQL %q", in[i], got, out[i])
		}
	}
}

// TestOneDefinitionOfSameness: the unique indexes, the login lookup and an email change all
// take two values as one exactly when sameFold does. The values are written behind the field
// rules (which now refuse non-ASCII addresses), as an earlier version could have stored them.
func TestOneDefinitionOfSameness(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	ctx := context.Background()
	pairs := []struct {
		stored, other string
		same          bool
	}{
		{"liz", "l\u0130z", false},       // U+0130: lower() folds it to i
		{"stan", "\u017ftan", false},     // U+017F: strings.EqualFold folds it to s
		{"kelvin", "\u212aelvin", false}, // U+212A: both fold it to k
		{"agnes", "\u00c0gnes", false},   // U+00C0, which lower() folds to U+00E0
		{"alice", "ALICE", true},         // the one fold there is
		{"bob", "BoB", true},
	}
	for i, p := range pairs {
		same := p.same
		if sameFold(p.stored, p.other) != same {
			t.Errorf("sameFold(%q, %q) = %v", p.stored, p.other, !same)
		}
		// The indexes: a second user whose username and email fold to the first's conflicts.
		tx, err := env.st.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		u := newUser{Username: p.stored, FirstName: "F", LastName: "L", Email: p.stored + "@example.com"}
		if _, err := insertUser(ctx, tx, u, "x", roleUser, false); err != nil {
			t.Fatal(err)
		}
		for _, field := range []string{"username", "email"} {
			v := newUser{Username: "other" + string(rune('a'+i)) + field, FirstName: "F", LastName: "L", Email: field + p.stored + "@example.org"}
			if field == "username" {
				v.Username = p.other
			} else {
				v.Email = p.other + "@example.com"
			}
			_, err := tx.Exec(ctx, "SAVEPOINT s")
			if err == nil {
				_, err = insertUser(ctx, tx, v, "x", roleUser, false)
			}
			if conflict := errors.Is(err, errConflict); conflict != same || err != nil && !conflict {
				t.Errorf("%s %q beside %q: error %v, want a conflict: %v", field, p.other, p.stored, err, same)
			}
			if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT s"); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		// The login lookup, by username and by email.
		for _, login := range []string{p.other, p.other + "@example.com"} {
			found, err := env.st.userByLogin(ctx, login)
			if (err == nil && found.Username == p.stored) != same {
				t.Errorf("userByLogin(%q) = %q, %v; want %q found: %v", login, found.Username, err, p.stored, same)
			}
		}
	}
}

// TestEmailChangeDecidedOnce: a change to an address that only another folding would call the
// same is a change in every respect (unverified, mailed, reset token voided); a change
// of ASCII case is none. The cases: liz@ to l+U+0130+z@ kept the verified mark and
// mailed no verification, stan@ to U+017F+tan@ mailed nothing and kept the reset token.
func TestEmailChangeDecidedOnce(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	ctx := context.Background()
	tests := []struct {
		username, to string
		changed      bool
	}{
		{"liz", "l\u0130z@example.com", true},
		{"stan", "\u017ftan@example.com", true},
		{"kelvin", "\u212aelvin@example.com", true},
		{"carol", "CAROL@Example.com", false},
	}
	for _, tt := range tests {
		u := env.addUser(t, tt.username, roleUser)
		if _, err := env.st.pool.Exec(ctx, "UPDATE users SET email_verified = true WHERE id = $1", u.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := env.st.createResetToken(ctx, u.Email, env.cfg.resetTTL); err != nil {
			t.Fatal(err)
		}
		env.deliverMail(t)
		u = usersReload(t, env, u)
		to := tt.to
		updated, err := env.st.updateUser(ctx, u, u.ID, userPatch{Email: &to}, env.cfg.verifyTTL)
		if err != nil {
			t.Fatalf("%s: updating: %v", tt.username, err)
		}
		if updated.EmailVerified == tt.changed {
			t.Errorf("%s to %q: email_verified %v, want %v", tt.username, tt.to, updated.EmailVerified, !tt.changed)
		}
		var resets, changes int
		err = env.st.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM password_reset_tokens WHERE user_id = $1),
			(SELECT count(*) FROM audit_log WHERE target_id = $1 AND action = $2)`, u.ID, auditVerificationRequested).Scan(&resets, &changes)
		if err != nil {
			t.Fatal(err)
		}
		if (resets == 0) != tt.changed {
			t.Errorf("%s to %q: %d reset tokens left, want them voided: %v", tt.username, tt.to, resets, tt.changed)
		}
		// Registration asked for one verification; a new address asks for another.
		if (changes == 2) != tt.changed {
			t.Errorf("%s to %q: %d verification requests, want a second one: %v", tt.username, tt.to, changes, tt.changed)
		}
		var queued int
		if err := env.st.pool.QueryRow(ctx, "SELECT count(*) FROM mail_outbox WHERE user_id = $1 AND sent_at IS NULL AND failed_at IS NULL",
			u.ID).Scan(&queued); err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int{true: 2, false: 0}[tt.changed]; queued != want {
			t.Errorf("%s to %q: %d mails queued, want %d (a verification and a notice, or none)", tt.username, tt.to, queued, want)
		}
	}
}

// TestLoginLookAlikes: a login name or address that only a Unicode folding would take for an
// account's is not that account (K, U+212A, is k to PostgreSQL's lower() in most collations).
func TestLoginLookAlikes(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "kelvin", roleUser)
	env.addUser(t, "liz", roleUser)
	for _, tt := range []struct {
		login  string
		status int
	}{
		{"KELVIN", http.StatusOK},
		{"Kelvin@Example.COM", http.StatusOK},
		{"\u212aelvin", http.StatusUnauthorized},
		{"\u212aelvin@example.com", http.StatusUnauthorized},
		{"l\u0130z", http.StatusUnauthorized},
		{"L\u0130Z@example.com", http.StatusUnauthorized},
	} {
		r := env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": tt.login, "password": testPassword})
		if r.status != tt.status {
			t.Errorf("login as %q: %d %s, want %d", tt.login, r.status, r.body, tt.status)
		}
	}
}
