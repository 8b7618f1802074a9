package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests of registration and login, through the real handler on a real database.

func TestAuthRegister(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)

	r := env.do(t, "POST", "/api/auth/register", "", registerBody("alice")).expect(t, http.StatusCreated)
	body := r.json(t)
	if body["message"] != "Register Successfully" {
		t.Errorf("message = %v, want %q", body["message"], "Register Successfully")
	}
	id, ok := body["id"].(float64)
	if !ok || id < 1 || id != float64(int64(id)) {
		t.Fatalf("id = %v, want a positive integer; body: %s", body["id"], r.body)
	}
	u, err := env.st.userByID(context.Background(), int64(id))
	if err != nil {
		t.Fatalf("registered user %v not stored: %v", id, err)
	}
	if u.Role != roleUser || !u.IsActive || u.Username != "alice" || u.Email != "alice@example.com" {
		t.Errorf("stored user = %+v, want an active User alice", u)
	}
	if !strings.HasPrefix(u.PasswordHash, "$2") {
		t.Errorf("password not stored as a bcrypt hash: %q", u.PasswordHash)
	}
	me := env.do(t, "GET", "/api/users/me", env.login(t, "alice", "correct-horse"), nil).expect(t, http.StatusOK).json(t)
	if me["role"] != roleUser {
		t.Errorf("GET /api/users/me role = %v, want User", me["role"])
	}

	// Nobody registers themself as an admin: "role" is not a field of the request.
	for _, role := range []string{"Admin", "admin", "User"} {
		b := registerBody("mallory")
		b["role"] = role
		r := env.do(t, "POST", "/api/auth/register", "", b).expect(t, http.StatusBadRequest)
		if keys := errorFields(t, r); !slices.Equal(keys, []string{"role"}) {
			t.Errorf("role %q: errors keys = %v, want [role]; body: %s", role, keys, r.body)
		}
	}
	if _, err := env.st.userByLogin(context.Background(), "mallory"); err == nil {
		t.Error("a registration with a role field created a user")
	}
}

func TestAuthRegisterValidation(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	set := func(field string, value any) func(map[string]any) {
		return func(b map[string]any) { b[field] = value }
	}
	tests := []struct {
		name   string
		change func(map[string]any)
		want   []string // the keys of "errors"; nil means the registration succeeds
	}{
		{"valid", nil, nil},
		{"username of 3", set("username", "abc"), nil},
		{"username of 80", set("username", strings.Repeat("u", 80)), nil},
		{"username with _ . -", set("username", "a_b.c-D9"), nil},
		{"username of 2", set("username", "ab"), []string{"username"}},
		{"username empty", set("username", ""), []string{"username"}},
		{"username of 81", set("username", strings.Repeat("u", 81)), []string{"username"}},
		{"username with space", set("username", "bad name"), []string{"username"}},
		{"username with @", set("username", "bad@name"), []string{"username"}},
		{"username with slash", set("username", "bad/name"), []string{"username"}},
		{"username non-ASCII", set("username", "jürgen"), []string{"username"}},
		{"username with NUL", set("username", "bad\x00name"), []string{"username"}},
		{"email of 254", set("email", emailOfLength(254)), nil},
		{"email of 255", set("email", emailOfLength(255)), []string{"email"}},
		{"email empty", set("email", ""), []string{"email"}},
		{"email without @", set("email", "not-an-email"), []string{"email"}},
		{"email without domain", set("email", "user@"), []string{"email"}},
		{"email with display name", set("email", "Ada <ada@example.com>"), []string{"email"}},
		{"email with spaces", set("email", " ada@example.com "), []string{"email"}},
		{"email with newline", set("email", "ada@example.com\n"), []string{"email"}},
		{"first name of 80", set("first_name", strings.Repeat("é", 80)), nil},
		{"first name of 1", set("first_name", "A"), nil},
		{"first name empty", set("first_name", ""), []string{"first_name"}},
		{"first name blank", set("first_name", "   "), []string{"first_name"}},
		{"first name of 81", set("first_name", strings.Repeat("é", 81)), []string{"first_name"}},
		{"first name with NUL", set("first_name", "Ad\x00a"), []string{"first_name"}},
		{"first name with newline", set("first_name", "Ad\na"), []string{"first_name"}},
		{"first name with DEL", set("first_name", "Ad\x7fa"), []string{"first_name"}},
		{"first name with C1 control", set("first_name", "Ad\u0085a"), []string{"first_name"}},
		{"last name empty", set("last_name", ""), []string{"last_name"}},
		{"last name of 81", set("last_name", strings.Repeat("x", 81)), []string{"last_name"}},
		{"last name with tab", set("last_name", "Love\tlace"), []string{"last_name"}},
		{"password of 8", set("password", "tulip-fe"), nil},
		{"password of 72 bytes", set("password", strings.Repeat("p", 72)), nil},
		{"password of 8 runes", set("password", strings.Repeat("é", 8)), nil},
		{"password of 7", set("password", "1234567"), []string{"password"}},
		{"password empty", set("password", ""), []string{"password"}},
		{"password of 73 bytes", set("password", strings.Repeat("p", 73)), []string{"password"}},
		{"password of 37 runes, 74 bytes", set("password", strings.Repeat("é", 37)), []string{"password"}},
		{"password of 7 runes, 14 bytes", set("password", strings.Repeat("é", 7)), []string{"password"}},
		{"username wrong type", set("username", 42), []string{"username"}},
		{"email null", set("email", nil), []string{"email"}},
		{"several at once", func(b map[string]any) {
			b["username"], b["email"], b["password"] = "x", "Ada <x@example.com>", "short"
			b["first_name"], b["last_name"] = "", strings.Repeat("l", 81)
		}, []string{"email", "first_name", "last_name", "password", "username"}},
		{"username and password bad", func(b map[string]any) {
			b["username"], b["password"] = "no spaces allowed", strings.Repeat("p", 73)
		}, []string{"password", "username"}},
		{"all fields missing", func(b map[string]any) { clear(b) }, []string{"email", "first_name", "last_name", "password", "username"}},
		{"password missing", func(b map[string]any) { delete(b, "password") }, []string{"password"}},
		{"email and last name missing", func(b map[string]any) {
			delete(b, "email")
			delete(b, "last_name")
		}, []string{"email", "last_name"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A distinct username and email per case, so that the successes do not collide.
			b := registerBody(fmt.Sprintf("user%d", i))
			if tt.change != nil {
				tt.change(b)
			}
			r := env.do(t, "POST", "/api/auth/register", "", b)
			if tt.want == nil {
				r.expect(t, http.StatusCreated)
				return
			}
			r.expect(t, http.StatusBadRequest)
			if got := errorFields(t, r); !slices.Equal(got, tt.want) {
				t.Errorf("errors keys = %v, want %v; body: %s", got, tt.want, r.body)
			}
		})
	}
}

func TestAuthRegisterPasswordMinLength(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.passwordMinLength = 12 })
	for _, tt := range []struct {
		password string
		status   int
	}{
		{"tulip-ferry", http.StatusBadRequest},
		{"tulip-ferry-", http.StatusCreated},
	} {
		b := registerBody(fmt.Sprintf("len%d", len(tt.password)))
		b["password"] = tt.password
		r := env.do(t, "POST", "/api/auth/register", "", b)
		if r.status != tt.status {
			t.Errorf("PASSWORD_MIN_LENGTH=12, password of %d: status %d, want %d; body: %s", len(tt.password), r.status, tt.status, r.body)
		}
	}
}

func TestAuthRegisterDuplicate(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.do(t, "POST", "/api/auth/register", "", registerBody("alice")).expect(t, http.StatusCreated)
	tests := []struct {
		name, username, email, field string
	}{
		{"same username", "alice", "other1@example.com", "username"},
		{"username in another case", "ALICE", "other2@example.com", "username"},
		{"username mixed case", "aLiCe", "other3@example.com", "username"},
		{"same email", "other4", "alice@example.com", "email"},
		{"email in another case", "other5", "ALICE@EXAMPLE.COM", "email"},
		{"email domain case", "other6", "alice@Example.com", "email"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := registerBody(tt.username)
			b["email"] = tt.email
			r := env.do(t, "POST", "/api/auth/register", "", b).expect(t, http.StatusConflict)
			if got := errorFields(t, r); !slices.Equal(got, []string{tt.field}) {
				t.Errorf("errors keys = %v, want [%s]; body: %s", got, tt.field, r.body)
			}
		})
	}
	var n int
	if err := env.st.pool.QueryRow(context.Background(), "SELECT count(*) FROM users").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("%d users stored, want 1", n)
	}
}

// postJSON sends a JSON POST without a testing.TB, for use from many goroutines at once.
func postJSON(url string, body any) (int, error) {
	raw, err := json.Marshal(body)
	if err != nil {
		return 0, err
	}
	resp, err := http.Post(url, "application/json", bytes.NewReader(raw))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return resp.StatusCode, nil
}

func TestAuthRegisterRace(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	const racers = 10
	for round := range 6 {
		// Even rounds race on the username, odd rounds on the email (in different cases).
		start := make(chan struct{})
		statuses := make([]int, racers)
		errs := make([]error, racers)
		var wg sync.WaitGroup
		for i := range racers {
			b := registerBody(fmt.Sprintf("racer%d", round))
			if round%2 == 0 {
				b["email"] = fmt.Sprintf("racer%d-%d@example.com", round, i)
			} else {
				b["username"] = fmt.Sprintf("racer%d-%d", round, i)
				if i%2 == 1 {
					b["email"] = strings.ToUpper(b["email"].(string))
				}
			}
			wg.Go(func() {
				<-start
				statuses[i], errs[i] = postJSON(env.server.URL+"/api/auth/register", b)
			})
		}
		close(start)
		wg.Wait()
		created := 0
		for i, status := range statuses {
			switch {
			case errs[i] != nil:
				t.Errorf("round %d: request %d: %v", round, i, errs[i])
			case status == http.StatusCreated:
				created++
			case status != http.StatusConflict:
				t.Errorf("round %d: request %d: status %d, want 201 or 409", round, i, status)
			}
		}
		if created != 1 {
			t.Errorf("round %d: %d registrations succeeded, want exactly 1 (statuses %v)", round, created, statuses)
		}
	}
}

func TestAuthLogin(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	bob := env.addUser(t, "bob", roleUser)
	if _, err := env.st.pool.Exec(context.Background(), "UPDATE users SET is_active = false WHERE id = $1", bob.ID); err != nil {
		t.Fatal(err)
	}

	for _, login := range []string{"alice", "ALICE", "Alice", "alice@example.com", "ALICE@EXAMPLE.COM", "Alice@Example.com"} {
		t.Run("ok "+login, func(t *testing.T) {
			r := env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": login, "password": testPassword})
			body := r.expect(t, http.StatusOK).json(t)
			token, _ := body["access_token"].(string)
			if token == "" || body["token_type"] != "Bearer" || body["expires_in"] != float64(3600) {
				t.Fatalf("body = %s, want an access_token, token_type Bearer, expires_in 3600", r.body)
			}
			me := env.do(t, "GET", "/api/users/me", token, nil).expect(t, http.StatusOK).json(t)
			if me["id"] != float64(alice.ID) {
				t.Errorf("the token is for user %v, want %d", me["id"], alice.ID)
			}
		})
	}

	// Every refusal is the very same reply, so none tells whether the account exists.
	want := []byte(`{"message":"Invalid credentials"}` + "\n")
	for _, tt := range []struct{ name, username, password string }{
		{"wrong password", "alice", "wrong-password"},
		{"wrong password by email", "alice@example.com", "wrong-password"},
		{"password in another case", "alice", strings.ToUpper(testPassword)},
		{"unknown user", "nobody", testPassword},
		{"unknown email", "nobody@example.com", testPassword},
		{"deactivated", "bob", testPassword},
		{"deactivated by email", "bob@example.com", testPassword},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": tt.username, "password": tt.password})
			r.expect(t, http.StatusUnauthorized)
			if !bytes.Equal(r.body, want) {
				t.Errorf("body = %q, want %q", r.body, want)
			}
		})
	}

	for _, tt := range []struct {
		name string
		body map[string]string
		want []string
	}{
		{"empty object", map[string]string{}, []string{"password", "username"}},
		{"no password", map[string]string{"username": "alice"}, []string{"password"}},
		{"no username", map[string]string{"password": testPassword}, []string{"username"}},
		{"empty password", map[string]string{"username": "alice", "password": ""}, []string{"password"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := env.do(t, "POST", "/api/auth/login", "", tt.body).expect(t, http.StatusBadRequest)
			if got := errorFields(t, r); !slices.Equal(got, tt.want) {
				t.Errorf("errors keys = %v, want %v; body: %s", got, tt.want, r.body)
			}
		})
	}
}

// closedPort returns a local port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

func TestAuthNoSecretsInLogs(t *testing.T) {
	t.Parallel()
	// The dummy backend logs the mail body, reset token included, on purpose; the SMTP backend
	// (here pointed at a closed port, so sending fails and is logged) never logs the body, so
	// with it the reset token is checked too.
	port := closedPort(t)
	smtp := func(c *config) { c.mail.backend, c.mail.server, c.mail.port = mailSMTP, "127.0.0.1", port }
	for _, tt := range []struct {
		name            string
		change          func(*config)
		checkResetToken bool
	}{
		{"dummy", func(*config) {}, false},
		{"smtp", smtp, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := newTestEnv(t, tt.change)
			passwords := []string{"first-Secret-1", "second-Secret-2", "third-Secret-3", "wrong-Secret-4"}
			env.do(t, "POST", "/api/auth/register", "", map[string]string{
				"username": "carol", "first_name": "Carol", "last_name": "C", "email": "carol@example.com", "password": passwords[0],
			}).expect(t, http.StatusCreated)
			tokens := []string{env.login(t, "carol", passwords[0])}
			env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "carol", "password": passwords[3]}).
				expect(t, http.StatusUnauthorized)

			body := requestReset(t, env, "carol@example.com")
			resetToken, _ := body["token"].(string)
			if resetToken == "" {
				// No token in replies: take one from the store, as the mail would carry it.
				var err error
				env.clock.Advance(61 * time.Second) // past the one-a-minute mail cap
				resetToken, err = env.st.createResetToken(context.Background(), "carol@example.com")
				if err != nil {
					t.Fatal(err)
				}
			}
			postReset(t, env, resetToken, passwords[1]).expect(t, http.StatusOK)
			tokens = append(tokens, env.login(t, "carol", passwords[1]))
			r := env.do(t, "POST", "/api/auth/change-password", tokens[1],
				map[string]string{"current_password": passwords[1], "new_password": passwords[2]}).expect(t, http.StatusOK)
			fresh, _ := r.json(t)["access_token"].(string)
			tokens = append(tokens, fresh, env.login(t, "carol", passwords[2]))
			env.do(t, "GET", "/api/users/me", tokens[0], nil).expect(t, http.StatusUnauthorized)
			env.deliverMail(t)

			logs := env.logs.String()
			if !strings.Contains(logs, "/api/auth/reset-password/{token}") {
				t.Fatalf("the requests were not logged as expected:\n%s", logs)
			}
			if tt.checkResetToken && !strings.Contains(logs, "mail not sent") {
				t.Errorf("the SMTP backend did not log its failure:\n%s", logs)
			}
			secrets := map[string]string{"bcrypt hash": "$2a$"}
			for i, p := range passwords {
				secrets[fmt.Sprintf("password %d", i)] = p
			}
			for i, tok := range tokens {
				secrets[fmt.Sprintf("access token %d", i)] = tok
				// The signature alone is enough to matter.
				secrets[fmt.Sprintf("access token %d signature", i)] = tok[strings.LastIndex(tok, ".")+1:]
			}
			if tt.checkResetToken {
				secrets["reset token"] = resetToken
			}
			for name, secret := range secrets {
				if strings.Contains(logs, secret) {
					t.Errorf("the log holds the %s %q:\n%s", name, secret, logs)
				}
			}
		})
	}
}

func TestLoginOddInput(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "alice", roleUser)
	long := strings.Repeat("a", 3000)
	env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": long, "password": testPassword}).
		expect(t, http.StatusBadRequest)

	// bcrypt reads 72 bytes: a longer password must not pass for one that shares them.
	env.addUser(t, "bob", roleUser)
	password72 := strings.Repeat("p", 72)
	if _, err := env.st.pool.Exec(context.Background(), "UPDATE users SET password_hash = $2 WHERE username = $1",
		"bob", mustHash(t, password72)); err != nil {
		t.Fatal(err)
	}
	env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "bob", "password": password72 + "x"}).
		expect(t, http.StatusUnauthorized)
	bobToken := env.login(t, "bob", password72)
	env.do(t, "POST", "/api/auth/change-password", bobToken, map[string]string{"current_password": password72 + "x", "new_password": "new-password-456"}).
		expect(t, http.StatusBadRequest)

	// A user agent that is not valid UTF-8, or long, is stored mended, not refused.
	for _, agent := range []string{"curl/\xff\xfe", strings.Repeat("é", 400)} {
		req, err := http.NewRequest("POST", env.server.URL+"/api/auth/login",
			strings.NewReader(`{"username": "alice", "password": "`+testPassword+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", agent)
		send(t, req).expect(t, http.StatusOK)
	}
}

// TestStaleLoginsAndChangesLose: a login whose password was checked against a hash replaced
// meanwhile gets no session, and a password change authenticated before a reset does not
// undo the reset.
func TestStaleLoginsAndChangesLose(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	ctx := context.Background()
	alice := env.addUser(t, "alice", roleUser) // as read before the change below
	token := env.tokenFor(t, alice)
	var session int64
	if err := env.st.pool.QueryRow(ctx, "SELECT max(id) FROM sessions").Scan(&session); err != nil {
		t.Fatal(err)
	}
	if _, err := env.st.pool.Exec(ctx, "UPDATE users SET password_hash = $2, token_version = token_version + 1 WHERE id = $1",
		alice.ID, mustHash(t, "reset-password")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := env.st.startSession(ctx, alice, "user:1", "", amrPassword); !errors.Is(err, errUnauthorized) {
		t.Errorf("session for a login checked against the old hash: %v, want unauthorized", err)
	}
	if _, _, err := env.st.changePassword(ctx, alice, mustHash(t, "attacker-password"), session); !errors.Is(err, errUnauthorized) {
		t.Errorf("password change authenticated before the reset: %v, want unauthorized", err)
	}
	env.do(t, "GET", "/api/users/me", token, nil).expect(t, http.StatusUnauthorized)
	env.login(t, "alice", "reset-password")
}
