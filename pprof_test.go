package main

import (
	"io"
	"log/slog"
	"testing"
)

// TestPprofOnlyOnLoopback: profiles are never served on an address others can reach.
func TestPprofOnlyOnLoopback(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"0.0.0.0:6060", ":6060", "192.0.2.1:6060", "localhost6060"} {
		if err := servePprof(addr, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
			t.Errorf("-pprof %s accepted, want refused", addr)
		}
	}
	if err := servePprof("127.0.0.1:0", slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Errorf("-pprof 127.0.0.1:0: %v", err)
	}
}
