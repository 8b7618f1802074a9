package main

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestWebhookSecretRotation(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	token := env.tokenFor(t, env.addUser(t, "admin", roleAdmin))
	rc := newReceiver(t)
	id, oldSecret := addWebhook(t, env, token, rc.URL, "user.created")
	path := "/api/admin/webhooks/" + strconv.FormatInt(id, 10)
	body := env.do(t, "POST", path+"/rotate-secret", token, nil).expect(t, http.StatusOK).json(t)
	newSecret, _ := body["secret"].(string)
	if newSecret == oldSecret || !strings.HasPrefix(newSecret, "whsec_") || body["previous_secret_expires_at"] == nil {
		t.Fatalf("rotation reply %v", body)
	}
	env.addUser(t, "first", roleUser)
	env.deliverWebhooks(t)
	e := rc.take()[0]
	if n := len(strings.Fields(e.header.Get("webhook-signature"))); n != 2 ||
		verifySignatures(t, e, oldSecret) != 1 || verifySignatures(t, e, newSecret) != 1 {
		t.Fatalf("during the overlap: signatures %q, want one under each secret", e.header.Get("webhook-signature"))
	}
	env.clock.Advance(previousSecretOverlap + time.Second)
	env.addUser(t, "second", roleUser)
	env.deliverWebhooks(t)
	e = rc.take()[0]
	if n := len(strings.Fields(e.header.Get("webhook-signature"))); n != 1 ||
		verifySignatures(t, e, oldSecret) != 0 || verifySignatures(t, e, newSecret) != 1 {
		t.Fatalf("after the overlap: signatures %q, want the new secret's alone", e.header.Get("webhook-signature"))
	}
}

// A secret sealed under JWT_SECRET_KEY_PREVIOUS still signs, and is sealed again under the
// current key, so that it survives the next rotation of the key.
func TestWebhookSecretResealedAfterKeyRotation(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	token := env.tokenFor(t, env.addUser(t, "admin", roleAdmin))
	rc := newReceiver(t)
	id, secret := addWebhook(t, env, token, rc.URL, "user.created")
	oldKey := env.cfg.keys.current.secret
	rotated := newSealer(newKeySet([]byte("a-newer-test-secret-of-32-bytes-or-more"), oldKey))
	env.st.sealer = rotated
	env.addUser(t, "first", roleUser)
	env.deliverWebhooks(t)
	if e := rc.take(); len(e) != 1 || verifySignatures(t, e[0], secret) != 1 {
		t.Fatal("not signed with the secret sealed under the previous key")
	}
	var sealed string
	if err := env.st.pool.QueryRow(context.Background(), "SELECT secret FROM webhooks WHERE id = $1", id).Scan(&sealed); err != nil {
		t.Fatal(err)
	}
	if _, byPrevious, err := rotated.openKey(sealed); err != nil || byPrevious || strings.Contains(sealed, secret) {
		t.Fatalf("secret not sealed again under the current key: %v %v", byPrevious, err)
	}
}

func TestWebhookPublicIP(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1": false, "127.1.2.3": false, "10.0.0.1": false, "172.16.5.4": false, "192.168.1.1": false,
		"169.254.169.254": false, "0.0.0.0": false, "::1": false, "::": false, "fe80::1": false, "fc00::1": false,
		"::ffff:127.0.0.1": false, "::ffff:10.1.1.1": false, "224.0.0.1": false, "ff02::1": false,
		"100.100.100.200": false, "198.18.0.1": false, "255.255.255.255": false, "240.1.2.3": false,
		"64:ff9b::7f00:1": false, "64:ff9b::a9fe:a9fe": false, "2002:c0a8:101::1": false, "2002:0a00:0001::": false,
		"8.8.8.8": true, "2001:4860:4860::8888": true, "::ffff:8.8.8.8": true, "64:ff9b::808:808": true, "2002:808:808::1": true,
		"100.63.255.255": true, "100.128.0.1": true,
	} {
		if got := publicIP(netip.MustParseAddr(addr)); got != want {
			t.Errorf("publicIP(%s) = %v, want %v", addr, got, want)
		}
	}
}

// Without WEBHOOK_ALLOW_PRIVATE, an internal address is refused when saved when it is written
// as one, and when dialled however the name resolves (DNS rebinding gets no further).
func TestWebhookSSRF(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.webhook.allowPrivate = false })
	token := env.tokenFor(t, env.addUser(t, "admin", roleAdmin))
	for _, url := range []string{"http://127.0.0.1:9/hook", "http://[::1]/", "http://localhost/", "http://10.0.0.7/",
		"http://169.254.169.254/latest/meta-data", "http://0.0.0.0/", "http://[::ffff:127.0.0.1]/"} {
		r := env.do(t, "POST", "/api/admin/webhooks", token, map[string]any{"url": url, "events": []string{"*"}})
		expectError(t, r, http.StatusBadRequest, "url")
	}
	rc := newReceiver(t)
	// A name that resolves to loopback when dialled, stored as a rebound name would have been.
	if _, err := env.st.createWebhook(context.Background(), user{}, webhookPatch{
		URL: ptr(strings.Replace(rc.URL, "127.0.0.1", "localhost", 1)), Events: &[]string{"*"}}); err != nil {
		t.Fatal(err)
	}
	env.addUser(t, "victim", roleUser)
	if n := env.deliverWebhooks(t); n != 1 || len(rc.take()) != 0 {
		t.Fatalf("%d attempts; the loopback receiver was reached", n)
	}
	var lastError string
	if err := env.st.pool.QueryRow(context.Background(), "SELECT last_error FROM webhook_deliveries").Scan(&lastError); err != nil ||
		!strings.Contains(lastError, "WEBHOOK_ALLOW_PRIVATE") {
		t.Fatalf("last error %q, %v: want the refusal", lastError, err)
	}
}

func ptr[T any](v T) *T { return &v }

// Only https:// unless WEBHOOK_ALLOW_HTTP.
func TestWebhookHTTPSOnly(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.webhook.allowHTTP = false })
	token := env.tokenFor(t, env.addUser(t, "admin", roleAdmin))
	for url, status := range map[string]int{
		"http://hooks.example.com/": http.StatusBadRequest, "ftp://hooks.example.com/": http.StatusBadRequest,
		"https://hooks.example.com/in": http.StatusCreated,
	} {
		r := env.do(t, "POST", "/api/admin/webhooks", token, map[string]any{"url": url, "events": []string{"*"}})
		if r.status != status {
			t.Errorf("%s: status %d, want %d: %s", url, r.status, status, r.body)
		}
	}
}

// A redirect is not followed, and a reply is read no further than 64 KiB.
func TestWebhookRedirectAndReplyCap(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	token := env.tokenFor(t, env.addUser(t, "admin", roleAdmin))
	target := newReceiver(t)
	redirect := httptest.NewServer(http.RedirectHandler(target.URL, http.StatusTemporaryRedirect))
	t.Cleanup(redirect.Close)
	redirectID, _ := addWebhook(t, env, token, redirect.URL, "user.created")
	endless := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 32<<10)
		for i := 0; i < 100_000 && r.Context().Err() == nil; i++ { // 3 GiB at most: ends when the client hangs up
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(endless.Close)
	endlessID, _ := addWebhook(t, env, token, endless.URL, "user.created")
	env.addUser(t, "someone", roleUser)
	env.deliverWebhooks(t)
	if d := deliveries(t, env, token, redirectID)[0]; d.Status != "pending" || d.LastStatus == nil || *d.LastStatus != 307 || len(target.take()) != 0 {
		t.Errorf("redirect: %+v, want a failed attempt with 307 and nothing sent to its target", d)
	}
	if d := deliveries(t, env, token, endlessID)[0]; d.Status != "delivered" {
		t.Errorf("endless reply: %+v, want delivered without reading it all", d)
	}
}

// A delivery queued before a restart is sent by the next instance; one claimed by an instance
// that died mid-send is sent by another once its lease runs out.
func TestWebhookSurvivesRestart(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	token := env.tokenFor(t, env.addUser(t, "admin", roleAdmin))
	rc := newReceiver(t)
	id, _ := addWebhook(t, env, token, rc.URL, "user.created")
	env.addUser(t, "before-restart", roleUser)
	env.st.close()
	next, err := openStore(context.Background(), env.cfg, env.clock.Now, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer next.close()
	after := *env
	after.st = next
	if n := after.deliverWebhooks(t); n != 1 {
		t.Fatalf("after the restart: %d sent, want 1", n)
	}

	// Another instance claims the next delivery, then dies mid-send (kill -9): its lease holds
	// the delivery, and then it is sent by the instance still running.
	after.addUser(t, "claimed-when-killed", roleUser)
	killed, err := openStore(context.Background(), env.cfg, env.clock.Now, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(killed.close)
	if _, found, err := killed.claimDelivery(context.Background(), env.cfg.webhook); err != nil || !found {
		t.Fatalf("claim: %v %v", found, err)
	}
	killed.close()
	if n := after.deliverWebhooks(t); n != 0 {
		t.Fatalf("%d sent while another instance's lease held it", n)
	}
	after.clock.Advance(env.cfg.webhook.lease() + time.Second)
	if n := after.deliverWebhooks(t); n != 1 {
		t.Fatalf("after the lease: %d sent, want the one the dead instance held", n)
	}
	var got []string
	for _, e := range rc.take() {
		got = append(got, e.event.Data.User.Username)
	}
	if strings.Join(got, ",") != "before-restart,claimed-when-killed" {
		t.Fatalf("received %v", got)
	}
	var pending int
	if err := next.pool.QueryRow(context.Background(), `SELECT count(*) FROM webhook_deliveries
		WHERE webhook_id = $1 AND status <> 'delivered'`, id).Scan(&pending); err != nil || pending != 0 {
		t.Fatalf("%d deliveries not delivered, %v", pending, err)
	}
}

// Two instances' workers, running together, deliver each event once; a slow endpoint holds
// up neither the other endpoint nor an API reply.
func TestWebhookTwoInstancesDeliverOnce(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	token := env.tokenFor(t, env.addUser(t, "admin", roleAdmin))
	fast, slow := newReceiver(t), newReceiver(t)
	release := make(chan struct{})
	slow.setReply(func(*http.Request) int { <-release; return http.StatusOK })
	fastID, _ := addWebhook(t, env, token, fast.URL, "user.created")
	slowID, _ := addWebhook(t, env, token, slow.URL, "user.created")

	ctx, cancel := context.WithCancel(context.Background())
	var workers sync.WaitGroup
	for range 2 {
		st, err := openStore(ctx, env.cfg, env.clock.Now, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		workers.Add(1)
		go func() {
			defer workers.Done()
			defer st.close()
			runWebhooks(ctx, env.cfg.webhook, st, slog.New(slog.NewTextHandler(env.logs, nil)))
		}()
	}
	defer func() { close(release); cancel(); workers.Wait() }()

	const events = 30
	for i := range events {
		env.do(t, "POST", "/api/auth/register", "", registerBody("user"+strconv.Itoa(i))).expect(t, http.StatusCreated)
	}
	delivered := func(id int64) int {
		var n int
		if err := env.st.pool.QueryRow(context.Background(), `SELECT count(*) FROM webhook_deliveries
			WHERE webhook_id = $1 AND status = 'delivered'`, id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor(t, "every event delivered to the fast endpoint", func() bool { return delivered(fastID) == events })
	if n := delivered(slowID); n != 0 {
		t.Fatalf("the slow endpoint answered %d while held", n)
	}
	seen := map[string]int{}
	for _, e := range fast.take() {
		seen[e.header.Get("webhook-id")]++
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("event %s delivered %d times", id, n)
		}
	}
	if len(seen) != events {
		t.Errorf("%d events received, want %d", len(seen), events)
	}
}

// Events are queued in the change's transaction: a webhook table that cannot be written makes
// the change fail, rather than commit without its event.
func TestWebhookEnqueueIsPartOfTheChange(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	token := env.tokenFor(t, env.addUser(t, "admin", roleAdmin))
	rc := newReceiver(t)
	addWebhook(t, env, token, rc.URL, "user.created")
	ctx := context.Background()
	audited := func() (n int) {
		if err := env.st.pool.QueryRow(ctx, "SELECT count(*) FROM audit_log WHERE action = $1", auditRegister).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := audited()
	if _, err := env.st.pool.Exec(ctx, "ALTER TABLE webhook_deliveries ADD CONSTRAINT no_rows CHECK (false) NOT VALID"); err != nil {
		t.Fatal(err)
	}
	err := pgx.BeginFunc(ctx, env.st.pool, func(tx pgx.Tx) error { return env.st.audit(ctx, tx, auditRegister, 0, 0, nil) })
	if err == nil {
		t.Fatal("the change committed without its event")
	}
	if n := audited(); n != before {
		t.Fatalf("%d register audit rows, want %d: the change stood without its event", n, before)
	}
}

func TestWebhookRetries(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.webhook.timeout = 300 * time.Millisecond; c.webhook.maxAttempts = 4 })
	token := env.tokenFor(t, env.addUser(t, "admin", roleAdmin))
	rc := newReceiver(t)
	id, _ := addWebhook(t, env, token, rc.URL, "user.created")
	release := make(chan struct{})
	defer close(release)
	replies := []func(*http.Request) int{
		func(*http.Request) int { return http.StatusInternalServerError },
		func(r *http.Request) int { // slower than the timeout: the server hangs up first
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return http.StatusOK
		},
	}
	env.addUser(t, "erin", roleUser)
	for attempt, reply := range replies {
		rc.setReply(reply)
		if n := env.deliverWebhooks(t); n != 1 {
			t.Fatalf("attempt %d: %d deliveries made, want 1", attempt+1, n)
		}
		d := deliveries(t, env, token, id)[0]
		if d.Status != "pending" || d.Attempts != attempt+1 || d.LastError == nil || d.NextAttemptAt == nil {
			t.Fatalf("after attempt %d: %+v, want pending with an error", attempt+1, d)
		}
		if attempt == 0 && (d.LastStatus == nil || *d.LastStatus != 500) {
			t.Fatalf("after a 500: last status %v", d.LastStatus)
		}
		if n := env.deliverWebhooks(t); n != 0 {
			t.Fatalf("retried before its back-off")
		}
		env.clock.Advance(webhookRetryDelay(attempt + 1))
	}
	// Connection refused: the receiver is gone. The last attempt gives up.
	rc.Close()
	for attempt := len(replies) + 1; attempt <= 4; attempt++ {
		if n := env.deliverWebhooks(t); n != 1 {
			t.Fatalf("attempt %d: %d deliveries made, want 1", attempt, n)
		}
		env.clock.Advance(webhookRetryDelay(attempt))
	}
	d := deliveries(t, env, token, id)[0]
	if d.Status != "failed" || d.Attempts != 4 || d.LastError == nil || !strings.Contains(*d.LastError, "refused") {
		t.Fatalf("after the last attempt: %+v, want failed, connection refused", d)
	}
	if n := env.deliverWebhooks(t); n != 0 {
		t.Fatal("a failed delivery was tried again")
	}
	if s := rc.take(); len(s) != 2 {
		t.Fatalf("receiver got %d requests, want 2", len(s))
	}
}

// The back-off grows to about a day over the default 12 attempts.
func TestWebhookRetryDelaySpansADay(t *testing.T) {
	var total time.Duration
	for attempt := 1; attempt < 12; attempt++ {
		d := webhookRetryDelay(attempt)
		if j := jittered(d); j > d || j < d*3/4 {
			t.Errorf("jittered(%v) = %v", d, j)
		}
		total += d
	}
	if total < 20*time.Hour || total > 30*time.Hour {
		t.Errorf("12 attempts span %v, want about a day", total)
	}
}

// The janitor deletes deliveries delivered more than 30 days ago, and keeps failed ones.
func TestWebhookDeliveriesSwept(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.webhook.maxAttempts = 1 })
	token := env.tokenFor(t, env.addUser(t, "admin", roleAdmin))
	good, bad := newReceiver(t), newReceiver(t)
	bad.setReply(func(*http.Request) int { return http.StatusGone })
	goodID, _ := addWebhook(t, env, token, good.URL, "user.created")
	badID, _ := addWebhook(t, env, token, bad.URL, "user.created")
	env.addUser(t, "gina", roleUser)
	env.deliverWebhooks(t)
	count := func(id int64, status string) (n int) { // the tokens expire as the days pass
		err := env.st.pool.QueryRow(context.Background(), "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1 AND status = $2",
			id, status).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, days := range []int{29, 2} {
		env.clock.Advance(time.Duration(days) * 24 * time.Hour)
		if err := env.st.deleteExpired(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n := count(goodID, "delivered"); n != map[int]int{29: 1, 2: 0}[days] {
			t.Errorf("after %d more days: %d delivered deliveries kept", days, n)
		}
	}
	if n := count(badID, "failed"); n != 1 {
		t.Errorf("%d failed deliveries kept, want 1", n)
	}
}

// The real program runs the worker: an event is delivered with nothing but the server running.
func TestWebhookRunDelivers(t *testing.T) {
	t.Parallel()
	env := runEnv(t)
	env["WEBHOOK_ALLOW_HTTP"], env["WEBHOOK_ALLOW_PRIVATE"] = "true", "true"
	base, cancel, done := startRun(t, env)
	register := func(name string) {
		body := `{"username": "` + name + `", "first_name": "A", "last_name": "B", "email": "` + name + `@example.com", "password": "first-password"}`
		if s := call(t, "POST", base+"/api/auth/register", "", body, nil); s != http.StatusCreated {
			t.Fatalf("register %s: %d", name, s)
		}
	}
	register("root")
	conn, err := pgx.Connect(context.Background(), env["DATABASE_URL"])
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(context.Background(), "UPDATE users SET role = 'Admin' WHERE username = 'root'")
	conn.Close(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var login struct {
		AccessToken string `json:"access_token"`
	}
	if s := call(t, "POST", base+"/api/auth/login", "", `{"username": "root", "password": "first-password"}`, &login); s != http.StatusOK {
		t.Fatalf("login: %d", s)
	}
	rc := newReceiver(t)
	var created struct{ Secret string }
	if s := call(t, "POST", base+"/api/admin/webhooks", login.AccessToken, `{"url": "`+rc.URL+`", "events": ["user.created"]}`, &created); s != http.StatusCreated {
		t.Fatalf("create webhook: %d", s)
	}
	register("newcomer")
	var got []receivedEvent
	waitFor(t, "the event", func() bool { got = append(got, rc.take()...); return len(got) > 0 })
	if len(got) != 1 || got[0].event.Data.User.Username != "newcomer" || verifySignatures(t, got[0], created.Secret) != 1 {
		t.Fatalf("received %+v", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
