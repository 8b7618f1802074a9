package main

import "syscall"

// lowerThreadPriority gives the calling OS thread the lowest CPU priority (nice 19). Failure
// leaves the priority as it was, which is safe.
//
// SCHED_IDLE would starve the thread harder, but then the Go runtime's stop-the-world pauses,
// which must wait for every running thread, waited for starved bcrypt threads: measured under
// a login flood, read p99 was worse (25 ms against 7 ms).
func lowerThreadPriority() {
	_ = syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), 19)
}
