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
		{"invite", func(t *testing.T) {
			env.do(t, "POST", "/api/admin/users", adminToken, map[string]string{
				"username": "dana", "first_name": "Dana", "last_name": "Invited", "email": "dana@example.com",
			}).expect(t, http.StatusCreated)
		}, []string{"user.created"}, func(t *testing.T, e receivedEvent) {
			if !e.event.Data.User.Invited || *e.event.Data.ActorID != admin.ID {
				t.Errorf("event %s, want an invited user, by the admin", e.body)
			}
		}},
		{"accept invitation", func(t *testing.T) {
			env.acceptInvite(t, inviteToken(t, env, "dana@example.com"), "dana-chose-this-1").expect(t, http.StatusOK)
		}, []string{"user.email_verified", "session.created"}, func(t *testing.T, e receivedEvent) {
			if u := e.event.Data.User; u.Invited || !u.EmailVerified {
				t.Errorf("user %+v, want the invitation accepted and the address verified", u)
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

func TestWebhookEndpoints(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	admin := env.addUser(t, "admin", roleAdmin)
	token := env.tokenFor(t, admin)
	userToken := env.tokenFor(t, env.addUser(t, "plain", roleUser))

	created := env.do(t, "POST", "/api/admin/webhooks", token, map[string]any{
		"url": "https://hooks.example.com/in", "events": []string{"user.deleted", "user.created", "user.created"}, "description": "CRM",
	}).expect(t, http.StatusCreated).json(t)
	secret, _ := created["secret"].(string)
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if !strings.HasPrefix(secret, "whsec_") || err != nil || len(key) != 32 {
		t.Fatalf("secret %q, want whsec_ and the base64 of 32 bytes", secret)
	}
	if created["description"] != "CRM" || created["enabled"] != true || created["created_at"] == nil ||
		strings.Join(anyStrings(created["events"]), ",") != "user.created,user.deleted" {
		t.Errorf("created %v", created)
	}
	id := strconv.FormatInt(int64(created["id"].(float64)), 10)
	path := "/api/admin/webhooks/" + id

	var sealed string
	if err := env.st.pool.QueryRow(context.Background(), "SELECT secret FROM webhooks WHERE id = $1", id).Scan(&sealed); err != nil {
		t.Fatal(err)
	}
	if opened, err := env.st.sealer.open(sealed); err != nil || opened != secret || strings.Contains(sealed, secret[6:]) {
		t.Errorf("the secret is not sealed at rest: %q", sealed)
	}
	for _, r := range []response{env.do(t, "GET", path, token, nil), env.do(t, "GET", "/api/admin/webhooks", token, nil)} {
		r.expect(t, http.StatusOK)
		if strings.Contains(string(r.body), "secret") || !strings.Contains(string(r.body), "hooks.example.com") {
			t.Errorf("reply %s: want the webhook without its secret", r.body)
		}
	}
	if r := env.do(t, "GET", "/api/admin/webhooks", token, nil); r.header.Get("X-Total-Count") != "1" {
		t.Errorf("list total %q, want 1", r.header.Get("X-Total-Count"))
	}
	updated := env.do(t, "PATCH", path, token, map[string]any{"events": []string{"*"}, "enabled": false}).expect(t, http.StatusOK).json(t)
	if updated["enabled"] != false || strings.Join(anyStrings(updated["events"]), ",") != "*" || updated["url"] != "https://hooks.example.com/in" {
		t.Errorf("updated %v", updated)
	}
	expectError(t, env.do(t, "POST", path+"/ping", token, nil), http.StatusConflict)
	env.do(t, "DELETE", path, token, nil).expect(t, http.StatusOK)
	for _, r := range []response{env.do(t, "GET", path, token, nil), env.do(t, "PATCH", path, token, map[string]any{"enabled": true}),
		env.do(t, "DELETE", path, token, nil), env.do(t, "POST", path+"/rotate-secret", token, nil),
		env.do(t, "POST", path+"/ping", token, nil), env.do(t, "GET", path+"/deliveries", token, nil)} {
		expectError(t, r, http.StatusNotFound)
	}

	var actions []string
	rows, _ := env.st.pool.Query(context.Background(), "SELECT action FROM audit_log WHERE action LIKE 'webhook%' AND actor_id = $1 ORDER BY id", admin.ID)
	actions, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || strings.Join(actions, ",") != "webhook_created,webhook_updated,webhook_deleted" {
		t.Errorf("audited %v (%v), want the creation, the update and the deletion", actions, err)
	}

	for _, method := range []string{"GET", "POST"} {
		expectError(t, env.do(t, method, "/api/admin/webhooks", userToken, map[string]any{}), http.StatusForbidden)
	}
	expectError(t, env.do(t, "GET", "/api/admin/webhooks/abc", token, nil), http.StatusBadRequest)
}

func anyStrings(v any) []string {
	var s []string
	for _, e := range v.([]any) {
		s = append(s, e.(string))
	}
	return s
}

func TestWebhookValidation(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.webhook.allowHTTP = false; c.webhook.allowPrivate = false })
	token := env.tokenFor(t, env.addUser(t, "admin", roleAdmin))
	good := "https://hooks.example.com/in"
	for _, tc := range []struct {
		body   any
		fields []string
	}{
		{map[string]any{}, []string{"url", "events"}},
		{map[string]any{"url": good, "events": []string{}}, []string{"events"}},
		{map[string]any{"url": good, "events": []string{"user.nothing"}}, []string{"events"}},
		{map[string]any{"url": good, "events": []string{"*", "user.created"}}, []string{"events"}},
		{map[string]any{"url": good, "events": []string{"webhook.ping"}}, []string{"events"}},
		{map[string]any{"url": good, "events": "user.created"}, []string{"events"}},
		{map[string]any{"url": "hooks.example.com", "events": []string{"*"}}, []string{"url"}},
		{map[string]any{"url": "https://user:pw@hooks.example.com/", "events": []string{"*"}}, []string{"url"}},
		{map[string]any{"url": "https:///path", "events": []string{"*"}}, []string{"url"}},
		{map[string]any{"url": "https://192.168.0.1/", "events": []string{"*"}}, []string{"url"}},
		{map[string]any{"url": good, "events": []string{"*"}, "secret": "mine"}, []string{"secret"}},
		{map[string]any{"url": good, "events": []string{"*"}, "description": strings.Repeat("x", 501)}, []string{"description"}},
		{map[string]any{"url": good, "events": []string{"*"}, "enabled": nil}, []string{"enabled"}},
	} {
		expectError(t, env.do(t, "POST", "/api/admin/webhooks", token, tc.body), http.StatusBadRequest, tc.fields...)
	}
	id, _ := addWebhook(t, env, token, good, "*")
	path := "/api/admin/webhooks/" + strconv.FormatInt(id, 10)
	expectError(t, env.do(t, "PATCH", path, token, map[string]any{"url": "http://hooks.example.com/"}), http.StatusBadRequest, "url")
	expectError(t, env.do(t, "PATCH", path, token, map[string]any{"events": []string{}}), http.StatusBadRequest, "events")
	for _, q := range []string{"?status=lost", "?per_page=0", "?colour=red"} {
		expectError(t, env.do(t, "GET", path+"/deliveries"+q, token, nil), http.StatusBadRequest)
	}
	expectError(t, env.do(t, "POST", path+"/deliveries/x/retry", token, nil), http.StatusBadRequest)
	expectError(t, env.do(t, "POST", path+"/deliveries/99/retry", token, nil), http.StatusNotFound)
}

// Deliveries are listed newest first with their state; one is re-queued by retry; a ping goes
// to its webhook alone.
func TestWebhookDeliveriesRetryAndPing(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.webhook.maxAttempts = 1 })
	token := env.tokenFor(t, env.addUser(t, "admin", roleAdmin))
	rc, other := newReceiver(t), newReceiver(t)
	id, secret := addWebhook(t, env, token, rc.URL, "user.created")
	addWebhook(t, env, token, other.URL, "*")
	path := "/api/admin/webhooks/" + strconv.FormatInt(id, 10)
	rc.setReply(func(*http.Request) int { return http.StatusServiceUnavailable })
	env.addUser(t, "frank", roleUser)
	env.deliverWebhooks(t)
	other.take()
	list := deliveries(t, env, token, id)
	if len(list) != 1 || list[0].Status != "failed" || list[0].Type != "user.created" || *list[0].LastStatus != 503 ||
		list[0].NextAttemptAt != nil || !strings.HasPrefix(list[0].EventID, "evt_") || list[0].Attempts != 1 {
		t.Fatalf("deliveries %+v, want one failed with 503", list)
	}
	first := rc.take()[0]

	rc.setReply(nil)
	env.do(t, "POST", path+"/deliveries/"+strconv.FormatInt(list[0].ID, 10)+"/retry", token, nil).expect(t, http.StatusAccepted)
	if d := deliveries(t, env, token, id)[0]; d.Status != "pending" || d.Attempts != 0 {
		t.Fatalf("after retry: %+v, want pending afresh", d)
	}
	env.deliverWebhooks(t)
	again := rc.take()
	if len(again) != 1 || again[0].header.Get("webhook-id") != first.header.Get("webhook-id") || string(again[0].body) != string(first.body) {
		t.Fatalf("retried delivery %v, want the same event", again)
	}
	if d := deliveries(t, env, token, id)[0]; d.Status != "delivered" || d.DeliveredAt == nil || d.LastError != nil {
		t.Fatalf("after the retried attempt: %+v", d)
	}

	ping := env.do(t, "POST", path+"/ping", token, nil).expect(t, http.StatusAccepted).json(t)
	env.deliverWebhooks(t)
	got := rc.take()
	if len(got) != 1 || got[0].event.Type != "webhook.ping" || got[0].event.ID != ping["event_id"] || verifySignatures(t, got[0], secret) != 1 {
		t.Fatalf("ping: %v, want one signed webhook.ping %v", got, ping["event_id"])
	}
	if n := len(other.take()); n != 0 {
		t.Fatalf("the other webhook got %d requests for the ping", n)
	}
	if r := env.do(t, "GET", path+"/deliveries?status=delivered&per_page=1", token, nil).expect(t, http.StatusOK); r.header.Get("X-Total-Count") != "2" {
		t.Errorf("delivered count %q, want 2", r.header.Get("X-Total-Count"))
	}
}
