package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Tests of the bcrypt hasher: re-hashing on a cost change, busy slots, and the same work for
// every failed login.

func TestLoginRehashesOnCostChange(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	old, err := bcrypt.GenerateFromPassword([]byte(testPassword), env.cfg.bcryptCost+1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.st.pool.Exec(context.Background(), "UPDATE users SET password_hash = $2 WHERE id = $1", alice.ID, string(old)); err != nil {
		t.Fatal(err)
	}
	storedHash := func() string {
		t.Helper()
		u, err := env.st.userByID(context.Background(), alice.ID)
		if err != nil {
			t.Fatal(err)
		}
		return u.PasswordHash
	}

	pairOf(t, env.loginWith(t, "alice", testPassword, nil))
	rehashed := storedHash()
	if cost, err := bcrypt.Cost([]byte(rehashed)); err != nil || cost != env.cfg.bcryptCost {
		t.Fatalf("after login the stored hash has cost %d (%v), want %d", cost, err, env.cfg.bcryptCost)
	}
	pairOf(t, env.loginWith(t, "alice", testPassword, nil))
	if storedHash() != rehashed {
		t.Error("a hash already at the configured cost was re-hashed")
	}
}

// TestConcurrentLoginsDuringRehash: two right logins at once, while the stored hash is
// re-hashed at a new cost, both get a session (a re-hash changes no password).
func TestConcurrentLoginsDuringRehash(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.bcryptCost = 5 })
	for i := range 10 {
		u := env.addUser(t, fmt.Sprintf("user%d", i), roleUser)
		if _, err := env.st.pool.Exec(context.Background(), "UPDATE users SET password_hash = $2 WHERE id = $1",
			u.ID, mustHash(t, testPassword)); err != nil { // cost 4
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				if r := env.loginWith(t, u.Username, testPassword, nil); r.status != http.StatusOK {
					t.Errorf("%s: %d %s", u.Username, r.status, r.body)
				}
			})
		}
		wg.Wait()
	}
}

func TestHasherBusy(t *testing.T) {
	t.Parallel()
	h := newHasher(4, 1)
	held, release, done := make(chan struct{}), make(chan struct{}), make(chan error)
	go func() {
		done <- h.withSlot(context.Background(), nil, func() error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held

	_, err := h.hash(context.Background(), testPassword)
	if !errors.Is(err, errBusy) {
		t.Fatalf("hash with the only slot held: err = %v, want errBusy", err)
	}
	// A login turned away as busy is not admitted: it does not count towards a lockout.
	admitted := 0
	admit := func() error { admitted++; return nil }
	if _, _, err := h.check(context.Background(), "$2a$04$", testPassword, "", admit); !errors.Is(err, errBusy) || admitted != 0 {
		t.Fatalf("check with the only slot held: err = %v, admitted %d times; want errBusy, never admitted", err, admitted)
	}
	w := httptest.NewRecorder()
	writeError(w, httptest.NewRequest("POST", "/api/auth/login", nil), slog.New(slog.NewTextHandler(io.Discard, nil)), err)
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Errorf("busy error answered %d with Retry-After %q, want 503 with Retry-After", w.Code, w.Header().Get("Retry-After"))
	}
	// A request that gives up waiting gets its own error, not errBusy.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.hash(ctx, testPassword); !errors.Is(err, context.Canceled) {
		t.Errorf("hash with a cancelled context: err = %v, want context.Canceled", err)
	}

	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	hash, err := h.hash(context.Background(), testPassword)
	if err != nil {
		t.Fatalf("hash once the slot is free: %v", err)
	}
	if ok, _, err := h.check(context.Background(), hash, testPassword, "", admit); !ok || err != nil || admitted != 1 {
		t.Errorf("check = %v, %v, admitted %d times; want true, admitted once", ok, err, admitted)
	}
	refused := errors.New("locked out")
	if ok, _, err := h.check(context.Background(), hash, testPassword, "", func() error { return refused }); ok || err != refused {
		t.Errorf("check refused by admit = %v, %v; want false and admit's error", ok, err)
	}
}

// TestLoginFloodGets503 floods a server with one bcrypt slot with logins: those that cannot
// get the slot within 2 s get 503, and authenticated requests, which need no bcrypt, go on.
// The flood is sized from a measured hash so that it outlasts the 2 s wait several times over.
func TestLoginFloodGets503(t *testing.T) {
	t.Parallel()
	const cost = 10
	env := newTestEnv(t, func(cfg *config) {
		cfg.bcryptConcurrency, cfg.bcryptCost, cfg.loginMaxFailures = 1, cost, 1000
	})
	start := time.Now()
	alice := env.addUser(t, "alice", roleUser) // one hash at the server's cost
	perHash := max(time.Since(start), time.Millisecond)
	n := min(128, 3*int(bcryptWait/perHash)+4)
	token := env.tokenFor(t, alice)

	// The logins run outside the test goroutine, so they report errors instead of failing.
	statuses := make(chan response, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			body := `{"username": "alice", "password": "` + testPassword + `"}`
			resp, err := http.Post(env.server.URL+"/api/auth/login", "application/json", strings.NewReader(body))
			if err != nil {
				t.Errorf("login: %v", err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses <- response{status: resp.StatusCode, header: resp.Header}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	meanwhile := 0
	for flooding := true; flooding; {
		env.do(t, "GET", "/api/users/me", token, nil).expect(t, http.StatusOK)
		meanwhile++
		select {
		case <-done:
			flooding = false
		case <-time.After(100 * time.Millisecond):
		}
	}
	close(statuses)

	counts := map[int]int{}
	for r := range statuses {
		counts[r.status]++
		if r.status == http.StatusServiceUnavailable {
			if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s <= 0 {
				t.Errorf("503 with Retry-After %q, want a number of seconds", r.header.Get("Retry-After"))
			}
		}
	}
	t.Logf("%d logins (one hash took %v): %v; %d requests to /api/users/me meanwhile", n, perHash, counts, meanwhile)
	if counts[http.StatusOK]+counts[http.StatusServiceUnavailable] != n {
		t.Errorf("statuses %v, want only 200 and 503", counts)
	}
	if counts[http.StatusServiceUnavailable] == 0 {
		t.Errorf("no login got 503 although %d competed for one bcrypt slot", n)
	}
	if counts[http.StatusOK] == 0 {
		t.Errorf("no login succeeded")
	}
}

func mustHash(t *testing.T, password string) string {
	t.Helper()
	hash, err := newHasher(4, 1).hash(context.Background(), password)
	if err != nil {
		t.Fatal(err)
	}
	return hash
}

// comparisons runs f and returns the bcrypt comparisons the server made meanwhile, by cost.
func (e *testEnv) comparisons(f func()) map[int]int64 {
	before := make([]int64, len(e.pw.comparedAt))
	for c := range before {
		before[c] = e.pw.comparedAt[c].Load()
	}
	f()
	made := map[int]int64{}
	for c := range before {
		if n := e.pw.comparedAt[c].Load() - before[c]; n != 0 {
			made[c] = n
		}
	}
	return made
}

// rounds is the bcrypt work of comparisons by cost: 2^cost rounds each.
func rounds(comparisons map[int]int64) int64 {
	var total int64
	for cost, n := range comparisons {
		total += n << cost
	}
	return total
}

// TestFailedLoginsCostTheSame: every failed login costs the bcrypt work of one comparison at
// the floor cost (the configured one, or that of the strongest stored hash), whether the
// account exists, is active, and whatever its hash's cost, so that response times do not
// tell them apart after BCRYPT_COST changed. The test counts comparisons, not time.
func TestFailedLoginsCostTheSame(t *testing.T) {
	t.Parallel()
	const configured = 6
	for _, c := range []struct {
		name      string
		strongest int // the cost of a stored hash made at a higher BCRYPT_COST; 0: none
	}{{"every hash at most the configured cost", 0}, {"a stronger hash stored", configured + 1}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			env := newTestEnv(t, func(cfg *config) { cfg.bcryptCost, cfg.loginMaxFailures = configured, 1000 })
			ctx := context.Background()
			withHash := func(username string, cost int) {
				t.Helper()
				u := env.addUser(t, username, roleUser)
				hash, err := newHasher(cost, 1).hash(ctx, testPassword)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := env.st.pool.Exec(ctx, "UPDATE users SET password_hash = $2 WHERE id = $1", u.ID, hash); err != nil {
					t.Fatal(err)
				}
			}
			withHash("current", configured)
			withHash("weaker", configured-2)
			withHash("slightly", configured-1)
			withHash("inactive", configured)
			if _, err := env.st.pool.Exec(ctx, "UPDATE users SET is_active = false WHERE username = 'inactive'"); err != nil {
				t.Fatal(err)
			}
			paths := []struct{ name, username, password string }{
				{"unknown user", "nobody", testPassword},
				{"wrong password", "current", "wrong-password"},
				{"wrong password, hash two costs weaker", "weaker", "wrong-password"},
				{"wrong password, hash one cost weaker", "slightly", "wrong-password"},
				{"deactivated, right password", "inactive", testPassword},
				{"password over 72 bytes", "current", testPassword + strings.Repeat("x", 72)},
			}
			floor := configured
			if c.strongest != 0 {
				withHash("stronger", c.strongest)
				paths = append(paths, struct{ name, username, password string }{"wrong password, stronger hash", "stronger", "wrong-password"})
				floor = c.strongest
			}
			for _, p := range paths {
				made := env.comparisons(func() { env.loginWith(t, p.username, p.password, nil).expect(t, http.StatusUnauthorized) })
				t.Logf("%s: comparisons by cost %v", p.name, made)
				if rounds(made) != 1<<floor {
					t.Errorf("%s: comparisons by cost %v, %d rounds; want %d, those of one comparison at cost %d",
						p.name, made, rounds(made), 1<<floor, floor)
				}
			}
			// The right password is checked once and its weaker hash replaced in the same slot.
			made := env.comparisons(func() { pairOf(t, env.loginWith(t, "weaker", testPassword, nil)) })
			if want := map[int]int64{configured - 2: 1}; !maps.Equal(made, want) {
				t.Errorf("right password against a weaker hash: comparisons by cost %v, want %v", made, want)
			}
		})
	}
}

// TestRehashNeedsNoSecondSlot: a right password against a hash of another cost is re-hashed
// in the bcrypt slot of its check. Were it to queue again, a request waiting for the slot
// meanwhile would get it first, and the login, already counted, would get a 503.
func TestRehashNeedsNoSecondSlot(t *testing.T) {
	t.Parallel()
	h := newHasher(5, 1)
	weaker := mustHash(t, testPassword) // cost 4
	release, contended := make(chan struct{}), make(chan error, 1)
	admit := func() error {
		go func() { contended <- h.withSlot(context.Background(), nil, func() error { <-release; return nil }) }()
		time.Sleep(20 * time.Millisecond) // let the contender queue for the slot this check holds
		return nil
	}
	ok, rehashed, err := h.check(context.Background(), weaker, testPassword, testPassword, admit)
	close(release)
	if !ok || err != nil {
		t.Fatalf("check = %v, %v; want a match", ok, err)
	}
	if cost, err := bcrypt.Cost([]byte(rehashed)); err != nil || cost != 5 || bcrypt.CompareHashAndPassword([]byte(rehashed), []byte(testPassword)) != nil {
		t.Errorf("re-hash %q (cost %d, %v), want a hash of the password at cost 5", rehashed, cost, err)
	}
	if err := <-contended; err != nil {
		t.Errorf("the contender for the slot: %v", err)
	}
}

// TestProcsRaiser: GOMAXPROCS is its base plus the bcrypt computations running, and a nil
// raiser (tests, -create-admin) leaves it alone.
func TestProcsRaiser(t *testing.T) {
	base := runtime.GOMAXPROCS(0)
	p := newProcsRaiser()
	p.add(1)
	p.add(1)
	if got := runtime.GOMAXPROCS(0); got != base+2 {
		t.Errorf("two computations running: GOMAXPROCS %d, want %d", got, base+2)
	}
	p.add(-1)
	p.add(-1)
	if got := runtime.GOMAXPROCS(0); got != base {
		t.Errorf("none running: GOMAXPROCS %d, want %d", got, base)
	}
	var none *procsRaiser
	none.add(1)
	if got := runtime.GOMAXPROCS(0); got != base {
		t.Errorf("nil raiser changed GOMAXPROCS to %d", got)
	}
}
