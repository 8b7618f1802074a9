package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Tests in a real browser: headless Chromium (Debian's chromium package, which
// scripts/setup.sh installs) driven over the DevTools protocol by chromedp.

// docsScreenshot, when set, is where TestBrowserDocs saves its picture of /docs (the README's
// docs/swagger-ui.png): go test -run TestBrowserDocs . -docs-screenshot=docs/swagger-ui.png
var docsScreenshot = flag.String("docs-screenshot", "", "save TestBrowserDocs's screenshot of /docs to this PNG file")

// browserTimeout bounds each browser test, generously: a loaded 2-core machine is slow to
// start Chromium and to run Swagger UI's 1.4 MB script.
const browserTimeout = 3 * time.Minute

// browser is a headless Chromium tab for one test, with what its pages logged.
type browser struct {
	ctx context.Context
	mu  sync.Mutex
	log []string // console messages, uncaught exceptions and browser log entries (CSP violations among them)
}

// newBrowser starts Chromium for t, stopped when t ends. A test that fails leaves a
// screenshot of its page, and says where.
func newBrowser(t *testing.T) *browser {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("no chromium on PATH: run `make test`, whose scripts/setup.sh installs Debian's chromium package")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // tests run as root, where Chromium's sandbox cannot start
		chromedp.DisableGPU,
		// Nothing but the test's own servers: the machine may have no network at all.
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc() // waits for Chromium to exit, before TempDir is removed
	})
	b := &browser{ctx: ctx}
	// The first Run starts the browser and lives as long as ctx: no timeout on it.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.log = append(b.log, fmt.Sprintf("%s: %s", m.Type, m.Text))
			b.mu.Unlock()
		}
	}()
	t.Cleanup(func() { // runs before the cleanup above, while the tab is still there
		if !t.Failed() {
			return
		}
		name := filepath.Join(os.TempDir(), "usermgmt-"+regexp.MustCompile(`\W+`).ReplaceAllString(t.Name(), "_")+".png")
		if err := b.screenshot(name); err != nil {
			t.Logf("no screenshot of the failed page: %v", err)
			return
		}
		t.Logf("screenshot of the failed page: %s\npage log:\n\t%s", name, strings.Join(b.messages(), "\n\t"))
	})
	return b
}

func (b *browser) messages() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.log)
}

// screenshot saves what the tab shows as a PNG file.
func (b *browser) screenshot(path string) error {
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		return err
	}
	return os.WriteFile(path, png, 0o644)
}

// do runs steps, failing t with what it was doing when one fails or browserTimeout passes.
func (b *browser) do(t testing.TB, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// eval returns the value of a JavaScript expression (awaited when it is a promise).
func eval[T any](t testing.TB, b *browser, what, expression string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expression, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// text returns the text of the element sel selects.
func text(t testing.TB, b *browser, sel string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("reading %s: %v", sel, err)
	}
	return v
}

// TestBrowserDocs: /docs shows every operation of the document; authorized with a real
// access token, "Try it out" on GET /api/users/me shows 200 and the user's JSON. The page
// runs under its policy without a single violation.
func TestBrowserDocs(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "alice", roleUser)
	token := env.login(t, "alice", testPassword)
	b := newBrowser(t)

	b.do(t, "opening /docs", chromedp.Navigate(env.server.URL+"/docs"), chromedp.WaitVisible(chromedp.CSS(".opblock")))
	shown := eval[[]string](t, b, "reading the operations", `[...document.querySelectorAll(".opblock")].map(b =>
		b.querySelector(".opblock-summary-method").textContent + " " + b.querySelector(".opblock-summary-path").dataset.path)`)
	var want []string
	for path, item := range loadContract(t).doc.Paths.Map() {
		for method := range item.Operations() {
			want = append(want, method+" "+path)
		}
	}
	slices.Sort(shown)
	slices.Sort(want)
	if !slices.Equal(shown, want) {
		t.Errorf("/docs shows\n\t%s\nwant the document's operations\n\t%s", strings.Join(shown, "\n\t"), strings.Join(want, "\n\t"))
	}
	if *docsScreenshot != "" {
		if err := b.screenshot(*docsScreenshot); err != nil {
			t.Errorf("saving %s: %v", *docsScreenshot, err)
		}
	}

	b.do(t, "authorizing",
		chromedp.Click(chromedp.CSS("button.authorize")),
		chromedp.WaitVisible(chromedp.CSS(".modal-ux input")),
		chromedp.SendKeys(chromedp.CSS(".modal-ux input"), token),
		chromedp.Click(chromedp.CSS(".modal-ux .auth-btn-wrapper button.authorize")),
		chromedp.Click(chromedp.CSS(".modal-ux button.btn-done")),
		chromedp.WaitNotPresent(chromedp.CSS(".modal-ux")),
	)
	op := "#operations-Users-getMe"
	b.do(t, "trying GET /api/users/me",
		chromedp.Click(chromedp.CSS(op+" .opblock-summary-control")),
		chromedp.Click(chromedp.CSS(op+" .try-out__btn")),
		chromedp.Click(chromedp.CSS(op+" button.execute")),
		chromedp.WaitVisible(chromedp.CSS(op+" .live-responses-table tbody .response-col_status")),
	)
	status := text(t, b, op+" .live-responses-table tbody .response-col_status")
	body := text(t, b, op+" .live-responses-table tbody .response-col_description pre")
	if strings.TrimSpace(status) != "200" || !strings.Contains(body, `"username": "alice"`) {
		t.Errorf("Try it out: status %q, body %s; want 200 and alice's user object", status, body)
	}
	for _, line := range b.messages() {
		if strings.Contains(line, "Content Security Policy") || strings.HasPrefix(line, string(chromedp.ConsoleException)) {
			t.Errorf("the page logged: %s", line)
		}
	}
}

// frontEnd serves, on an origin of its own, the page of a browser front end, from which the
// test calls the API with fetch().
func frontEnd(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, "<!DOCTYPE html><title>front end</title><p>A front end on another origin.</p>")
	}))
	t.Cleanup(srv.Close)
	return srv
}

// frontEndCalls is the front end's script: login, then the user's own object, then the admin
// list with the X-Total-Count header; it reports what it got, or why fetch() rejected.
const frontEndCalls = `(async () => {
	try {
		const login = await fetch(API + "/api/auth/login", {method: "POST", headers: {"Content-Type": "application/json"},
			body: JSON.stringify({username: "root", password: PASSWORD})});
		const tokens = await login.json();
		const auth = {headers: {Authorization: "Bearer " + tokens.access_token}};
		const me = await fetch(API + "/api/users/me", auth);
		const user = await me.json();
		const list = await fetch(API + "/api/admin/users", auth);
		const users = await list.json();
		return {login: login.status, me: me.status, username: user.username, list: list.status,
			total: list.headers.get("X-Total-Count"), listed: users.length, requestId: list.headers.get("X-Request-Id") || ""};
	} catch (e) {
		return {rejected: String(e)};
	}
})()`

type frontEndResult struct {
	Login, Me, List int
	Username, Total string
	Listed          int
	RequestID       string
	Rejected        string
}

func callFromFrontEnd(t *testing.T, b *browser, page, api string) frontEndResult {
	t.Helper()
	script := strings.NewReplacer("API", fmt.Sprintf("%q", api), "PASSWORD", fmt.Sprintf("%q", testPassword)).Replace(frontEndCalls)
	b.do(t, "opening the front end", chromedp.Navigate(page))
	return eval[frontEndResult](t, b, "calling the API from the front end", script)
}

// methodsSeen lists the methods of the requests the server logged.
func methodsSeen(env *testEnv) []string {
	var methods []string
	for _, m := range regexp.MustCompile(`msg=request .*method=(\S+)`).FindAllStringSubmatch(env.logs.String(), -1) {
		methods = append(methods, m[1])
	}
	return methods
}

// TestBrowserCORS: a page of an allowed origin logs in, reads its user and the admin list with
// its X-Total-Count from JavaScript; the same page from an origin not allowed gets a rejected
// fetch(), and the server sees no more than the preflight.
func TestBrowserCORS(t *testing.T) {
	t.Parallel()
	page := frontEnd(t)
	allowed := newTestEnv(t, func(c *config) { c.cors, _ = parseCORSOrigins(page.URL) })
	refused := newTestEnv(t, func(c *config) { c.cors, _ = parseCORSOrigins("https://app.example.com") })
	for _, env := range []*testEnv{allowed, refused} {
		env.addUser(t, "root", roleAdmin)
		env.addUser(t, "bob", roleUser)
	}
	b := newBrowser(t)

	got := callFromFrontEnd(t, b, page.URL, allowed.server.URL)
	want := frontEndResult{Login: 200, Me: 200, Username: "root", List: 200, Total: "2", Listed: 2, RequestID: got.RequestID}
	if got != want || len(got.RequestID) != 16 {
		t.Errorf("from an allowed origin: %+v, want %+v with a request id", got, want)
	}

	got = callFromFrontEnd(t, b, page.URL, refused.server.URL)
	if !strings.Contains(got.Rejected, "Failed to fetch") {
		t.Errorf("from an origin not allowed: %+v, want fetch() rejected", got)
	}
	for _, method := range methodsSeen(refused) {
		if method != "OPTIONS" {
			t.Errorf("the server of the refused origin saw a %s request; want only the preflight", method)
		}
	}
}
