package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
)

// The OpenAPI document is kept true by three checks: it passes its validator's own validation,
// it has exactly the routes of addRoutes, and every request and reply of the HTTP tests goes
// through checkedServer, which fails the test whose reply the document does not describe.

// contract is openapi.json loaded for checking requests and replies against it.
type contract struct {
	doc *openapi3.T
	mux *http.ServeMux // a route per operation, matched as the server's mux matches its own
}

type contractMatchKey struct{}

// contractMatch is what contract.mux finds for a request: the operation and its path values.
type contractMatch struct {
	route  *routers.Route
	params map[string]string
}

var loadedContract = sync.OnceValues(func() (*contract, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(openAPIDocument)
	if err != nil {
		return nil, fmt.Errorf("loading openapi.json: %w", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		return nil, fmt.Errorf("openapi.json does not validate: %w", err)
	}
	c := &contract{doc: doc, mux: http.NewServeMux()}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			route := &routers.Route{Spec: doc, Path: path, PathItem: item, Method: method, Operation: op}
			names := pathParamNames(path)
			c.mux.HandleFunc(muxPattern(method, path), func(_ http.ResponseWriter, r *http.Request) {
				m := r.Context().Value(contractMatchKey{}).(*contractMatch)
				m.route, m.params = route, map[string]string{}
				for _, name := range names {
					m.params[name] = r.PathValue(name)
				}
			})
		}
	}
	return c, nil
})

// loadContract returns the document, failing the test when it does not load or validate.
func loadContract(t testing.TB) *contract {
	t.Helper()
	c, err := loadedContract()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var pathParam = regexp.MustCompile(`\{([^}.$]+)\}`)

func pathParamNames(path string) []string {
	var names []string
	for _, m := range pathParam.FindAllStringSubmatch(path, -1) {
		names = append(names, m[1])
	}
	return names
}

// muxPattern is the ServeMux pattern of an operation: "/" alone is written "/{$}" there, since
// a bare "/" matches every path.
func muxPattern(method, path string) string {
	if path == "/" {
		path = "/{$}"
	}
	return method + " " + path
}

// operationOf is the inverse of muxPattern: "GET /api/users/{id}" for a route of addRoutes.
func operationOf(pattern string) string {
	return strings.TrimSuffix(pattern, "{$}")
}

// TestOpenAPIDocumentValidates: the document passes kin-openapi's validation (loadContract),
// is served as it is at /openapi.json, and names every operation once.
func TestOpenAPIDocumentValidates(t *testing.T) {
	t.Parallel()
	c := loadContract(t)
	if c.doc.OpenAPI != "3.1.0" {
		t.Errorf("openapi %q, want 3.1.0", c.doc.OpenAPI)
	}
	ids := map[string]string{}
	for path, item := range c.doc.Paths.Map() {
		for method, op := range item.Operations() {
			if op.OperationID == "" || op.Summary == "" || len(op.Tags) != 1 {
				t.Errorf("%s %s: want an operationId, a summary and one tag", method, path)
			}
			if other, dup := ids[op.OperationID]; dup {
				t.Errorf("operationId %s of %s %s is also that of %s", op.OperationID, method, path, other)
			}
			ids[op.OperationID] = method + " " + path
		}
	}
	env := newTestEnv(t)
	r := env.do(t, "GET", "/openapi.json", "", nil).expect(t, http.StatusOK)
	if !bytes.Equal(r.body, openAPIDocument) {
		t.Error("GET /openapi.json is not openapi.json")
	}
}

// TestOpenAPIDocumentHasEveryRoute: the operations of the document are exactly the routes of
// addRoutes, method and path alike.
func TestOpenAPIDocumentHasEveryRoute(t *testing.T) {
	t.Parallel()
	c := loadContract(t)
	cfg := testConfig("postgres://unused")
	cfg.apiDocs = true
	var routes routeRecorder
	addRoutes(&routes, cfg, nil, nil, slog.New(slog.DiscardHandler))
	var registered, documented []string
	for _, p := range routes {
		registered = append(registered, operationOf(p))
	}
	for path, item := range c.doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}
	missing, extra := difference(registered, documented), difference(documented, registered)
	if len(missing) > 0 {
		t.Errorf("routes of addRoutes missing from openapi.json (add them under \"paths\"):\n\t%s", strings.Join(missing, "\n\t"))
	}
	if len(extra) > 0 {
		t.Errorf("operations of openapi.json that addRoutes does not register:\n\t%s", strings.Join(extra, "\n\t"))
	}
}

// difference lists, sorted, the items of a that b lacks.
func difference(a, b []string) []string {
	var out []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

// checkedServer serves h for a test, checking every request and its reply against the
// document: t fails for each reply the document does not describe (see contract.check).
func checkedServer(t testing.TB, h http.Handler) *httptest.Server {
	c := loadContract(t)
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := &bodyCopy{ReadCloser: r.Body}
		r.Body = body
		reply := &replyCopy{ResponseWriter: w}
		h.ServeHTTP(reply, r)
		for _, problem := range c.check(r, body.buf.Bytes(), reply) {
			t.Errorf("openapi.json does not describe this exchange: %s %s -> %d: %s", r.Method, r.URL.RequestURI(), reply.status, problem)
		}
	}))
}

// bodyCopy keeps what the server read of a request body.
type bodyCopy struct {
	io.ReadCloser
	buf bytes.Buffer
}

func (b *bodyCopy) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.buf.Write(p[:n])
	return n, err
}

// replyCopy keeps the status and body of a reply.
type replyCopy struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (r *replyCopy) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *replyCopy) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.body.Write(b)
	return r.ResponseWriter.Write(b)
}

func (r *replyCopy) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// check returns what the document says is wrong with a reply to r, whose body (as far as the
// server read it) was body. A request of an operation is checked against the operation: a
// request the document refuses must not succeed, and every reply must be one of the
// operation's statuses, with its body schema and its required headers. A request of no
// operation (an unknown path, a wrong method, a path not written clean) must get an Error of
// the router: 400, 404 or 405; a CORS preflight of an allowed origin gets 204.
func (c *contract) check(r *http.Request, body []byte, reply *replyCopy) []string {
	status := reply.status
	if status == 0 {
		status = http.StatusOK
	}
	if status == statusClientClosed {
		return nil // logged only: the client hung up and reads no reply
	}
	ctx := context.Background()
	match := &contractMatch{}
	if isCleanPath(r.URL.EscapedPath()) {
		probe := r.Clone(context.WithValue(ctx, contractMatchKey{}, match))
		c.mux.ServeHTTP(httptest.NewRecorder(), probe)
	}
	if match.route == nil {
		return c.checkUnrouted(r, status, reply)
	}
	request := r.Clone(ctx)
	request.Body = io.NopCloser(bytes.NewReader(body))
	options := &openapi3filter.Options{
		AuthenticationFunc:    openapi3filter.NoopAuthenticationFunc, // the server's own tests check tokens
		IncludeResponseStatus: true,
		SkipSettingDefaults:   true,
	}
	input := &openapi3filter.RequestValidationInput{Request: request, PathParams: match.params, Route: match.route, Options: options}
	var problems []string
	if err := openapi3filter.ValidateRequest(ctx, input); err != nil && status < 300 {
		problems = append(problems, fmt.Sprintf("the document refuses the request (%v), but it succeeded", err))
	}
	err := openapi3filter.ValidateResponse(ctx, &openapi3filter.ResponseValidationInput{
		RequestValidationInput: input, Status: status, Header: reply.Header(),
		Body: io.NopCloser(bytes.NewReader(reply.body.Bytes())), Options: options,
	})
	if err != nil {
		problems = append(problems, err.Error())
	}
	return problems
}

func (c *contract) checkUnrouted(r *http.Request, status int, reply *replyCopy) []string {
	if r.Method == http.MethodOptions && status == http.StatusNoContent && reply.Header().Get("Access-Control-Allow-Methods") != "" {
		return nil // a CORS preflight, answered before routing
	}
	var problems []string
	if !slices.Contains([]int{http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed}, status) {
		problems = append(problems, "no operation has this method and path, yet the reply is neither 400, 404 nor 405")
	}
	if reply.Header().Get("X-Request-Id") == "" {
		problems = append(problems, "no X-Request-Id")
	}
	if r.Method == http.MethodHead {
		return problems
	}
	var v any
	err := json.Unmarshal(reply.body.Bytes(), &v)
	if err == nil {
		err = c.doc.Components.Schemas["Error"].Value.VisitJSON(v, openapi3.EnableJSONSchema2020())
	}
	if err != nil {
		problems = append(problems, fmt.Sprintf("the body is not an Error: %v: %s", err, reply.body.Bytes()))
	}
	return problems
}

// TestContractCatchesUndescribedReplies: the check of checkedServer finds a reply the document
// does not describe (a status, a field, a header, a route it lacks) and a success the document
// refuses, and passes the replies it describes.
func TestContractCatchesUndescribedReplies(t *testing.T) {
	t.Parallel()
	c := loadContract(t)
	user := `{"id":2,"username":"alice","first_name":"Alice","last_name":"Liddell","email":"alice@example.com","role":"User",` +
		`"is_active":true,"email_verified":false,"mfa_enabled":false,"created_at":"2026-11-26T12:02:45.87691Z","updated_at":"2026-11-26T12:02:45.87691Z",` +
		`"invited":false,"user_metadata":{},"app_metadata":{}}`
	login := `{"username":"alice","password":"` + testPassword + `"}`
	pair := `{"access_token":"a","token_type":"Bearer","expires_in":3600,"refresh_token":"r"}`
	cases := []struct {
		name, method, path, body string
		status                   int
		headers                  map[string]string
		reply                    string
		wantProblem              string // a part of the problem found; "" for none
	}{
		{"described", "GET", "/api/users/me", "", 200, nil, user, ""},
		{"described error", "GET", "/api/users/me", "", 401, map[string]string{"WWW-Authenticate": `Bearer realm="usermgmt"`}, `{"message":"Token has expired"}`, ""},
		{"undocumented status", "GET", "/api/users/me", "", 409, nil, `{"message":"Conflict"}`, "status is not supported"},
		{"undocumented field", "GET", "/api/users/me", "", 200, nil, strings.Replace(user, `"id":2`, `"id":2,"totp_enabled":true`, 1), "totp_enabled"},
		{"missing field", "GET", "/api/users/me", "", 200, nil, strings.Replace(user, `"role":"User",`, "", 1), "role"},
		{"wrong type", "GET", "/api/users/me", "", 200, nil, strings.Replace(user, `"id":2`, `"id":"2"`, 1), "id"},
		{"missing header", "GET", "/api/users/me", "", 401, nil, `{"message":"Token has expired"}`, "WWW-Authenticate"},
		{"error without message", "GET", "/api/users/me", "", 401, map[string]string{"WWW-Authenticate": `Bearer realm="usermgmt"`}, `{"error":"x"}`, "message"},
		{"list without its headers", "GET", "/api/admin/users", "", 200, nil, "[" + user + "]", "response header"},
		{"valid request", "POST", "/api/auth/login", login, 200, nil, pair, ""},
		{"refused request, refused", "POST", "/api/auth/login", `{"username":"alice"}`, 400, nil, `{"message":"Validation failed","errors":{"password":"is required"}}`, ""},
		{"refused request, succeeded", "POST", "/api/auth/login", `{"username":"alice","password":"x","extra":1}`, 200, nil, pair, "refuses the request"},
		{"unknown route, 404", "GET", "/api/nope", "", 404, nil, `{"message":"Not found"}`, ""},
		{"unknown route, success", "GET", "/api/nope", "", 200, nil, `{"message":"hello"}`, "no operation"},
		{"unknown route, not an Error", "GET", "/api/nope", "", 404, nil, `Not found`, "not an Error"},
		{"unclean path of a route", "GET", "//api/users/me", "", 404, nil, `{"message":"Not found"}`, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			if tc.body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			reply := &replyCopy{ResponseWriter: httptest.NewRecorder()}
			reply.Header().Set("X-Request-Id", "0123456789abcdef")
			reply.Header().Set("Content-Type", "application/json")
			for k, v := range tc.headers {
				reply.Header().Set(k, v)
			}
			reply.WriteHeader(tc.status)
			_, _ = reply.Write([]byte(tc.reply))
			problems := strings.Join(c.check(req, []byte(tc.body), reply), "; ")
			switch {
			case tc.wantProblem == "" && problems != "":
				t.Errorf("problems %q, want none", problems)
			case tc.wantProblem != "" && !strings.Contains(problems, tc.wantProblem):
				t.Errorf("problems %q, want one naming %q", problems, tc.wantProblem)
			}
		})
	}
}

// TestDocsPages: /docs is Swagger UI under a policy that runs this origin's scripts and styles
// only, every file it loads is served, / redirects to it, and API_DOCS=false turns all of it
// off.
func TestDocsPages(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	page := env.do(t, "GET", "/docs", "", nil).expect(t, http.StatusOK)
	if got := page.header.Get("Content-Type"); got != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", got)
	}
	csp := page.header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") || strings.Contains(string(page.body), "<script>") {
		t.Errorf("inline scripts or an unsafe policy: %q", csp)
	}
	files := regexp.MustCompile(`(?:src|href)="(docs/[^"]+)"`).FindAllStringSubmatch(string(page.body), -1)
	if len(files) < 3 {
		t.Fatalf("the page loads %d files: %s", len(files), page.body)
	}
	for _, f := range files {
		r := env.do(t, "GET", "/"+f[1], "", nil).expect(t, http.StatusOK)
		if len(r.body) == 0 || r.header.Get("Content-Type") == "" {
			t.Errorf("%s: empty, or no Content-Type", f[1])
		}
	}
	init := env.do(t, "GET", "/docs/swagger-initializer.js", "", nil).expect(t, http.StatusOK)
	if !strings.Contains(string(init.body), `url: "openapi.json"`) || strings.Contains(string(init.body), "petstore") {
		t.Errorf("the initializer does not load this server's document: %s", init.body)
	}
	for _, name := range []string{"index.html", "swagger-ui.js.map", "oauth2-redirect.html", "nope.js", "..%2fopenapi.json"} {
		expectError(t, env.do(t, "GET", "/docs/"+name, "", nil), http.StatusNotFound)
	}
	if got := env.do(t, "GET", "/healthz", "", nil).header.Get("Content-Security-Policy"); got != "default-src 'none'; frame-ancestors 'none'" {
		t.Errorf("a JSON reply's Content-Security-Policy %q", got)
	}

	noRedirects := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirects.Get(env.server.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/docs" {
		t.Errorf("GET /: %d to %q, want 302 to /docs", resp.StatusCode, resp.Header.Get("Location"))
	}

	off := newTestEnv(t, func(c *config) { c.apiDocs = false })
	for _, path := range []string{"/", "/docs", "/docs/swagger-ui-bundle.js", "/docs/swagger-initializer.js", "/openapi.json"} {
		r := off.do(t, "GET", path, "", nil)
		expectError(t, r, http.StatusNotFound)
	}
}

// TestAPIDocsSetting: API_DOCS is on unless set to false; anything but a boolean refuses to start.
func TestAPIDocsSetting(t *testing.T) {
	t.Parallel()
	for value, want := range map[string]bool{"": true, "true": true, "1": true, "false": false, "0": false} {
		cfg, err := loadConfig(envOf(configEnv(map[string]string{"API_DOCS": value})))
		if err != nil || cfg.apiDocs != want {
			t.Errorf("API_DOCS=%q: apiDocs %t, %v; want %t", value, cfg.apiDocs, err, want)
		}
	}
	if _, err := loadConfig(envOf(configEnv(map[string]string{"API_DOCS": "off"}))); err == nil || !strings.Contains(err.Error(), "API_DOCS must be true or false") {
		t.Errorf("API_DOCS=off: %v", err)
	}
}
