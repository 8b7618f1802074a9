package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
)

// TestBcryptRunsAtIdlePriority: the thread inBackground gives bcrypt runs under SCHED_IDLE
// (policy 5), so that request handlers and PostgreSQL always come first.
func TestBcryptRunsAtIdlePriority(t *testing.T) {
	t.Parallel()
	var policy string
	err := inBackground(func() error {
		sched, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/sched", syscall.Gettid()))
		for _, line := range strings.Split(string(sched), "\n") {
			if name, value, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(name) == "policy" {
				policy = strings.TrimSpace(value)
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if policy != "5" {
		t.Errorf("bcrypt thread policy %q, want 5 (SCHED_IDLE)", policy)
	}
}
