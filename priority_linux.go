package main

import (
	"syscall"
	"unsafe"
)

// schedIdle is Linux's SCHED_IDLE policy: the thread runs only when no other thread wants
// the CPU, and yields to any that wakes.
const schedIdle = 5

// lowerThreadPriority moves the calling OS thread to SCHED_IDLE, or, where that is refused,
// to the lowest nice level. Failure leaves the priority as it was, which is safe.
func lowerThreadPriority() {
	tid := syscall.Gettid()
	param := struct{ priority int32 }{0}
	_, _, errno := syscall.Syscall(syscall.SYS_SCHED_SETSCHEDULER, uintptr(tid), schedIdle, uintptr(unsafe.Pointer(&param)))
	if errno != 0 {
		_ = syscall.Setpriority(syscall.PRIO_PROCESS, tid, 19)
	}
}
