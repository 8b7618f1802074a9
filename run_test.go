package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests start the real program, as a user would: run itself, and the built binary.

var listeningAddr = regexp.MustCompile(`msg=listening addr=(\S+)`)

// startRun starts run with the given environment and returns the base URL it serves and a
// channel that receives run's result after cancel is called.
func startRun(t *testing.T, env map[string]string) (baseURL string, cancel func(), done <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	result := make(chan error, 1)
	getenv := func(key string) string { return env[key] }
	go func() { result <- run(ctx, []string{"usermgmt", "-env-file="}, getenv, strings.NewReader(""), out) }()
	var addr string
	waitFor(t, "the server to listen", func() bool {
		select {
		case err := <-result:
			t.Fatalf("run ended before listening: %v\n%s", err, out.String())
		default:
		}
		if m := listeningAddr.FindStringSubmatch(out.String()); m != nil {
			addr = m[1]
		}
		return addr != ""
	})
	t.Cleanup(cancel)
	return "http://" + addr, cancel, result
}

func runEnv(t *testing.T) map[string]string {
	return map[string]string{
		"DATABASE_URL":   newTestDatabase(t),
		"JWT_SECRET_KEY": "an-end-to-end-test-secret-of-more-than-32-bytes",
		"ADDR":           "127.0.0.1:0",
		"BCRYPT_COST":    "4",
		"MAIL_BACKEND":   "dummy",
	}
}

// call sends one JSON request and decodes the JSON reply into out (when not nil).
func call(t *testing.T, method, url, token, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	r := send(t, req)
	if out != nil {
		if err := json.Unmarshal(r.body, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, url, err, r.body)
		}
	}
	return r.status
}

func TestRunEndToEnd(t *testing.T) {
	t.Parallel()
	base, cancel, done := startRun(t, runEnv(t))

	var registered struct{ ID int64 }
	if s := call(t, "POST", base+"/api/auth/register", "", `{"username": "carol", "first_name": "Carol",
		"last_name": "C", "email": "carol@example.com", "password": "first-password"}`, &registered); s != 201 {
		t.Fatalf("register: %d", s)
	}
	var login struct {
		AccessToken string `json:"access_token"`
	}
	if s := call(t, "POST", base+"/api/auth/login", "", `{"username": "carol", "password": "first-password"}`, &login); s != 200 {
		t.Fatalf("login: %d", s)
	}
	var me user
	if s := call(t, "GET", base+"/api/users/me", login.AccessToken, "", &me); s != 200 || me.ID != registered.ID || me.Role != roleUser {
		t.Fatalf("me: %d %+v", s, me)
	}
	var reset struct{ Token string }
	if s := call(t, "POST", base+"/api/auth/password-reset-request", "", `{"email": "carol@example.com"}`, &reset); s != 200 || reset.Token == "" {
		t.Fatalf("reset request: %d, token %q", s, reset.Token)
	}
	if s := call(t, "POST", base+"/api/auth/reset-password/"+reset.Token, "", `{"new_password": "second-password"}`, nil); s != 200 {
		t.Fatalf("reset: %d", s)
	}
	if s := call(t, "GET", base+"/api/users/me", login.AccessToken, "", nil); s != 401 {
		t.Fatalf("token after reset: %d, want 401", s)
	}
	if s := call(t, "POST", base+"/api/auth/login", "", `{"username": "carol@example.com", "password": "second-password"}`, nil); s != 200 {
		t.Fatalf("login with the new password: %d", s)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after cancel: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after cancel")
	}
}

// TestSIGTERMDrainsInFlightRequests builds the binary, starts it, begins a request whose body
// is still arriving, sends SIGTERM, then finishes the body: the request must still be answered
// and the process must exit cleanly.
// TestRunFailsOnATakenPort: a taken address ends run at once with an error naming it, rather
// than leaving a process that serves nothing.
func TestRunFailsOnATakenPort(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	env := runEnv(t)
	env["ADDR"] = taken.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	result := make(chan error, 1)
	go func() {
		result <- run(ctx, []string{"usermgmt", "-env-file="}, func(k string) string { return env[k] }, strings.NewReader(""), &syncBuffer{})
	}()
	select {
	case err := <-result:
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			t.Errorf("run on a taken port returned %v, want an error saying the address is in use", err)
		}
	case <-time.After(20 * time.Second): // generous for a loaded machine; it takes milliseconds
		t.Fatal("run still running on a taken port")
	}
}

func TestSIGTERMDrainsInFlightRequests(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "usermgmt")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-env-file=")
	for k, v := range runEnv(t) {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	var addr string
	waitFor(t, "the server to listen", func() bool {
		if m := listeningAddr.FindStringSubmatch(out.String()); m != nil {
			addr = m[1]
		}
		return addr != ""
	})

	body := `{"username": "dave", "first_name": "Dave", "last_name": "D", "email": "dave@example.com", "password": "` + testPassword + `"}`
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /api/auth/register HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		addr, len(body), body[:10])
	// Give the server a moment to start the handler; the test holds even if it has not yet,
	// because a shutting-down server still serves a request already on its way.
	time.Sleep(200 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the server to start draining", func() bool { return strings.Contains(out.String(), "shutting down") })
	if _, err := io.WriteString(conn, body[10:]); err != nil {
		t.Fatal(err)
	}
	reply, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(reply, []byte("HTTP/1.1 201")) {
		t.Fatalf("in-flight request during shutdown got %q, want 201", reply)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, out.String())
	}
}

// TestRunSaysWhatIsWrongWithTheDatabase: each way DATABASE_URL can fail at start gets its own
// message, none of them showing the password, and only an unreachable server is asked whether
// PostgreSQL runs.
func TestRunSaysWhatIsWrongWithTheDatabase(t *testing.T) {
	t.Parallel()
	const password = "Pw9-not-to-be-shown"
	server, err := url.Parse(adminDatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	missing := *server
	missing.Path = "/test_missing_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	missing.User = url.UserPassword(server.User.Username(), password)
	stranger := *server
	stranger.User = url.UserPassword("no_such_role_of_usermgmt", password)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "postgres://usermgmt:" + password + "@" + closed.Addr().String() + "/usermgmt"
	closed.Close()
	tests := []struct {
		name, databaseURL string
		want              []string
		running           bool // whether the message asks if PostgreSQL is running
	}{
		{"a URL that does not parse", "postgres://usermgmt:" + password + "%zz@localhost/usermgmt",
			[]string{"configuration:", "DATABASE_URL", "does not parse"}, false},
		{"a database that does not exist", missing.String(),
			[]string{"DATABASE_URL", strings.TrimPrefix(missing.Path, "/"), "does not exist"}, false},
		{"a role that may not log in", stranger.String(),
			[]string{"DATABASE_URL", "refused the login", "no_such_role_of_usermgmt"}, false},
		// Refused connections are retried for 30 s, as at a cold start: this case takes that long.
		{"no server listening", closedURL, []string{"DATABASE_URL", closed.Addr().String(), "connection refused"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"DATABASE_URL": tt.databaseURL, "JWT_SECRET_KEY": secret32, "ADDR": "127.0.0.1:0"}
			err := run(context.Background(), []string{"usermgmt", "-env-file="}, envOf(env), strings.NewReader(""), io.Discard)
			if err == nil {
				t.Fatal("run started")
			}
			msg := err.Error()
			for _, want := range tt.want {
				if !strings.Contains(msg, want) {
					t.Errorf("%q does not mention %q", msg, want)
				}
			}
			if strings.Contains(msg, password) || strings.Contains(msg, "Pw9") {
				t.Errorf("%q shows the password", msg)
			}
			if asks := strings.Contains(msg, "is PostgreSQL running?"); asks != tt.running {
				t.Errorf("%q: asks whether PostgreSQL is running: %v, want %v", msg, asks, tt.running)
			}
		})
	}
}
