package main

import (
	"bytes"
	"context"
	"io"
	"maps"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// envOf is a getenv reading from vars.
func envOf(vars map[string]string) func(string) string {
	return func(key string) string { return vars[key] }
}

// secret32 is a JWT_SECRET_KEY of exactly the minimum length.
const secret32 = "0123456789abcdef0123456789abcdef"

// configEnv is the two required variables plus changes; a change to "" unsets a variable.
func configEnv(changes map[string]string) map[string]string {
	vars := map[string]string{"DATABASE_URL": "postgres://localhost/usermgmt", "JWT_SECRET_KEY": secret32}
	maps.Copy(vars, changes)
	return vars
}

func TestLoadConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(envOf(configEnv(nil)))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"DATABASE_URL", cfg.databaseURL, "postgres://localhost/usermgmt"},
		{"JWT_SECRET_KEY", string(cfg.keys.current.secret), secret32},
		{"JWT_SECRET_KEY_PREVIOUS", cfg.keys.previous == nil, true},
		{"REFRESH_TOKEN_EXPIRES", cfg.refreshTTL, 30 * 24 * time.Hour},
		{"SESSION_MAX_LIFETIME", cfg.sessionLifetime, 30 * 24 * time.Hour},
		{"REFRESH_REUSE_INTERVAL", cfg.refreshReuseInterval, 10 * time.Second},
		{"LOGIN_MAX_FAILURES", cfg.loginMaxFailures, 5},
		{"AUTH_RATE_LIMIT", cfg.authRateLimit, 30},
		{"AUTH_RATE_BURST", cfg.authRateBurst, 10},
		{"TRUSTED_PROXIES", len(cfg.trustedProxies), 0},
		{"BCRYPT_CONCURRENCY", cfg.bcryptConcurrency, runtime.NumCPU()},
		{"EMAIL_VERIFICATION_EXPIRES", cfg.verifyTTL, 24 * time.Hour},
		{"INVITE_EXPIRES", cfg.inviteTTL, 72 * time.Hour},
		{"REQUIRE_VERIFIED_EMAIL", cfg.requireVerifiedEmail, false},
		{"MAIL_MAX_ATTEMPTS", cfg.mail.maxAttempts, 8},
		{"WEBHOOK_MAX_ATTEMPTS", cfg.webhook.maxAttempts, 12},
		{"WEBHOOK_ALLOW_HTTP", cfg.webhook.allowHTTP, false},
		{"WEBHOOK_ALLOW_PRIVATE", cfg.webhook.allowPrivate, false},
		{"MAIL_TLS_INSECURE_SKIP_VERIFY", cfg.mail.insecureTLS, false},
		{"PUBLIC_URL", cfg.mail.publicURL, "http://localhost:8080"},
		{"PASSWORD_RESET_URL", cfg.mail.resetURL, "http://localhost:8080/api/auth/reset-password/{token}"},
		{"EMAIL_VERIFICATION_URL", cfg.mail.verifyURL, "http://localhost:8080/api/auth/verify-email/{token}"},
		{"INVITE_URL", cfg.mail.inviteURL, "http://localhost:8080/api/auth/accept-invite/{token}"},
		{"ADDR", cfg.addr, ":8080"},
		{"JWT_ACCESS_TOKEN_EXPIRES", cfg.accessTTL, 3600 * time.Second},
		{"BCRYPT_COST", cfg.bcryptCost, 12},
		{"PASSWORD_MIN_LENGTH", cfg.passwordMinLength, 8},
		{"PASSWORD_RESET_TOKEN_EXPIRES", cfg.resetTTL, 3600 * time.Second},
		{"MAIL_BACKEND", cfg.mail.backend, mailLog},
		{"MAIL_PORT", cfg.mail.port, 25},
		{"MAIL_USE_TLS", cfg.mail.useTLS, false},
		{"MAIL_USE_SSL", cfg.mail.useSSL, false},
		{"MAIL_USERNAME", cfg.mail.username, ""},
		{"METRICS_ADDR", cfg.metricsAddr, ""},
		{"LOG_FORMAT", cfg.logFormat, logText},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
	if cfg.mail.sender.Address != "usermgmt@localhost" || cfg.mail.publicURL == "" {
		t.Errorf("no default MAIL_DEFAULT_SENDER (%q) or PUBLIC_URL (%q)", cfg.mail.sender, cfg.mail.publicURL)
	}
}

func TestLoadConfigValues(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		env   map[string]string
		check func(config) bool
	}{
		{"MAIL_SERVER makes smtp the default backend", map[string]string{"MAIL_SERVER": "mail.example.com"},
			func(c config) bool {
				return c.mail.backend == mailSMTP && c.mail.server == "mail.example.com" && c.mail.port == 25
			}},
		{"MAIL_USE_SSL makes 465 the default port", map[string]string{"MAIL_SERVER": "mail.example.com", "MAIL_USE_SSL": "true"},
			func(c config) bool { return c.mail.useSSL && !c.mail.useTLS && c.mail.port == 465 }},
		{"MAIL_PORT wins over the SSL default", map[string]string{"MAIL_SERVER": "m", "MAIL_USE_SSL": "1", "MAIL_PORT": "2465"},
			func(c config) bool { return c.mail.port == 2465 }},
		{"MAIL_USE_TLS", map[string]string{"MAIL_SERVER": "m", "MAIL_USE_TLS": "TRUE"},
			func(c config) bool { return c.mail.useTLS && c.mail.port == 25 }},
		{"MAIL_BACKEND wins over MAIL_SERVER", map[string]string{"MAIL_SERVER": "m", "MAIL_BACKEND": "log"},
			func(c config) bool { return c.mail.backend == mailLog }},
		{"invitations", map[string]string{"INVITE_EXPIRES": "3600", "PUBLIC_URL": "https://users.example.com"},
			func(c config) bool {
				return c.inviteTTL == time.Hour && c.mail.inviteURL == "https://users.example.com/api/auth/accept-invite/{token}"
			}},
		{"dummy backend", map[string]string{"MAIL_BACKEND": "dummy"},
			func(c config) bool { return c.mail.backend == mailDummy }},
		{"false booleans", map[string]string{"MAIL_USE_TLS": "false", "MAIL_USE_SSL": "0"},
			func(c config) bool { return !c.mail.useTLS && !c.mail.useSSL }},
		{"every variable set", map[string]string{
			"ADDR": "127.0.0.1:9000", "JWT_ACCESS_TOKEN_EXPIRES": "60", "BCRYPT_COST": "4", "PASSWORD_MIN_LENGTH": "10",
			"PASSWORD_RESET_TOKEN_EXPIRES": "900", "PUBLIC_URL": "https://users.example.com", "MAIL_SERVER": "smtp.example.com",
			"MAIL_PORT": "587", "MAIL_USERNAME": "mailer", "MAIL_PASSWORD": "hunter2", "MAIL_USE_TLS": "true",
			"MAIL_DEFAULT_SENDER": "Acme Users <noreply@example.com>", "MAIL_BACKEND": "smtp",
		}, func(c config) bool {
			return c.addr == "127.0.0.1:9000" && c.accessTTL == time.Minute && c.bcryptCost == 4 && c.passwordMinLength == 10 &&
				c.resetTTL == 15*time.Minute && c.mail.publicURL == "https://users.example.com" &&
				c.mail.resetURL == "https://users.example.com/api/auth/reset-password/{token}" &&
				c.mail.backend == mailSMTP && c.mail.server == "smtp.example.com" && c.mail.port == 587 &&
				c.mail.username == "mailer" && c.mail.password == "hunter2" && c.mail.useTLS && !c.mail.useSSL &&
				c.mail.sender == mail.Address{Name: "Acme Users", Address: "noreply@example.com"}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := loadConfig(envOf(configEnv(tt.env)))
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(cfg) {
				t.Errorf("unexpected configuration: %+v", cfg)
			}
		})
	}
}

func TestLoadConfigErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
		want []string // each must appear in the error
	}{
		{"missing DATABASE_URL", map[string]string{"DATABASE_URL": ""}, []string{"DATABASE_URL"}},
		{"missing JWT_SECRET_KEY", map[string]string{"JWT_SECRET_KEY": ""}, []string{"JWT_SECRET_KEY", "32 bytes"}},
		{"31-byte JWT_SECRET_KEY", map[string]string{"JWT_SECRET_KEY": secret32[1:]}, []string{"JWT_SECRET_KEY", "32 bytes"}},
		{"non-numeric JWT_ACCESS_TOKEN_EXPIRES", map[string]string{"JWT_ACCESS_TOKEN_EXPIRES": "1h"}, []string{"JWT_ACCESS_TOKEN_EXPIRES"}},
		{"zero JWT_ACCESS_TOKEN_EXPIRES", map[string]string{"JWT_ACCESS_TOKEN_EXPIRES": "0"}, []string{"JWT_ACCESS_TOKEN_EXPIRES"}},
		{"huge JWT_ACCESS_TOKEN_EXPIRES", map[string]string{"JWT_ACCESS_TOKEN_EXPIRES": "99999999999999999999"}, []string{"JWT_ACCESS_TOKEN_EXPIRES"}},
		{"BCRYPT_COST too low", map[string]string{"BCRYPT_COST": "3"}, []string{"BCRYPT_COST"}},
		{"BCRYPT_COST too high", map[string]string{"BCRYPT_COST": "32"}, []string{"BCRYPT_COST"}},
		{"non-numeric BCRYPT_COST", map[string]string{"BCRYPT_COST": "twelve"}, []string{"BCRYPT_COST"}},
		{"zero PASSWORD_MIN_LENGTH", map[string]string{"PASSWORD_MIN_LENGTH": "0"}, []string{"PASSWORD_MIN_LENGTH"}},
		{"PASSWORD_MIN_LENGTH past bcrypt's 72", map[string]string{"PASSWORD_MIN_LENGTH": "73"}, []string{"PASSWORD_MIN_LENGTH"}},
		{"negative PASSWORD_RESET_TOKEN_EXPIRES", map[string]string{"PASSWORD_RESET_TOKEN_EXPIRES": "-1"}, []string{"PASSWORD_RESET_TOKEN_EXPIRES"}},
		{"zero INVITE_EXPIRES", map[string]string{"INVITE_EXPIRES": "0"}, []string{"INVITE_EXPIRES"}},
		{"non-numeric INVITE_EXPIRES", map[string]string{"INVITE_EXPIRES": "3d"}, []string{"INVITE_EXPIRES"}},
		{"MAIL_PORT out of range", map[string]string{"MAIL_PORT": "65536"}, []string{"MAIL_PORT"}},
		{"non-numeric MAIL_PORT", map[string]string{"MAIL_PORT": "smtp"}, []string{"MAIL_PORT"}},
		{"bad MAIL_USE_TLS", map[string]string{"MAIL_USE_TLS": "maybe"}, []string{"MAIL_USE_TLS"}},
		{"bad MAIL_USE_SSL", map[string]string{"MAIL_USE_SSL": "sometimes"}, []string{"MAIL_USE_SSL"}},
		{"unknown MAIL_BACKEND", map[string]string{"MAIL_BACKEND": "carrier-pigeon"}, []string{"MAIL_BACKEND"}},
		{"smtp without MAIL_SERVER", map[string]string{"MAIL_BACKEND": "smtp"}, []string{"MAIL_SERVER"}},
		{"MAIL_DEFAULT_SENDER not an address", map[string]string{"MAIL_DEFAULT_SENDER": "Acme"}, []string{"MAIL_DEFAULT_SENDER"}},
		{"MAIL_DEFAULT_SENDER with a quoted local part", map[string]string{"MAIL_DEFAULT_SENDER": `"no reply"@acme.test`},
			[]string{"MAIL_DEFAULT_SENDER"}},
		{"MAIL_DEFAULT_SENDER with a line break", map[string]string{"MAIL_DEFAULT_SENDER": "a@example.com\r\nBcc: eve@example.com"},
			[]string{"MAIL_DEFAULT_SENDER"}},
		{"TLS and SSL both set", map[string]string{"MAIL_SERVER": "m", "MAIL_USE_TLS": "true", "MAIL_USE_SSL": "true"},
			[]string{"MAIL_USE_TLS", "MAIL_USE_SSL"}},
		{"every problem at once is named", map[string]string{"DATABASE_URL": "", "JWT_SECRET_KEY": "short", "BCRYPT_COST": "x",
			"MAIL_BACKEND": "carrier-pigeon"}, []string{"DATABASE_URL", "JWT_SECRET_KEY", "BCRYPT_COST", "MAIL_BACKEND"}},
		{"a bad ADDR beside another bad setting", map[string]string{"ADDR": "nope", "BCRYPT_COST": "3", "PUBLIC_URL": "notaurl"},
			[]string{"ADDR", "BCRYPT_COST", "PUBLIC_URL"}},
		{"DATABASE_URL that does not parse", map[string]string{"DATABASE_URL": "postgres://%zz"}, []string{"configuration:", "DATABASE_URL"}},
		{"DATABASE_URL with a bad port", map[string]string{"DATABASE_URL": "postgres://localhost:99999/db"}, []string{"DATABASE_URL", "port"}},
		{"DATABASE_URL with a bad sslmode", map[string]string{"DATABASE_URL": "postgres://localhost/db?sslmode=bogus"},
			[]string{"DATABASE_URL", "sslmode"}},
		{"DATABASE_URL as a bad DSN", map[string]string{"DATABASE_URL": "host=localhost port=zz"}, []string{"DATABASE_URL", "port"}},
		{"METRICS_ADDR without a port", map[string]string{"METRICS_ADDR": "127.0.0.1"}, []string{"METRICS_ADDR"}},
		{"METRICS_ADDR with a bad port", map[string]string{"METRICS_ADDR": ":99999"}, []string{"METRICS_ADDR"}},
		{"unknown LOG_FORMAT", map[string]string{"LOG_FORMAT": "xml"}, []string{"LOG_FORMAT"}},
		{"LOG_FORMAT in capitals", map[string]string{"LOG_FORMAT": "JSON"}, []string{"LOG_FORMAT"}},
	}
	for _, addr := range []string{"nope", "127.0.0.1:99999", "127.0.0.1:65536", ":-1", ":+80", "127.0.0.1", "127.0.0.1:", ":http",
		"[::1]", "::1:8080", "bad host:80", "-bad:80", "a..b:80", "http://localhost:8080"} {
		tests = append(tests, struct {
			name string
			env  map[string]string
			want []string
		}{"ADDR=" + addr, map[string]string{"ADDR": addr}, []string{"ADDR"}})
	}
	for _, u := range []string{"notaurl", "localhost:8080", "/relative", "ftp://users.example.com", "http://", "https://:443",
		"http:users.example.com", "https://users.example.com?x=1", "https://users.example.com/?", "https://users.example.com/#top",
		"https://users.example.com#", "https://admin:secret@users.example.com", "https://exa mple.com", "javascript:alert(1)"} {
		tests = append(tests, struct {
			name string
			env  map[string]string
			want []string
		}{"PUBLIC_URL=" + u, map[string]string{"PUBLIC_URL": u}, []string{"PUBLIC_URL"}})
	}
	for _, name := range []string{"PASSWORD_RESET_URL", "EMAIL_VERIFICATION_URL", "INVITE_URL"} {
		for _, u := range []string{"{token}", "notaurl/{token}", "ftp://app.example.com/{token}", "https:///{token}",
			"https://user:pw@app.example.com/{token}", "https://app.example.com/reset"} {
			tests = append(tests, struct {
				name string
				env  map[string]string
				want []string
			}{name + "=" + u, map[string]string{name: u}, []string{name}})
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := loadConfig(envOf(configEnv(tt.env)))
			if err == nil {
				t.Fatal("loadConfig accepted the configuration")
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %s", err, want)
				}
			}
		})
	}
}

// TestLoadConfigURLsAndAddresses: the forms of ADDR, PUBLIC_URL and the mail links that must
// keep working.
func TestLoadConfigURLsAndAddresses(t *testing.T) {
	t.Parallel()
	for _, env := range []map[string]string{
		{"ADDR": "127.0.0.1:0"}, {"ADDR": ":0"}, {"ADDR": ":8080"}, {"ADDR": "0.0.0.0:80"}, {"ADDR": "[::1]:8080"},
		{"ADDR": "[::]:65535"}, {"ADDR": "localhost:8080"}, {"ADDR": "users-1.internal.example.com:443"}, {"ADDR": "user_mgmt:8080"},
		{"PUBLIC_URL": "http://localhost:8080/"}, {"PUBLIC_URL": "https://example.com/users"}, {"PUBLIC_URL": "HTTPS://Example.COM"},
		{"PUBLIC_URL": "http://[::1]:8080"}, {"PUBLIC_URL": "http://192.0.2.1"},
		{"PASSWORD_RESET_URL": "https://app.example.com/reset?token={token}"},
		{"EMAIL_VERIFICATION_URL": "https://app.example.com/#/verify/{token}"},
		{"INVITE_URL": "https://app.example.com/welcome?token={token}"},
		{"DATABASE_URL": "postgres:///usermgmt?host=/var/run/postgresql&port=5432"},
		{"DATABASE_URL": "host=/var/run/postgresql dbname=usermgmt"},
		{"DATABASE_URL": "postgresql://u:p%40ss%2Fw%25rd@db.example.com:5433/usermgmt?sslmode=require"},
	} {
		if _, err := loadConfig(envOf(configEnv(env))); err != nil {
			t.Errorf("%v: %v", env, err)
		}
	}
}

// TestLoadConfigKeepsTheDatabasePasswordSecret: a DATABASE_URL that does not parse is named,
// but whatever its password looks like, no part of it appears in the message.
func TestLoadConfigKeepsTheDatabasePasswordSecret(t *testing.T) {
	t.Parallel()
	for _, databaseURL := range []string{
		"postgres://bob:Pw9secret%zz@localhost/db",
		"postgres://bob:Pw9secret%zz/x@localhost/db",
		"postgres://bob:Pw9secret/x@localhost/db",
		"postgres://bob:Pw9 secret@localhost/db",
		"postgres://bob:Pw9secret@localhost:99999/db",
		"postgres://bob:Pw9secret@local host/db",
		"postgres://bob@localhost/db?password=Pw9secret%zz",
		"postgres://bob:Pw9secret@localhost/db?connect_timeout=Pw9secret",
		"host=localhost password='Pw9\\'secret x' port=zz",
		"host=localhost password=Pw9secret port=zz",
		"host='localhost password=Pw9secret",
	} {
		_, err := loadConfig(envOf(configEnv(map[string]string{"DATABASE_URL": databaseURL})))
		if err == nil {
			t.Errorf("%s accepted", databaseURL)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, "DATABASE_URL") || strings.Contains(msg, "Pw9") || strings.Contains(msg, "secret") {
			t.Errorf("DATABASE_URL %s: %q, want a message naming DATABASE_URL without its password", databaseURL, msg)
		}
	}
}

func TestParseEnvFile(t *testing.T) {
	t.Parallel()
	content := `# settings for usermgmt
DATABASE_URL=postgres://u:p@localhost/db?sslmode=disable

export JWT_SECRET_KEY="a quoted secret with spaces and = signs"
   # an indented comment
SINGLE='single quoted'
  SPACED  =  spaced value  
EMPTY=
QUOTE_INSIDE=it's "fine"
`
	got, err := parseEnvFile(strings.NewReader(content))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"DATABASE_URL":   "postgres://u:p@localhost/db?sslmode=disable",
		"JWT_SECRET_KEY": "a quoted secret with spaces and = signs",
		"SINGLE":         "single quoted",
		"SPACED":         "spaced value",
		"EMPTY":          "",
		"QUOTE_INSIDE":   `it's "fine"`,
	}
	if !maps.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// TestEnvFileReadersAgree: scripts/envfile.sh, which the set-up script reads .env with, finds
// the value the server finds for each key.
func TestEnvFileReadersAgree(t *testing.T) {
	t.Parallel()
	content := "A=1\nexport B=\"two words\"\nexport\tC=3\nexport   D = 'x' \nE=\"'nested'\"\nF='\"nested\"'\n  G = g\nA=last\n"
	file := filepath.Join(t.TempDir(), ".env")
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	want, err := parseEnvFile(strings.NewReader(content))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"A", "B", "C", "D", "E", "F", "G"} {
		out, err := exec.Command("bash", "-c", `. scripts/envfile.sh && env_value "$1" "$2"`, "bash", key, file).Output()
		if err != nil {
			t.Fatalf("env_value %s: %v", key, err)
		}
		if got := strings.TrimSuffix(string(out), "\n"); got != want[key] {
			t.Errorf("%s: envfile.sh reads %q, the server %q", key, got, want[key])
		}
	}
}

func TestParseEnvFileMalformed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, content, want string
	}{
		{"words without =", "A=1\n# comment\n\njust some words\nB=2\n", "line 4"},
		{"no key", "=value\n", "line 1"},
		{"blank key", "A=1\n   = value\n", "line 2"},
		{"bare export", "export\n", "line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseEnvFile(strings.NewReader(tt.content))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one naming %s", err, tt.want)
			}
		})
	}
}

// writeEnvFile writes content to a fresh file and returns its path.
func writeEnvFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "test.env")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestWithEnvFile(t *testing.T) {
	t.Parallel()
	environment := envOf(map[string]string{"ADDR": ":1234", "ONLY_ENV": "env"})
	tests := []struct {
		name string
		path string
		want map[string]string // key -> value the returned getenv gives
	}{
		{"the environment wins over the file", writeEnvFile(t, "ADDR=:9999\nONLY_FILE=file\n"),
			map[string]string{"ADDR": ":1234", "ONLY_ENV": "env", "ONLY_FILE": "file", "NEITHER": ""}},
		{"a missing file is fine", filepath.Join(t.TempDir(), "absent.env"),
			map[string]string{"ADDR": ":1234", "ONLY_ENV": "env", "DATABASE_URL": ""}},
		// The working directory holds the repository's .env; an empty path must not read it.
		{"an empty path reads nothing", "", map[string]string{"ADDR": ":1234", "DATABASE_URL": "", "JWT_SECRET_KEY": ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			getenv, err := withEnvFile(environment, tt.path)
			if err != nil {
				t.Fatal(err)
			}
			for key, want := range tt.want {
				if got := getenv(key); got != want {
					t.Errorf("%s = %q, want %q", key, got, want)
				}
			}
		})
	}
}

func TestWithEnvFileErrors(t *testing.T) {
	t.Parallel()
	malformed := writeEnvFile(t, "A=1\nnot a setting\n")
	tests := []struct {
		name string
		path string
		want []string
	}{
		{"a malformed line", malformed, []string{malformed, "line 2"}},
		{"a directory", t.TempDir(), []string{"directory"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := withEnvFile(envOf(nil), tt.path)
			if err == nil {
				t.Fatal("no error")
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

// TestRunRefusesBadConfiguration starts run with settings it must refuse before doing anything.
// Its context is already cancelled, so a run that wrongly went on could not hang the test.
func TestRunRefusesBadConfiguration(t *testing.T) {
	t.Parallel()
	short := map[string]string{"DATABASE_URL": "postgres://127.0.0.1:1/none", "JWT_SECRET_KEY": secret32[1:], "ADDR": "127.0.0.1:0"}
	shortFile := writeEnvFile(t, "DATABASE_URL=postgres://127.0.0.1:1/none\nJWT_SECRET_KEY=too-short\nADDR=127.0.0.1:0\n")
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"short JWT_SECRET_KEY", []string{"-env-file="}, short, "JWT_SECRET_KEY"},
		{"short JWT_SECRET_KEY with -create-admin", []string{"-env-file=", "-create-admin"}, short, "JWT_SECRET_KEY"},
		{"short JWT_SECRET_KEY from the env file", []string{"-env-file=" + shortFile}, nil, "JWT_SECRET_KEY"},
		{"malformed env file", []string{"-env-file=" + writeEnvFile(t, "A=1\nB\n")}, nil, "line 2"},
		{"unknown flag", []string{"-env-file=", "-no-such-flag"}, configEnv(nil), "no-such-flag"},
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"usermgmt"}, tt.args...)
			err := run(ctx, args, envOf(tt.env), strings.NewReader(""), io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run: %v, want an error mentioning %s", err, tt.want)
			}
		})
	}
}

// FuzzParseEnvFile: parseEnvFile never panics on any input, and a KEY=VALUE line without
// quotes gives back exactly that key and value.
func FuzzParseEnvFile(f *testing.F) {
	f.Add([]byte("A=1\n# comment\n\nexport B='x y'\nC=\"q\"\n"), "KEY", "value")
	f.Add([]byte("=novalue\n"), "DATABASE_URL", "postgres://u:p@localhost:5432/db?sslmode=disable")
	f.Add([]byte("noequals\n"), "K", "a=b=c")
	f.Add([]byte("K=\"\n'\n\"'\n"), "K", "")
	f.Add([]byte(strings.Repeat("x", 70000)), "K", "v # not a comment")
	f.Fuzz(func(t *testing.T, data []byte, key, value string) {
		_, _ = parseEnvFile(bytes.NewReader(data)) // must not panic
		if !plainEnvLine(key, value) {
			return
		}
		got, err := parseEnvFile(strings.NewReader(key + "=" + value + "\n"))
		if err != nil {
			t.Fatalf("parseEnvFile(%q): %v", key+"="+value, err)
		}
		if len(got) != 1 || got[key] != value {
			t.Errorf("parseEnvFile(%q) = %q, want {%q: %q}", key+"="+value, got, key, value)
		}
	})
}

// plainEnvLine reports whether KEY=VALUE is one plain .env line: no quotes, no line break,
// no surrounding space, a key that is neither a comment nor "export ..." and holds no "=".
func plainEnvLine(key, value string) bool {
	line := key + "=" + value
	return key != "" && strings.TrimSpace(key) == key && strings.TrimSpace(value) == value &&
		!strings.HasPrefix(key, "#") && !strings.HasPrefix(key, "export ") && !strings.Contains(key, "=") &&
		!strings.ContainsAny(line, "\"'\n\r") && len(line) < 60000
}
