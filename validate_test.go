package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"
)

// Field rules as functions: input x expected reason ("" for a good value). The handler tests
// (TestFieldRulesThroughHandlers) show the same reasons reach the client.

func TestEmailProblem(t *testing.T) {
	t.Parallel()
	const (
		invalid  = "must be a valid email address"
		ascii    = "must contain only ASCII characters (internationalized addresses are not supported)"
		control  = "must not contain spaces or control characters"
		ip       = "must have a domain name, not an IP address"
		dotless  = "must have a domain name with a dot in it, such as example.com"
		label    = "must have a domain name made of letters, digits and hyphens, in labels of 1 to 63 characters that neither start nor end with a hyphen"
		tld      = "must end in a top-level domain that starts with a letter, such as .com"
		routing  = "must not contain '%' or '!', which some mail relays take as a route to another host"
		tooLocal = "must have at most 64 characters before the @"
	)
	tests := []struct{ in, want string }{
		{"alice@example.com", ""},
		{"Alice.Liddell+tag@Mail.Example.COM", ""},
		{"o'brien@example.ie", ""},
		{"a#$&'*+-/=?^_`{|}~z@example.com", ""},
		{"x@a-b.c0.example", ""},
		{"x@1.2.3.example", ""},
		{"x@xn--bcher-kva.example", ""},
		{"x@example.xn--p1ai", ""},
		{strings.Repeat("l", 64) + "@example.com", ""},
		{"x@" + strings.Repeat("d", 63) + ".com", ""},
		{"", "is required"},
		{authEmailOfLength(255), "must be at most 254 characters"},
		// IP literals and every other way of naming a host by number.
		{"x@[127.0.0.1]", ip},
		{"x@[IPv6:::1]", ip},
		{"x@[::1]", ip},
		{"x@127.0.0.1", ip},
		{"x@::1", ip},
		{"x@127.1", tld},
		{"x@0x7f.1", tld},
		{"x@10.0.0.1e1", tld},
		{"x@example.123", tld},
		// Dotless and otherwise broken domains.
		{"a@b", dotless},
		{"x@localhost", dotless},
		{"x@example.com.", label},
		{"x@.example.com", label},
		{"x@example..com", label},
		{"x@-example.com", label},
		{"x@example-.com", label},
		{"x@exa_mple.com", label},
		{"x@" + strings.Repeat("d", 64) + ".com", label},
		{"x@exam!ple.com", label},
		// Not ASCII, whatever the character: the issue's, other case-folding look-alikes,
		// invisible and bidirectional ones.
		{"l\u0130z@example.com", ascii},
		{"\u017ftan@example.com", ascii},
		{"\u212aelvin@example.com", ascii},
		{"j\u00fcrgen@example.com", ascii},
		{"x@b\u00fccher.example", ascii},
		{"x\u2028y@example.com", ascii},
		{"x@example.com\u202e", ascii},
		{"x\u200b@example.com", ascii},
		{"\ufeffx@example.com", ascii},
		{"x@example\u3002com", ascii},
		// Controls and spaces.
		{"x@example.com\n", control},
		{"x\r\n@example.com", control},
		{"x\x00@example.com", control},
		{"x\x7f@example.com", control},
		{" x@example.com", control},
		{"Ada <ada@example.com>", control},
		{"x y@example.com", control},
		// Not a bare dot-atom address.
		{"not-an-email", invalid},
		{"user@", invalid},
		{"@example.com", invalid},
		{"a@b@example.com", invalid},
		{`"quoted"@example.com`, invalid},
		{`"a@b"@example.com`, invalid},
		{".x@example.com", invalid},
		{"x.@example.com", invalid},
		{"x..y@example.com", invalid},
		{"x(comment)@example.com", invalid},
		{"<x@example.com>", invalid},
		{"x,y@example.com", invalid},
		{`x\y@example.com`, invalid},
		{"@relay.example:x@example.com", invalid},
		{strings.Repeat("l", 65) + "@example.com", tooLocal},
		// Routing through the local part.
		{"x%internal.example@relay.example.com", routing},
		{"internal!x@relay.example.com", routing},
	}
	for _, tt := range tests {
		if got := emailProblem(tt.in); got != tt.want {
			t.Errorf("emailProblem(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestNameProblem(t *testing.T) {
	t.Parallel()
	const (
		invisible = "must contain a visible character, not only spaces or invisible ones"
		bidi      = "must not contain bidirectional control characters"
		separator = "must not contain line or paragraph separators"
		format    = "must not contain invisible formatting, private-use or unassigned characters"
		control   = "must not contain control characters"
		joiner    = "must not contain a zero-width joiner or non-joiner except between two characters"
	)
	tests := []struct{ in, want string }{
		{"Alice", ""},
		{"Mary Ann", ""},
		{"O'Brien-Smith", ""},
		{"Zoë", ""},
		{"Ζωή", ""},
		{"李", ""},
		{"محمد", ""},
		{"אברהם", ""},
		{"Nguyễn", ""},
		{"e\u0301", ""},                    // a letter and a combining accent
		{"\u0645\u200c\u06cc", ""},         // Persian: a zero-width non-joiner between letters
		{"\u0915\u094d\u200d", joiner},     // a joiner at the end
		{"\U0001F469\u200d\U0001F52C", ""}, // an emoji sequence
		{"Jean\u00a0Paul", ""},             // a no-break space between words
		{"A", ""},
		{strings.Repeat("é", 80), ""},
		{"", "must be 1 to 80 characters"},
		{strings.Repeat("é", 81), "must be 1 to 80 characters"},
		{"Ad\xffa", "must be valid UTF-8"},
		// Bidirectional controls, every one of them.
		{"Bob\u202e", bidi},
		{"\u202aBob", bidi},
		{"Bo\u202bb", bidi},
		{"Bo\u202cb", bidi},
		{"Bo\u202db", bidi},
		{"Bo\u2066b", bidi},
		{"Bo\u2067b", bidi},
		{"Bo\u2068b", bidi},
		{"Bo\u2069b", bidi},
		{"Bo\u200eb", bidi},
		{"Bo\u200fb", bidi},
		{"Bo\u061cb", bidi},
		// Line and paragraph separators.
		{"Bob\u2028Eve", separator},
		{"Bob\u2029", separator},
		// Other format characters, private use, unassigned, noncharacters.
		{"Bo\u200bb", format},
		{"\ufeffBob", format},
		{"Bo\u2060b", format},
		{"Bo\u00adb", format},
		{"Bo\u180eb", format},
		{"Bo\u2062b", format},
		{"Bob\U000e0041", format}, // a tag character
		{"Bob\ue000", format},
		{"Bob\U000f0000", format},
		{"Bob\U000e0080", format}, // unassigned
		{"Bob\u0378", format},     // unassigned
		{"Bob\ufffe", format},
		{"Bob\ufdd0", format},
		// Controls.
		{"Ad\x00a", control},
		{"Ad\na", control},
		{"Love\tlace", control},
		{"Ad\x7fa", control},
		{"Ad\u0085a", control},
		// Nothing visible.
		{"   ", invisible},
		{"\u00a0", invisible},
		{"\u3000", invisible},
		{"\u2003 \u2009", invisible},
		{"\u200b", format},
		{"\u200c", joiner},
		{"\u200d", joiner},
		{"a\u200c\u200cb", joiner},
		{"\u3164", invisible}, // Hangul filler, a letter that renders as nothing
		{"\u115f\u1160", invisible},
		{"\uffa0", invisible},
		{"\u2800", invisible}, // the blank Braille pattern
		{"\u034f", invisible}, // the combining grapheme joiner
		{"\u0301", invisible}, // a mark with no base
		{"\ufe0f", invisible}, // a variation selector
	}
	for _, tt := range tests {
		if got := nameProblem(tt.in); got != tt.want {
			t.Errorf("nameProblem(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

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
		if _, err := env.st.createResetToken(ctx, u.Email, env.cfg.resetTTL, env.cfg.inviteTTL); err != nil {
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

// TestFieldRulesThroughHandlers: registration, a profile update and the two mail requests give
// a 400 naming the field and its reason for each kind of refused address and name, and take
// the good ones.
func TestFieldRulesThroughHandlers(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	aliceToken := env.tokenFor(t, alice)
	tests := []struct {
		field, value string
		ok           bool
	}{
		{"email", "x@[127.0.0.1]", false},
		{"email", "x@[IPv6:::1]", false},
		{"email", "x@127.0.0.1", false},
		{"email", "a@b", false},
		{"email", "x@-bad-.example", false},
		{"email", "x\u2028y@example.com", false},
		{"email", "x@example.com\u202e", false},
		{"email", "l\u0130z@example.com", false},
		{"email", "\u017ftan@example.com", false},
		{"email", "x%y@example.com", false},
		{"email", "New.Address@Mail.Example.com", true},
		{"first_name", "Bob\u202e", false},
		{"first_name", "Bob\u2028Eve", false},
		{"first_name", "\u200b", false},
		{"first_name", "\ufeff", false},
		{"first_name", "\u2060", false},
		{"first_name", "\u3164", false},
		{"last_name", "\u2066Smith\u2069", false},
		{"last_name", "Smith\u2029", false},
		{"last_name", " \u00a0", false},
		{"first_name", "Zo\u00eb", true},
		{"last_name", "\u0645\u200c\u06cc", true},
	}
	for i, tt := range tests {
		want := nameProblem(tt.value)
		if tt.field == "email" {
			want = emailProblem(tt.value)
		}
		if (want == "") != tt.ok {
			t.Fatalf("%s %q: rule says %q", tt.field, tt.value, want)
		}
		check := func(t *testing.T, what string, r response) {
			t.Helper()
			if tt.ok {
				if r.status >= 300 {
					t.Errorf("%s with %s %q: %d %s", what, tt.field, tt.value, r.status, r.body)
				}
				return
			}
			r.expect(t, http.StatusBadRequest)
			errs, _ := r.json(t)["errors"].(map[string]any)
			if len(errs) != 1 || errs[tt.field] != want {
				t.Errorf("%s with %s %q: errors %v, want {%s: %q}", what, tt.field, tt.value, errs, tt.field, want)
			}
		}
		t.Run(fmt.Sprintf("%s %q", tt.field, tt.value), func(t *testing.T) {
			body := authRegisterBody(fmt.Sprintf("user%d", i))
			body[tt.field] = tt.value
			if tt.ok && tt.field == "email" {
				body[tt.field] = fmt.Sprintf("user%d.%s", i, tt.value)
			}
			check(t, "register", env.do(t, "POST", "/api/auth/register", "", body))
			patch := map[string]any{tt.field: tt.value}
			check(t, "update", env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", alice.ID), aliceToken, patch))
			if tt.field == "email" {
				for _, path := range []string{"/api/auth/password-reset-request", "/api/auth/resend-verification"} {
					check(t, path, env.do(t, "POST", path, "", map[string]any{"email": tt.value}))
				}
			}
		})
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
