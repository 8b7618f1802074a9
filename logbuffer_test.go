package main

import (
	"strings"
	"testing"
	"time"
)

// TestLogBuffer: a line written when quiet is out at once; lines that follow within the delay
// come out together, in order, once it has passed; flush writes what is held at once.
func TestLogBuffer(t *testing.T) {
	t.Parallel()
	out := &syncBuffer{}
	b := newLogBuffer(out)
	_, _ = b.Write([]byte("one\n"))
	if out.String() != "one\n" {
		t.Fatalf("a quiet line was held: %q", out.String())
	}
	_, _ = b.Write([]byte("two\n"))
	_, _ = b.Write([]byte("three\n"))
	if out.String() != "one\n" {
		t.Fatalf("lines of a busy moment were written one by one: %q", out.String())
	}
	waitFor(t, "the held lines", func() bool { return out.String() == "one\ntwo\nthree\n" })
	time.Sleep(2 * logFlushDelay) // quiet again
	_, _ = b.Write([]byte("four\n"))
	_, _ = b.Write([]byte("five\n"))
	b.flush()
	if got := out.String(); got != "one\ntwo\nthree\nfour\nfive\n" {
		t.Fatalf("after flush: %q", got)
	}
	_, _ = b.Write([]byte(strings.Repeat("x", logBufferMax) + "\n")) // quiet: at once
	if !strings.HasSuffix(out.String(), "x\n") {
		t.Fatal("a long quiet line was held")
	}
}
