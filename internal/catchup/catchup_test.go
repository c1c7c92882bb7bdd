package catchup

import (
	"context"
	"testing"
	"time"
)

// waits reports whether Wait is still waiting a little after it started.
func waits(r *Requests) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	r.Wait(ctx)
	return ctx.Err() != nil
}

func TestRequests(t *testing.T) {
	r := New()
	if waits(r) {
		t.Error("Wait with nothing asked waits")
	}
	before := time.Now()
	time.Sleep(time.Millisecond)
	r.Ask()
	select {
	case <-r.Kicked():
	default:
		t.Error("Ask did not wake the refresher")
	}
	r.Served(before) // a refresh that started before the ask
	if !waits(r) {
		t.Error("answered by a refresh older than the request")
	}
	time.Sleep(time.Millisecond)
	start := r.Starting(time.Now())
	r.Served(start)
	if waits(r) {
		t.Error("not answered by a refresh newer than the request")
	}

	r.Ask()
	r.Drop()
	if waits(r) {
		t.Error("not answered after Drop")
	}
	r.Ask()
	r.Starting(time.Now())
	select {
	case <-r.Kicked():
		t.Error("a wake-up answered by the refresh starting was left")
	default:
	}
}
