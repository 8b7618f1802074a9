package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// The test harness: every test gets its own PostgreSQL database, a clock it controls and a
// server built by newServer, talking real HTTP over a socket.

// testPassword is not on the common-password list, so that every path may set it.
const testPassword = "tulip-ferry-42"

// adminDatabaseURL is the database the tests connect to in order to create their own: the
// DATABASE_URL of the environment or of .env, as written by `make test`.
func adminDatabaseURL(t testing.TB) string {
	t.Helper()
	getenv, err := withEnvFile(os.Getenv, ".env")
	if err != nil {
		t.Fatalf("reading .env: %v", err)
	}
	u := getenv("DATABASE_URL")
	if u == "" {
		t.Fatal("no DATABASE_URL in the environment or .env: run `make test`, which starts PostgreSQL and writes .env, " +
			"or set DATABASE_URL to a PostgreSQL database whose role may CREATE DATABASE")
	}
	return u
}

// newTestDatabase creates an empty database for one test, dropped when the test ends, and
// returns its URL.
func newTestDatabase(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	adminURL := adminDatabaseURL(t)
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		t.Fatalf("connecting to DATABASE_URL: %v (run `make test`, which starts PostgreSQL)", err)
	}
	defer conn.Close(ctx)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "test_" + hex.EncodeToString(b)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("creating test database (the role of DATABASE_URL needs CREATEDB): %v", err)
	}
	t.Cleanup(func() { dropTestDatabase(t, adminURL, name) })
	u, err := url.Parse(adminURL)
	if err != nil {
		t.Fatalf("parsing DATABASE_URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// dropTestDatabase drops a test's database once its connections are gone. A plain DROP waits
// out autovacuum by itself, where WITH (FORCE) would need the right to signal it; a test whose
// own connections linger (a server still shutting down) is retried for a while.
func dropTestDatabase(t testing.TB, adminURL, name string) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		t.Errorf("dropping %s: %v", name, err)
		return
	}
	defer conn.Close(ctx)
	for attempt := 0; ; attempt++ {
		_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name)
		if err == nil || attempt == 100 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Errorf("dropping %s: %v", name, err)
	}
}

// deliverMail sends every due message of the outbox through the configured backend, as the
// background worker would, and returns them rendered.
func (e *testEnv) deliverMail(t testing.TB) []mailMessage {
	t.Helper()
	var sent []mailMessage
	for {
		found, err := e.st.deliverNext(context.Background(), e.cfg.mail.maxAttempts, func(m queuedMail) error {
			msg, err := sendQueued(e.cfg.mail, slog.New(slog.NewTextHandler(e.logs, nil)), m)
			if err == nil {
				sent = append(sent, msg)
			}
			return err
		})
		if err != nil {
			t.Fatalf("delivering mail: %v", err)
		}
		if !found {
			return sent
		}
	}
}

// testClock is a clock the test moves by hand.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// syncBuffer is a bytes.Buffer safe for the server's goroutines to log into.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testConfig is a valid configuration with a cheap bcrypt cost.
func testConfig(databaseURL string) config {
	return config{
		databaseURL:          databaseURL,
		keys:                 newKeySet([]byte("test-secret-test-secret-test-secret-0123"), nil),
		accessTTL:            time.Hour,
		refreshTTL:           30 * 24 * time.Hour,
		sessionLifetime:      90 * 24 * time.Hour,
		refreshReuseInterval: 10 * time.Second,
		loginMaxFailures:     5,
		authRateLimit:        0, // tests of the limit turn it on
		authRateBurst:        10,
		bcryptConcurrency:    4,
		addr:                 "127.0.0.1:0",
		bcryptCost:           4,
		passwordMinLength:    8,
		resetTTL:             time.Hour,
		verifyTTL:            24 * time.Hour,
		inviteTTL:            72 * time.Hour,
		commonPasswords:      loadCommonPasswords(),
		mfaIssuer:            "usermgmt",
		apiDocs:              true,
		mail: mailConfig{
			backend:        mailDummy,
			sender:         mail.Address{Address: "usermgmt@example.com"},
			connectTimeout: 5 * time.Second,
			commandTimeout: 5 * time.Second,
			totalTimeout:   10 * time.Second,
			maxAttempts:    3,
			publicURL:      "http://usermgmt.test",
			resetURL:       "http://usermgmt.test/reset?token={token}",
			verifyURL:      "http://usermgmt.test/verify?token={token}",
			inviteURL:      "http://usermgmt.test/welcome?token={token}",
		},
		// Test receivers are httptest servers: plain HTTP on loopback.
		webhook: webhookConfig{maxAttempts: 3, allowHTTP: true, allowPrivate: true, timeout: 5 * time.Second,
			pollInterval: 20 * time.Millisecond, inFlight: 4},
	}
}

// testEnv is one running service with its own database.
type testEnv struct {
	cfg    config
	st     *store
	clock  *testClock
	logs   *syncBuffer
	pw     *hasher // the server's
	server *httptest.Server
}

// newTestEnv starts a service on a fresh database; change may adjust the configuration.
func newTestEnv(t testing.TB, change ...func(*config)) *testEnv {
	t.Helper()
	cfg := testConfig(newTestDatabase(t))
	for _, c := range change {
		c(&cfg)
	}
	clock := &testClock{now: time.Now().UTC().Truncate(time.Second)}
	st, err := openStore(context.Background(), cfg, clock.Now, 5*time.Second)
	if err != nil {
		t.Fatalf("opening store: %v", err)
	}
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	env := &testEnv{cfg: cfg, st: st, clock: clock, logs: logs, pw: newHasher(cfg.bcryptCost, cfg.bcryptConcurrency)}
	env.server = checkedServer(t, newServer(cfg, st, env.pw, logger))
	t.Cleanup(func() {
		env.server.Close()
		st.close()
	})
	return env
}

// response is a reply as a test sees it.
type response struct {
	status int
	header http.Header
	body   []byte
}

// json decodes the body into a map; it fails the test when the body is not a JSON object.
func (r response) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v: %s", err, r.body)
	}
	return m
}

// message returns the "message" of a JSON reply.
func (r response) message(t testing.TB) string {
	t.Helper()
	msg, _ := r.json(t)["message"].(string)
	return msg
}

// do sends a request. body may be nil, a string or []byte (sent as is), or any other value
// (sent as JSON); token, when set, is sent as a bearer token.
func (e *testEnv) do(t testing.TB, method, path, token string, body any) response {
	t.Helper()
	var reader io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		reader = strings.NewReader(b)
	case []byte:
		reader = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		reader = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.server.URL+path, reader)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return send(t, req)
}

func send(t testing.TB, req *http.Request) response {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: body}
}

// expect fails the test unless the reply has the given status.
func (r response) expect(t testing.TB, status int) response {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body: %s", r.status, status, r.body)
	}
	return r
}

// addUser creates an active user with testPassword straight through the store.
func (e *testEnv) addUser(t testing.TB, username, role string) user {
	t.Helper()
	hash, err := newHasher(e.cfg.bcryptCost, 1).hash(context.Background(), testPassword)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id, err := e.st.createUser(ctx, newUser{
		Username: username, FirstName: "First " + username, LastName: "Last", Email: username + "@example.com",
	}, hash)
	if err != nil {
		t.Fatalf("adding user %s: %v", username, err)
	}
	if _, err := e.st.pool.Exec(ctx, "UPDATE users SET role = $2 WHERE id = $1", id, role); err != nil {
		t.Fatal(err)
	}
	u, err := e.st.userByID(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// login logs in through the API and returns the access token.
func (e *testEnv) login(t testing.TB, username, password string) string {
	t.Helper()
	r := e.do(t, "POST", "/api/auth/login", "", map[string]string{"username": username, "password": password})
	r.expect(t, http.StatusOK)
	token, _ := r.json(t)["access_token"].(string)
	return token
}

// tokenFor opens a session for u and returns its access token, as login would but without
// the bcrypt work.
func (e *testEnv) tokenFor(t testing.TB, u user) string {
	t.Helper()
	sessionID, _, err := e.st.startSession(context.Background(), u, u.Username, "", amrPassword)
	if err != nil {
		t.Fatal(err)
	}
	return signToken(e.cfg.keys, u.ID, u.TokenVersion, sessionID, e.clock.Now(), e.cfg.accessTTL)
}

// errorFields lists, sorted, the fields a reply's "errors" names.
func errorFields(t testing.TB, r response) []string {
	t.Helper()
	errs, _ := r.json(t)["errors"].(map[string]any)
	return slices.Sorted(maps.Keys(errs))
}

// requestReset asks for a reset of email's password, a minute after any earlier request (reset
// mail is capped at one a minute per account), and returns the reply: the standard message,
// with a token beside it only from the dummy mail backend.
func requestReset(t testing.TB, env *testEnv, email string) map[string]any {
	t.Helper()
	env.clock.Advance(61 * time.Second)
	body := env.do(t, "POST", "/api/auth/password-reset-request", "", map[string]string{"email": email}).
		expect(t, http.StatusOK).json(t)
	if body["message"] != resetRequestReply || env.cfg.mail.backend != mailDummy && len(body) != 1 {
		t.Errorf("reply %v, want only the standard message %q", body, resetRequestReply)
	}
	return body
}

// checkReply fails the test unless r is a JSON reply that is not a 5xx and carries the
// headers every response should; an error reply must hold a non-empty "message".
func checkReply(t testing.TB, r response) {
	t.Helper()
	if r.status >= 500 {
		t.Fatalf("status %d, want no 5xx; body: %s", r.status, r.body)
	}
	if mediaType, _, _ := mime.ParseMediaType(r.header.Get("Content-Type")); mediaType != "application/json" {
		t.Errorf("Content-Type %q, want application/json; body: %s", r.header.Get("Content-Type"), r.body)
	}
	for name, want := range map[string]string{
		"X-Content-Type-Options": "nosniff",
		"Cache-Control":          "no-store",
		"Referrer-Policy":        "no-referrer",
	} {
		if got := r.header.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if r.header.Get("X-Request-Id") == "" {
		t.Error("no X-Request-Id header")
	}
	if r.status >= 400 && r.message(t) == "" {
		t.Errorf("status %d without a message: %s", r.status, r.body)
	}
}

// expectError checks that r is a JSON error with the given status whose "errors" names each
// of fields.
func expectError(t testing.TB, r response, status int, fields ...string) {
	t.Helper()
	checkReply(t, r)
	r.expect(t, status)
	errs, _ := r.json(t)["errors"].(map[string]any)
	for _, f := range fields {
		if reason, _ := errs[f].(string); reason == "" {
			t.Errorf("errors does not name %q: %s", f, r.body)
		}
	}
}

// sendRaw sends body as is with the given Content-Type ("" sends none).
func sendRaw(t testing.TB, env *testEnv, method, path, token, contentType string, body []byte) response {
	t.Helper()
	req, err := http.NewRequest(method, env.server.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	r := send(t, req)
	if r.status >= 500 { // show why: the server's latest internal error
		logs := env.logs.String()
		if i := strings.LastIndex(logs, "internal error"); i >= 0 {
			line, _, _ := strings.Cut(logs[i:], "\n")
			t.Log("server log:", line)
		}
	}
	return r
}

// registerBody is a valid registration for username.
func registerBody(username string) map[string]any {
	return map[string]any{
		"username":   username,
		"first_name": "Ada",
		"last_name":  "Lovelace",
		"email":      username + "@example.com",
		"password":   "correct-horse",
	}
}

// emailOfLength returns a valid address exactly n characters long (n >= 12): "user@",
// then domain labels of at most 63 characters, then ".com".
func emailOfLength(n int) string {
	room := n - len("user@") - len(".com") // for the labels and the dots between them
	k := (room + 64) / 64                  // labels needed: k labels and k-1 dots hold 64k-1
	letters := room - (k - 1)
	labels := make([]string, k)
	for i := range labels {
		size := letters / k
		if i < letters%k {
			size++
		}
		labels[i] = strings.Repeat("a", size)
	}
	return "user@" + strings.Join(labels, ".") + ".com"
}

// tokenInMail returns the token stated in a message's text.
func tokenInMail(t *testing.T, text string) string {
	t.Helper()
	match := mailedToken.FindStringSubmatch(text)
	if match == nil {
		t.Fatalf("no token in the message:\n%s", text)
	}
	return match[1]
}

// userObjectKeys are exactly the keys of the user object of every reply.
var userObjectKeys = []string{"app_metadata", "created_at", "email", "email_verified", "first_name", "id", "invited",
	"is_active", "last_name", "mfa_enabled", "role", "updated_at", "user_metadata", "username"}

// decodeUser fails unless raw is a user object with exactly userObjectKeys and RFC 3339
// UTC timestamps, and returns it.
func decodeUser(t testing.TB, raw []byte) user {
	t.Helper()
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatalf("not a JSON object: %v: %s", err, raw)
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if !slices.Equal(keys, userObjectKeys) {
		t.Fatalf("user object keys %v, want %v: %s", keys, userObjectKeys, raw)
	}
	if bytes.Contains(raw, []byte("$2a$")) || bytes.Contains(raw, []byte("$2b$")) {
		t.Fatalf("user object holds a bcrypt hash: %s", raw)
	}
	for _, k := range []string{"created_at", "updated_at"} {
		var s string
		if err := json.Unmarshal(fields[k], &s); err != nil {
			t.Fatalf("%s is not a string: %s", k, fields[k])
		}
		if _, err := time.Parse(time.RFC3339, s); err != nil || !strings.HasSuffix(s, "Z") {
			t.Fatalf("%s = %q, want RFC 3339 in UTC", k, s)
		}
	}
	var u user
	if err := json.Unmarshal(raw, &u); err != nil {
		t.Fatalf("decoding user object: %v: %s", err, raw)
	}
	return u
}

// reload returns the stored row of u.
func reload(t testing.TB, env *testEnv, u user) user {
	t.Helper()
	got, err := env.st.userByID(context.Background(), u.ID)
	if err != nil {
		t.Fatalf("loading user %d: %v", u.ID, err)
	}
	return got
}

// resetTokenFor asks for a reset in dummy mode and returns the token of the reply.
func resetTokenFor(t *testing.T, env *testEnv, email string) string {
	t.Helper()
	token, _ := requestReset(t, env, email)["token"].(string)
	if token == "" {
		t.Fatalf("no reset token in the reply for %s", email)
	}
	return token
}

// postReset uses a reset token and returns the reply.
func postReset(t *testing.T, env *testEnv, token, password string) response {
	t.Helper()
	return env.do(t, "POST", "/api/auth/reset-password/"+token, "", map[string]string{"new_password": password})
}
