package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestBcryptRunsAtLowestPriority: the thread inBackground gives bcrypt runs at nice 19, so
// that request handlers and PostgreSQL come first, while other threads keep their priority.
func TestBcryptRunsAtLowestPriority(t *testing.T) {
	t.Parallel()
	var nice int
	err := inBackground(func() error {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/stat", syscall.Gettid()))
		if err != nil {
			return err
		}
		// Field 19 is the nice value; the fields after the ")" of the command name start at 3.
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		nice, err = strconv.Atoi(fields[19-3])
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if nice != 19 {
		t.Errorf("bcrypt thread nice %d, want 19", nice)
	}
	if self, _ := syscall.Getpriority(syscall.PRIO_PROCESS, syscall.Gettid()); self != 20 { // 20 - nice
		t.Errorf("the calling thread's priority changed too (getpriority %d)", self)
	}
}
