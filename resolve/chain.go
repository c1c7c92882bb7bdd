package resolve

import (
	"context"
	"sync"

	"github.com/connection-exporter/connection_exporter/record"
)

// Step is one table that can answer where connections go.
type Step interface {
	// Resolve looks up the queries qs[i] for i in idx, sets out[i] for
	// those it translates (and Err/ErrResolver where its table could not be
	// read), and returns the indexes it did not translate. The returned
	// slice may reuse idx's storage: a step allocates nothing per query.
	Resolve(ctx context.Context, qs []record.Query, idx []int, out []record.Destination) []int
}

// Preparer is a Step that can start reading its table before the
// connections to resolve are known, so that reading the table overlaps
// reading the connections.
type Preparer interface {
	Step
	// Prepare starts reading for about n connections and returns the step
	// to use for the next Resolve call, which uses what was read, and
	// whether it started reading a whole table: then that step answers
	// best when asked about all connections at once. A prepared step that
	// is never used costs only the read.
	Prepare(ctx context.Context, n int) (s Step, whole bool)
}

// Chain asks its steps in order; a connection goes on to the next step
// until one translates it. It is safe for concurrent use if its steps are.
type Chain []Step

// Resolve fills out[i] with the destination of qs[i]; out must be at least
// as long as qs. A connection no step translates goes to its dialled
// address with ResolverNone.
func (ch Chain) Resolve(ctx context.Context, qs []record.Query, out []record.Destination) {
	p := indexes.Get().(*[]int)
	defer indexes.Put(p)
	if cap(*p) < len(qs) {
		*p = make([]int, len(qs))
	}
	idx := (*p)[:len(qs)]
	for i, q := range qs {
		out[i] = record.Destination{Actual: q.Dst, Resolver: ResolverNone}
		idx[i] = i
	}
	for _, s := range ch {
		if len(idx) == 0 {
			break
		}
		idx = s.Resolve(ctx, qs, idx, out)
	}
	for _, s := range ch {
		if r, ok := s.(Refiner); ok {
			r.Refine(ctx, qs, out)
		}
	}
}

// indexes holds the index lists of Resolve calls for reuse: memory the
// process has not touched yet costs a page fault per 4 kB.
var indexes = sync.Pool{New: func() any { return new([]int) }}

// Prepare returns the chain to use for resolving about n connections that
// are still being read: its steps that are Preparers have started reading
// their tables. whole reports that one of them reads a whole table, so
// that the chain answers best when asked about all connections at once.
// The returned chain serves one Resolve call.
func (ch Chain) Prepare(ctx context.Context, n int) (prepared Chain, whole bool) {
	prepared = make(Chain, len(ch))
	for i, s := range ch {
		if p, ok := s.(Preparer); ok {
			var w bool
			s, w = p.Prepare(ctx, n)
			whole = whole || w
		}
		prepared[i] = s
	}
	return prepared, whole
}
