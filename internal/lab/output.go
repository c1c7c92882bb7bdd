package lab

import (
	"bytes"
	"sync"
)

// Output collects what a child process writes to its stdout and stderr. It
// can be read while the process still writes: exec copies a pipe into it
// from a goroutine of its own, which a plain bytes.Buffer would race with.
type Output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

// String returns what was written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}
