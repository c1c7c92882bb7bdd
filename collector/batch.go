package collector

// New connections in batches: gathered while the changes are read, each
// batch resolved on a goroutine of its own, admitted in order.

import (
	"context"
	"math"
	"net/netip"
	"time"

	"github.com/connection-exporter/connection_exporter/record"
)

// batchSize is the number of new connections resolved by one Resolve call
// and admitted together.
const batchSize = 4096

// maxInFlight bounds the batches being resolved at once. The memory a
// scrape takes for new connections is then at most maxInFlight+1 batches
// (about 1 MB each) however many there are, and it is kept for the next
// scrape: fresh memory costs a page fault per 4 kB, 14 µs each on the
// development VM, which made a third of a cold scrape at 50,000
// connections when it was taken for all of them at once.
const maxInFlight = 3

// batch is a run of new connections: the halves of each, and where
// resolving them says they go, index for index.
type batch struct {
	fresh   []freshConn
	lookups []record.Query
	results []record.Destination
	done    chan struct{} // closed when results are filled
}

// stream gathers the new connections of one scrape into batches, has each
// resolved on its own goroutine as it fills, and admits them in order.
type stream struct {
	c        *Connections
	ctx      context.Context
	r        record.Resolver
	now      time.Time
	limit    int      // connections per batch
	cur      *batch   // filling
	inflight []*batch // being resolved, oldest first
	batches  int
	waited   time.Duration // for resolving to finish
}

// newStream starts a scrape's stream. The resolver is prepared for the
// number of new connections the source announces: it may start reading a
// whole table ahead of the first batch, and then the new connections make
// one batch, however many, resolved once the changes are read.
func (c *Connections) newStream(ctx context.Context, now time.Time) *stream {
	st := &stream{c: c, ctx: ctx, r: c.resolver, now: now, limit: batchSize}
	if n := c.expected(); n > 0 {
		if p, ok := c.resolver.(Preparer); ok {
			var whole bool
			if st.r, whole = p.Prepare(ctx, n); whole {
				st.limit = math.MaxInt
			}
		}
		c.sizeConns(n)
	}
	return st
}

// sizeConns makes the map of connections for n of them and an eighth
// more, no growth on a cold scrape, if it is empty and was made for fewer:
// the eighth is for the connections opened between the map's making at
// start-up and the first scrape.
func (c *Connections) sizeConns(n int) {
	if len(c.conns) == 0 && n > c.connsSize {
		c.connsSize = n + n/8
		c.conns = make(map[uint64]tracked, c.connsSize)
	}
}

// add copies a new connection into the filling batch, and sends the batch
// to be resolved when it is full.
func (st *stream) add(k *record.Conn) {
	if st.cur == nil {
		st.cur = st.c.newBatch()
	}
	b := st.cur
	b.fresh = append(b.fresh, freshConn{cookie: k.Cookie, tcp: k.TCP, comm: k.Comm, state: k.State, reported: k.Reported, seeded: k.Seeded})
	b.lookups = append(b.lookups, record.Query{NetNS: k.NetNS, PID: k.PID, Src: k.Src, Dst: k.Dst})
	if len(b.lookups) == st.limit {
		st.dispatch()
	}
}

// dispatch resolves the filling batch on a goroutine of its own, first
// admitting the oldest batch if maxInFlight are being resolved.
func (st *stream) dispatch() {
	b := st.cur
	st.cur = nil
	if len(st.inflight) == maxInFlight {
		st.admitOldest()
	}
	b.done = make(chan struct{})
	if len(b.lookups) > len(b.results) {
		b.results = make([]record.Destination, len(b.lookups))
	}
	in, out := b.lookups, b.results[:len(b.lookups)]
	go func() {
		defer close(b.done)
		st.r.Resolve(st.ctx, in, out)
	}()
	st.inflight = append(st.inflight, b)
	st.batches++
}

// admitOldest waits for the oldest batch being resolved, admits its
// connections and keeps it for reuse.
func (st *stream) admitOldest() {
	b := st.inflight[0]
	st.inflight = append(st.inflight[:0], st.inflight[1:]...)
	start := time.Now()
	<-b.done
	st.waited += time.Since(start)
	st.c.admitBatch(b, st.now)
	if cap(b.lookups) > batchSize {
		return // grown for a whole table's resolver: not kept
	}
	b.fresh, b.lookups = b.fresh[:0], b.lookups[:0]
	clear(b.results)
	st.c.free = append(st.c.free, b)
}

// finish resolves the last batch and admits every batch still out.
func (st *stream) finish() {
	if st.cur != nil {
		st.dispatch()
	}
	for len(st.inflight) > 0 {
		st.admitOldest()
	}
}

// newBatch returns a batch kept from earlier, or a new one.
func (c *Connections) newBatch() *batch {
	if n := len(c.free); n > 0 {
		b := c.free[n-1]
		c.free = c.free[:n-1]
		return b
	}
	return allocBatch()
}

// allocBatch allocates a batch.
func allocBatch() *batch {
	return &batch{
		fresh:   make([]freshConn, 0, batchSize),
		lookups: make([]record.Query, 0, batchSize),
		results: make([]record.Destination, batchSize),
	}
}

// admitBatch admits the resolved connections of b.
func (c *Connections) admitBatch(b *batch, now time.Time) {
	if c.named == nil {
		c.named, c.owners, c.dests = make(map[nameKey]named), make(map[ownerKey]owned), make(map[netip.AddrPort]dest)
	}
	// Every connection of the batch was read before this moment: the
	// moment it was first seen, for the caches that name it.
	at := c.now()
	var k record.Conn // one for all: the namer's interface makes it escape
	for i := range b.fresh {
		k = b.fresh[i].conn(&b.lookups[i])
		if k.Reported {
			// Reported again in this scrape after a change: batches are
			// admitted in order, so its first report is admitted by now
			// (or postponed, and then it is admitted anew).
			if t, ok := c.conns[k.Cookie]; ok {
				c.apply(t, &k, now)
				continue
			}
		}
		c.fresh++
		if s := c.admit(&k, &b.results[i], at); s != nil {
			c.apply(tracked{s: s}, &k, now)
		}
	}
}
