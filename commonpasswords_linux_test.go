package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

// newTerminal opens a pseudo-terminal and returns its two ends: the terminal, for a program's
// stdin, and the keyboard the test types on.
func newTerminal(t *testing.T) (terminal, keyboard *os.File) {
	t.Helper()
	keyboard, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("opening a pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { keyboard.Close() })
	var unlock int32
	var n uint32
	for _, ioctl := range []struct {
		request uintptr
		arg     unsafe.Pointer
	}{{syscall.TIOCSPTLCK, unsafe.Pointer(&unlock)}, {syscall.TIOCGPTN, unsafe.Pointer(&n)}} {
		if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, keyboard.Fd(), ioctl.request, uintptr(ioctl.arg)); errno != 0 {
			t.Fatalf("setting up the pseudo-terminal: %v", errno)
		}
	}
	terminal, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("opening the pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { terminal.Close() })
	return terminal, keyboard
}

// TestCreateAdminAtTerminalRefusesGuessable types the password at the hidden prompt of
// -create-admin, as a person would: a common one is refused, a good one creates the admin.
func TestCreateAdminAtTerminalRefusesGuessable(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		password string
		wantErr  string // "" means the admin is created
	}{
		{"Password123", "password " + tooCommon},
		{"ROOT@example.com", "password " + notPersonal},
		{adminTestPassword, ""},
	} {
		t.Run(tt.password, func(t *testing.T) {
			t.Parallel()
			env := newTestEnv(t)
			terminal, keyboard := newTerminal(t)
			// The line discipline holds what is typed until the prompts read it.
			if _, err := keyboard.WriteString(tt.password + "\n" + tt.password + "\n"); err != nil {
				t.Fatal(err)
			}
			out, err := createAdminWith(env.cfg.databaseURL, nil, terminal, rootFlags...)
			if !strings.Contains(out, "Password (again): ") {
				t.Fatalf("no hidden password prompt, so not at a terminal; output: %q", out)
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("create-admin: %v; output: %s", err, out)
				}
				env.expectAdmin(t)
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("create-admin: error %v, want one saying %q; output: %s", err, tt.wantErr, out)
			}
			if n := env.countUsers(t, ""); n != 0 {
				t.Errorf("%d users after a refusal, want 0", n)
			}
		})
	}
}
