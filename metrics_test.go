package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape reads /metrics of env's process and parses it with Prometheus's own parser, which
// fails on anything that is not valid text exposition format.
func scrape(t *testing.T, st *store, pw *hasher) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	handleMetrics(st, pw).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q, want the text exposition format", ct)
	}
	return parseMetrics(t, rec.Body)
}

func parseMetrics(t *testing.T, r io.Reader) map[string]*dto.MetricFamily {
	t.Helper()
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(r)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return families
}

// metricValue returns the value of the sample of name whose labels include want (name=value
// pairs), failing the test when there is none.
func metricValue(t *testing.T, families map[string]*dto.MetricFamily, name string, want ...string) float64 {
	t.Helper()
	family := families[name]
	if family == nil {
		t.Fatalf("no metric %s", name)
	}
	for _, m := range family.Metric {
		if hasLabels(m, want) {
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	t.Fatalf("no sample of %s with labels %v", name, want)
	return 0
}

func hasLabels(m *dto.Metric, want []string) bool {
	for i := 0; i+1 < len(want); i += 2 {
		if !slices.ContainsFunc(m.Label, func(l *dto.LabelPair) bool { return l.GetName() == want[i] && l.GetValue() == want[i+1] }) {
			return false
		}
	}
	return true
}

func TestMetricsCountRequestsLoginsAndState(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.loginMaxFailures = 2 })
	env.addUser(t, "alice", roleAdmin) // queues a verification mail
	bob := env.addUser(t, "bob", roleUser)
	token := env.login(t, "alice", testPassword)
	env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "bob", "password": "wrong-password"}).expect(t, 401)
	env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "bob", "password": "wrong-password"}).expect(t, 401)
	env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "bob", "password": testPassword}).expect(t, 429)
	env.do(t, "GET", "/api/users/"+strconv.FormatInt(bob.ID, 10), token, nil).expect(t, 200)
	env.do(t, "GET", "/api/users/987654321", token, nil).expect(t, 404)
	env.do(t, "GET", "/no/such/path/secret-token-value", "", nil).expect(t, 404)
	req, _ := http.NewRequest("BREW", env.server.URL+"/api/users/me", nil)
	send(t, req)
	// Webhook deliveries: one waiting, two given up on, one delivered.
	if _, err := env.st.pool.Exec(context.Background(), `WITH hook AS (
			INSERT INTO webhooks (url, events, secret, created_at, updated_at)
			VALUES ('https://hooks.example.com/', '{*}', 'sealed', now(), now()) RETURNING id)
		INSERT INTO webhook_deliveries (webhook_id, event_id, type, payload, status, created_at, next_attempt_at)
		SELECT hook.id, 1, 'user.created', '{}', status, now(), now() FROM hook,
			unnest(ARRAY['pending', 'failed', 'failed', 'delivered']) AS status`); err != nil {
		t.Fatal(err)
	}

	got := scrape(t, env.st, env.pw)
	checks := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"usermgmt_http_requests_total", []string{"route", "POST /api/auth/login", "method", "POST", "status", "2xx"}, 1},
		{"usermgmt_http_requests_total", []string{"route", "POST /api/auth/login", "method", "POST", "status", "4xx"}, 3},
		{"usermgmt_http_requests_total", []string{"route", "GET /api/users/{id}", "method", "GET", "status", "2xx"}, 1},
		{"usermgmt_http_requests_total", []string{"route", "GET /api/users/{id}", "method", "GET", "status", "4xx"}, 1},
		{"usermgmt_http_requests_total", []string{"route", "unmatched", "method", "GET", "status", "4xx"}, 1},
		{"usermgmt_http_requests_total", []string{"route", "unmatched", "method", "other", "status", "4xx"}, 1},
		{"usermgmt_http_request_duration_seconds", []string{"route", "POST /api/auth/login"}, 4},
		{"usermgmt_logins_total", []string{"outcome", "success"}, 1},
		{"usermgmt_logins_total", []string{"outcome", "failure"}, 2},
		{"usermgmt_logins_total", []string{"outcome", "locked"}, 1},
		{"usermgmt_logins_total", []string{"outcome", "unverified"}, 0},
		{"usermgmt_rate_limited_total", nil, 0},
		{"usermgmt_database_up", nil, 1},
		{"usermgmt_mail_outbox_pending", nil, 2},
		{"usermgmt_mail_outbox_failed", nil, 0},
		{"usermgmt_webhook_deliveries_pending", nil, 1},
		{"usermgmt_webhook_deliveries_failed", nil, 2},
		{"usermgmt_bcrypt_slots", nil, float64(env.cfg.bcryptConcurrency)},
		{"usermgmt_bcrypt_slots_in_use", nil, 0},
		{"usermgmt_bcrypt_waiting", nil, 0},
	}
	for _, c := range checks {
		if v := metricValue(t, got, c.name, c.labels...); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	for _, name := range []string{"usermgmt_db_pool_connections", "usermgmt_db_pool_acquires_total", "go_goroutines", "go_memstats_heap_alloc_bytes"} {
		if v := metricValue(t, got, name); v <= 0 {
			t.Errorf("%s = %v, want more than 0", name, v)
		}
	}
	for _, name := range []string{"usermgmt_db_pool_idle_connections", "usermgmt_db_pool_acquired_connections", "usermgmt_db_pool_waits_total",
		"usermgmt_db_pool_wait_seconds_total", "usermgmt_db_pool_max_connections", "usermgmt_bcrypt_waits_total",
		"usermgmt_bcrypt_wait_seconds_total", "usermgmt_bcrypt_busy_total", "go_gc_cycles_total", "go_gc_pause_seconds_total",
		"go_memstats_heap_inuse_bytes", "go_memstats_sys_bytes"} {
		metricValue(t, got, name)
	}
	// No label value is a raw path, an id or a made-up method: only the mux's patterns.
	for name, family := range got {
		for _, m := range family.Metric {
			for _, l := range m.Label {
				v := l.GetValue()
				raw := strings.Contains(v, "987654321") || strings.Contains(v, "secret") || v == "BREW"
				if raw || l.GetName() == "route" && v != "unmatched" && !strings.Contains(v, " /") {
					t.Errorf("%s has the unbounded label %s=%q", name, l.GetName(), v)
				}
			}
		}
	}
}

func TestMetricsCountRateLimitRefusals(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.authRateLimit, c.authRateBurst = 1, 1 })
	body := map[string]string{"username": "nobody", "password": "wrong-password"}
	env.do(t, "POST", "/api/auth/login", "", body).expect(t, 401)
	env.do(t, "POST", "/api/auth/login", "", body).expect(t, 429)
	env.do(t, "POST", "/api/auth/login", "", body).expect(t, 429)
	got := scrape(t, env.st, env.pw)
	if v := metricValue(t, got, "usermgmt_rate_limited_total"); v != 2 {
		t.Errorf("usermgmt_rate_limited_total = %v, want 2", v)
	}
	// A refusal by the rate limit is no login attempt.
	if v := metricValue(t, got, "usermgmt_logins_total", "outcome", "failure"); v != 1 {
		t.Errorf("failed logins = %v, want 1", v)
	}
}

// TestMetricsBcryptWaits: a request that finds every slot taken shows as waiting while it
// waits, and its wait is counted once it has a slot.
func TestMetricsBcryptWaits(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	pw := newHasher(4, 1)
	pw.slots <- struct{}{} // the one slot, taken
	done := make(chan error, 1)
	go func() { _, err := pw.hash(context.Background(), testPassword); done <- err }()
	waitFor(t, "the hash to wait for a slot", func() bool {
		return metricValue(t, scrape(t, env.st, pw), "usermgmt_bcrypt_waiting") == 1
	})
	if v := metricValue(t, scrape(t, env.st, pw), "usermgmt_bcrypt_slots_in_use"); v != 1 {
		t.Errorf("slots in use = %v, want 1", v)
	}
	<-pw.slots
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := scrape(t, env.st, pw)
	if metricValue(t, got, "usermgmt_bcrypt_waiting") != 0 || metricValue(t, got, "usermgmt_bcrypt_waits_total") != 1 ||
		metricValue(t, got, "usermgmt_bcrypt_wait_seconds_total") <= 0 || metricValue(t, got, "usermgmt_bcrypt_busy_total") != 0 {
		t.Errorf("after the wait: waiting %v, waits %v, waited %v s, busy %v, want 0, 1, more than 0, 0",
			metricValue(t, got, "usermgmt_bcrypt_waiting"), metricValue(t, got, "usermgmt_bcrypt_waits_total"),
			metricValue(t, got, "usermgmt_bcrypt_wait_seconds_total"), metricValue(t, got, "usermgmt_bcrypt_busy_total"))
	}
}

// TestMetricsWithTheDatabaseDown: a scrape still answers, promptly and parseably, and says
// the database is down instead of reporting outbox counts it could not read.
func TestMetricsWithTheDatabaseDown(t *testing.T) {
	t.Parallel()
	env, proxy := proxiedEnv(t)
	proxy.stop()
	got := scrape(t, env.st, env.pw)
	if v := metricValue(t, got, "usermgmt_database_up"); v != 0 {
		t.Errorf("usermgmt_database_up = %v with the database down, want 0", v)
	}
	if got["usermgmt_mail_outbox_pending"] != nil {
		t.Error("outbox counts reported with the database down")
	}
}

var jsonListening = regexp.MustCompile(`"msg":"(metrics )?listening","addr":"([^"]+)"`)

// TestRunServesMetricsAndJSONLogs starts the program with METRICS_ADDR and LOG_FORMAT=json:
// every line it logs is a JSON object, a request's line has the fields of the text format,
// and /metrics on the second listener counts that request.
func TestRunServesMetricsAndJSONLogs(t *testing.T) {
	t.Parallel()
	env := runEnv(t)
	env["METRICS_ADDR"] = "127.0.0.1:0"
	env["LOG_FORMAT"] = "json"
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	result := make(chan error, 1)
	go func() { result <- run(ctx, []string{"usermgmt", "-env-file="}, envOf(env), strings.NewReader(""), out) }()
	addrs := map[string]string{}
	waitFor(t, "both listeners", func() bool {
		for _, m := range jsonListening.FindAllStringSubmatch(out.String(), -1) {
			addrs[m[1]] = m[2]
		}
		return len(addrs) == 2
	})
	base, metricsURL := "http://"+addrs[""], "http://"+addrs["metrics "]+"/metrics"
	if s := call(t, "GET", base+"/api/users/me", "", "", nil); s != 401 {
		t.Fatalf("me without a token: %d", s)
	}
	resp, err := http.Get(metricsURL)
	if err != nil {
		t.Fatal(err)
	}
	families := parseMetrics(t, resp.Body)
	resp.Body.Close()
	if v := metricValue(t, families, "usermgmt_http_requests_total", "route", "GET /api/users/me", "status", "4xx"); v != 1 {
		t.Errorf("requests counted on /metrics: %v, want 1", v)
	}
	cancel()
	if err := <-result; err != nil {
		t.Fatalf("run: %v", err)
	}

	var requestLine map[string]any
	lines := bufio.NewScanner(strings.NewReader(out.String()))
	for lines.Scan() {
		var record map[string]any
		if err := json.Unmarshal(lines.Bytes(), &record); err != nil {
			t.Fatalf("log line is not JSON: %v: %s", err, lines.Text())
		}
		if record["msg"] == "request" {
			requestLine = record
		}
	}
	want := []string{"duration", "id", "level", "method", "msg", "route", "status", "time"}
	var keys []string
	for k := range requestLine {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if !slices.Equal(keys, want) || requestLine["route"] != "GET /api/users/me" || requestLine["status"] != float64(401) {
		t.Errorf("request log line %v, want the fields %v for GET /api/users/me with status 401", requestLine, want)
	}
}

// TestMetricsCountTwoStepLogins: a right password of a user with TOTP on counts as
// mfa_required, a wrong code at the second step as a failure, the right one as a success.
func TestMetricsCountTwoStepLogins(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.enableMFA(t, "alice", roleUser) // logs in once, with the password alone
	before := scrape(t, env.st, env.pw)
	token := env.mfaLogin(t, "alice")
	env.verifyMFA(t, token, "code", "000000").expect(t, http.StatusUnauthorized)
	env.verifyMFA(t, token, "code", env.nextCode(alice.key)).expect(t, http.StatusOK)
	after := scrape(t, env.st, env.pw)
	for outcome, want := range map[string]float64{"mfa_required": 1, "failure": 1, "success": 1} {
		got := metricValue(t, after, "usermgmt_logins_total", "outcome", outcome) -
			metricValue(t, before, "usermgmt_logins_total", "outcome", outcome)
		if got != want {
			t.Errorf("logins with outcome %s: %v more, want %v", outcome, got, want)
		}
	}
}
