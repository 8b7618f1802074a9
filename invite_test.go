package main

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Users created by an admin, and invitations (issue 13, part 1), through the real handlers.

// createByAdmin posts a user to POST /api/admin/users.
func (e *testEnv) createByAdmin(t testing.TB, token string, body map[string]any) response {
	t.Helper()
	return e.do(t, "POST", "/api/admin/users", token, body)
}

// invitee is the body of an admin's creation of username without a password.
func invitee(username string) map[string]any {
	return map[string]any{"username": username, "first_name": "First " + username, "last_name": "Last", "email": username + "@example.com"}
}

// inviteTokens delivers the due mail and returns the tokens of the invitations to the address
// among it, in order.
func inviteTokens(t *testing.T, env *testEnv, to string) []string {
	t.Helper()
	var tokens []string
	for _, m := range mailsOf(env.deliverMail(t), mailInvite, to) {
		tokens = append(tokens, tokenInMail(t, m.text))
	}
	return tokens
}

// inviteToken delivers the due mail and returns the token of the one invitation to the address.
func inviteToken(t *testing.T, env *testEnv, to string) string {
	t.Helper()
	tokens := inviteTokens(t, env, to)
	if len(tokens) != 1 {
		t.Fatalf("%d invitations to %s, want 1", len(tokens), to)
	}
	return tokens[0]
}

func (e *testEnv) acceptInvite(t testing.TB, token, password string) response {
	t.Helper()
	return e.do(t, "POST", "/api/auth/accept-invite/"+token, "", map[string]string{"new_password": password})
}

// TestAdminCreatesUserWithPassword: the user gets the role asked for (User by default), can
// log in with the password at once, and is mailed a verification unless the admin marked the
// address verified; the creation is audited with the admin as actor.
func TestAdminCreatesUserWithPassword(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	root := env.addUser(t, "root", roleAdmin)
	admin := env.tokenFor(t, root)
	env.deliverMail(t)

	last := env.lastAuditID(t)
	body := invitee("alice")
	body["password"] = "alice-password-1"
	got := env.createByAdmin(t, admin, body).expect(t, http.StatusCreated).json(t)
	if got["username"] != "alice" || got["role"] != roleUser || got["invited"] != false || got["email_verified"] != false {
		t.Errorf("created %v, want alice, a User, not invited, unverified", got)
	}
	id := int64(got["id"].(float64))
	if _, hasHash := got["password_hash"]; hasHash {
		t.Errorf("the reply holds the hash: %v", got)
	}
	wantRows := []auditRow{
		{auditUserCreated, idp(root.ID), idp(id), "127.0.0.1", map[string]any{"username": "alice", "role": roleUser, "invited": false}},
		{auditVerificationRequested, nil, idp(id), "127.0.0.1", map[string]any{}},
	}
	if rows := env.auditRowsAfter(t, last); fmt.Sprint(rows) != fmt.Sprint(wantRows) {
		t.Errorf("audit rows\n got %v\nwant %v", rows, wantRows)
	}
	env.login(t, "alice", "alice-password-1")
	if len(verificationTokens(t, env)) != 1 {
		t.Error("no verification mail to alice")
	}

	body = invitee("bob")
	body["password"], body["role"], body["email_verified"] = "bob-password-1", "admin", true
	got = env.createByAdmin(t, admin, body).expect(t, http.StatusCreated).json(t)
	if got["role"] != roleAdmin || got["email_verified"] != true {
		t.Errorf("created %v, want an Admin with a verified address", got)
	}
	if mail := env.deliverMail(t); len(mail) != 0 {
		t.Errorf("mail sent for a verified address: %v", mail)
	}
	env.login(t, "bob", "bob-password-1")
}

// TestAdminCreateUserValidation: the rules and conflicts of registration, the role's, and
// only admins may create users.
func TestAdminCreateUserValidation(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	admin := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	user := env.tokenFor(t, env.addUser(t, "taken", roleUser))
	with := func(change map[string]any) map[string]any {
		body := invitee("alice")
		for k, v := range change {
			if v == nil {
				delete(body, k)
			} else {
				body[k] = v
			}
		}
		return body
	}
	for _, c := range []struct {
		name   string
		body   map[string]any
		status int
		errors map[string]string
	}{
		{"short username", with(map[string]any{"username": "al"}), 400, map[string]string{"username": "must be 3 to 80 characters"}},
		{"no first name", with(map[string]any{"first_name": nil}), 400, nil},
		{"bad email", with(map[string]any{"email": "alice"}), 400, nil},
		{"short password", with(map[string]any{"password": "short"}), 400, map[string]string{"password": "must be at least 8 characters"}},
		{"empty password", with(map[string]any{"password": ""}), 400, nil},
		{"common password", with(map[string]any{"password": "Password123"}), 400, map[string]string{"password": "is too common; choose another"}},
		{"password is the username", with(map[string]any{"password": "alice-long-x", "username": "Alice-Long-X"}), 400, nil},
		{"bad role", with(map[string]any{"role": "root"}), 400, map[string]string{"role": "must be Admin or User"}},
		{"null role", with(map[string]any{"role": nil, "password": nil, "email_verified": nil}), 201, nil},
		{"unknown field", with(map[string]any{"is_active": false}), 400, map[string]string{"is_active": "unknown field"}},
		{"taken username and email", with(map[string]any{"username": "TAKEN", "email": "Taken@example.com"}), 409,
			map[string]string{"username": "already taken", "email": "already taken"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := env.createByAdmin(t, admin, c.body).expect(t, c.status)
			body := r.json(t)
			for field, want := range c.errors {
				if got := body["errors"].(map[string]any)[field]; got != want {
					t.Errorf("errors.%s = %v, want %q: %s", field, got, want, r.body)
				}
			}
			if c.status == 400 && body["errors"] == nil {
				t.Errorf("no field errors: %s", r.body)
			}
		})
	}
	env.createByAdmin(t, user, invitee("carol")).expect(t, http.StatusForbidden)
	env.createByAdmin(t, "", invitee("carol")).expect(t, http.StatusUnauthorized)
	if n := env.sqlCount(t, "SELECT count(*) FROM users WHERE username = 'carol'"); n != 0 {
		t.Errorf("a refused creation made %d users", n)
	}
}

// TestInvitationAccepted: an admin's user made without a password is invited; it shows as
// invited, cannot log in, and accepting with a password (refused when guessable, with the
// token still good) logs it in with the address verified. The token works once.
func TestInvitationAccepted(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	root := env.addUser(t, "root", roleAdmin)
	admin := env.tokenFor(t, root)
	env.deliverMail(t)

	last := env.lastAuditID(t)
	got := env.createByAdmin(t, admin, invitee("alice")).expect(t, http.StatusCreated).json(t)
	id := int64(got["id"].(float64))
	if got["invited"] != true || got["email_verified"] != false {
		t.Errorf("created %v, want invited and unverified", got)
	}
	wantRows := []auditRow{
		{auditUserCreated, idp(root.ID), idp(id), "127.0.0.1", map[string]any{"username": "alice", "role": roleUser, "invited": true}},
		{auditInvitationSent, idp(root.ID), idp(id), "127.0.0.1", map[string]any{}},
	}
	if rows := env.auditRowsAfter(t, last); fmt.Sprint(rows) != fmt.Sprint(wantRows) {
		t.Errorf("audit rows\n got %v\nwant %v", rows, wantRows)
	}
	msgs := mailsOf(env.deliverMail(t), mailInvite, "alice@example.com")
	if len(msgs) != 1 {
		t.Fatalf("%d invitations to alice, want 1", len(msgs))
	}
	token := tokenInMail(t, msgs[0].text)
	for _, part := range []string{msgs[0].text, msgs[0].html} {
		if !strings.Contains(part, "http://usermgmt.test/welcome?token="+token) || !strings.Contains(part, "/api/auth/accept-invite/"+token) ||
			!strings.Contains(part, "72 hours") {
			t.Errorf("the invitation lacks the INVITE_URL link, the curl line or the lifetime:\n%s", part)
		}
	}
	if n := env.sqlCount(t, "SELECT count(*) FROM invitation_tokens WHERE token_hash = $1", hashToken(token)); n != 1 {
		t.Errorf("the token's hash is stored %d times, want once", n)
	}
	env.loginWith(t, "alice", "", nil).expect(t, http.StatusBadRequest) // an empty password is no way in
	env.loginWith(t, "alice", "anything-at-all", nil).expect(t, http.StatusUnauthorized)

	// Guessable passwords are refused, and the token stays good.
	for _, password := range []string{"password1", "alice@example.com", "ALICE", "short"} {
		r := env.acceptInvite(t, token, password).expect(t, http.StatusBadRequest)
		if errs, _ := r.json(t)["errors"].(map[string]any); errs["new_password"] == nil {
			t.Errorf("%q: no new_password error: %s", password, r.body)
		}
	}
	last = env.lastAuditID(t)
	pair := pairOf(t, env.acceptInvite(t, token, "alice-chose-this").expect(t, http.StatusOK))
	me := env.do(t, "GET", "/api/users/me", pair.access, nil).expect(t, http.StatusOK).json(t)
	if me["invited"] != false || me["email_verified"] != true || me["username"] != "alice" {
		t.Errorf("after accepting: %v, want not invited, verified", me)
	}
	env.expectLive(t, pair)
	rows := env.auditRowsAfter(t, last)
	if len(rows) != 2 || rows[0].Action != auditInvitationAccepted || *rows[0].Actor != id || rows[1].Action != auditLoginSucceeded {
		t.Errorf("audit rows after accepting: %v, want invitation_accepted by alice, then login_succeeded", rows)
	}
	env.login(t, "alice", "alice-chose-this")

	r := env.acceptInvite(t, token, "another-password-2").expect(t, http.StatusBadRequest)
	if msg := r.message(t); msg != "Invalid or expired invitation token" {
		t.Errorf("a used token: %q", msg)
	}
	env.acceptInvite(t, "not-a-token", "another-password-2").expect(t, http.StatusBadRequest)
	env.login(t, "alice", "alice-chose-this")
}

// TestInvitationAcceptedOnce: two acceptances of one token at once, with different
// passwords: exactly one wins, and its password is the one that works.
func TestInvitationAcceptedOnce(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	admin := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	env.createByAdmin(t, admin, invitee("alice")).expect(t, http.StatusCreated)
	token := inviteToken(t, env, "alice@example.com")
	passwords := []string{"alice-first-choice", "alice-other-choice"}
	statuses := make([]int, len(passwords))
	var wg sync.WaitGroup
	for i, password := range passwords {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = env.acceptInvite(t, token, password).status
		}()
	}
	wg.Wait()
	winner := slices.Index(statuses, http.StatusOK)
	if winner < 0 || slices.Index(statuses[winner+1:], http.StatusOK) >= 0 || !slices.Contains(statuses, http.StatusBadRequest) {
		t.Fatalf("statuses %v, want one 200 and one 400", statuses)
	}
	env.login(t, "alice", passwords[winner])
	env.loginWith(t, "alice", passwords[1-winner], nil).expect(t, http.StatusUnauthorized)
}

// TestInvitationExpires: INVITE_EXPIRES after it was sent, the token is refused, and the
// account stays invited.
func TestInvitationExpires(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(cfg *config) { cfg.inviteTTL = time.Hour })
	admin := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	env.createByAdmin(t, admin, invitee("alice")).expect(t, http.StatusCreated)
	token := inviteToken(t, env, "alice@example.com")
	env.clock.Advance(time.Hour)
	env.acceptInvite(t, token, "alice-chose-this").expect(t, http.StatusBadRequest)
	if n := env.sqlCount(t, "SELECT count(*) FROM users WHERE username = 'alice' AND password_hash = ''"); n != 1 {
		t.Error("an expired invitation changed the account")
	}
}

// TestInvitationResent: an admin's re-send voids the earlier token and sends a new one, within
// the mail caps (429 with Retry-After past them); an account that accepted, has a password, is
// deactivated or does not exist gets 409, 409, 409 and 404.
func TestInvitationResent(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	root := env.addUser(t, "root", roleAdmin)
	admin := env.tokenFor(t, root)
	alice := int64(env.createByAdmin(t, admin, invitee("alice")).expect(t, http.StatusCreated).json(t)["id"].(float64))
	first := inviteToken(t, env, "alice@example.com")
	resend := func(id int64) response {
		t.Helper()
		return env.do(t, "POST", fmt.Sprintf("/api/admin/users/%d/invite", id), admin, nil)
	}

	// The invitation sent at creation counts towards the caps: one a minute.
	resend(alice).expect(t, http.StatusTooManyRequests)
	env.clock.Advance(time.Minute + time.Second)
	last := env.lastAuditID(t)
	resend(alice).expect(t, http.StatusOK)
	if rows := env.auditRowsAfter(t, last); len(rows) != 1 || rows[0].Action != auditInvitationSent || *rows[0].Actor != root.ID {
		t.Errorf("audit rows of a re-send: %v", rows)
	}
	second := inviteToken(t, env, "alice@example.com")
	r := resend(alice).expect(t, http.StatusTooManyRequests)
	if r.header.Get("Retry-After") == "" {
		t.Error("no Retry-After on a capped re-send")
	}
	if tokens := inviteTokens(t, env, "alice@example.com"); len(tokens) != 0 {
		t.Errorf("a capped re-send mailed %d invitations", len(tokens))
	}
	env.acceptInvite(t, first, "alice-chose-this").expect(t, http.StatusBadRequest)
	env.acceptInvite(t, second, "alice-chose-this").expect(t, http.StatusOK)
	resend(alice).expect(t, http.StatusConflict)

	withPassword := invitee("bob")
	withPassword["password"] = "bob-password-1"
	bob := int64(env.createByAdmin(t, admin, withPassword).expect(t, http.StatusCreated).json(t)["id"].(float64))
	resend(bob).expect(t, http.StatusConflict)
	resend(root.ID).expect(t, http.StatusConflict)

	carol := int64(env.createByAdmin(t, admin, invitee("carol")).expect(t, http.StatusCreated).json(t)["id"].(float64))
	carolToken := inviteToken(t, env, "carol@example.com")
	env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", carol), admin, map[string]any{"is_active": false}).expect(t, http.StatusOK)
	env.clock.Advance(time.Minute + time.Second)
	resend(carol).expect(t, http.StatusConflict)
	env.acceptInvite(t, carolToken, "carol-chose-this").expect(t, http.StatusBadRequest)

	resend(1<<40).expect(t, http.StatusNotFound)
	env.do(t, "POST", fmt.Sprintf("/api/admin/users/%d/invite", alice), env.tokenFor(t, env.addUser(t, "dave", roleUser)), nil).
		expect(t, http.StatusForbidden)
}

// TestInvitationFollowsItsAddress: a token mailed to an address the account no longer has
// does not verify the new one.
func TestInvitationFollowsItsAddress(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	admin := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	id := int64(env.createByAdmin(t, admin, invitee("alice")).expect(t, http.StatusCreated).json(t)["id"].(float64))
	token := inviteToken(t, env, "alice@example.com")
	env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", id), admin, map[string]any{"email": "alice2@example.com"}).expect(t, http.StatusOK)
	env.acceptInvite(t, token, "alice-chose-this").expect(t, http.StatusBadRequest)
	env.clock.Advance(time.Minute + time.Second)
	env.do(t, "POST", fmt.Sprintf("/api/admin/users/%d/invite", id), admin, nil).expect(t, http.StatusOK)
	env.acceptInvite(t, inviteToken(t, env, "alice2@example.com"), "alice-chose-this").expect(t, http.StatusOK)
}

// TestInvitedLoginLikeWrongPassword: a login to an invited account, whatever the password,
// gets the reply of a wrong password, costs the same bcrypt work, and counts towards the
// lockout and the audit log the same way.
func TestInvitedLoginLikeWrongPassword(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "bob", roleUser)
	admin := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	alice := int64(env.createByAdmin(t, admin, invitee("alice")).expect(t, http.StatusCreated).json(t)["id"].(float64))

	var wrong, invited response
	wrongWork := env.comparisons(func() { wrong = env.loginWith(t, "bob", "wrong-password", nil) })
	for _, login := range []string{"alice", "alice@example.com"} {
		last := env.lastAuditID(t)
		invitedWork := env.comparisons(func() { invited = env.loginWith(t, login, "wrong-password", nil) })
		if invited.status != wrong.status || string(invited.body) != string(wrong.body) {
			t.Errorf("%s: invited login %d %s, wrong password %d %s", login, invited.status, invited.body, wrong.status, wrong.body)
		}
		if rounds(invitedWork) != rounds(wrongWork) || rounds(wrongWork) != 1<<env.cfg.bcryptCost {
			t.Errorf("%s: bcrypt work %v for the invited account, %v for a wrong password", login, invitedWork, wrongWork)
		}
		if rows := env.auditRowsAfter(t, last); len(rows) != 1 || rows[0].Action != auditLoginFailed || *rows[0].Target != alice {
			t.Errorf("%s: audit rows %v, want login_failed naming alice", login, rows)
		}
	}
	for range env.cfg.loginMaxFailures - 2 {
		env.loginWith(t, "alice", "wrong-password", nil).expect(t, http.StatusUnauthorized)
	}
	env.loginWith(t, "alice", "wrong-password", nil).expect(t, http.StatusTooManyRequests)
}

// TestInvitedResetRequest: a reset request for an invited address mails the invitation again
// (a new token, the old one void) under the reset caps, and replies as for any address; one
// that mails nothing runs the statements of an address with no account.
func TestInvitedResetRequest(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(cfg *config) { cfg.mail.backend = mailLog })
	admin := env.tokenFor(t, env.addUser(t, "root", roleAdmin))
	env.createByAdmin(t, admin, invitee("alice")).expect(t, http.StatusCreated)
	first := inviteToken(t, env, "alice@example.com")
	env.clock.Advance(time.Hour) // past the caps of the creation

	log := &statementLog{}
	traced := tracedServer(t, env, log)
	ask := func(email string) (response, []string) {
		t.Helper()
		log.take()
		r := traced.do(t, "POST", "/api/auth/password-reset-request", "", map[string]string{"email": email}).expect(t, http.StatusOK)
		return r, log.take()
	}
	nobody, notSent := ask("nobody@example.com")
	r, sent := ask("alice@example.com")
	if string(r.body) != string(nobody.body) {
		t.Errorf("reply for an invited address %s, for no account %s", r.body, nobody.body)
	}
	if len(sent) <= len(notSent) || !slices.Equal(sent[:3], notSent[:3]) {
		t.Errorf("a sent invitation does not begin like a mail not sent (begin, lookup, caps): %q", sent)
	}
	msgs := env.deliverMail(t)
	if len(mailsOf(msgs, mailPasswordReset, "alice@example.com")) != 0 || len(mailsOf(msgs, mailInvite, "alice@example.com")) != 1 {
		t.Fatalf("mail after a reset request for an invited address: %v, want one invitation", msgs)
	}
	second := tokenInMail(t, mailsOf(msgs, mailInvite, "alice@example.com")[0].text)
	if n := env.sqlCount(t, "SELECT count(*) FROM password_reset_tokens"); n != 0 {
		t.Errorf("%d reset tokens for an invited account", n)
	}
	// Within the minute: capped, and like no account.
	_, capped := ask("alice@example.com")
	if !slices.Equal(capped, notSent) {
		t.Errorf("a capped invited account runs\n%q\nbut no account runs\n%q", capped, notSent)
	}
	if tokens := inviteTokens(t, env, "alice@example.com"); len(tokens) != 0 {
		t.Errorf("a capped reset request mailed %d invitations", len(tokens))
	}
	env.acceptInvite(t, first, "alice-chose-this").expect(t, http.StatusBadRequest)
	env.acceptInvite(t, second, "alice-chose-this").expect(t, http.StatusOK)
	// Accepted, the account gets reset mail like any other.
	env.clock.Advance(time.Minute + time.Second)
	ask("alice@example.com")
	if msgs := env.deliverMail(t); len(mailsOf(msgs, mailPasswordReset, "alice@example.com")) != 1 {
		t.Errorf("no reset mail after accepting: %v", msgs)
	}
}

// TestAcceptInviteRateLimited: accept-invite is behind the per-address limit of the other
// token endpoints.
func TestAcceptInviteRateLimited(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, withAuthLimit)
	for range env.cfg.authRateBurst {
		env.acceptInvite(t, "guess", "some-password-1").expect(t, http.StatusBadRequest)
	}
	expectLimited(t, env.acceptInvite(t, "guess", "some-password-1"))
}
