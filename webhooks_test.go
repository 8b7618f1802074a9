package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// receivedEvent is one request a test receiver got.
type receivedEvent struct {
	header http.Header
	body   []byte
	event  eventPayload
	raw    map[string]any // the body as plain JSON, to see every field sent
}

// receiver is a webhook endpoint for tests: it records every request and answers with the
// status reply returns (200 when nil).
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	events []receivedEvent
	reply  func(r *http.Request) int
}

func newReceiver(t *testing.T) *receiver {
	rc := &receiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var e receivedEvent
		e.header, e.body = r.Header.Clone(), body
		_ = json.Unmarshal(body, &e.event)
		_ = json.Unmarshal(body, &e.raw)
		rc.mu.Lock()
		rc.events = append(rc.events, e)
		reply := rc.reply
		rc.mu.Unlock()
		status := http.StatusOK
		if reply != nil {
			status = reply(r)
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(rc.Close)
	return rc
}

// take returns the requests received since the last call.
func (rc *receiver) take() []receivedEvent {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	events := rc.events
	rc.events = nil
	return events
}

func (rc *receiver) setReply(reply func(*http.Request) int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.reply = reply
}

// deliverWebhooks makes one attempt at every due delivery, as the worker would, and returns how
// many were attempted.
func (e *testEnv) deliverWebhooks(t testing.TB) int {
	t.Helper()
	client := webhookClient(e.cfg.webhook)
	logger := slog.New(slog.NewTextHandler(e.logs, nil))
	for n := 0; ; n++ {
		d, found, err := e.st.claimDelivery(context.Background(), e.cfg.webhook)
		if err != nil {
			t.Fatalf("claiming a delivery: %v", err)
		}
		if !found {
			return n
		}
		if err := e.st.sendDelivery(context.Background(), e.cfg.webhook, client, logger, d); err != nil {
			t.Fatalf("sending a delivery: %v", err)
		}
	}
}

// addWebhook creates a webhook through the API and returns its id and secret.
func addWebhook(t testing.TB, env *testEnv, token, url string, events ...string) (int64, string) {
	t.Helper()
	body := env.do(t, "POST", "/api/admin/webhooks", token, map[string]any{"url": url, "events": events}).
		expect(t, http.StatusCreated).json(t)
	secret, _ := body["secret"].(string)
	return int64(body["id"].(float64)), secret
}

// verifySignatures checks a request as a consumer would, written from the Standard Webhooks
// specification and apart from the server's signing: it returns how many of the header's
// v1 signatures are right under secret.
func verifySignatures(t testing.TB, e receivedEvent, secret string) int {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil || len(key) != 32 {
		t.Fatalf("secret %q is not whsec_ and the base64 of 32 bytes", secret)
	}
	mac := hmac.New(sha256.New, key)
	io.WriteString(mac, e.header.Get("webhook-id")+"."+e.header.Get("webhook-timestamp")+".")
	mac.Write(e.body)
	want := mac.Sum(nil)
	valid := 0
	for _, sig := range strings.Fields(e.header.Get("webhook-signature")) {
		version, encoded, _ := strings.Cut(sig, ",")
		got, err := base64.StdEncoding.DecodeString(encoded)
		if version == "v1" && err == nil && hmac.Equal(got, want) {
			valid++
		}
	}
	return valid
}

// deliveries lists a webhook's deliveries through the API.
func deliveries(t testing.TB, env *testEnv, token string, id int64) []webhookDelivery {
	t.Helper()
	var list []webhookDelivery
	r := env.do(t, "GET", "/api/admin/webhooks/"+strconv.FormatInt(id, 10)+"/deliveries", token, nil).expect(t, http.StatusOK)
	if err := json.Unmarshal(r.body, &list); err != nil {
		t.Fatal(err)
	}
	return list
}

func TestWebhookEventsFireOncePerChange(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	admin := env.addUser(t, "admin", roleAdmin)
	adminToken := env.tokenFor(t, admin)
	carol := env.addUser(t, "carol", roleUser) // promoted: bob is deleted at the end, and admins cannot delete admins
	rc := newReceiver(t)
	_, secret := addWebhook(t, env, adminToken, rc.URL, "*")

	var bob user
	var bobToken string
	steps := []struct {
		name      string
		change    func(t *testing.T)
		wantTypes []string // the last one is checked
		check     func(t *testing.T, e receivedEvent)
	}{
		{"register", func(t *testing.T) {
			id := env.do(t, "POST", "/api/auth/register", "", registerBody("bob")).expect(t, http.StatusCreated).json(t)["id"]
			bob = reload(t, env, user{ID: int64(id.(float64))})
		}, []string{"user.created"}, nil},
		{"login", func(t *testing.T) { bobToken = env.login(t, "bob", "correct-horse") }, []string{"session.created"},
			func(t *testing.T, e receivedEvent) {
				if e.event.Data.Details["session_id"] == nil || *e.event.Data.TargetID != bob.ID {
					t.Errorf("event %s, want bob's session", e.body)
				}
			}},
		{"profile", func(t *testing.T) {
			env.do(t, "PATCH", "/api/users/"+strconv.FormatInt(bob.ID, 10), bobToken, map[string]string{"first_name": "Robert"}).expect(t, http.StatusOK)
		}, []string{"user.updated"}, func(t *testing.T, e receivedEvent) {
			if e.event.Data.User.FirstName != "Robert" || !strings.Contains(string(e.body), `"fields":["first_name"]`) {
				t.Errorf("event %s, want the new name and the field changed", e.body)
			}
		}},
		{"logout", func(t *testing.T) {
			env.do(t, "POST", "/api/auth/logout", bobToken, nil).expect(t, http.StatusOK)
		}, []string{"session.revoked"}, nil},
		{"verify", func(t *testing.T) {
			msgs := mailsOf(env.deliverMail(t), mailVerifyEmail, bob.Email)
			verifyWith(t, env, tokenInMail(t, msgs[0].text)).expect(t, http.StatusOK)
		}, []string{"user.email_verified"}, func(t *testing.T, e receivedEvent) {
			if !e.event.Data.User.EmailVerified {
				t.Errorf("user %+v, want verified", e.event.Data.User)
			}
		}},
		{"role", func(t *testing.T) {
			env.do(t, "PATCH", "/api/users/"+strconv.FormatInt(carol.ID, 10), adminToken, map[string]string{"role": "Admin"}).expect(t, http.StatusOK)
		}, []string{"user.role_changed"}, func(t *testing.T, e receivedEvent) {
			if e.event.Data.User.Role != roleAdmin || *e.event.Data.ActorID != admin.ID || e.event.Data.User.ID != carol.ID {
				t.Errorf("event %s, want carol an admin, by the admin", e.body)
			}
		}},
		{"password change", func(t *testing.T) {
			env.do(t, "POST", "/api/auth/change-password", env.tokenFor(t, reload(t, env, bob)), map[string]string{
				"current_password": "correct-horse", "new_password": testPassword}).expect(t, http.StatusOK)
		}, []string{"session.created", "user.password_changed"}, nil},
		{"password reset", func(t *testing.T) {
			postReset(t, env, resetTokenFor(t, env, bob.Email), "another-fine-password").expect(t, http.StatusOK)
		}, []string{"user.password_changed"}, nil},
		{"activation", func(t *testing.T) {
			env.do(t, "PATCH", "/api/users/"+strconv.FormatInt(bob.ID, 10), adminToken, map[string]any{"is_active": false}).expect(t, http.StatusOK)
		}, []string{"user.activation_changed"}, func(t *testing.T, e receivedEvent) {
			if e.event.Data.User.IsActive {
				t.Errorf("user %+v, want inactive", e.event.Data.User)
			}
		}},
		{"delete", func(t *testing.T) {
			env.do(t, "DELETE", "/api/users/"+strconv.FormatInt(bob.ID, 10), adminToken, nil).expect(t, http.StatusOK)
		}, []string{"user.deleted"}, func(t *testing.T, e receivedEvent) {
			if user, ok := e.raw["data"].(map[string]any)["user"]; !ok || user != nil {
				t.Errorf("event %s, want the user null", e.body)
			}
		}},
	}
	for _, step := range steps {
		step.change(t)
		env.deliverWebhooks(t)
		got := rc.take()
		var types []string
		for _, e := range got {
			types = append(types, e.event.Type)
		}
		if !slices.Equal(types, step.wantTypes) {
			t.Fatalf("%s: events %v, want %v", step.name, types, step.wantTypes)
		}
		e := got[len(got)-1]
		if verifySignatures(t, e, secret) != 1 || e.header.Get("webhook-id") != e.event.ID || !strings.HasPrefix(e.event.ID, "evt_") {
			t.Errorf("%s: headers %v do not sign event %s", step.name, e.header, e.event.ID)
		}
		if body := string(e.body); strings.Contains(body, "password") && !strings.Contains(body, "password_changed") ||
			strings.Contains(body, "hash") || strings.Contains(body, "token") {
			t.Errorf("%s: event %s holds a secret", step.name, body)
		}
		data := e.raw["data"].(map[string]any)
		for _, key := range []string{"actor_id", "target_id", "ip", "details", "user"} {
			if _, ok := data[key]; !ok {
				t.Errorf("%s: data %v lacks %s", step.name, data, key)
			}
		}
		if e.event.Type != "user.deleted" && (e.event.Data.User == nil || e.event.Data.User.ID == 0) {
			t.Errorf("%s: event %s lacks the user", step.name, e.body)
		}
		if step.check != nil {
			step.check(t, e)
		}
	}
}

// A webhook receives only the types it subscribed to; a disabled one receives nothing.
func TestWebhookSubscriptions(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	token := env.tokenFor(t, env.addUser(t, "admin", roleAdmin))
	deleted, created := newReceiver(t), newReceiver(t)
	addWebhook(t, env, token, deleted.URL, "user.deleted")
	id, _ := addWebhook(t, env, token, created.URL, "user.created", "user.deleted")
	env.addUser(t, "carol", roleUser)
	env.deliverWebhooks(t)
	if d, c := deleted.take(), created.take(); len(d) != 0 || len(c) != 1 {
		t.Fatalf("deleted-only got %d, created got %d; want 0 and 1", len(d), len(c))
	}
	env.do(t, "PATCH", "/api/admin/webhooks/"+strconv.FormatInt(id, 10), token, map[string]any{"enabled": false}).expect(t, http.StatusOK)
	env.addUser(t, "dave", roleUser)
	if n := env.deliverWebhooks(t); n != 0 || len(created.take()) != 0 {
		t.Fatalf("a disabled webhook was sent %d events", n)
	}
}

// An event exists if and only if its change committed.
func TestWebhookNoEventForRolledBackChange(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	token := env.tokenFor(t, env.addUser(t, "admin", roleAdmin))
	rc := newReceiver(t)
	addWebhook(t, env, token, rc.URL, "*")
	ctx := context.Background()
	undone := context.Canceled
	err := pgx.BeginFunc(ctx, env.st.pool, func(tx pgx.Tx) error {
		if err := env.st.audit(ctx, tx, auditRegister, 0, 0, nil); err != nil {
			return err
		}
		return undone
	})
	if err != undone {
		t.Fatal(err)
	}
	// The change that fails inside the store: a taken username is refused after the checks.
	env.do(t, "POST", "/api/auth/register", "", registerBody("admin")).expect(t, http.StatusConflict)
	if n := env.deliverWebhooks(t); n != 0 || len(rc.take()) != 0 {
		t.Fatalf("%d deliveries for changes undone", n)
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
