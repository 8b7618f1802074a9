package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Email verification and the notices of changed addresses and passwords, through the API and
// the outbox (env.deliverMail with the dummy backend renders what would be sent).

// mailsOf returns the messages of kind to the address among msgs.
func mailsOf(msgs []mailMessage, kind, to string) []mailMessage {
	var out []mailMessage
	for _, m := range msgs {
		if m.subject == mailSubjects[kind] && m.to == to {
			out = append(out, m)
		}
	}
	return out
}

// verificationTokens delivers the due mail and returns the token of each verification mail
// by address.
func verificationTokens(t *testing.T, env *testEnv) map[string]string {
	t.Helper()
	tokens := map[string]string{}
	for _, m := range env.deliverMail(t) {
		if m.subject != mailSubjects[mailVerifyEmail] {
			continue
		}
		if tokens[m.to] != "" {
			t.Fatalf("two verification mails to %s", m.to)
		}
		tokens[m.to] = tokenInMail(t, m.text)
	}
	return tokens
}

// verificationToken delivers the due mail and returns the token of the one verification mail
// to the address among it.
func verificationToken(t *testing.T, env *testEnv, to string) string {
	t.Helper()
	token := verificationTokens(t, env)[to]
	if token == "" {
		t.Fatalf("no verification mail to %s", to)
	}
	return token
}

// verifyWith posts a verification token.
func verifyWith(t *testing.T, env *testEnv, token string) response {
	t.Helper()
	return env.do(t, "POST", "/api/auth/verify-email/"+token, "", nil)
}

// emailVerified reads the user's email_verified as the user sees it.
func emailVerified(t *testing.T, env *testEnv, id int64) any {
	t.Helper()
	u, err := env.st.userByID(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return env.do(t, "GET", "/api/users/me", env.tokenFor(t, u), nil).expect(t, http.StatusOK).json(t)["email_verified"]
}

func TestVerifyEmail(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	register := func(username string) int64 {
		r := env.do(t, "POST", "/api/auth/register", "", map[string]string{
			"username": username, "first_name": "F", "last_name": "L", "email": username + "@example.com", "password": testPassword,
		}).expect(t, http.StatusCreated)
		return int64(r.json(t)["id"].(float64))
	}
	alice := register("alice")
	if v := emailVerified(t, env, alice); v != false {
		t.Fatalf("email_verified %v after registering, want false", v)
	}
	token := verificationToken(t, env, "alice@example.com")
	if msg := verifyWith(t, env, token).expect(t, http.StatusOK).message(t); msg != "Email verified" {
		t.Errorf("message %q", msg)
	}
	if v := emailVerified(t, env, alice); v != true {
		t.Errorf("email_verified %v after verifying, want true", v)
	}
	verifyWith(t, env, token).expect(t, http.StatusBadRequest) // a token works once
	for _, bad := range []string{"garbage", randomToken(), strings.Repeat("A", 43)} {
		verifyWith(t, env, bad).expect(t, http.StatusBadRequest)
	}

	// A token is good until verifyTTL has passed since it was mailed.
	bob, carol := register("bob"), register("carol")
	tokens := verificationTokens(t, env)
	bobToken, carolToken := tokens["bob@example.com"], tokens["carol@example.com"]
	if bobToken == "" || carolToken == "" {
		t.Fatalf("verification tokens %v, want bob's and carol's", tokens)
	}
	env.clock.Advance(env.cfg.verifyTTL - time.Second)
	verifyWith(t, env, carolToken).expect(t, http.StatusOK)
	env.clock.Advance(2 * time.Second)
	verifyWith(t, env, bobToken).expect(t, http.StatusBadRequest)
	if v, w := emailVerified(t, env, bob), emailVerified(t, env, carol); v != false || w != true {
		t.Errorf("email_verified: bob (expired token) %v, carol %v; want false, true", v, w)
	}
}

func TestVerifyFirstAdminIsVerified(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	hash, err := newHasher(env.cfg.bcryptCost, 1).hash(context.Background(), testPassword)
	if err != nil {
		t.Fatal(err)
	}
	id, err := env.st.createFirstAdmin(context.Background(), newUser{Username: "root", FirstName: "R", LastName: "Oot", Email: "root@example.com"}, hash)
	if err != nil {
		t.Fatal(err)
	}
	if v := emailVerified(t, env, id); v != true {
		t.Errorf("the first admin's email_verified is %v, want true", v)
	}
	if msgs := env.deliverMail(t); len(msgs) != 0 {
		t.Errorf("mail for the first admin: %+v", msgs)
	}
}

func TestResendVerification(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	vera := env.addUser(t, "vera", roleUser)
	if _, err := env.st.updateUser(context.Background(), user{Role: roleAdmin}, vera.ID, userPatch{EmailVerified: new(true)}); err != nil {
		t.Fatal(err)
	}
	firstToken := verificationToken(t, env, "alice@example.com")
	env.clock.Advance(2 * time.Minute) // past the per-minute cap that registration's mail counts toward

	// resend asks for a verification mail and returns how many were queued to the address.
	resend := func(t *testing.T, email string) []mailMessage {
		t.Helper()
		r := env.do(t, "POST", "/api/auth/resend-verification", "", map[string]string{"email": email}).expect(t, http.StatusOK)
		if body := r.json(t); len(body) != 1 || body["message"] != resendVerificationReply {
			t.Errorf("reply for %s: %s, want only the standard message", email, r.body)
		}
		return mailsOf(env.deliverMail(t), mailVerifyEmail, email)
	}
	t.Run("only to an unverified account", func(t *testing.T) {
		for _, tt := range []struct {
			email string
			mails int
		}{
			{"nobody@example.com", 0},
			{"vera@example.com", 0},
			{"alice@example.com", 1},
		} {
			if got := resend(t, tt.email); len(got) != tt.mails {
				t.Errorf("%s: %d mails, want %d", tt.email, len(got), tt.mails)
			}
		}
	})

	t.Run("the new token replaces the old", func(t *testing.T) {
		env.clock.Advance(2 * time.Minute)
		msgs := resend(t, "alice@example.com")
		if len(msgs) != 1 {
			t.Fatalf("%d mails, want 1", len(msgs))
		}
		verifyWith(t, env, firstToken).expect(t, http.StatusBadRequest)
		verifyWith(t, env, tokenInMail(t, msgs[0].text)).expect(t, http.StatusOK)
		if v := emailVerified(t, env, alice.ID); v != true {
			t.Errorf("email_verified %v, want true", v)
		}
		if got := resend(t, "alice@example.com"); len(got) != 0 {
			t.Errorf("%d mails to a verified address, want none", len(got))
		}
	})

	t.Run("capped", func(t *testing.T) {
		env.addUser(t, "bob", roleUser) // registration mails once
		env.deliverMail(t)
		// Every two minutes, twice a minute: registration and four resends make the five an
		// hour allows, then nothing until the registration mail is an hour old.
		for i, want := range []int{1, 0, 1, 0, 1, 0, 1, 0, 0, 0} {
			if i%2 == 0 {
				env.clock.Advance(2 * time.Minute)
			}
			if got := resend(t, "bob@example.com"); len(got) != want {
				t.Errorf("resend %d: %d mails, want %d", i+1, len(got), want)
			}
		}
		env.clock.Advance(time.Hour - 9*time.Minute) // registration is now over an hour old
		if got := resend(t, "bob@example.com"); len(got) != 1 {
			t.Errorf("after the hour: %d mails, want 1", len(got))
		}
	})
}

func TestEmailChange(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	adminToken := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	aliceToken := env.tokenFor(t, alice)
	path := fmt.Sprintf("/api/users/%d", alice.ID)
	patch := func(token string, body map[string]any, status int) map[string]any {
		t.Helper()
		return env.do(t, "PATCH", path, token, body).expect(t, status).json(t)
	}
	oldToken := verificationToken(t, env, "alice@example.com")
	env.deliverMail(t)

	// An admin marks the address verified; the token mailed to it is still pending.
	if got := patch(adminToken, map[string]any{"email_verified": true}, http.StatusOK); got["email_verified"] != true {
		t.Fatalf("admin set email_verified true: %v", got)
	}
	got := patch(aliceToken, map[string]any{"email": "alice.new@example.com"}, http.StatusOK)
	if got["email"] != "alice.new@example.com" || got["email_verified"] != false {
		t.Errorf("after changing the email: %v, want the new address unverified", got)
	}
	msgs := env.deliverMail(t)
	notices := mailsOf(msgs, mailEmailChanged, "alice@example.com")
	if len(msgs) != 2 || len(notices) != 1 || !strings.Contains(notices[0].text, "alice.new@example.com") {
		t.Fatalf("mails %+v, want a verification to the new address and a notice naming it to the old", msgs)
	}
	newToken := tokenInMail(t, mailsOf(msgs, mailVerifyEmail, "alice.new@example.com")[0].text)
	verifyWith(t, env, oldToken).expect(t, http.StatusBadRequest)
	if v := emailVerified(t, env, alice.ID); v != false {
		t.Errorf("the old address's token verified the new one: email_verified %v", v)
	}
	verifyWith(t, env, newToken).expect(t, http.StatusOK)
	if v := emailVerified(t, env, alice.ID); v != true {
		t.Errorf("email_verified %v after verifying the new address, want true", v)
	}

	t.Run("who may set email_verified", func(t *testing.T) {
		for _, tt := range []struct {
			who    string
			value  bool
			status int
		}{
			{"admin", false, http.StatusOK},
			{"user", true, http.StatusForbidden},
			{"admin", true, http.StatusOK},
			{"user", false, http.StatusForbidden},
		} {
			token := map[string]string{"admin": adminToken, "user": aliceToken}[tt.who]
			before := emailVerified(t, env, alice.ID)
			got := patch(token, map[string]any{"email_verified": tt.value}, tt.status)
			want := before
			if tt.status == http.StatusOK {
				want = tt.value
			}
			if after := emailVerified(t, env, alice.ID); after != want || tt.status == http.StatusOK && got["email_verified"] != want {
				t.Errorf("%s sets %v: reply %v, now %v, want %v", tt.who, tt.value, got, after, want)
			}
		}
		if msgs := env.deliverMail(t); len(msgs) != 0 {
			t.Errorf("mail queued by setting email_verified: %+v", msgs)
		}
	})

	t.Run("an admin changes the address and vouches for it", func(t *testing.T) {
		got := patch(adminToken, map[string]any{"email": "alice3@example.com", "email_verified": true}, http.StatusOK)
		if got["email_verified"] != true {
			t.Errorf("reply %v, want email_verified true", got)
		}
		msgs := env.deliverMail(t)
		if len(msgs) != 1 || len(mailsOf(msgs, mailEmailChanged, "alice.new@example.com")) != 1 {
			t.Errorf("mails %+v, want only the notice to the old address", msgs)
		}
	})
}

// TestEmailChangeCapped: changing addresses back and forth cannot flood a mailbox. A user's
// own changes are capped per hour, and so is the mail an address gets (from any number of
// accounts, changing to it or registering with it); a change of letter case and an admin's
// change of another user are not capped, and mail asked for by others does not hold up an
// owner undoing a typo.
func TestEmailChangeCapped(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.accessTTL = 2 * time.Hour })
	root := env.addUser(t, "root", roleAdmin)
	adminToken := env.tokenFor(t, root)
	change := func(t *testing.T, token string, u user, email string) response {
		t.Helper()
		return env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", u.ID), token, map[string]any{"email": email})
	}
	expectCapped := func(t *testing.T, r response, wait time.Duration) {
		t.Helper()
		r.expect(t, http.StatusTooManyRequests)
		if msg := r.message(t); msg != "Too many email changes; try again later" {
			t.Errorf("message %q", msg)
		}
		if got := r.header.Get("Retry-After"); got != strconv.Itoa(int(wait.Seconds())) {
			t.Errorf("Retry-After %q, want %d", got, int(wait.Seconds()))
		}
	}

	t.Run("per user", func(t *testing.T) {
		mallory := env.addUser(t, "mallory", roleUser)
		token := env.tokenFor(t, mallory)
		for i := range emailChangesPerHour {
			change(t, token, mallory, fmt.Sprintf("m%d@example.com", i)).expect(t, http.StatusOK)
			env.clock.Advance(time.Minute)
		}
		// The first of the five is 5 minutes old: the cap lifts 55 minutes from now.
		expectCapped(t, change(t, token, mallory, "m9@example.com"), 55*time.Minute)
		change(t, adminToken, mallory, "mallory@example.net").expect(t, http.StatusOK)
		env.clock.Advance(55 * time.Minute)
		change(t, token, mallory, "m9@example.com").expect(t, http.StatusOK)
		change(t, token, mallory, "M9@EXAMPLE.COM").expect(t, http.StatusOK) // letter case: the same mailbox
	})
	t.Run("per address, from many accounts", func(t *testing.T) {
		env.deliverMail(t)
		// Each round mails the victim twice: a verification, then the notice of the change away.
		for i := range mailsPerAddressPerHour / 2 {
			u := env.addUser(t, fmt.Sprintf("flooder%d", i), roleUser)
			change(t, env.tokenFor(t, u), u, "victim@example.org").expect(t, http.StatusOK)
			change(t, adminToken, u, fmt.Sprintf("flooder%d@example.net", i)).expect(t, http.StatusOK)
		}
		u := env.addUser(t, "flooder9", roleUser)
		expectCapped(t, change(t, env.tokenFor(t, u), u, "victim@example.org"), time.Hour)
		// Registering with the address creates the account but mails it nothing.
		r := env.do(t, "POST", "/api/auth/register", "", map[string]string{
			"username": "flooder10", "first_name": "F", "last_name": "L", "email": "victim@example.org", "password": testPassword,
		}).expect(t, http.StatusCreated)
		if n := len(mailsOf(env.deliverMail(t), mailVerifyEmail, "victim@example.org")); n != mailsPerAddressPerHour/2 {
			t.Errorf("%d verification mails to the victim, want %d", n, mailsPerAddressPerHour/2)
		}
		// Nor do resends, resets, or the notices of a changed password or of a change away
		// from the unverified address: the same replies as ever, and no mail.
		flooder10 := user{ID: int64(r.json(t)["id"].(float64)), Username: "flooder10"}
		env.clock.Advance(time.Minute + time.Second)
		for _, path := range []string{"/api/auth/resend-verification", "/api/auth/password-reset-request"} {
			env.do(t, "POST", path, "", map[string]string{"email": "victim@example.org"}).expect(t, http.StatusOK)
		}
		env.do(t, "POST", "/api/auth/change-password", env.tokenFor(t, reload(t, env, flooder10)),
			map[string]string{"current_password": testPassword, "new_password": "another-password"}).expect(t, http.StatusOK)
		change(t, env.tokenFor(t, reload(t, env, flooder10)), flooder10, "flooder10@example.com").expect(t, http.StatusOK)
		for _, m := range env.deliverMail(t) {
			if m.to == "victim@example.org" {
				t.Errorf("mail to the victim past the cap: %q", m.subject)
			}
		}
		// An hour on, the cap has lifted.
		env.clock.Advance(time.Hour + time.Second)
		change(t, env.tokenFor(t, u), u, "victim@example.org").expect(t, http.StatusOK)
	})
	t.Run("others asking for mail", func(t *testing.T) {
		alice := env.addUser(t, "alice", roleUser) // its registration mail, then all the resends and resets anyone may ask for
		for range askedMailsPerHour {
			env.clock.Advance(time.Minute + time.Second)
			for _, path := range []string{"/api/auth/resend-verification", "/api/auth/password-reset-request"} {
				env.do(t, "POST", path, "", map[string]string{"email": "alice@example.com"}).expect(t, http.StatusOK)
			}
		}
		token := env.tokenFor(t, alice)
		change(t, token, alice, "alice@exmaple.com").expect(t, http.StatusOK) // a typo,
		change(t, token, alice, "alice@example.com").expect(t, http.StatusOK) // undone
	})
}

func TestRequireVerifiedEmail(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.requireVerifiedEmail = true })
	env.addUser(t, "alice", roleUser)
	env.addUser(t, "bob", roleUser)
	tokens := verificationTokens(t, env)
	aliceToken := tokens["alice@example.com"]
	verifyWith(t, env, tokens["bob@example.com"]).expect(t, http.StatusOK)

	tests := []struct {
		name, username, password string
		status                   int
		message                  string
	}{
		{"unverified, right password", "alice", testPassword, http.StatusForbidden, "Email address not verified"},
		{"unverified, wrong password", "alice", "wrong-password", http.StatusUnauthorized, "Invalid credentials"},
		{"unverified, by email", "alice@example.com", testPassword, http.StatusForbidden, "Email address not verified"},
		{"verified", "bob", testPassword, http.StatusOK, ""},
		{"verified, wrong password", "bob", "wrong-password", http.StatusUnauthorized, "Invalid credentials"},
		{"unknown", "nobody", testPassword, http.StatusUnauthorized, "Invalid credentials"},
	}
	for _, tt := range tests {
		r := env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": tt.username, "password": tt.password})
		r.expect(t, tt.status)
		if tt.message != "" && r.message(t) != tt.message {
			t.Errorf("%s: message %q, want %q", tt.name, r.message(t), tt.message)
		}
	}
	// The right password is no failure: an unverified user trying again is not locked out.
	for range env.cfg.loginMaxFailures + 1 {
		env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "alice", "password": testPassword}).
			expect(t, http.StatusForbidden)
	}
	verifyWith(t, env, aliceToken).expect(t, http.StatusOK)
	env.login(t, "alice", testPassword)
}

func TestPasswordChangedNotice(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(t *testing.T, env *testEnv, alice user)
		how    string
	}{
		{"changed", func(t *testing.T, env *testEnv, alice user) {
			env.do(t, "POST", "/api/auth/change-password", env.tokenFor(t, alice),
				map[string]string{"current_password": testPassword, "new_password": "another-password"}).expect(t, http.StatusOK)
		}, "was changed"},
		{"reset", func(t *testing.T, env *testEnv, alice user) {
			r := env.do(t, "POST", "/api/auth/password-reset-request", "", map[string]string{"email": alice.Email}).expect(t, http.StatusOK)
			token, _ := r.json(t)["token"].(string) // the dummy backend returns it
			if sent := env.deliverMail(t); len(mailsOf(sent, mailPasswordReset, alice.Email)) != 1 {
				t.Fatalf("mails %+v, want the reset mail", sent)
			}
			env.do(t, "POST", "/api/auth/reset-password/"+token, "", map[string]string{"new_password": "another-password"}).
				expect(t, http.StatusOK)
		}, "was reset"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := newTestEnv(t)
			alice := env.addUser(t, "alice", roleUser)
			env.deliverMail(t)
			tt.change(t, env, alice)
			msgs := env.deliverMail(t)
			if len(msgs) != 1 || len(mailsOf(msgs, mailPasswordChanged, "alice@example.com")) != 1 {
				t.Fatalf("mails %+v, want one password-changed notice to alice", msgs)
			}
			if !strings.Contains(msgs[0].text, tt.how) || !strings.Contains(msgs[0].html, tt.how) {
				t.Errorf("the notice does not say the password %s:\n%s", tt.how, msgs[0].text)
			}
			env.login(t, "alice", "another-password")
		})
	}
	// Changing a password over and over cannot flood the address: five notices an hour.
	t.Run("capped", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t)
		alice := env.addUser(t, "alice", roleUser)
		env.deliverMail(t)
		passwords := []string{testPassword, "another-password"}
		for i := range passwordNoticesPerHour + 3 {
			r := env.do(t, "POST", "/api/auth/change-password", env.tokenFor(t, reload(t, env, alice)),
				map[string]string{"current_password": passwords[i%2], "new_password": passwords[(i+1)%2]})
			r.expect(t, http.StatusOK)
		}
		if n := len(mailsOf(env.deliverMail(t), mailPasswordChanged, "alice@example.com")); n != passwordNoticesPerHour {
			t.Errorf("%d notices, want %d", n, passwordNoticesPerHour)
		}
		env.clock.Advance(time.Hour + time.Second)
		env.do(t, "POST", "/api/auth/change-password", env.tokenFor(t, reload(t, env, alice)),
			map[string]string{"current_password": passwords[(passwordNoticesPerHour+3)%2], "new_password": "third-password"}).
			expect(t, http.StatusOK)
		if n := len(mailsOf(env.deliverMail(t), mailPasswordChanged, "alice@example.com")); n != 1 {
			t.Errorf("%d notices an hour later, want 1", n)
		}
	})
}
