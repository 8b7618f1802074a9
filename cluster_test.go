package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The cluster test: three processes of the real binary behind nginx (with deploy/nginx.conf,
// its ports rewritten), one of them through PgBouncer in transaction pooling mode, all of them
// reaching PostgreSQL through a tcpProxy the test can cut; bounded, self-stopping load on
// loopback. PostgreSQL itself is shared by every test on the machine, so an outage is the
// proxy cut, never the server stopped.

// freePort returns a loopback port that was free a moment ago, for a server that must be told
// its port before it starts (nginx's upstreams, PgBouncer).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// sbin finds a server's program: on PATH, or in /usr/sbin, where Debian puts nginx and
// pgbouncer (and which a user's PATH may lack).
func sbin(name string) string {
	if path, err := exec.LookPath(name); err == nil {
		return path
	}
	return "/usr/sbin/" + name
}

// daemon is a server process the test started and stops.
type daemon struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error // receives the exit once
	exit error
	once sync.Once
}

// startDaemon starts cmd, to be stopped when owner ends (t itself, or the test whose
// subtests share the process).
func startDaemon(t, owner *testing.T, name string, cmd *exec.Cmd) *daemon {
	t.Helper()
	d := &daemon{name: name, cmd: cmd, out: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = d.out, d.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { d.done <- cmd.Wait() }()
	// SIGTERM first: nginx's master then stops its workers, which a SIGKILL would orphan.
	owner.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-d.done:
			d.done <- err
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
		_ = d.wait()
	})
	return d
}

// wait waits for the process to exit and returns how it did.
func (d *daemon) wait() error {
	d.once.Do(func() { d.exit = <-d.done })
	return d.exit
}

// waitForLog waits until the process has logged text, failing if it exits first.
func (d *daemon) waitForLog(t *testing.T, text string) {
	t.Helper()
	waitFor(t, d.name+" to log "+strconv.Quote(text), func() bool {
		select {
		case err := <-d.done:
			d.done <- err
			t.Fatalf("%s exited: %v\n%s", d.name, err, d.out.String())
		default:
		}
		return strings.Contains(d.out.String(), text)
	})
}

// startPgBouncer starts PgBouncer in transaction pooling mode in front of the database of
// databaseURL (TCP, no password: the tcpProxy's) and returns the URL of that database through
// it. Two server connections for every client make clients share them, as in production.
func startPgBouncer(t *testing.T, databaseURL string) string {
	t.Helper()
	target, err := pgconn.ParseConfig(databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	dir, port := t.TempDir(), freePort(t)
	// PgBouncer refuses to run as root: it reads its files as root, then becomes postgres.
	ini := fmt.Sprintf(`[databases]
* = host=%s port=%d
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = transaction
default_pool_size = 2
max_client_conn = 500
server_login_retry = 1
query_wait_timeout = 5
`, target.Host, target.Port, port, filepath.Join(dir, "users.txt"))
	if err := os.WriteFile(filepath.Join(dir, "users.txt"), []byte(strconv.Quote(target.User)+` ""`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pgbouncer.ini"), []byte(ini), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{filepath.Join(dir, "pgbouncer.ini")}
	if os.Geteuid() == 0 {
		args = append([]string{"-u", "postgres"}, args...)
	}
	d := startDaemon(t, t, "pgbouncer", exec.Command(sbin("pgbouncer"), args...))
	d.waitForLog(t, "process up")
	u := url.URL{Scheme: "postgres", User: url.User(target.User), Host: fmt.Sprintf("127.0.0.1:%d", port), Path: "/" + target.Database,
		RawQuery: "sslmode=disable&default_query_exec_mode=exec"}
	return u.String()
}

// TestThroughPgBouncerTransactionPooling runs the service's statements through PgBouncer in
// transaction mode (no prepared statements survive a transaction there) with many requests
// at once sharing two server connections: schema apply, registration with its outbox mail
// and audit row, login and its lockout, refresh, the rate limit's batch, admin changes under
// their advisory lock, listing, reset by mail, logout.
func TestThroughPgBouncerTransactionPooling(t *testing.T) {
	t.Parallel()
	proxied, _ := proxiedDatabase(t, newTestDatabase(t))
	bouncerURL := startPgBouncer(t, proxied)
	env := newTestEnv(t, func(c *config) { c.databaseURL, c.authRateLimit, c.authRateBurst = bouncerURL, 600, 1000 })
	// A second instance opening the same database at once: the schema lock is held by
	// transactions only.
	if _, err := openStore(context.Background(), env.cfg, time.Now, 5*time.Second); err != nil {
		t.Fatalf("a second store through PgBouncer: %v", err)
	}
	admin := env.addUser(t, "root", roleAdmin)
	adminToken := env.login(t, "root", testPassword)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := bouncedUser(t, env, fmt.Sprintf("user%d", i), adminToken); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for range env.cfg.loginMaxFailures {
		env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "root", "password": "wrong-password"}).expect(t, http.StatusUnauthorized)
	}
	env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "root", "password": testPassword}).expect(t, http.StatusTooManyRequests)
	env.do(t, "POST", "/api/auth/password-reset-request", "", map[string]string{"email": admin.Email}).expect(t, http.StatusOK)
	if sent := env.deliverMail(t); len(sent) < 9 { // 8 verifications and the reset, at least
		t.Errorf("%d messages delivered through PgBouncer, want at least 9", len(sent))
	}
	env.do(t, "GET", "/api/admin/audit-log", adminToken, nil).expect(t, http.StatusOK)
	env.do(t, "DELETE", "/api/users/"+strconv.FormatInt(admin.ID+1, 10), adminToken, nil).expect(t, http.StatusOK)
	env.do(t, "POST", "/api/auth/logout", adminToken, nil).expect(t, http.StatusOK)
}

// bouncedUser takes a new user through registration, login, reads, an update, a refresh and
// deactivation, and says what went wrong; it may run beside others.
func bouncedUser(t *testing.T, env *testEnv, name, adminToken string) error {
	var access, refresh, id string
	steps := []struct {
		method, path string
		token        func() string
		body         any
		status       int
		then         func(map[string]any)
	}{
		{"POST", "/api/auth/register", nil, map[string]string{"username": name, "first_name": "F", "last_name": "L",
			"email": name + "@example.com", "password": testPassword}, http.StatusCreated,
			func(m map[string]any) { id = strconv.FormatInt(int64(m["id"].(float64)), 10) }},
		{"POST", "/api/auth/login", nil, map[string]string{"username": name, "password": testPassword}, http.StatusOK,
			func(m map[string]any) { access, refresh = m["access_token"].(string), m["refresh_token"].(string) }},
		{"GET", "/api/users/me", func() string { return access }, nil, http.StatusOK, nil},
		{"PATCH", "/api/users/{id}", func() string { return access }, map[string]string{"first_name": "G"}, http.StatusOK, nil},
		{"POST", "/api/auth/refresh", nil, map[string]string{"refresh_token": refresh}, http.StatusOK, nil},
		{"GET", "/api/admin/users?q=user", func() string { return adminToken }, nil, http.StatusOK, nil},
		{"PATCH", "/api/users/{id}", func() string { return adminToken }, map[string]any{"is_active": false}, http.StatusOK, nil},
		{"GET", "/api/users/me", func() string { return access }, nil, http.StatusUnauthorized, nil},
	}
	for _, s := range steps {
		token := ""
		if s.token != nil {
			token = s.token()
		}
		body := s.body
		if s.path == "/api/auth/refresh" {
			body = map[string]string{"refresh_token": refresh}
		}
		r := env.do(t, s.method, strings.ReplaceAll(s.path, "{id}", id), token, body)
		if r.status != s.status {
			return fmt.Errorf("%s: %s %s: %d %s, want %d", name, s.method, s.path, r.status, r.body, s.status)
		}
		if s.then != nil {
			var m map[string]any
			if err := json.Unmarshal(r.body, &m); err != nil {
				return fmt.Errorf("%s: %s %s: %v", name, s.method, s.path, err)
			}
			s.then(m)
		}
	}
	return nil
}

// instance is one process of the binary in the cluster.
type instance struct {
	name string
	port int
	env  map[string]string
	proc *daemon
}

func (i *instance) url() string { return fmt.Sprintf("http://127.0.0.1:%d", i.port) }

// cluster is the set-up of TestCluster.
type cluster struct {
	owner     *testing.T // TestCluster, which the processes outlive its subtests for
	bin       string
	directURL string // the test database, straight (for the test's own checks)
	proxy     *tcpProxy
	instances []*instance
	nginxURL  string
	nginxLog  string // nginx's error log, shown when a scenario fails
	client    *http.Client
}

// start starts the process of i (without waiting for it).
func (c *cluster) start(t *testing.T, i *instance) {
	t.Helper()
	cmd := exec.Command(c.bin, "-env-file=")
	for k, v := range i.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	i.proc = startDaemon(t, c.owner, i.name, cmd)
}

// ready waits until i listens and says the database is reachable.
func (c *cluster) ready(t *testing.T, i *instance) {
	t.Helper()
	i.proc.waitForLog(t, "msg=listening")
	waitFor(t, i.name+" to be healthy", func() bool {
		status, _ := c.get(i.url() + "/healthz")
		return status == http.StatusOK
	})
}

// get returns the status and body of a GET, or 0 when there was no reply.
func (c *cluster) get(url string) (int, []byte) {
	resp, err := c.client.Get(url)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// hangingSMTP accepts connections and never answers: a mail server that hangs, so that a
// message being sent to it stays locked by its sender's transaction.
func hangingSMTP(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().(*net.TCPAddr).Port
}

// startNginx runs deploy/nginx.conf with its listen port, upstream ports and file paths
// rewritten, and returns its URL.
func startNginx(t *testing.T, upstreams []*instance) (base, errorLog string) {
	t.Helper()
	shipped, err := os.ReadFile("deploy/nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	dir, port := t.TempDir(), freePort(t)
	conf := string(shipped)
	rewrite := func(pattern, with string, want int) {
		t.Helper()
		re := regexp.MustCompile(pattern)
		if n := len(re.FindAllString(conf, -1)); n != want {
			t.Fatalf("deploy/nginx.conf: %d matches of %q, want %d: the test's rewriting is out of step with the file", n, pattern, want)
		}
		next := 0
		conf = re.ReplaceAllStringFunc(conf, func(string) string {
			next++
			return strings.ReplaceAll(with, "$n", strconv.Itoa(upstreams[next-1].port))
		})
	}
	rewrite(`(?m)^\s*listen 80;`, fmt.Sprintf("listen 127.0.0.1:%d;", port), 1)
	rewrite(`server 127\.0\.0\.1:808\d`, "server 127.0.0.1:$n", len(upstreams))
	rewrite(`(?m)^pid .*;`, "pid "+filepath.Join(dir, "nginx.pid")+";", 1)
	rewrite(`(?m)^error_log \S+`, "error_log "+filepath.Join(dir, "error.log"), 1)
	rewrite(`(?m)^\s*access_log \S+;`, "access_log "+filepath.Join(dir, "access.log")+";", 1)
	// Temporary files in the test's directory too, which also lets a user other than root run it.
	var temps strings.Builder
	for _, kind := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		fmt.Fprintf(&temps, "\n    %s_temp_path %s;", kind, filepath.Join(dir, kind))
	}
	rewrite(`(?m)^http \{`, "http {"+temps.String(), 1)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, t, "nginx", exec.Command(sbin("nginx"), "-c", path, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-g", "daemon off;"))
	base = fmt.Sprintf("http://127.0.0.1:%d", port)
	waitFor(t, "nginx to answer", func() bool {
		select {
		case err := <-d.done:
			d.done <- err
			errors, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited: %v\n%s%s", err, d.out.String(), errors)
		default:
		}
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == http.StatusOK
	})
	return base, filepath.Join(dir, "error.log")
}

// startCluster builds the binary and starts the cluster on a fresh database: three instances
// started together (scenario 1), the third through PgBouncer, and nginx in front.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{owner: t, bin: filepath.Join(t.TempDir(), "usermgmt"), client: &http.Client{Timeout: 30 * time.Second}}
	if out, err := exec.Command("go", "build", "-o", c.bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	c.directURL = newTestDatabase(t)
	proxied, proxy := proxiedDatabase(t, c.directURL)
	c.proxy = proxy
	bouncer := startPgBouncer(t, proxied)
	common := map[string]string{
		"JWT_SECRET_KEY": "a-cluster-test-secret-of-more-than-32-bytes", "BCRYPT_COST": "4", "BCRYPT_CONCURRENCY": "2",
		"AUTH_RATE_LIMIT": "0", "REFRESH_REUSE_INTERVAL": "0", "TRUSTED_PROXIES": "127.0.0.1/32", "MAIL_BACKEND": "log",
		"DATABASE_URL": proxied,
	}
	for n := range 3 {
		i := &instance{name: fmt.Sprintf("instance %d", n+1), port: freePort(t), env: map[string]string{}}
		for k, v := range common {
			i.env[k] = v
		}
		i.env["ADDR"] = fmt.Sprintf("127.0.0.1:%d", i.port)
		c.instances = append(c.instances, i)
	}
	// The second instance's mail hangs, so it holds a queued message when it is killed; the
	// third reaches the database through PgBouncer and serves /metrics.
	c.instances[1].env["MAIL_BACKEND"], c.instances[1].env["MAIL_SERVER"] = "smtp", "127.0.0.1"
	c.instances[1].env["MAIL_PORT"] = strconv.Itoa(hangingSMTP(t))
	c.instances[2].env["DATABASE_URL"], c.instances[2].env["METRICS_ADDR"] = bouncer, "127.0.0.1:0"
	for _, i := range c.instances {
		c.start(t, i)
	}
	for _, i := range c.instances {
		c.ready(t, i)
	}
	c.nginxURL, c.nginxLog = startNginx(t, c.instances)
	return c
}

// db connects to the cluster's database directly, for the test's checks.
func (c *cluster) db(t *testing.T) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), c.directURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// reply is one answer the load saw.
type reply struct {
	method, path string
	status       int // 0: no reply (a transport error)
	json         bool
	start, end   time.Time
}

// account is a load worker's own user and what became of its updates.
type account struct {
	username, id string
	attempted    []string // first names sent, in order
	acked        int      // how many of attempted were acknowledged (the last acknowledged is attempted[acked-1])
}

// load is mixed, self-stopping traffic through nginx: registrations, logins, reads and
// updates, one worker per account, each waiting for its reply before the next request.
type load struct {
	c        *cluster
	phase    string
	stop     chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	replies  []reply
	acked    []string // usernames whose registration was acknowledged
	accounts []*account
}

const loadWorkers = 6

// loadCap bounds a worker's iterations, so that load stops even if a phase's stop is lost.
const loadCap = 5000

func (c *cluster) startLoad(t *testing.T, phase string) *load {
	t.Helper()
	l := &load{c: c, phase: phase, stop: make(chan struct{})}
	for w := range loadWorkers {
		a := &account{username: fmt.Sprintf("%s_w%d", phase, w)}
		status, body := l.send("POST", "/api/auth/register", "", map[string]string{"username": a.username, "first_name": "F",
			"last_name": "L", "email": a.username + "@example.com", "password": testPassword})
		var created struct{ ID int64 }
		if status != http.StatusCreated || json.Unmarshal(body, &created) != nil {
			t.Fatalf("registering the load's account %s: %d %s", a.username, status, body)
		}
		a.id = strconv.FormatInt(created.ID, 10)
		l.acked = append(l.acked, a.username)
		l.accounts = append(l.accounts, a)
	}
	for w, a := range l.accounts {
		l.wg.Add(1)
		go func() { defer l.wg.Done(); l.work(w, a) }()
	}
	return l
}

// work is one worker's loop: every third round a registration, then a login, two reads and
// an update of the worker's account.
func (l *load) work(w int, a *account) {
	for round := 0; round < loadCap; round++ {
		select {
		case <-l.stop:
			return
		default:
		}
		if round%3 == 0 {
			name := fmt.Sprintf("%s_w%d_r%d", l.phase, w, round)
			if status, _ := l.send("POST", "/api/auth/register", "", map[string]string{"username": name, "first_name": "F",
				"last_name": "L", "email": name + "@example.com", "password": testPassword}); status == http.StatusCreated {
				l.mu.Lock()
				l.acked = append(l.acked, name)
				l.mu.Unlock()
			}
		}
		status, body := l.send("POST", "/api/auth/login", "", map[string]string{"username": a.username, "password": testPassword})
		var tokens struct {
			AccessToken string `json:"access_token"`
		}
		if status != http.StatusOK || json.Unmarshal(body, &tokens) != nil {
			time.Sleep(20 * time.Millisecond) // the database is down: no spinning
			continue
		}
		l.send("GET", "/api/users/me", tokens.AccessToken, nil)
		l.send("GET", "/api/users/"+a.id, tokens.AccessToken, nil)
		name := fmt.Sprintf("N%d", round)
		l.mu.Lock()
		a.attempted = append(a.attempted, name)
		l.mu.Unlock()
		if status, _ := l.send("PATCH", "/api/users/"+a.id, tokens.AccessToken, map[string]string{"first_name": name}); status == http.StatusOK {
			l.mu.Lock()
			a.acked = len(a.attempted)
			l.mu.Unlock()
		}
	}
}

// send sends one request through nginx and records the reply.
func (l *load) send(method, path, token string, body any) (int, []byte) {
	var reader io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		reader = strings.NewReader(string(raw))
	}
	req, _ := http.NewRequest(method, l.c.nginxURL+path, reader)
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	r := reply{method: method, path: path, start: time.Now()}
	var raw []byte
	resp, err := l.c.client.Do(req)
	if err == nil {
		raw, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		r.status = resp.StatusCode
		var m map[string]any
		r.json = json.Unmarshal(raw, &m) == nil
	}
	if err != nil {
		r.status = 0
	}
	r.end = time.Now()
	l.mu.Lock()
	l.replies = append(l.replies, r)
	l.mu.Unlock()
	return r.status, raw
}

// finish stops the load, waits for it, logs its counts and checks that every acknowledged
// write is in the database: each acknowledged registration, and for each account a first name
// no older than its last acknowledged update.
func (l *load) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	byKind := map[string]int{}
	for _, r := range l.replies {
		byKind[statusKind(r.status)]++
	}
	updates := 0
	for _, a := range l.accounts {
		updates += a.acked
	}
	t.Logf("%s: %d requests (%s), %d acknowledged registrations, %d acknowledged updates",
		l.phase, len(l.replies), formatKinds(byKind), len(l.acked), updates)
	db := l.c.db(t)
	var found int
	if err := db.QueryRow(context.Background(), "SELECT count(*) FROM users WHERE username = ANY($1)", l.acked).Scan(&found); err != nil {
		t.Fatal(err)
	}
	if found != len(l.acked) {
		t.Errorf("%s: %d of %d acknowledged registrations are in the database", l.phase, found, len(l.acked))
	}
	for _, a := range l.accounts {
		var name string
		if err := db.QueryRow(context.Background(), "SELECT first_name FROM users WHERE username = $1", a.username).Scan(&name); err != nil {
			t.Fatal(err)
		}
		if a.acked > 0 && !slices.Contains(a.attempted[a.acked-1:], name) {
			t.Errorf("%s: %s has first name %q; its last acknowledged update set %q", l.phase, a.username, name, a.attempted[a.acked-1])
		}
	}
}

// statusKind names a reply's kind for the counts: its status, or "no reply".
func statusKind(status int) string {
	switch {
	case status == 0:
		return "no reply"
	case status < 500:
		return strconv.Itoa(status/100) + "xx"
	default:
		return strconv.Itoa(status)
	}
}

func formatKinds(kinds map[string]int) string {
	var parts []string
	for _, k := range []string{"2xx", "4xx", "500", "502", "503", "504", "no reply"} {
		if kinds[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s: %d", k, kinds[k]))
			delete(kinds, k)
		}
	}
	for k, n := range kinds {
		parts = append(parts, fmt.Sprintf("%s: %d", k, n))
	}
	return strings.Join(parts, ", ")
}

// TestCluster runs the scenarios of the README's Deployment section on three instances behind
// nginx, one of them through PgBouncer.
func TestCluster(t *testing.T) {
	t.Parallel()
	c := startCluster(t)
	t.Run("1 simultaneous start on an empty database", func(t *testing.T) { clusterStart(t, c) })
	t.Run("2 state is shared", func(t *testing.T) { clusterSharedState(t, c) })
	t.Run("3 kill -9 under load", func(t *testing.T) { clusterKill(t, c) })
	t.Run("4 database outage under load", func(t *testing.T) { clusterOutage(t, c) })
	t.Run("5 rolling restart under load", func(t *testing.T) { clusterRollingRestart(t, c) })
	t.Run("metrics of the instance behind PgBouncer", func(t *testing.T) { clusterMetrics(t, c) })
}

var metricsListening = regexp.MustCompile(`msg="metrics listening" addr=(\S+)`)

// clusterMetrics: the third instance, restarted in scenario 5, serves /metrics that parse,
// with the database up and its requests counted.
func clusterMetrics(t *testing.T, c *cluster) {
	m := metricsListening.FindStringSubmatch(c.instances[2].proc.out.String())
	if m == nil {
		t.Fatalf("%s did not say where /metrics listens", c.instances[2].name)
	}
	resp, err := c.client.Get("http://" + m[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	families := parseMetrics(t, resp.Body)
	if up := metricValue(t, families, "usermgmt_database_up"); up != 1 {
		t.Errorf("usermgmt_database_up = %v, want 1", up)
	}
	total := 0.0
	for _, sample := range families["usermgmt_http_requests_total"].GetMetric() {
		total += sample.GetCounter().GetValue()
	}
	if total == 0 {
		t.Error("no requests counted")
	}
	t.Logf("metrics: %s counted %v requests since its restart, pool %v connections, outbox %v pending",
		c.instances[2].name, total, metricValue(t, families, "usermgmt_db_pool_connections"),
		metricValue(t, families, "usermgmt_mail_outbox_pending"))
}

// clusterStart: the three started together; exactly one applied the schema.
func clusterStart(t *testing.T, c *cluster) {
	applied := 0
	for _, i := range c.instances {
		log := i.proc.out.String()
		if strings.Contains(log, "msg=\"schema applied\"") {
			applied++
		} else if !strings.Contains(log, "msg=\"schema up to date\"") {
			t.Errorf("%s says nothing of the schema:\n%s", i.name, log)
		}
	}
	if applied != 1 {
		t.Errorf("%d instances applied the schema, want 1", applied)
	}
}

// jsonBody is the JSON text of v.
func jsonBody(v any) string {
	raw, _ := json.Marshal(v)
	return string(raw)
}

// loginOn logs in on instance i and returns the access and refresh tokens.
func loginOn(t *testing.T, i *instance, username string) (access, refresh string) {
	t.Helper()
	var tokens struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
	}
	if s := call(t, "POST", i.url()+"/api/auth/login", "", jsonBody(map[string]string{"username": username, "password": testPassword}), &tokens); s != 200 {
		t.Fatalf("login as %s on %s: %d", username, i.name, s)
	}
	return tokens.AccessToken, tokens.RefreshToken
}

func registerOn(t *testing.T, i *instance, username string) string {
	t.Helper()
	var created struct{ ID int64 }
	if s := call(t, "POST", i.url()+"/api/auth/register", "", jsonBody(map[string]string{"username": username, "first_name": "F",
		"last_name": "L", "email": username + "@example.com", "password": testPassword}), &created); s != 201 {
		t.Fatalf("register %s on %s: %d", username, i.name, s)
	}
	return strconv.FormatInt(created.ID, 10)
}

// expectOn sends a request to instance i and checks its status.
func expectOn(t *testing.T, i *instance, method, path, token string, body any, want int) {
	t.Helper()
	text := ""
	if body != nil {
		text = jsonBody(body)
	}
	if s := call(t, method, i.url()+path, token, text, nil); s != want {
		t.Errorf("%s %s on %s: %d, want %d", method, path, i.name, s, want)
	}
}

// clusterSharedState: what one instance does holds on the others at the next request.
func clusterSharedState(t *testing.T, c *cluster) {
	a, b, cc := c.instances[0], c.instances[1], c.instances[2]
	// Registered on one, logged in on another, used on the third; logged out on the first.
	registerOn(t, a, "alice")
	access, _ := loginOn(t, b, "alice")
	expectOn(t, cc, "GET", "/api/users/me", access, nil, 200)
	expectOn(t, a, "POST", "/api/auth/logout", access, nil, 200)
	expectOn(t, b, "GET", "/api/users/me", access, nil, 401)
	expectOn(t, cc, "GET", "/api/users/me", access, nil, 401)

	// Deactivated by an admin on one instance: refused on the others.
	registerOn(t, a, "boss")
	if _, err := c.db(t).Exec(context.Background(), "UPDATE users SET role = 'Admin' WHERE username = 'boss'"); err != nil {
		t.Fatal(err)
	}
	bossToken, _ := loginOn(t, b, "boss")
	bobID := registerOn(t, cc, "bob")
	bobToken, _ := loginOn(t, a, "bob")
	expectOn(t, b, "PATCH", "/api/users/"+bobID, bossToken, map[string]any{"is_active": false}, 200)
	expectOn(t, cc, "GET", "/api/users/me", bobToken, nil, 401)
	expectOn(t, a, "GET", "/api/users/me", bobToken, nil, 401)
	expectOn(t, cc, "POST", "/api/auth/login", "", map[string]string{"username": "bob", "password": testPassword}, 401)

	// Failures counted on all three lock the account on each.
	registerOn(t, b, "carol")
	for n := range 5 { // LOGIN_MAX_FAILURES
		expectOn(t, c.instances[n%3], "POST", "/api/auth/login", "", map[string]string{"username": "carol", "password": "wrong-password"}, 401)
	}
	for _, i := range c.instances {
		expectOn(t, i, "POST", "/api/auth/login", "", map[string]string{"username": "carol", "password": testPassword}, 429)
	}

	// A refresh token rotated on one instance and replayed on another ends the session on all.
	registerOn(t, cc, "dave")
	_, first := loginOn(t, a, "dave")
	var rotated struct {
		RefreshToken string `json:"refresh_token"`
	}
	if s := call(t, "POST", b.url()+"/api/auth/refresh", "", jsonBody(map[string]string{"refresh_token": first}), &rotated); s != 200 {
		t.Fatalf("refresh on %s: %d", b.name, s)
	}
	expectOn(t, cc, "POST", "/api/auth/refresh", "", map[string]string{"refresh_token": first}, 401)
	expectOn(t, a, "POST", "/api/auth/refresh", "", map[string]string{"refresh_token": rotated.RefreshToken}, 401)
}

// clusterKill: kill -9 of an instance under load loses no acknowledged write, fails no read,
// and the mail it held is sent by the others.
func clusterKill(t *testing.T, c *cluster) {
	victim := c.instances[1]
	l := c.startLoad(t, "kill")
	waitForReplies(t, l, 200)
	// The victim's mail server hangs: the message it is sending stays locked by it.
	db := c.db(t)
	waitFor(t, victim.name+" to hold a message", func() bool {
		var held int
		err := db.QueryRow(context.Background(), `SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL AND id NOT IN
			(SELECT id FROM mail_outbox WHERE sent_at IS NULL FOR UPDATE SKIP LOCKED)`).Scan(&held)
		return err == nil && held > 0
	})
	if err := victim.proc.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = victim.proc.wait()
	diedAt := time.Now() // requests sent before may have reached the dying process
	waitForRepliesAfter(t, l, diedAt, 200)
	l.finish(t)
	inFlight := 0
	for _, r := range l.replies {
		switch {
		case r.status == 502 && r.method != "GET" && r.start.Before(diedAt):
			inFlight++ // a write in flight on the killed instance: nginx may not resend it
		case r.status == 0 || r.status >= 500:
			t.Errorf("%s %s: %s, want no failure but 502 for a write in flight at the kill", r.method, r.path, statusKind(r.status))
		}
	}
	if inFlight > loadWorkers {
		t.Errorf("%d writes failed at the kill, more than the %d in flight", inFlight, loadWorkers)
	}
	t.Logf("kill: %d writes in flight on the killed instance answered 502", inFlight)
	waitFor(t, "the others to send every queued message", func() bool {
		var pending int
		err := db.QueryRow(context.Background(), "SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL").Scan(&pending)
		return err == nil && pending == 0
	})
	// Back, with mail that works, for the scenarios that follow.
	victim.env["MAIL_BACKEND"] = "log"
	c.start(t, victim)
	c.ready(t, victim)
}

// waitForReplies waits until the load has seen n replies.
func waitForReplies(t *testing.T, l *load, n int) {
	t.Helper()
	waitForRepliesAfter(t, l, time.Time{}, n)
}

// waitForRepliesAfter waits until the load has seen n replies to requests sent after since.
func waitForRepliesAfter(t *testing.T, l *load, since time.Time, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d replies", n), func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		count := 0
		for _, r := range l.replies {
			if r.start.After(since) {
				count++
			}
		}
		return count >= n
	})
}

// clusterOutage: with the database cut off, every reply is a JSON 503 and /healthz says so;
// once it is back, requests succeed again without a restart.
func clusterOutage(t *testing.T, c *cluster) {
	l := c.startLoad(t, "outage")
	waitForReplies(t, l, 100)
	c.proxy.stop()
	cutAt := time.Now()
	waitForRepliesAfter(t, l, cutAt, 100)
	for _, i := range c.instances {
		status, body := c.get(i.url() + "/healthz")
		if status != 503 || !strings.Contains(string(body), `"unavailable"`) {
			t.Errorf("%s /healthz with the database down: %d %s, want 503 unavailable\n%s", i.name, status, body, i.proc.out.String())
		}
	}
	c.proxy.restart(t)
	backAt := time.Now()
	waitFor(t, "every instance to reach the database again", func() bool {
		for _, i := range c.instances {
			if status, _ := c.get(i.url() + "/healthz"); status != 200 {
				return false
			}
		}
		return true
	})
	recovered := time.Since(backAt)
	waitForRepliesAfter(t, l, time.Now(), 100)
	l.finish(t)
	down, firstOK := 0, time.Time{}
	for _, r := range l.replies {
		if r.status >= 200 && r.status < 300 && r.start.After(backAt) && (firstOK.IsZero() || r.end.Before(firstOK)) {
			firstOK = r.end
		}
		// Sent after the cut (its effects settled: connections dropped) and answered before the return.
		if r.start.After(cutAt.Add(100*time.Millisecond)) && r.end.Before(backAt) {
			down++
			if r.status != 503 || !r.json {
				t.Errorf("%s %s with the database down: %s (JSON %v), want a JSON 503", r.method, r.path, statusKind(r.status), r.json)
			}
		} else if r.status == 0 || r.status >= 500 && r.status != 503 {
			t.Errorf("%s %s around the outage: %s, want a reply or a 503", r.method, r.path, statusKind(r.status))
		}
	}
	if down == 0 {
		t.Error("no request was answered while the database was down")
	}
	if t.Failed() {
		for _, i := range c.instances {
			for _, line := range strings.Split(i.proc.out.String(), "\n") {
				if strings.Contains(line, "level=ERROR") {
					t.Logf("%s: %s", i.name, line)
				}
			}
		}
	}
	t.Logf("outage: %d requests answered while the database was down; every instance healthy %v after it came back, "+
		"first request through nginx succeeded %v after", down, recovered.Round(time.Millisecond), firstOK.Sub(backAt).Round(time.Millisecond))
}

// clusterRollingRestart: SIGTERM to each instance in turn, each started again before the next,
// fails no request through nginx.
func clusterRollingRestart(t *testing.T, c *cluster) {
	l := c.startLoad(t, "rolling")
	waitForReplies(t, l, 100)
	for _, i := range c.instances {
		if err := i.proc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := i.proc.wait(); err != nil {
			t.Errorf("%s after SIGTERM: %v", i.name, err)
		}
		c.start(t, i)
		c.ready(t, i)
		// As an operator would: nginx's passive checks took the instance out for
		// fail_timeout (2 s in deploy/nginx.conf) when its connections were refused; only
		// once that is over does it get requests again, and the next may go.
		time.Sleep(2500 * time.Millisecond)
		waitForRepliesAfter(t, l, time.Now(), 50)
	}
	l.finish(t)
	for _, r := range l.replies {
		if r.status < 200 || r.status >= 300 {
			t.Errorf("%s %s during the rolling restart: %s, want success", r.method, r.path, statusKind(r.status))
		}
	}
	if t.Failed() {
		errors, _ := os.ReadFile(c.nginxLog)
		t.Logf("nginx's error log:\n%s", errors)
	}
}
