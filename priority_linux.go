package main

import "syscall"

// lowerThreadPriority gives the calling OS thread the lowest CPU priority (nice 19).
// Failure leaves the priority as it was, which is safe.
func lowerThreadPriority() {
	_ = syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), 19)
}
