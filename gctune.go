package main

import (
	"context"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"time"
)

// The collector's pace. Go's default, GOGC=100, starts a collection each time the heap has
// grown by its live part since the last one: a quiet instance keeps a few megabytes live, so
// under load it collects every few thousand requests, and the collector's work is then about a
// tenth of the server's CPU (make bench: GOGC=400 took 11 % off the CPU of each
// /api/users/me). So while the live heap is small the server raises GOGC, letting the heap grow
// by heapFloor between collections; from heapFloor of live heap on, GOGC is Go's 100, and
// memory grows only with what is live, as by default. Set GOGC to turn this off.

const (
	heapFloor    = 64 << 20 // bytes the heap may grow by between collections, at least
	maxGCPercent = 1600     // GOGC for a live heap of 4 MB or less
)

// gcPercentFor returns the GOGC under which a heap of live bytes grows by heapFloor, or by
// its live part when that is more, before the next collection; in steps of 50.
func gcPercentFor(live uint64) int {
	if live == 0 {
		return maxGCPercent
	}
	percent := min(max(100, 100*heapFloor/live), maxGCPercent)
	return int(percent / 50 * 50)
}

// tuneGC sets GOGC from the live heap every second until ctx ends, then restores Go's 100.
func tuneGC(ctx context.Context) {
	live := []rtmetrics.Sample{{Name: "/gc/heap/live:bytes"}}
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	current := 0
	for {
		rtmetrics.Read(live)
		if percent := gcPercentFor(live[0].Value.Uint64()); percent != current {
			debug.SetGCPercent(percent) // no stop of the world: it moves the next collection's goal
			current = percent
		}
		select {
		case <-ctx.Done():
			debug.SetGCPercent(100)
			return
		case <-ticker.C:
		}
	}
}
