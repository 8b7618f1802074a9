package main

import (
	"io"
	"sync"
	"time"
)

// logBuffer is the writer of the server's log. A line written when the server is quiet goes
// out at once; a busy server's lines of the next logFlushDelay after it are gathered into one
// write. One write per request would be a system call per request, made while the logger holds
// its lock, which the other requests' log lines then queue behind. A crash loses at most the
// lines of the last logFlushDelay; a shutdown loses none (flush).
type logBuffer struct {
	w       io.Writer
	mu      sync.Mutex
	buf     []byte
	pending bool // a flush is due: lines wait in buf until it runs
}

const (
	logFlushDelay = 10 * time.Millisecond
	logBufferMax  = 64 << 10 // bytes held before a flush is forced
)

func newLogBuffer(w io.Writer) *logBuffer { return &logBuffer{w: w} }

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.pending {
		b.pending = true
		time.AfterFunc(logFlushDelay, b.flush)
		return b.w.Write(p)
	}
	b.buf = append(b.buf, p...)
	if len(b.buf) >= logBufferMax {
		b.writeHeld()
	}
	return len(p), nil
}

// flush writes the held lines and ends the busy period.
func (b *logBuffer) flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.writeHeld()
	b.pending = false
}

func (b *logBuffer) writeHeld() {
	if len(b.buf) > 0 {
		_, _ = b.w.Write(b.buf) // nowhere to report a failing log
		b.buf = b.buf[:0]
	}
}
