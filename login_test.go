package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Login and password change under concurrency and odd input.

func TestLoginOddInput(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "alice", roleUser)
	long := strings.Repeat("a", 3000)
	env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": long, "password": testPassword}).
		expect(t, http.StatusBadRequest)

	// bcrypt reads 72 bytes: a longer password must not pass for one that shares them.
	env.addUser(t, "bob", roleUser)
	password72 := strings.Repeat("p", 72)
	if _, err := env.st.pool.Exec(context.Background(), "UPDATE users SET password_hash = $2 WHERE username = $1",
		"bob", mustHash(t, password72)); err != nil {
		t.Fatal(err)
	}
	env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "bob", "password": password72 + "x"}).
		expect(t, http.StatusUnauthorized)
	bobToken := env.login(t, "bob", password72)
	env.do(t, "POST", "/api/auth/change-password", bobToken, map[string]string{"current_password": password72 + "x", "new_password": "new-password-456"}).
		expect(t, http.StatusBadRequest)

	// A user agent that is not valid UTF-8, or long, is stored mended, not refused.
	for _, agent := range []string{"curl/\xff\xfe", strings.Repeat("é", 400)} {
		req, err := http.NewRequest("POST", env.server.URL+"/api/auth/login",
			strings.NewReader(`{"username": "alice", "password": "`+testPassword+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", agent)
		send(t, req).expect(t, http.StatusOK)
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

// TestStaleLoginsAndChangesLose: a login whose password was checked against a hash replaced
// meanwhile gets no session, and a password change authenticated before a reset does not
// undo the reset.
func TestStaleLoginsAndChangesLose(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	ctx := context.Background()
	alice := env.addUser(t, "alice", roleUser) // as read before the change below
	token := env.tokenFor(t, alice)
	var session int64
	if err := env.st.pool.QueryRow(ctx, "SELECT max(id) FROM sessions").Scan(&session); err != nil {
		t.Fatal(err)
	}
	if _, err := env.st.pool.Exec(ctx, "UPDATE users SET password_hash = $2, token_version = token_version + 1 WHERE id = $1",
		alice.ID, mustHash(t, "reset-password")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := env.st.startSession(ctx, alice, "user:1", "", env.cfg.refreshTTL); !errors.Is(err, errUnauthorized) {
		t.Errorf("session for a login checked against the old hash: %v, want unauthorized", err)
	}
	if _, _, err := env.st.changePassword(ctx, alice, mustHash(t, "attacker-password"), session); !errors.Is(err, errUnauthorized) {
		t.Errorf("password change authenticated before the reset: %v, want unauthorized", err)
	}
	env.do(t, "GET", "/api/users/me", token, nil).expect(t, http.StatusUnauthorized)
	env.login(t, "alice", "reset-password")
}

// TestOnlyAdminsSetEmailVerified: a user cannot keep a new address verified by sending
// email_verified with it, even as "unchanged".
func TestOnlyAdminsSetEmailVerified(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	admin := env.addUser(t, "root", roleAdmin)
	alice := env.addUser(t, "alice", roleUser)
	if _, err := env.st.pool.Exec(context.Background(), "UPDATE users SET email_verified = true WHERE id = $1", alice.ID); err != nil {
		t.Fatal(err)
	}
	path := fmt.Sprintf("/api/users/%d", alice.ID)
	env.do(t, "PATCH", path, env.tokenFor(t, alice), map[string]any{"email": "victim@example.com", "email_verified": true}).
		expect(t, http.StatusForbidden)
	r := env.do(t, "PATCH", path, env.tokenFor(t, alice), map[string]any{"email": "new@example.com"}).expect(t, http.StatusOK)
	if r.json(t)["email_verified"] != false {
		t.Errorf("a new address stayed verified: %s", r.body)
	}
	r = env.do(t, "PATCH", path, env.tokenFor(t, admin), map[string]any{"email_verified": true}).expect(t, http.StatusOK)
	if r.json(t)["email_verified"] != true {
		t.Errorf("an admin could not mark the address verified: %s", r.body)
	}
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
