// Package catchup is the bookkeeping of a cache that refreshes in the
// background when asked to catch up: who asked, whether a refresh that
// started after the asking has finished, and waiting for it. The kubelet's
// and Docker's caches share it.
package catchup

import (
	"context"
	"sync"
	"time"
)

// Requests records requests for a refresh. Its methods are safe for
// concurrent use; the zero value is not usable, New makes one.
type Requests struct {
	kick chan struct{}

	mu      sync.Mutex
	pending chan struct{} // closed when served; nil when nothing waits
	at      time.Time     // when the first unserved request was made
}

// New returns an empty Requests.
func New() *Requests { return &Requests{kick: make(chan struct{}, 1)} }

// Ask records a request and wakes the refresher. It never blocks.
func (r *Requests) Ask() {
	r.mu.Lock()
	if r.pending == nil {
		r.pending, r.at = make(chan struct{}), time.Now()
	}
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Kicked is the refresher's wake-up: it receives after Ask.
func (r *Requests) Kicked() <-chan struct{} { return r.kick }

// Starting tells that a refresh starts now, at start: the wake-ups so far
// are answered by it. It returns start.
func (r *Requests) Starting(start time.Time) time.Time {
	select {
	case <-r.kick:
	default:
	}
	return start
}

// Served tells that a refresh that started at start has finished, well or
// not: the requests made before start are answered.
func (r *Requests) Served(start time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending != nil && start.After(r.at) {
		close(r.pending)
		r.pending = nil
	}
}

// Drop answers every request so far without a refresh: there will be none
// soon (the source is away).
func (r *Requests) Drop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending != nil {
		close(r.pending)
		r.pending = nil
	}
}

// Wait returns once the requests made so far are answered, or ctx is done.
func (r *Requests) Wait(ctx context.Context) {
	r.mu.Lock()
	ch := r.pending
	r.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case <-ch:
	case <-ctx.Done():
	}
}
