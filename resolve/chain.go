package resolve

import "context"

// Step is one table that can answer where connections go.
type Step interface {
	// Resolve looks up the queries qs[i] for i in idx, sets out[i] for
	// those it translates (and Err/ErrResolver where its table could not be
	// read), and returns the indexes it did not translate.
	Resolve(ctx context.Context, qs []Query, idx []int, out []Result) []int
}

// Chain asks its steps in order; a connection goes on to the next step
// until one translates it. It is safe for concurrent use if its steps are.
type Chain []Step

// Resolve fills out[i] with the destination of qs[i]; out must be at least
// as long as qs. A connection no step translates goes to its dialled
// address with ResolverNone.
func (ch Chain) Resolve(ctx context.Context, qs []Query, out []Result) {
	idx := make([]int, len(qs))
	for i, q := range qs {
		out[i] = Result{Actual: q.Dst, Resolver: ResolverNone}
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
