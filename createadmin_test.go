package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Tests of `usermgmt -create-admin`: run itself, with a fake environment, on the database of a
// test service, which then shows what the command did.

const adminTestPassword = "S3cure-pass"

// createAdmin runs `usermgmt -env-file= -create-admin args...` on databaseURL with stdin and
// returns what it printed.
func createAdmin(databaseURL, stdin string, args ...string) (string, error) {
	return createAdminWith(databaseURL, nil, strings.NewReader(stdin), args...)
}

// createAdminWith is createAdmin with more settings in the environment, and any stdin.
func createAdminWith(databaseURL string, settings map[string]string, stdin io.Reader, args ...string) (string, error) {
	vars := map[string]string{
		"DATABASE_URL":   databaseURL,
		"JWT_SECRET_KEY": "admin-test-secret-admin-test-secret-0123",
		"BCRYPT_COST":    "4",
	}
	maps.Copy(vars, settings)
	getenv := envOf(vars)
	var out bytes.Buffer
	args = append([]string{"usermgmt", "-env-file=", "-create-admin"}, args...)
	err := run(context.Background(), args, getenv, stdin, &out)
	return out.String(), err
}

// countUsers returns how many users there are, or only admins when role is roleAdmin.
func (e *testEnv) countUsers(t *testing.T, role string) int {
	t.Helper()
	_, total, err := e.st.listUsers(context.Background(), userFilter{Role: role, Sort: "id", page: page{Page: 1, PerPage: 1}})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// expectAdmin checks that root was created as an active admin who can log in through the API
// with adminTestPassword and use admin routes.
func (e *testEnv) expectAdmin(t *testing.T) {
	t.Helper()
	u, err := e.st.userByLogin(context.Background(), "root")
	if err != nil {
		t.Fatalf("looking up root: %v", err)
	}
	got := newUser{u.Username, u.FirstName, u.LastName, u.Email}
	if want := (newUser{"root", "R", "Oot", "root@example.com"}); got != want || u.Role != roleAdmin || !u.IsActive {
		t.Errorf("created %+v, role %q, active %v; want %+v, an active Admin", got, u.Role, u.IsActive, want)
	}
	token := e.login(t, "root", adminTestPassword)
	if role := e.do(t, "GET", "/api/users/me", token, nil).expect(t, 200).json(t)["role"]; role != roleAdmin {
		t.Errorf("GET /api/users/me: role %v, want Admin", role)
	}
	e.do(t, "GET", "/api/admin/users", token, nil).expect(t, 200)
}

var rootFlags = []string{"-username", "root", "-email", "root@example.com", "-first-name", "R", "-last-name", "Oot"}

func TestCreateAdmin(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		args      []string
		stdin     string
		regulars  int // users who exist before the run
		wantUsers int
	}{
		{"flags and the password on stdin", rootFlags, adminTestPassword + "\n", 0, 1},
		{"everything on stdin in prompt order", nil, "root\n" + adminTestPassword + "\nroot@example.com\nR\nOot\n", 0, 1},
		{"some flags and the rest on stdin", []string{"-username", "root", "-last-name", "Oot"},
			adminTestPassword + "\nroot@example.com\nR\n", 0, 1},
		{"CRLF lines and no final newline", nil, "root\r\n" + adminTestPassword + "\r\nroot@example.com\r\nR\r\nOot", 0, 1},
		{"regular users exist already", rootFlags, adminTestPassword + "\n", 2, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := newTestEnv(t)
			for _, name := range []string{"alice", "bob"}[:tt.regulars] {
				env.addUser(t, name, roleUser)
			}
			out, err := createAdmin(env.cfg.databaseURL, tt.stdin, tt.args...)
			if err != nil {
				t.Fatalf("create-admin: %v; output: %s", err, out)
			}
			if !strings.Contains(out, `Admin "root" created`) {
				t.Errorf("output %q does not report the new admin", out)
			}
			if strings.Contains(out, adminTestPassword) {
				t.Errorf("output shows the password: %q", out)
			}
			env.expectAdmin(t)
			if n := env.countUsers(t, ""); n != tt.wantUsers {
				t.Errorf("%d users, want %d", n, tt.wantUsers)
			}
		})
	}
}

func TestCreateAdminRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		setup   func(*testing.T, *testEnv)
		args    []string
		stdin   string
		wantErr []string // each must appear in the error
	}{
		{
			name:    "bad email and short password",
			args:    []string{"-username", "root", "-email", "not-an-email", "-first-name", "R", "-last-name", "Oot"},
			stdin:   "short\n",
			wantErr: []string{"email must be a valid email address", "password must be at least 8 characters"},
		},
		{
			name:    "bad username and blank names from stdin",
			stdin:   "no spaces allowed\n" + adminTestPassword + "\nroot@example.com\n\n \n",
			wantErr: []string{"username", "first_name", "last_name"},
		},
		{
			name:    "input ends before the email",
			stdin:   "root\n" + adminTestPassword + "\n",
			wantErr: []string{"email", "no more input"},
		},
		{
			name:    "no input at all",
			args:    []string{"-username", "root"},
			wantErr: []string{"password", "no more input"},
		},
		{
			name: "an admin exists already",
			setup: func(t *testing.T, env *testEnv) {
				env.addUser(t, "boss", roleAdmin)
			},
			args:    rootFlags,
			stdin:   adminTestPassword + "\n",
			wantErr: []string{"An admin already exists"},
		},
		{
			name: "a second run",
			setup: func(t *testing.T, env *testEnv) {
				args := []string{"-username", "first", "-email", "first@example.com", "-first-name", "F", "-last-name", "Irst"}
				if out, err := createAdmin(env.cfg.databaseURL, adminTestPassword+"\n", args...); err != nil {
					t.Fatalf("first run: %v; output: %s", err, out)
				}
			},
			args:    rootFlags,
			stdin:   adminTestPassword + "\n",
			wantErr: []string{"An admin already exists"},
		},
		{
			name: "the username belongs to a regular user",
			setup: func(t *testing.T, env *testEnv) {
				hash, _ := newHasher(4, 1).hash(context.Background(), testPassword)
				if _, err := env.st.createUser(context.Background(), newUser{"ROOT", "A", "B", "other@example.com"}, hash); err != nil {
					t.Fatal(err)
				}
			},
			args:    rootFlags,
			stdin:   adminTestPassword + "\n",
			wantErr: []string{"Username already exists"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := newTestEnv(t)
			if tt.setup != nil {
				tt.setup(t, env)
			}
			users, admins := env.countUsers(t, ""), env.countUsers(t, roleAdmin)
			out, err := createAdmin(env.cfg.databaseURL, tt.stdin, tt.args...)
			if err == nil {
				t.Fatalf("create-admin succeeded; output: %s", out)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
			if strings.Contains(err.Error(), adminTestPassword) {
				t.Errorf("error shows the password: %q", err)
			}
			if n, m := env.countUsers(t, ""), env.countUsers(t, roleAdmin); n != users || m != admins {
				t.Errorf("now %d users and %d admins, want %d and %d as before", n, m, users, admins)
			}
		})
	}
}

// TestCreateAdminConcurrent starts two runs together on one database: one creates its admin,
// the other is refused.
func TestCreateAdminConcurrent(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	start := make(chan struct{})
	errs := make(chan error, 2)
	for _, name := range []string{"root1", "root2"} {
		go func() {
			<-start
			_, err := createAdmin(env.cfg.databaseURL, adminTestPassword+"\n",
				"-username", name, "-email", name+"@example.com", "-first-name", "R", "-last-name", "Oot")
			errs <- err
		}()
	}
	close(start)
	var created int
	for range 2 {
		err := <-errs
		switch {
		case err == nil:
			created++
		case !strings.Contains(err.Error(), "An admin already exists"):
			t.Errorf("unexpected error: %v", err)
		}
	}
	if created != 1 {
		t.Errorf("%d runs succeeded, want exactly 1", created)
	}
	if n := env.countUsers(t, roleAdmin); n != 1 {
		t.Errorf("%d admins, want 1", n)
	}
}

// TestCreateAdminReadsEnvFile gives run its settings through -env-file only.
func TestCreateAdminReadsEnvFile(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	path := filepath.Join(t.TempDir(), "test.env")
	content := "DATABASE_URL=" + env.cfg.databaseURL + "\nJWT_SECRET_KEY=\"admin-test-secret-admin-test-secret-0123\"\nBCRYPT_COST=4\n"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	args := append([]string{"usermgmt", "-env-file=" + path, "-create-admin"}, rootFlags...)
	if err := run(context.Background(), args, envOf(nil), strings.NewReader(adminTestPassword+"\n"), &out); err != nil {
		t.Fatalf("create-admin: %v; output: %s", err, out.String())
	}
	env.expectAdmin(t)
}

// TestCreateAdminInterrupted: Ctrl-C (a cancelled context) at a prompt ends the command at
// once, without waiting for the input it asked for, and creates nothing.
func TestCreateAdminInterrupted(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	stdin, typist, err := os.Pipe() // input that never comes
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	defer typist.Close()
	ctx, interrupt := context.WithCancel(context.Background())
	getenv := envOf(map[string]string{"DATABASE_URL": env.cfg.databaseURL, "JWT_SECRET_KEY": "admin-test-secret-admin-test-secret-0123"})
	result := make(chan error, 1)
	go func() {
		result <- run(ctx, []string{"usermgmt", "-env-file=", "-create-admin"}, getenv, stdin, &syncBuffer{})
	}()
	time.Sleep(100 * time.Millisecond) // at the username prompt
	interrupt()
	select {
	case err := <-result:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("interrupted create-admin returned %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("create-admin still waits for input after Ctrl-C")
	}
	if n := env.countUsers(t, ""); n != 0 {
		t.Errorf("%d users after an interrupted create-admin, want 0", n)
	}
}
