package main

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Tests of the login lockout (issue 3): its schedule, its keys (account and address, username
// or email), parallel and cross-instance attempts, and change-password sharing it.

// expectLocked checks that r refuses a locked-out login, asking to wait about lock.
func expectLocked(t testing.TB, r response, lock time.Duration) {
	t.Helper()
	r.expect(t, http.StatusTooManyRequests)
	want := int(lock.Seconds())
	got, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || got > want || got < want-5 {
		t.Fatalf("Retry-After %q, want about %d", r.header.Get("Retry-After"), want)
	}
}

func TestLoginLockoutSchedule(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "alice", roleUser)
	wrong := func() response { return env.loginWith(t, "alice", "wrong-password", nil) }
	right := func() response { return env.loginWith(t, "alice", testPassword, nil) }

	for range env.cfg.loginMaxFailures {
		wrong().expect(t, http.StatusUnauthorized)
	}
	expectLocked(t, right(), time.Minute)
	expectLocked(t, wrong(), time.Minute)
	expectLocked(t, env.loginWith(t, "ALICE", testPassword, nil), time.Minute) // logins ignore case

	// Each failure after a lock ends locks again, twice as long, up to 15 minutes.
	lock := time.Minute
	for _, next := range []time.Duration{2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 15 * time.Minute, 15 * time.Minute} {
		env.clock.Advance(lock - time.Second)
		expectLocked(t, right(), time.Second)
		env.clock.Advance(2 * time.Second)
		wrong().expect(t, http.StatusUnauthorized)
		expectLocked(t, right(), next)
		lock = next
	}

	// A success resets the count: four more failures do not lock.
	env.clock.Advance(lock + time.Second)
	pairOf(t, right())
	for range env.cfg.loginMaxFailures - 1 {
		wrong().expect(t, http.StatusUnauthorized)
	}
	pairOf(t, right())
}

func TestLoginLockoutAcrossInstances(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "alice", roleUser)
	instances := []*testEnv{env, env.anotherInstance(t, env.cfg)}
	for i := range env.cfg.loginMaxFailures {
		instances[i%2].loginWith(t, "alice", "wrong-password", nil).expect(t, http.StatusUnauthorized)
	}
	for _, e := range instances {
		expectLocked(t, e.loginWith(t, "alice", testPassword, nil), time.Minute)
	}
	env.clock.Advance(time.Minute + time.Second)
	pairOf(t, instances[1].loginWith(t, "alice", testPassword, nil))
}

func TestLoginLockoutKeyedOnLoginAndAddress(t *testing.T) {
	t.Parallel()
	from := func(ip string) http.Header { return http.Header{"X-Forwarded-For": {ip}} }
	cases := []struct {
		name         string
		trusted      []netip.Prefix
		otherAddress int // the status of alice's login from another forwarded address
	}{
		{"behind a trusted proxy", []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, http.StatusOK},
		{"X-Forwarded-For not trusted", nil, http.StatusTooManyRequests},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			env := newTestEnv(t, func(cfg *config) { cfg.trustedProxies = c.trusted })
			env.addUser(t, "alice", roleUser)
			env.addUser(t, "bob", roleUser)
			for range env.cfg.loginMaxFailures {
				env.loginWith(t, "alice", "wrong-password", from("203.0.113.1")).expect(t, http.StatusUnauthorized)
			}
			expectLocked(t, env.loginWith(t, "alice", testPassword, from("203.0.113.1")), time.Minute)
			pairOf(t, env.loginWith(t, "bob", testPassword, from("203.0.113.1")))
			env.loginWith(t, "alice", testPassword, from("198.51.100.7")).expect(t, c.otherAddress)
			expectLocked(t, env.loginWith(t, "alice", testPassword, from("203.0.113.1")), time.Minute)
		})
	}
}

// The lockout is per account and address: typing the account's email instead of its username
// must not give an attacker a fresh set of guesses.
func TestLoginLockoutCoversEmailLogin(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	for range env.cfg.loginMaxFailures {
		env.loginWith(t, "alice", "wrong-password", nil).expect(t, http.StatusUnauthorized)
	}
	expectLocked(t, env.loginWith(t, "alice", testPassword, nil), time.Minute)
	expectLocked(t, env.loginWith(t, alice.Email, testPassword, nil), time.Minute)
}

// Guessing the current password through change-password, with a stolen access token, meets
// the login's lockout: the two share one count per account and address.
func TestChangePasswordSharesTheLoginLockout(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "alice", roleUser)
	p := env.loginPair(t, "alice")
	change := func(current string) response {
		return env.do(t, "POST", "/api/auth/change-password", p.access,
			map[string]string{"current_password": current, "new_password": "new-password-456"})
	}
	for range env.cfg.loginMaxFailures - 1 {
		change("wrong-password").expect(t, http.StatusBadRequest)
	}
	env.loginWith(t, "alice", "wrong-password", nil).expect(t, http.StatusUnauthorized)
	expectLocked(t, change(testPassword), time.Minute)
	expectLocked(t, env.loginWith(t, "alice", testPassword, nil), time.Minute)

	// Once the lock ends, the right password succeeds and clears the count.
	env.clock.Advance(time.Minute + time.Second)
	change(testPassword).expect(t, http.StatusOK)
	for range env.cfg.loginMaxFailures - 1 {
		env.loginWith(t, "alice", "wrong-password", nil).expect(t, http.StatusUnauthorized)
	}
	pairOf(t, env.loginWith(t, "alice", "new-password-456", nil))
}

// TestLoginLockoutHoldsForParallelAttempts: wrong passwords sent all at once cannot all be
// checked before the first failure is counted; beyond LOGIN_MAX_FAILURES they get 429.
func TestLoginLockoutHoldsForParallelAttempts(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.loginMaxFailures = 3 })
	env.addUser(t, "alice", roleUser)
	statuses := make([]int, 20)
	var wg sync.WaitGroup
	for i := range statuses {
		wg.Go(func() {
			statuses[i] = env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "alice", "password": "wrong-guess"}).status
		})
	}
	wg.Wait()
	counts := map[int]int{}
	for _, s := range statuses {
		counts[s]++
	}
	if counts[http.StatusUnauthorized] != 3 || counts[http.StatusTooManyRequests] != 17 {
		t.Errorf("statuses %v, want exactly 3 checked (401) and 17 refused (429)", counts)
	}
	// Exactly 3 were checked, not only answered as if they had been.
	if n := env.pw.compared.Load(); n != 3 {
		t.Errorf("%d passwords checked, want 3", n)
	}
}

// TestLoginLockoutBackOffStaysBounded: however long the failures go on, the back-off stays at
// 15 minutes (its arithmetic must not overflow), and the right password still gets in.
func TestLoginLockoutBackOffStaysBounded(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "alice", roleUser)
	for range env.cfg.loginMaxFailures + 60 {
		env.loginWith(t, "alice", "wrong-password", nil).expect(t, http.StatusUnauthorized)
		env.clock.Advance(15*time.Minute + time.Second)
	}
	env.loginWith(t, "alice", "wrong-password", nil).expect(t, http.StatusUnauthorized)
	expectLocked(t, env.loginWith(t, "alice", testPassword, nil), 15*time.Minute)
	env.clock.Advance(15*time.Minute + time.Second)
	pairOf(t, env.loginWith(t, "alice", testPassword, nil))
}

// TestLoginLockoutRacesItsLifting: wrong passwords sent while a right one lifts the lock get
// 401 or 429, never an error, whatever the interleaving.
func TestLoginLockoutRacesItsLifting(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.loginMaxFailures = 1 })
	env.addUser(t, "alice", roleUser)
	for round := range 200 {
		statuses := make(chan int, 7)
		var wg sync.WaitGroup
		wg.Go(func() { statuses <- env.loginWith(t, "alice", testPassword, nil).status })
		for range 6 {
			wg.Go(func() {
				time.Sleep(time.Duration(round%5) * 300 * time.Microsecond) // vary the interleaving
				statuses <- env.loginWith(t, "alice", "wrong-password", nil).status
			})
		}
		wg.Wait()
		close(statuses)
		for status := range statuses {
			if status != http.StatusOK && status != http.StatusUnauthorized && status != http.StatusTooManyRequests {
				t.Fatalf("round %d: a login got %d", round, status)
			}
		}
		if _, err := env.st.pool.Exec(context.Background(), "DELETE FROM login_failures"); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLoginLockoutCountsIPv6By64: an IPv6 client cannot get fresh guesses by moving to another
// address of its /64, which one host commonly holds whole.
func TestLoginLockoutCountsIPv6By64(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, func(c *config) { c.trustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")} })
	env.addUser(t, "alice", roleUser)
	from := func(ip string) http.Header { return http.Header{"X-Forwarded-For": {ip}} }
	for i := range env.cfg.loginMaxFailures {
		env.loginWith(t, "alice", "wrong-password", from(fmt.Sprintf("2001:db8:1:2::%x", i+1))).expect(t, http.StatusUnauthorized)
	}
	expectLocked(t, env.loginWith(t, "alice", testPassword, from("2001:db8:1:2:abcd::99")), time.Minute)
	pairOf(t, env.loginWith(t, "alice", testPassword, from("2001:db8:1:3::1")))
}

// failWrites makes every write of kind ("INSERT", "UPDATE") to table fail as a lost
// serialization conflict does, which the service answers with 503, until the returned
// function is called.
func (e *testEnv) failWrites(t testing.TB, table, kind string) func() {
	t.Helper()
	ctx := context.Background()
	for _, sql := range []string{
		`CREATE OR REPLACE FUNCTION injected_conflict() RETURNS trigger LANGUAGE plpgsql AS
			$$ BEGIN RAISE EXCEPTION 'injected conflict' USING ERRCODE = 'serialization_failure'; END $$`,
		fmt.Sprintf("CREATE TRIGGER injected_conflict BEFORE %s ON %s FOR EACH ROW EXECUTE FUNCTION injected_conflict()", kind, table),
	} {
		if _, err := e.st.pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	return func() {
		t.Helper()
		if _, err := e.st.pool.Exec(ctx, "DROP TRIGGER injected_conflict ON "+table); err != nil {
			t.Fatal(err)
		}
	}
}

// TestErrorsAfterARightPasswordDoNotCount: an attempt is counted before its password is
// checked; when a right password then meets an error (here a 503, after the check, from the
// write that opens the session or changes the password), the attempt is given back. Repeated
// 503s neither lock the account nor change its failure count, and the right password works
// once the database does. The same holds for the lock such an attempt would have set.
func TestErrorsAfterARightPasswordDoNotCount(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	expectFailures := func(want int) {
		t.Helper()
		var failures int
		var locked bool
		err := env.st.pool.QueryRow(context.Background(),
			"SELECT failures, locked_until IS NOT NULL FROM login_failures WHERE login = $1", accountKey(alice.ID)).Scan(&failures, &locked)
		if err != nil || failures != want || locked {
			t.Fatalf("failure count %d, locked %v (%v); want %d, not locked", failures, locked, err, want)
		}
	}
	almost := env.cfg.loginMaxFailures - 1 // the next failure locks

	for range almost {
		env.loginWith(t, "alice", "wrong-password", nil).expect(t, http.StatusUnauthorized)
	}
	restore := env.failWrites(t, "sessions", "INSERT")
	for range env.cfg.loginMaxFailures + 1 {
		env.loginWith(t, "alice", testPassword, nil).expect(t, http.StatusServiceUnavailable)
		expectFailures(almost)
	}
	restore()
	p := pairOf(t, env.loginWith(t, "alice", testPassword, nil))

	change := func(current string) response {
		return env.do(t, "POST", "/api/auth/change-password", p.access,
			map[string]string{"current_password": current, "new_password": "new-password-456"})
	}
	for range almost {
		change("wrong-password").expect(t, http.StatusBadRequest)
	}
	restore = env.failWrites(t, "users", "UPDATE")
	for range env.cfg.loginMaxFailures + 1 {
		change(testPassword).expect(t, http.StatusServiceUnavailable)
		expectFailures(almost)
	}
	restore()
	change(testPassword).expect(t, http.StatusOK)
	pairOf(t, env.loginWith(t, "alice", "new-password-456", nil))
}
