package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests of two-factor login against real PostgreSQL with the test clock: enrolment, the second
// step of a login, replay, the mfa_token's limits, the lockout, recovery codes, turning it off,
// admin removal, ADMIN_REQUIRE_MFA and JWT key rotation.

// mfaUser is a user with TOTP on, and the session that turned it on.
type mfaUser struct {
	user
	key      []byte
	recovery []string
	session  loggedIn
}

// nextCode moves the clock to the next time step and returns its code: every code a test uses
// is of a later step than the last one accepted, as the replay rule wants.
func (e *testEnv) nextCode(key []byte) string {
	e.clock.Advance(totpPeriod * time.Second)
	return totpCode(key, totpStep(e.clock.Now()))
}

// enrol starts an enrolment of the session's user and returns the secret.
func (e *testEnv) enrol(t testing.TB, access string) []byte {
	t.Helper()
	body := e.do(t, "POST", "/api/users/me/mfa/totp", access, map[string]string{"password": testPassword}).
		expect(t, http.StatusOK).json(t)
	secret, _ := body["secret"].(string)
	key, err := totpEncoding.DecodeString(secret)
	if err != nil || len(key) != 20 {
		t.Fatalf("secret %q: %v", secret, err)
	}
	return key
}

// enableMFA adds a user and turns TOTP on for them through the API.
func (e *testEnv) enableMFA(t testing.TB, username, role string) mfaUser {
	t.Helper()
	m := mfaUser{user: e.addUser(t, username, role)}
	m.session = e.loginSession(t, username, testPassword)
	m.key = e.enrol(t, m.session.access)
	body := e.do(t, "POST", "/api/users/me/mfa/totp/confirm", m.session.access, map[string]string{"code": e.nextCode(m.key)}).
		expect(t, http.StatusOK).json(t)
	for _, c := range body["recovery_codes"].([]any) {
		m.recovery = append(m.recovery, c.(string))
	}
	m.session.refresh, _ = body["refresh_token"].(string)
	return m
}

// mfaLogin logs in with the password of a user with TOTP on and returns the mfa_token.
func (e *testEnv) mfaLogin(t testing.TB, username string) string {
	t.Helper()
	body := e.do(t, "POST", "/api/auth/login", "", map[string]string{"username": username, "password": testPassword}).
		expect(t, http.StatusOK).json(t)
	token, _ := body["mfa_token"].(string)
	if body["mfa_required"] != true || token == "" {
		t.Fatalf("login reply %v: want mfa_required and an mfa_token", body)
	}
	return token
}

func (e *testEnv) verifyMFA(t testing.TB, token, field, code string) response {
	t.Helper()
	return e.do(t, "POST", "/api/auth/mfa/verify", "", map[string]string{"mfa_token": token, field: code})
}

// amrOf returns the amr claim of a login reply's access token.
func (e *testEnv) amrOf(t testing.TB, r response) []string {
	t.Helper()
	access, _ := r.json(t)["access_token"].(string)
	claims, err := verifyToken(e.cfg.keys, access, e.clock.Now())
	if err != nil {
		t.Fatalf("access token: %v (%s)", err, r.body)
	}
	return claims.AMR
}

// auditActionsAfter lists the actions of the audit rows after id, oldest first.
func (e *testEnv) auditActionsAfter(t testing.TB, id int64) []string {
	t.Helper()
	var actions []string
	for _, r := range e.auditRowsAfter(t, id) {
		actions = append(actions, r.Action)
	}
	return actions
}

// expectMail delivers the outbox and checks that exactly one message went out, to u, with the
// subject of kind and a body holding every phrase.
func (e *testEnv) expectMail(t testing.TB, u user, kind string, phrases ...string) {
	t.Helper()
	sent := e.deliverMail(t)
	if len(sent) != 1 || sent[0].to != u.Email || sent[0].subject != mailSubjects[kind] {
		t.Fatalf("mail sent: %+v; want one %q to %s", sent, mailSubjects[kind], u.Email)
	}
	for _, p := range phrases {
		if !strings.Contains(sent[0].text, p) || !strings.Contains(sent[0].html, p) {
			t.Errorf("%s mail does not say %q:\n%s", kind, p, sent[0].text)
		}
	}
}

func TestMFAEnrolment(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	env.deliverMail(t) // the verification mail of the registration
	other := env.loginSession(t, "alice", testPassword)
	l := env.loginSession(t, "alice", testPassword)

	body := env.do(t, "POST", "/api/users/me/mfa/totp", l.access, map[string]string{"password": testPassword}).
		expect(t, http.StatusOK).json(t)
	secret := body["secret"].(string)
	want := "otpauth://totp/usermgmt:alice?secret=" + secret + "&issuer=usermgmt&algorithm=SHA1&digits=6&period=30"
	if body["otpauth_uri"] != want || len(body) != 2 {
		t.Errorf("enrolment reply %v, want secret and otpauth_uri %s", body, want)
	}
	// Nothing is on yet, and asking again replaces the pending secret.
	if me := env.do(t, "GET", "/api/users/me", l.access, nil).json(t); me["mfa_enabled"] != false {
		t.Errorf("mfa_enabled before confirmation: %v", me["mfa_enabled"])
	}
	first, _ := totpEncoding.DecodeString(secret)
	key := env.enrol(t, l.access)
	code := env.nextCode(first)
	r := env.do(t, "POST", "/api/users/me/mfa/totp/confirm", l.access, map[string]string{"code": code})
	if r.expect(t, http.StatusBadRequest).message(t) != "Invalid code" {
		t.Errorf("the replaced secret's code: %s", r.body)
	}
	var stored string
	if err := env.st.pool.QueryRow(context.Background(), "SELECT sealed_secret FROM mfa_totp").Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(stored, totpEncoding.EncodeToString(key)) {
		t.Error("the secret is stored in the clear")
	}

	before := env.lastAuditID(t)
	body = env.do(t, "POST", "/api/users/me/mfa/totp/confirm", l.access, map[string]string{"code": totpCode(key, totpStep(env.clock.Now()))}).
		expect(t, http.StatusOK).json(t)
	codes, _ := body["recovery_codes"].([]any)
	if len(codes) != 10 {
		t.Fatalf("recovery codes %v, want 10", body["recovery_codes"])
	}
	for _, c := range codes {
		if !validRecoveryCode(c.(string)) || len(c.(string)) != 19 {
			t.Errorf("recovery code %q: want xxxx-xxxx-xxxx-xxxx", c)
		}
	}
	if got := env.auditActionsAfter(t, before); !reflect.DeepEqual(got, []string{auditMFAEnabled}) {
		t.Errorf("audit %v, want %s", got, auditMFAEnabled)
	}
	env.expectMail(t, alice, mailMFAEnabled, "Two-factor login was turned on", "alice")
	// Every other session has ended; this one goes on, with the refresh token of the reply.
	env.do(t, "GET", "/api/users/me", other.access, nil).expect(t, http.StatusUnauthorized)
	env.refresh(t, other.refresh).expect(t, http.StatusUnauthorized)
	env.refresh(t, l.refresh).expect(t, http.StatusUnauthorized)
	env.refresh(t, body["refresh_token"].(string)).expect(t, http.StatusOK)
	if me := env.do(t, "GET", "/api/users/me", l.access, nil).expect(t, http.StatusOK).json(t); me["mfa_enabled"] != true {
		t.Errorf("mfa_enabled after confirmation: %v", me["mfa_enabled"])
	}
	// On already: 409 for a new enrolment and for a confirmation.
	env.do(t, "POST", "/api/users/me/mfa/totp", l.access, map[string]string{"password": testPassword}).expect(t, http.StatusConflict)
	env.do(t, "POST", "/api/users/me/mfa/totp/confirm", l.access, map[string]string{"code": env.nextCode(key)}).expect(t, http.StatusConflict)
}

// TestMFAEnrolmentPasswordLockout: a wrong password at enrolment counts towards the login
// lockout, as change-password's does, and is audited.
func TestMFAEnrolmentPasswordLockout(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.loginMaxFailures = 2 })
	env.addUser(t, "alice", roleUser)
	access := env.login(t, "alice", testPassword)
	before := env.lastAuditID(t)
	for range 2 {
		r := env.do(t, "POST", "/api/users/me/mfa/totp", access, map[string]string{"password": "wrong-password"})
		if r.expect(t, http.StatusBadRequest).message(t) != "Password is incorrect" {
			t.Errorf("wrong password: %s", r.body)
		}
	}
	env.do(t, "POST", "/api/users/me/mfa/totp", access, map[string]string{"password": testPassword}).expect(t, http.StatusTooManyRequests)
	env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "alice", "password": testPassword}).expect(t, http.StatusTooManyRequests)
	if got := env.auditActionsAfter(t, before); !reflect.DeepEqual(got, []string{auditMFAPasswordFailed, auditMFAPasswordFailed}) {
		t.Errorf("audit %v", got)
	}
	for _, body := range []map[string]string{{}, {"password": testPassword, "code": "1"}} {
		env.do(t, "POST", "/api/users/me/mfa/totp", access, body).expect(t, http.StatusBadRequest)
	}
}

func TestMFALogin(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.enableMFA(t, "alice", roleUser)
	sessions := env.sqlCount(t, "SELECT count(*) FROM sessions")

	r := env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "alice", "password": testPassword}).expect(t, http.StatusOK)
	body := r.json(t)
	if len(body) != 3 || body["mfa_required"] != true || body["expires_in"] != float64(300) || body["mfa_token"] == "" {
		t.Errorf("login reply %s: want only mfa_required, mfa_token and expires_in 300", r.body)
	}
	if n := env.sqlCount(t, "SELECT count(*) FROM sessions"); n != sessions {
		t.Errorf("sessions %d after the password step, want %d", n, sessions)
	}
	token := body["mfa_token"].(string)
	if env.sqlCount(t, "SELECT count(*) FROM mfa_tokens WHERE token_hash = $1", hashToken(token)) != 1 ||
		env.sqlCount(t, "SELECT count(*) FROM mfa_tokens WHERE token_hash = $1", []byte(token)) != 0 {
		t.Error("the mfa_token is not stored as its hash alone")
	}
	// Wrong password and unknown user: unchanged.
	for _, name := range []string{"alice", "nobody"} {
		r := env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": name, "password": "wrong-password"})
		if r.expect(t, http.StatusUnauthorized).message(t) != "Invalid credentials" {
			t.Errorf("wrong password of %s: %s", name, r.body)
		}
	}

	r = env.verifyMFA(t, token, "code", env.nextCode(alice.key)).expect(t, http.StatusOK)
	if got := env.amrOf(t, r); !reflect.DeepEqual(got, []string{"pwd", "totp"}) {
		t.Errorf("amr %v, want pwd, totp", got)
	}
	pair := r.json(t)
	env.do(t, "GET", "/api/users/me", pair["access_token"].(string), nil).expect(t, http.StatusOK)
	// A refresh keeps the session's methods.
	if got := env.amrOf(t, env.refresh(t, pair["refresh_token"].(string)).expect(t, http.StatusOK)); !reflect.DeepEqual(got, []string{"pwd", "totp"}) {
		t.Errorf("amr after refresh %v, want pwd, totp", got)
	}
	// The token is single-use; an unknown one is refused the same way.
	for _, tok := range []string{token, "not-a-token"} {
		r := env.verifyMFA(t, tok, "code", env.nextCode(alice.key))
		if r.expect(t, http.StatusUnauthorized).message(t) != "Invalid or expired MFA token" {
			t.Errorf("token %q: %s", tok, r.body)
		}
	}
	// A password login without TOTP records just the password.
	env.addUser(t, "bob", roleUser)
	r = env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "bob", "password": testPassword}).expect(t, http.StatusOK)
	if got := env.amrOf(t, r); !reflect.DeepEqual(got, []string{"pwd"}) {
		t.Errorf("amr of a password login %v, want pwd", got)
	}
	// Bad requests are 400s naming the field.
	for _, b := range []map[string]string{{"code": "123456"}, {"mfa_token": token}, {"mfa_token": token, "code": "12345a"},
		{"mfa_token": token, "code": "123456", "recovery_code": alice.recovery[0]}, {"mfa_token": token, "recovery_code": "nope"}} {
		env.do(t, "POST", "/api/auth/mfa/verify", "", b).expect(t, http.StatusBadRequest)
	}
}

// TestMFAStepWindow: the previous, current and next step's codes are accepted, older and later
// ones are wrong codes (not replays).
func TestMFAStepWindow(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.loginMaxFailures = 100 })
	alice := env.enableMFA(t, "alice", roleUser)
	env.clock.Advance(10 * totpPeriod * time.Second)
	step := totpStep(env.clock.Now())
	for _, offset := range []int64{-3, -2, 2, 3} {
		before := env.lastAuditID(t)
		r := env.verifyMFA(t, env.mfaLogin(t, "alice"), "code", totpCode(alice.key, step+offset))
		if r.expect(t, http.StatusUnauthorized).message(t) != "Invalid code" {
			t.Errorf("step %+d: %s", offset, r.body)
		}
		if got := env.auditActionsAfter(t, before); !reflect.DeepEqual(got, []string{auditMFACodeFailed}) {
			t.Errorf("step %+d: audit %v", offset, got)
		}
	}
	for _, offset := range []int64{-1, 0, 1} {
		env.verifyMFA(t, env.mfaLogin(t, "alice"), "code", totpCode(alice.key, step+offset)).expect(t, http.StatusOK)
	}
}

// TestMFAReplay: a code is accepted once; after it, neither it nor a code of an earlier step
// is, and the refusal is audited as a reuse.
func TestMFAReplay(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.enableMFA(t, "alice", roleUser)
	code := env.nextCode(alice.key)
	env.verifyMFA(t, env.mfaLogin(t, "alice"), "code", code).expect(t, http.StatusOK)
	next := totpCode(alice.key, totpStep(env.clock.Now())+1)
	env.verifyMFA(t, env.mfaLogin(t, "alice"), "code", next).expect(t, http.StatusOK)
	for _, c := range []string{next, code} {
		before := env.lastAuditID(t)
		r := env.verifyMFA(t, env.mfaLogin(t, "alice"), "code", c)
		if r.expect(t, http.StatusUnauthorized).message(t) != "Invalid code" {
			t.Errorf("replayed code: %s", r.body)
		}
		rows := env.auditRowsAfter(t, before)
		if len(rows) != 1 || rows[0].Action != auditMFACodeReused || rows[0].Target == nil || *rows[0].Target != alice.ID {
			t.Errorf("audit of a replay: %v", rows)
		}
	}
	// The confirmation's code counts too: it cannot log in.
	bob := env.enableMFA(t, "bob", roleUser)
	env.verifyMFA(t, env.mfaLogin(t, "bob"), "code", totpCode(bob.key, totpStep(env.clock.Now()))).expect(t, http.StatusUnauthorized)
}

// TestMFAReplayRace: two logins racing with one code get one session between them.
func TestMFAReplayRace(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.enableMFA(t, "alice", roleUser)
	for round := range 5 {
		tokens := []string{env.mfaLogin(t, "alice"), env.mfaLogin(t, "alice")}
		code := env.nextCode(alice.key)
		statuses := make([]int, 2)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range tokens {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				statuses[i] = env.verifyMFA(t, tokens[i], "code", code).status
			}()
		}
		close(start)
		wg.Wait()
		slices.Sort(statuses)
		if !reflect.DeepEqual(statuses, []int{http.StatusOK, http.StatusUnauthorized}) {
			t.Fatalf("round %d: statuses %v, want one 200 and one 401", round, statuses)
		}
	}
	if n := env.sqlCount(t, "SELECT count(*) FROM audit_log WHERE action = $1", auditMFACodeReused); n != 5 {
		t.Errorf("%d reuses audited, want 5", n)
	}
}

// TestMFATokenLimits: the mfa_token lasts five minutes and five wrong codes.
func TestMFATokenLimits(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.loginMaxFailures = 100 })
	alice := env.enableMFA(t, "alice", roleUser)

	token := env.mfaLogin(t, "alice")
	env.clock.Advance(mfaTokenTTL - time.Second)
	env.verifyMFA(t, token, "code", totpCode(alice.key, totpStep(env.clock.Now()))).expect(t, http.StatusOK)

	token = env.mfaLogin(t, "alice")
	env.clock.Advance(mfaTokenTTL)
	r := env.verifyMFA(t, token, "code", totpCode(alice.key, totpStep(env.clock.Now())))
	if r.expect(t, http.StatusUnauthorized).message(t) != "Invalid or expired MFA token" {
		t.Errorf("expired token: %s", r.body)
	}

	token = env.mfaLogin(t, "alice")
	for range mfaTokenMaxFailures {
		env.verifyMFA(t, token, "code", "000000").expect(t, http.StatusUnauthorized)
	}
	r = env.verifyMFA(t, token, "code", env.nextCode(alice.key))
	if r.expect(t, http.StatusUnauthorized).message(t) != "Invalid or expired MFA token" {
		t.Errorf("token after %d wrong codes: %s", mfaTokenMaxFailures, r.body)
	}
	// A password change since the password step voids the token.
	token = env.mfaLogin(t, "alice")
	if _, err := env.st.pool.Exec(context.Background(), "UPDATE users SET token_version = token_version + 1 WHERE id = $1", alice.ID); err != nil {
		t.Fatal(err)
	}
	r = env.verifyMFA(t, token, "code", env.nextCode(alice.key))
	if r.expect(t, http.StatusUnauthorized).message(t) != "Invalid or expired MFA token" {
		t.Errorf("token after a password change: %s", r.body)
	}
}

// TestMFALockout: wrong codes count towards the (account, network) login lockout, across
// mfa_tokens; typing the password again clears nothing; a full login clears the count.
func TestMFALockout(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.loginMaxFailures = 3 })
	alice := env.enableMFA(t, "alice", roleUser)
	first := env.mfaLogin(t, "alice")
	env.verifyMFA(t, first, "code", "000000").expect(t, http.StatusUnauthorized)
	env.verifyMFA(t, first, "recovery_code", "0000-0000-0000-0000").expect(t, http.StatusUnauthorized)
	second := env.mfaLogin(t, "alice") // the right password: the count stands
	env.verifyMFA(t, second, "code", "000000").expect(t, http.StatusUnauthorized)
	r := env.verifyMFA(t, second, "code", env.nextCode(alice.key))
	if r.expect(t, http.StatusTooManyRequests).header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "alice", "password": testPassword}).expect(t, http.StatusTooManyRequests)

	env.clock.Advance(2 * time.Minute)
	env.verifyMFA(t, second, "code", env.nextCode(alice.key)).expect(t, http.StatusOK)
	// The success cleared the count: two wrong codes do not lock.
	third := env.mfaLogin(t, "alice")
	env.verifyMFA(t, third, "code", "000000").expect(t, http.StatusUnauthorized)
	env.verifyMFA(t, third, "code", "000000").expect(t, http.StatusUnauthorized)
	env.verifyMFA(t, third, "code", env.nextCode(alice.key)).expect(t, http.StatusOK)
}

func TestMFARecoveryCodes(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.loginMaxFailures = 100 })
	alice := env.enableMFA(t, "alice", roleUser)
	env.deliverMail(t)

	before := env.lastAuditID(t)
	r := env.verifyMFA(t, env.mfaLogin(t, "alice"), "recovery_code", alice.recovery[0]).expect(t, http.StatusOK)
	if got := env.amrOf(t, r); !reflect.DeepEqual(got, []string{"pwd", "recovery"}) {
		t.Errorf("amr %v, want pwd, recovery", got)
	}
	rows := env.auditRowsAfter(t, before)
	if len(rows) != 2 || rows[0].Action != auditMFARecoveryCodeUsed || fmt.Sprint(rows[0].Details) != "map[left:9]" || rows[1].Action != auditLoginSucceeded {
		t.Errorf("audit %v", rows)
	}
	env.expectMail(t, alice.user, mailRecoveryUsed, "9 of your recovery codes remain")
	// Once only; another code works as typed by hand.
	r = env.verifyMFA(t, env.mfaLogin(t, "alice"), "recovery_code", alice.recovery[0])
	if r.expect(t, http.StatusUnauthorized).message(t) != "Invalid code" {
		t.Errorf("a used recovery code: %s", r.body)
	}
	typed := strings.ToUpper(strings.ReplaceAll(alice.recovery[1], "-", ""))
	env.verifyMFA(t, env.mfaLogin(t, "alice"), "recovery_code", typed).expect(t, http.StatusOK)
	env.deliverMail(t)
	if n := env.sqlCount(t, "SELECT count(*) FROM mfa_recovery_codes WHERE user_id = $1", alice.ID); n != 8 {
		t.Errorf("%d codes left, want 8", n)
	}
	var dump string
	if err := env.st.pool.QueryRow(context.Background(), "SELECT string_agg(r::text, ' ') FROM mfa_recovery_codes r").Scan(&dump); err != nil {
		t.Fatal(err)
	}
	for _, c := range alice.recovery {
		if strings.Contains(dump, c) || strings.Contains(dump, strings.ReplaceAll(c, "-", "")) {
			t.Errorf("recovery code %s is stored in the clear", c)
		}
	}

	// New codes: password and a code; the old ones are void, the new ones work.
	access := alice.session.access
	env.do(t, "POST", "/api/users/me/mfa/recovery-codes", access, map[string]string{"password": "wrong-password", "code": env.nextCode(alice.key)}).
		expect(t, http.StatusBadRequest)
	env.do(t, "POST", "/api/users/me/mfa/recovery-codes", access, map[string]string{"password": testPassword, "code": "000000"}).
		expect(t, http.StatusBadRequest)
	before = env.lastAuditID(t)
	body := env.do(t, "POST", "/api/users/me/mfa/recovery-codes", access, map[string]string{"password": testPassword, "code": env.nextCode(alice.key)}).
		expect(t, http.StatusOK).json(t)
	fresh, _ := body["recovery_codes"].([]any)
	if len(fresh) != 10 {
		t.Fatalf("new codes %v", body)
	}
	if got := env.auditActionsAfter(t, before); !reflect.DeepEqual(got, []string{auditMFARecoveryCodesGenerated}) {
		t.Errorf("audit %v", got)
	}
	env.verifyMFA(t, env.mfaLogin(t, "alice"), "recovery_code", alice.recovery[2]).expect(t, http.StatusUnauthorized)
	env.verifyMFA(t, env.mfaLogin(t, "alice"), "recovery_code", fresh[0].(string)).expect(t, http.StatusOK)
}

func TestMFADisable(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.loginMaxFailures = 100 })
	alice := env.enableMFA(t, "alice", roleUser)
	env.deliverMail(t)
	access := alice.session.access
	code := env.nextCode(alice.key)
	before := env.lastAuditID(t)
	r := env.do(t, "DELETE", "/api/users/me/mfa", access, map[string]string{"password": "wrong-password", "code": code})
	if r.expect(t, http.StatusBadRequest).message(t) != "Password is incorrect" {
		t.Errorf("wrong password: %s", r.body)
	}
	r = env.do(t, "DELETE", "/api/users/me/mfa", access, map[string]string{"password": testPassword, "code": "000000"})
	if r.expect(t, http.StatusBadRequest).message(t) != "Invalid code" {
		t.Errorf("wrong code: %s", r.body)
	}
	env.do(t, "DELETE", "/api/users/me/mfa", access, map[string]string{"password": testPassword, "code": code}).expect(t, http.StatusOK)
	// The code is used: the same one again is a replay, even here.
	if got := env.auditActionsAfter(t, before); !reflect.DeepEqual(got, []string{auditMFAPasswordFailed, auditMFACodeFailed, auditMFADisabled}) {
		t.Errorf("audit %v", got)
	}
	env.expectMail(t, alice.user, mailMFADisabled, "turned off by you")
	if me := env.do(t, "GET", "/api/users/me", access, nil).expect(t, http.StatusOK).json(t); me["mfa_enabled"] != false {
		t.Errorf("mfa_enabled %v after turning it off", me["mfa_enabled"])
	}
	if got := env.amrOf(t, env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "alice", "password": testPassword}).expect(t, http.StatusOK)); !reflect.DeepEqual(got, []string{"pwd"}) {
		t.Errorf("login after turning it off: amr %v", got)
	}
	for _, table := range []string{"mfa_totp", "mfa_recovery_codes", "mfa_tokens"} {
		if n := env.sqlCount(t, "SELECT count(*) FROM "+table); n != 0 {
			t.Errorf("%d rows left in %s", n, table)
		}
	}
	env.do(t, "DELETE", "/api/users/me/mfa", access, map[string]string{"password": testPassword, "code": env.nextCode(alice.key)}).expect(t, http.StatusConflict)

	// With a recovery code, for a user without their device.
	bob := env.enableMFA(t, "bob", roleUser)
	env.do(t, "DELETE", "/api/users/me/mfa", bob.session.access, map[string]string{"password": testPassword, "recovery_code": bob.recovery[0]}).
		expect(t, http.StatusOK)
	// And a replayed code is refused here too.
	carol := env.enableMFA(t, "carol", roleUser)
	used := totpCode(carol.key, totpStep(env.clock.Now())) // the confirmation's
	before = env.lastAuditID(t)
	env.do(t, "DELETE", "/api/users/me/mfa", carol.session.access, map[string]string{"password": testPassword, "code": used}).
		expect(t, http.StatusBadRequest)
	if got := env.auditActionsAfter(t, before); !reflect.DeepEqual(got, []string{auditMFACodeReused}) {
		t.Errorf("audit of a replay %v", got)
	}
}

func TestMFAAdminRemoval(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	root := env.enableMFA(t, "root", roleAdmin)
	other := env.enableMFA(t, "other", roleAdmin)
	alice := env.enableMFA(t, "alice", roleUser)
	bob := env.addUser(t, "bob", roleUser)
	env.deliverMail(t)
	rootAccess := root.session.access
	aliceSecond := pairOf(t, env.verifyMFA(t, env.mfaLogin(t, "alice"), "code", env.nextCode(alice.key)).expect(t, http.StatusOK))

	cases := []struct {
		name   string
		token  string
		id     int64
		status int
	}{
		{"user on self", alice.session.access, alice.ID, http.StatusForbidden},
		{"user on another", alice.session.access, bob.ID, http.StatusForbidden},
		{"admin on another admin", rootAccess, other.ID, http.StatusForbidden},
		{"admin on a user without TOTP", rootAccess, bob.ID, http.StatusConflict},
		{"admin on no one", rootAccess, bob.ID + 100, http.StatusNotFound},
	}
	for _, c := range cases {
		if r := env.do(t, "DELETE", fmt.Sprintf("/api/users/%d/mfa", c.id), c.token, nil); r.status != c.status {
			t.Errorf("%s: status %d, want %d: %s", c.name, r.status, c.status, r.body)
		}
	}
	env.do(t, "DELETE", "/api/users/abc/mfa", rootAccess, nil).expect(t, http.StatusBadRequest)

	before := env.lastAuditID(t)
	env.do(t, "DELETE", fmt.Sprintf("/api/users/%d/mfa", alice.ID), rootAccess, nil).expect(t, http.StatusOK)
	rows := env.auditRowsAfter(t, before)
	if len(rows) != 1 || rows[0].Action != auditMFADisabled || *rows[0].Actor != root.ID || *rows[0].Target != alice.ID {
		t.Errorf("audit %v", rows)
	}
	env.expectMail(t, alice.user, mailMFADisabled, "removed by an administrator")
	for _, access := range []string{alice.session.access, aliceSecond.access} {
		env.do(t, "GET", "/api/users/me", access, nil).expect(t, http.StatusUnauthorized)
	}
	env.refresh(t, aliceSecond.refresh).expect(t, http.StatusUnauthorized)
	env.login(t, "alice", testPassword)
	// An admin may remove their own.
	env.do(t, "DELETE", fmt.Sprintf("/api/users/%d/mfa", root.ID), rootAccess, nil).expect(t, http.StatusOK)
}

func TestAdminRequireMFA(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.adminRequireMFA = true })
	root := env.addUser(t, "root", roleAdmin)
	bob := env.addUser(t, "bob", roleUser)
	password := env.login(t, "root", testPassword)
	r := env.do(t, "GET", "/api/admin/users", password, nil)
	if r.expect(t, http.StatusForbidden).message(t) != "Admin routes require two-factor login" {
		t.Errorf("admin route without a second factor: %s", r.body)
	}
	env.do(t, "DELETE", "/api/users/1", password, nil).expect(t, http.StatusForbidden)
	// Nor may it act on another account through the routes every user has; on its own, it may.
	bobPath := fmt.Sprintf("/api/users/%d", bob.ID)
	for _, method := range []string{"GET", "PATCH"} {
		r := env.do(t, method, bobPath, password, map[string]string{"first_name": "Robert"})
		if r.expect(t, http.StatusForbidden).message(t) != "Admin routes require two-factor login" {
			t.Errorf("%s of another user without a second factor: %s", method, r.body)
		}
	}
	env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", root.ID), password, map[string]string{"first_name": "Rooted"}).expect(t, http.StatusOK)
	// A user is told what they always were.
	r = env.do(t, "GET", "/api/admin/users", env.login(t, "bob", testPassword), nil)
	if r.expect(t, http.StatusForbidden).message(t) != "Admin privileges required" {
		t.Errorf("user on an admin route: %s", r.body)
	}
	// The password session may still turn TOTP on; then a login with it opens the routes.
	key := env.enrol(t, password)
	body := env.do(t, "POST", "/api/users/me/mfa/totp/confirm", password, map[string]string{"code": env.nextCode(key)}).
		expect(t, http.StatusOK).json(t)
	env.do(t, "GET", "/api/admin/users", password, nil).expect(t, http.StatusForbidden)
	totp := pairOf(t, env.verifyMFA(t, env.mfaLogin(t, "root"), "code", env.nextCode(key)).expect(t, http.StatusOK))
	env.do(t, "GET", "/api/admin/users", totp.access, nil).expect(t, http.StatusOK)
	env.do(t, "PATCH", bobPath, totp.access, map[string]string{"first_name": "Robert"}).expect(t, http.StatusOK)
	refreshed := pairOf(t, env.refresh(t, totp.refresh).expect(t, http.StatusOK))
	env.do(t, "GET", "/api/admin/audit-log", refreshed.access, nil).expect(t, http.StatusOK)
	recovery := pairOf(t, env.verifyMFA(t, env.mfaLogin(t, "root"), "recovery_code", body["recovery_codes"].([]any)[0].(string)).
		expect(t, http.StatusOK))
	env.do(t, "GET", "/api/admin/users", recovery.access, nil).expect(t, http.StatusOK)
}

// TestMFAKeyRotation: a JWT key rotation done as the README's Deployment section says (both
// steps, then the previous key removed) leaves every TOTP secret readable, whether or not its
// user logged in meanwhile.
func TestMFAKeyRotation(t *testing.T) {
	t.Parallel()
	oldKey, newKey := []byte("old-secret-old-secret-old-secret-0123"), []byte("new-secret-new-secret-new-secret-0123")
	env := newTestEnv(t, func(c *config) { c.keys = newKeySet(oldKey, nil) })
	alice := env.enableMFA(t, "alice", roleUser)
	bob := env.enableMFA(t, "bob", roleUser)
	for _, step := range []keySet{newKeySet(oldKey, newKey), newKeySet(newKey, oldKey)} {
		env = env.restart(t, step)
		env.verifyMFA(t, env.mfaLogin(t, "alice"), "code", env.nextCode(alice.key)).expect(t, http.StatusOK)
	}
	env = env.restart(t, newKeySet(newKey, nil))
	for _, u := range []mfaUser{alice, bob} {
		env.verifyMFA(t, env.mfaLogin(t, u.Username), "code", env.nextCode(u.key)).expect(t, http.StatusOK)
	}
	// A secret sealed under the previous key after the start (an instance not yet restarted
	// enrolled someone) is sealed again when it is next used.
	mixed := env.restart(t, newKeySet(newKey, oldKey))
	oldSealer := newSealer(newKeySet(oldKey, nil))
	if _, err := mixed.st.pool.Exec(context.Background(), "UPDATE mfa_totp SET sealed_secret = $2 WHERE user_id = $1",
		bob.ID, oldSealer.seal(totpEncoding.EncodeToString(bob.key))); err != nil {
		t.Fatal(err)
	}
	mixed.verifyMFA(t, mixed.mfaLogin(t, "bob"), "code", mixed.nextCode(bob.key)).expect(t, http.StatusOK)
	var sealed string
	if err := mixed.st.pool.QueryRow(context.Background(), "SELECT sealed_secret FROM mfa_totp WHERE user_id = $1", bob.ID).Scan(&sealed); err != nil {
		t.Fatal(err)
	}
	if _, err := newSealer(newKeySet(newKey, nil)).open(sealed); err != nil {
		t.Errorf("bob's secret is not sealed under the current key after use: %v", err)
	}
}

// restart starts another service on the database of e, with its clock, under keys; e's server
// stops.
func (e *testEnv) restart(t testing.TB, keys keySet) *testEnv {
	t.Helper()
	e.server.Close()
	cfg := e.cfg
	cfg.keys = keys
	st, err := openStore(context.Background(), cfg, e.clock.Now, 5*time.Second)
	if err != nil {
		t.Fatalf("opening store: %v", err)
	}
	next := &testEnv{cfg: cfg, st: st, clock: e.clock, logs: e.logs, pw: e.pw}
	next.server = httptest.NewServer(newServer(cfg, st, e.pw, slog.New(slog.NewTextHandler(e.logs, nil))))
	t.Cleanup(func() {
		next.server.Close()
		st.close()
	})
	return next
}

// TestMFAEnabledInUserLists: the admin's views of a user say whether TOTP is on.
func TestMFAEnabledInUserLists(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	root := env.addUser(t, "root", roleAdmin)
	alice := env.enableMFA(t, "alice", roleUser)
	access := env.tokenFor(t, root)
	if u := env.do(t, "GET", fmt.Sprintf("/api/users/%d", alice.ID), access, nil).expect(t, http.StatusOK).json(t); u["mfa_enabled"] != true {
		t.Errorf("GET user: mfa_enabled %v", u["mfa_enabled"])
	}
	var list []map[string]any
	if err := json.Unmarshal(env.do(t, "GET", "/api/admin/users", access, nil).expect(t, http.StatusOK).body, &list); err != nil || len(list) != 2 {
		t.Fatalf("user list: %v, %v", list, err)
	}
	for _, u := range list {
		if want := u["username"] == "alice"; u["mfa_enabled"] != want {
			t.Errorf("list: %s has mfa_enabled %v", u["username"], u["mfa_enabled"])
		}
	}
}

func TestLoadConfigMFA(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(envOf(configEnv(nil)))
	if err != nil || cfg.mfaIssuer != "usermgmt" || cfg.adminRequireMFA {
		t.Errorf("defaults: issuer %q, admin require %v (%v)", cfg.mfaIssuer, cfg.adminRequireMFA, err)
	}
	cfg, err = loadConfig(envOf(configEnv(map[string]string{"MFA_ISSUER": "Acme Corp", "ADMIN_REQUIRE_MFA": "true"})))
	if err != nil || cfg.mfaIssuer != "Acme Corp" || !cfg.adminRequireMFA {
		t.Errorf("set: issuer %q, admin require %v (%v)", cfg.mfaIssuer, cfg.adminRequireMFA, err)
	}
	_, err = loadConfig(envOf(configEnv(map[string]string{"MFA_ISSUER": "Acme:Corp", "ADMIN_REQUIRE_MFA": "yes please"})))
	if err == nil || !strings.Contains(err.Error(), "MFA_ISSUER") || !strings.Contains(err.Error(), "ADMIN_REQUIRE_MFA") {
		t.Errorf("bad values: %v", err)
	}
}

// totpFor turns TOTP on for u straight through the database, with no step used yet, and
// returns the key.
func (e *testEnv) totpFor(t testing.TB, u user) []byte {
	t.Helper()
	key := newTOTPSecret()
	ctx := context.Background()
	_, err := e.st.pool.Exec(ctx, `INSERT INTO mfa_totp (user_id, sealed_secret, created_at, enabled_at) VALUES ($1, $2, $3, $3)`,
		u.ID, e.st.sealer.seal(totpEncoding.EncodeToString(key)), e.clock.Now())
	if err == nil {
		_, err = e.st.pool.Exec(ctx, "UPDATE users SET mfa_enabled = true WHERE id = $1", u.ID)
	}
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// pendingTOTP starts an enrolment of u in the session of the access token through the store,
// and returns the code that confirms it.
func (e *testEnv) pendingTOTP(t testing.TB, u user, access string) string {
	t.Helper()
	claims, err := verifyToken(e.cfg.keys, access, e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	key := newTOTPSecret()
	if err := e.st.startEnrolment(context.Background(), u, claims.Session, key); err != nil {
		t.Fatal(err)
	}
	return totpCode(key, totpStep(e.clock.Now()))
}
