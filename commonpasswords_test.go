package main

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// Tests of the refusal of guessable passwords (commonpasswords.go) on every path that sets
// one, through the real handlers on a real database.

// TestCommonPasswordsFile checks that the embedded list is what binary search needs: sorted
// bytewise without duplicates, lowercase, one password a line.
func TestCommonPasswordsFile(t *testing.T) {
	t.Parallel()
	list := loadCommonPasswords()
	if len(list) < 20000 {
		t.Fatalf("%d common passwords, want at least 20000", len(list))
	}
	for i, p := range list {
		if p == "" || p != strings.ToLower(p) || strings.ContainsAny(p, " \t\r\n") {
			t.Errorf("line %d: %q is not a lowercase password", i+1, p)
		}
		if i > 0 && list[i-1] >= p {
			t.Errorf("line %d: %q after %q: not sorted, or a duplicate", i+1, p, list[i-1])
		}
	}
	for _, p := range []string{"123456", "password", "password123", "PassWord123", "QWERTY", "iloveyou", "Dragon"} {
		if !list.contains(p) {
			t.Errorf("%q is not found, want it refused", p)
		}
	}
	for _, p := range []string{testPassword, adminTestPassword, "", "password123 ", "pässword"} {
		if list.contains(p) {
			t.Errorf("%q is found, want it allowed", p)
		}
	}
	if commonPasswords(nil).contains("password") {
		t.Error("the list turned off still refuses a password")
	}
}

// passwordSetter is one way to set a password through the API.
type passwordSetter struct {
	name  string
	field string // the field that carries the new password
	// prepare readies the account username (username@example.com) to get a password, and
	// returns the request that sets it; it may be sent again after a refusal.
	prepare func(t *testing.T, env *testEnv, username string) func(password string) response
}

var passwordSetters = []passwordSetter{
	{"register", "password", func(t *testing.T, env *testEnv, username string) func(string) response {
		return func(password string) response {
			body := registerBody(username)
			body["password"] = password
			return env.do(t, "POST", "/api/auth/register", "", body)
		}
	}},
	{"reset", "new_password", func(t *testing.T, env *testEnv, username string) func(string) response {
		env.addUser(t, username, roleUser)
		token := resetTokenFor(t, env, username+"@example.com")
		return func(password string) response { return postReset(t, env, token, password) }
	}},
	{"change", "new_password", func(t *testing.T, env *testEnv, username string) func(string) response {
		access := env.tokenFor(t, env.addUser(t, username, roleUser))
		return func(password string) response {
			return env.do(t, "POST", "/api/auth/change-password", access,
				map[string]string{"current_password": testPassword, "new_password": password})
		}
	}},
	{"admin creation", "password", func(t *testing.T, env *testEnv, username string) func(string) response {
		admin := env.tokenFor(t, env.addUser(t, "admin-"+username, roleAdmin))
		return func(password string) response {
			body := invitee(username)
			body["password"] = password
			return env.createByAdmin(t, admin, body)
		}
	}},
	{"accept invite", "new_password", func(t *testing.T, env *testEnv, username string) func(string) response {
		admin := env.tokenFor(t, env.addUser(t, "admin-"+username, roleAdmin))
		env.createByAdmin(t, admin, invitee(username)).expect(t, http.StatusCreated)
		token := inviteToken(t, env, username+"@example.com")
		return func(password string) response { return env.acceptInvite(t, token, password) }
	}},
}

const (
	tooCommon   = "is too common; choose another"
	notPersonal = "must not be your username or email"
)

// TestGuessablePasswordsRefused tries common passwords, in any case, and the account's own
// username and email on every path that sets a password, with the list check on and off. A
// refusal changes nothing: the same request with a good password succeeds afterwards (the
// username is still free, the reset token unused, the session live).
func TestGuessablePasswordsRefused(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		password func(username string) string
		want     string // the reason with the list on; "" means accepted
		wantOff  string // the reason with PASSWORD_CHECK_COMMON=false
	}{
		{"listed", func(string) string { return "password123" }, tooCommon, ""},
		{"listed, in another case", func(string) string { return "PassWord123" }, tooCommon, ""},
		{"listed, upper case", func(string) string { return "QWERTYUIOP" }, tooCommon, ""},
		{"the username", func(u string) string { return u }, notPersonal, notPersonal},
		{"the username, in another case", strings.ToUpper, notPersonal, notPersonal},
		{"the email, in another case", func(u string) string { return strings.ToUpper(u[:1]) + u[1:] + "@EXAMPLE.com" },
			notPersonal, notPersonal},
		{"the username with more", func(u string) string { return u + "!" }, "", ""},
		{"not listed", func(string) string { return "quill-harbor-77" }, "", ""},
	}
	for _, listOn := range []bool{true, false} {
		for _, setter := range passwordSetters {
			name := setter.name + ", list on"
			if !listOn {
				name = setter.name + ", list off"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				env := newTestEnv(t, func(c *config) { c.commonPasswords = commonPasswordsIf(listOn) })
				for i, tt := range cases {
					want := tt.want
					if !listOn {
						want = tt.wantOff
					}
					username := "zorblaxian" + strconv.Itoa(i)
					set := setter.prepare(t, env, username)
					r := set(tt.password(username))
					if want == "" {
						if r.status >= 300 {
							t.Errorf("%s: status %d, want success; body: %s", tt.name, r.status, r.body)
						}
						continue
					}
					r.expect(t, http.StatusBadRequest)
					errs, _ := r.json(t)["errors"].(map[string]any)
					if len(errs) != 1 || errs[setter.field] != want {
						t.Errorf("%s: errors %v, want {%q: %q}", tt.name, errs, setter.field, want)
					}
					if r := set("quill-harbor-77"); r.status >= 300 {
						t.Errorf("%s: after the refusal, a good password got %d: %s", tt.name, r.status, r.body)
					}
				}
			})
		}
	}
}

// TestResetRefusalKeepsToken: a reset refused for its password leaves the old password
// working, sessions live and no mail sent, and the token can then set a good password.
func TestResetRefusalKeepsToken(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	access := env.tokenFor(t, alice)
	token := resetTokenFor(t, env, alice.Email)
	env.deliverMail(t) // the reset mail itself
	for _, password := range []string{"letmein1", "ALICE@example.com"} {
		postReset(t, env, token, password).expect(t, http.StatusBadRequest)
	}
	env.do(t, "GET", "/api/users/me", access, nil).expect(t, http.StatusOK)
	env.login(t, "alice", testPassword)
	if sent := env.deliverMail(t); len(sent) != 0 {
		t.Errorf("%d mails after refused resets, want none", len(sent))
	}
	postReset(t, env, token, "quill-harbor-77").expect(t, http.StatusOK)
	env.login(t, "alice", "quill-harbor-77")
	postReset(t, env, token, "quill-harbor-78").expect(t, http.StatusBadRequest) // used now
}

// TestGuessableRefusalOrder: a password too short to be allowed is told so, not that it is
// common; a bad reset token is told so, whatever the password.
func TestGuessableRefusalOrder(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	body := registerBody("shorty")
	body["password"] = "123456" // listed, and too short
	r := env.do(t, "POST", "/api/auth/register", "", body).expect(t, http.StatusBadRequest)
	if errs, _ := r.json(t)["errors"].(map[string]any); errs["password"] != "must be at least 8 characters" {
		t.Errorf("errors %v, want the length rule", errs)
	}
	r = postReset(t, env, "no-such-token", "password123").expect(t, http.StatusBadRequest)
	if msg := r.message(t); msg != "Invalid or expired reset token" {
		t.Errorf("message %q, want the invalid token", msg)
	}
}

// TestCreateAdminRefusesGuessable runs -create-admin with guessable passwords, given after
// flags and at the prompts, and with the list check turned off.
func TestCreateAdminRefusesGuessable(t *testing.T) {
	t.Parallel()
	allOnStdin := func(password string) string { return "root\n" + password + "\nroot@example.com\nR\nOot\n" }
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		stdin   string
		wantErr string // "" means the admin is created
	}{
		{"listed, after flags", nil, rootFlags, "password123\n", "password " + tooCommon},
		{"listed in another case, at the prompts", nil, nil, allOnStdin("PassWord123"), "password " + tooCommon},
		{"the email, after flags", nil, rootFlags, "Root@Example.com\n", "password " + notPersonal},
		{"listed, the check off", map[string]string{"PASSWORD_CHECK_COMMON": "false"}, rootFlags, "password123\n", ""},
		{"the email, the check off", map[string]string{"PASSWORD_CHECK_COMMON": "false"}, nil, allOnStdin("root@example.com"),
			"password " + notPersonal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := newTestEnv(t)
			out, err := createAdminWith(env.cfg.databaseURL, tt.env, strings.NewReader(tt.stdin), tt.args...)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("create-admin: %v; output: %s", err, out)
				}
				if n := env.countUsers(t, roleAdmin); n != 1 {
					t.Errorf("%d admins, want 1", n)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("create-admin: error %v, want one saying %q; output: %s", err, tt.wantErr, out)
			}
			if n := env.countUsers(t, ""); n != 0 {
				t.Errorf("%d users after a refusal, want 0", n)
			}
		})
	}
}

// TestPasswordCheckCommonSetting reads PASSWORD_CHECK_COMMON: on unless false, strictly parsed.
func TestPasswordCheckCommonSetting(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		value  string
		listOn bool
	}{{"", true}, {"true", true}, {"1", true}, {"TRUE", true}, {"false", false}, {"0", false}, {"False", false}} {
		cfg, err := loadConfig(envOf(configEnv(map[string]string{"PASSWORD_CHECK_COMMON": tt.value})))
		if err != nil {
			t.Fatalf("PASSWORD_CHECK_COMMON=%q: %v", tt.value, err)
		}
		if on := cfg.commonPasswords.contains("password"); on != tt.listOn {
			t.Errorf("PASSWORD_CHECK_COMMON=%q: check on %v, want %v", tt.value, on, tt.listOn)
		}
	}
	for _, value := range []string{"no", "off", "yes", " false"} {
		_, err := loadConfig(envOf(configEnv(map[string]string{"PASSWORD_CHECK_COMMON": value})))
		if err == nil || !strings.Contains(err.Error(), "PASSWORD_CHECK_COMMON must be true or false") {
			t.Errorf("PASSWORD_CHECK_COMMON=%q: error %v, want it named", value, err)
		}
	}
}

// BenchmarkCommonPassword looks up passwords on the list and off it, lowercasing included:
// what each password check adds to a registration, reset or change.
func BenchmarkCommonPassword(b *testing.B) {
	list := loadCommonPasswords()
	passwords := []string{"PassWord123", "quill-harbor-77", "zxcvbnm", "Tr0ub4dor&3"}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		list.contains(passwords[i%len(passwords)])
		i++
	}
}
