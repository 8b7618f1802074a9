package main

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Password hashing: bcrypt at the configured cost in a bounded number of slots, at the lowest
// CPU priority, with a dummy hash so that failed logins cost the same whoever they name.

// hasher hashes and checks passwords with bcrypt at the configured cost. At most
// BCRYPT_CONCURRENCY run at once, so that a flood of logins queues here instead of starving
// every other request of CPU.
type hasher struct {
	cost    int
	slots   chan struct{}
	dummies [bcrypt.MaxCost + 1]func() string // a hash of no password, per cost
	// floor is the cost a failed check pays (see check): cost, or that of the strongest
	// stored hash once learnFloor or a check met it.
	floor      atomic.Int64
	floorKnown atomic.Bool
	compared   atomic.Int64                     // comparisons since start: what the lockout tests count
	comparedAt [bcrypt.MaxCost + 1]atomic.Int64 // comparisons per cost since start: what the timing tests count
	// For /metrics: requests waiting for a slot now, waits and their total time since start,
	// and waits that ended in a 503.
	waiting, waits, waitedNanos, busy atomic.Int64
	procs                             *procsRaiser // the server's; nil leaves GOMAXPROCS alone
}

// procsRaiser keeps GOMAXPROCS at base plus the bcrypt computations running. A computation
// holds a P while it runs, on its low-priority thread (see inBackground): with a P more for
// each, bcrypt never holds every P that request handlers need. Without logins, GOMAXPROCS is
// base: more Ps than cores would have the scheduler's idle Ps spin and wake threads that the
// cores cannot run: on 2 cores, 146 us of CPU per /api/users/me against 123 us with this
// (both builds alternating under the same load).
type procsRaiser struct {
	mu         sync.Mutex
	base, busy int
}

func newProcsRaiser() *procsRaiser { return &procsRaiser{base: runtime.GOMAXPROCS(0)} }

// add changes the number of computations running by delta and sets GOMAXPROCS to match (a
// brief stop of the world, twice per login: nothing beside a bcrypt computation).
func (p *procsRaiser) add(delta int) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.busy += delta
	runtime.GOMAXPROCS(p.base + p.busy)
}

// bcryptWait is how long a request waits for a bcrypt slot before it gets a 503.
const bcryptWait = 2 * time.Second

func newHasher(cost, concurrency int) *hasher {
	h := &hasher{cost: cost, slots: make(chan struct{}, concurrency)}
	h.floor.Store(int64(cost))
	// Made on first use rather than at start, so that starting stays fast.
	for c := range h.dummies {
		h.dummies[c] = sync.OnceValue(func() string {
			hash, _ := bcrypt.GenerateFromPassword([]byte(randomToken()), max(c, bcrypt.MinCost))
			return string(hash)
		})
	}
	return h
}

func (h *hasher) hash(ctx context.Context, password string) (string, error) {
	var hash []byte
	err := h.withSlot(ctx, nil, func() (err error) {
		hash, err = bcrypt.GenerateFromPassword([]byte(password), h.cost)
		return err
	})
	return string(hash), err
}

// check compares password with hash, holding one bcrypt slot throughout. admit runs once the
// slot is held, just before the comparison, and its error ends the call: a login attempt is
// counted there, so that an attempt turned away as busy (503) never counts towards a
// lockout. An empty hash (an unknown or deactivated user) is checked against a dummy and
// never matches. When password matches and then is set, then is hashed at the configured
// cost in the same slot and returned: a request that proved its password does not queue
// again for a slot, so it cannot be turned away as busy after its attempt was counted.
//
// Every check that fails costs the same bcrypt work, that of one comparison at the floor
// cost, so that response times do not tell unknown users, deactivated ones and wrong
// passwords apart, whatever the cost of the stored hash: a comparison against a weaker hash
// (BCRYPT_COST was raised since it was made) is padded with comparisons at its cost and each
// cost up to the floor, 2^c + 2^c + 2^(c+1) + ... + 2^(floor-1) = 2^floor rounds.
func (h *hasher) check(ctx context.Context, hash, password, then string, admit func() error) (ok bool, thenHash string, err error) {
	err = h.withSlot(ctx, admit, func() error {
		stored, err := bcrypt.Cost([]byte(hash))
		if err != nil {
			hash = "" // not a bcrypt hash: nothing matches it
		}
		floor := h.raiseFloor(stored)
		if hash == "" {
			hash, stored = h.dummies[floor](), floor
		}
		if ok = h.compare(hash, password); ok {
			if then != "" {
				var b []byte
				b, err = bcrypt.GenerateFromPassword([]byte(then), h.cost)
				thenHash = string(b)
			}
			return err
		}
		for c := stored; c < floor; c++ {
			h.compare(h.dummies[c](), password)
		}
		return nil
	})
	return ok, thenHash, err
}

// compare is one bcrypt comparison, counted.
func (h *hasher) compare(hash, password string) bool {
	cost, _ := bcrypt.Cost([]byte(hash))
	h.compared.Add(1)
	h.comparedAt[cost].Add(1)
	return bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) == nil
}

// raiseFloor raises the floor to cost if it is lower, and returns the floor.
func (h *hasher) raiseFloor(cost int) int {
	for {
		floor := h.floor.Load()
		if int64(cost) <= floor || h.floor.CompareAndSwap(floor, int64(cost)) {
			return int(max(floor, int64(cost)))
		}
	}
}

// learnFloor raises the floor, once per process, to the cost of the strongest stored hash,
// which strongest reads. After BCRYPT_COST was lowered, checking a hash made before takes
// longer: without this, the failed logins of accounts that still have one would stand out
// until the first of them met a check.
func (h *hasher) learnFloor(strongest func() (int, error)) error {
	if h.floorKnown.Load() {
		return nil
	}
	cost, err := strongest()
	if err != nil {
		return err
	}
	h.raiseFloor(cost)
	h.floorKnown.Store(true)
	return nil
}

// withSlot runs work in the background once a bcrypt slot is free, and admit (when set) just
// before it, on the calling goroutine.
func (h *hasher) withSlot(ctx context.Context, admit, work func() error) error {
	select {
	case h.slots <- struct{}{}:
	default:
		if err := h.waitForSlot(ctx); err != nil {
			return err
		}
	}
	defer func() { <-h.slots }()
	if admit != nil {
		if err := admit(); err != nil {
			return err
		}
	}
	h.procs.add(1)
	defer h.procs.add(-1)
	return inBackground(work)
}

// waitForSlot takes a slot once one is free, for up to bcryptWait, counting the wait.
func (h *hasher) waitForSlot(ctx context.Context) error {
	start := time.Now()
	h.waiting.Add(1)
	h.waits.Add(1)
	defer func() {
		h.waiting.Add(-1)
		h.waitedNanos.Add(int64(time.Since(start)))
	}()
	timer := time.NewTimer(bcryptWait)
	defer timer.Stop()
	select {
	case h.slots <- struct{}{}:
		return nil
	case <-timer.C:
		h.busy.Add(1)
		return fail(errBusy, "Server busy, try again shortly")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// inBackground runs work on an OS thread of its own at the lowest CPU priority and waits for
// it. The kernel then gives the CPU to every other thread first (request handlers, PostgreSQL)
// and to bcrypt only what they leave: a flood of logins uses the idle CPU without slowing the
// other requests. The goroutine ends still locked to its thread, so the thread, with its
// lowered priority, is discarded rather than reused. (The server's procsRaiser gives each
// such thread a P of its own, so these threads never hold every P.)
func inBackground(work func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		lowerThreadPriority()
		done <- work()
	}()
	return <-done
}

// strongestHashCost returns the highest bcrypt cost among the stored password hashes (0 when
// there are none).
func (s *store) strongestHashCost(ctx context.Context) (int, error) {
	var cost int
	err := s.pool.QueryRow(ctx, `SELECT COALESCE(max(substring(password_hash from '^\$2[abxy]?\$(\d\d)\$')::int), 0)
		FROM users`).Scan(&cost)
	if err != nil {
		return 0, fmt.Errorf("strongest hash cost: %w", err)
	}
	return cost, nil
}
