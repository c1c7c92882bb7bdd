package resolve

// The steps of a connection's own namespace and of the host's: which
// conntrack table each asks, and how the host's is read ahead of a scrape.

import (
	"context"
	"time"

	"github.com/connection-exporter/connection_exporter/internal/netns"
	"github.com/connection-exporter/connection_exporter/record"
)

type ownNamespace struct {
	c      *Conntrack
	counts *tableCounts // of the prepared scrape, or nil
}

// Prepare returns the step for one scrape, whose batches share the
// tables' entry counts.
func (s ownNamespace) Prepare(context.Context, int) (Step, bool) {
	return ownNamespace{c: s.c, counts: newTableCounts()}, false
}

func (s ownNamespace) Resolve(ctx context.Context, qs []record.Query, idx []int, out []record.Destination) (rest []int) {
	c := s.c
	finder := nsFinder{procfs: c.cfg.ProcFS, extra: c.cfg.NetNSDirs}
	// The queries of each namespace are gathered into one run of a
	// pooled list, counted first: no list per namespace that grows.
	queries := make(map[uint32]int) // by namespace
	for _, i := range idx {
		if q := qs[i]; q.NetNS != c.hostIno && q.NetNS != 0 {
			queries[q.NetNS]++
		}
	}
	if len(queries) == 0 {
		return idx
	}
	runs := make(map[uint32][]int, len(queries))
	p := indexes.Get().(*[]int)
	defer indexes.Put(p)
	if cap(*p) < len(idx) {
		*p = make([]int, len(idx))
	}
	free := (*p)[:len(idx)]
	for ino, n := range queries {
		runs[ino], free = free[:0:n], free[n:]
	}
	rest = idx[:0] // written behind the reading; what is appended later fits too
	for _, i := range idx {
		if ino := qs[i].NetNS; ino == c.hostIno || ino == 0 {
			rest = append(rest, i)
		} else {
			runs[ino] = append(runs[ino], i)
		}
	}
	for ino, idx := range runs {
		if err := ctx.Err(); err != nil {
			fail(out, idx, ResolverConntrackNetNS, err)
			rest = append(rest, idx...)
			continue
		}
		if n, ok := s.counts.known(ino); ok && n == 0 {
			rest = append(rest, idx...) // nothing to find there
			continue
		}
		fd, err := c.openFor(&finder, ino, qs, idx)
		if err != nil {
			fail(out, idx, ResolverConntrackNetNS, err)
			rest = append(rest, idx...)
			continue
		}
		rest = append(rest, c.lookup(ctx, fd, ino, s.counts, qs, idx, out, ResolverConntrackNetNS)...)
		fd.Close()
	}
	return rest
}

type hostNamespace struct {
	c      *Conntrack
	counts *tableCounts // of the prepared scrape, or nil
}

func (s hostNamespace) Resolve(ctx context.Context, qs []record.Query, idx []int, out []record.Destination) []int {
	c := s.c
	if err := ctx.Err(); err != nil {
		fail(out, idx, ResolverConntrack, err)
		return idx
	}
	fd, err := netns.Open(c.cfg.HostNetNS, c.hostIno)
	if err != nil {
		fail(out, idx, ResolverConntrack, err)
		return idx
	}
	defer fd.Close()
	return c.lookup(ctx, fd, c.hostIno, s.counts, qs, idx, out, ResolverConntrack)
}

// Prepare starts dumping the host table when n lookups would cost more
// than a dump of it, so that the dump runs while the connections are read;
// it reports whether it did. Lookups from inside the kernel cost less than
// a dump: with them nothing is dumped.
func (s hostNamespace) Prepare(_ context.Context, n int) (Step, bool) {
	c := s.c
	s.counts = newTableCounts() // the prepared step's, whatever it reads
	if c.cfg.Kernel != nil {
		return s, false
	}
	if n*getCost <= dumpFixedCost {
		return s, false // no table is cheaper to dump than to look n entries up in
	}
	fd, err := netns.Open(c.cfg.HostNetNS, c.hostIno)
	if err != nil {
		return s, false // Resolve will say why
	}
	defer fd.Close()
	sock, err := openCT(fd)
	if err != nil {
		return s, false
	}
	entries, err := sock.count()
	if err != nil || !dumpCheaper(n, entries) {
		sock.close()
		return s, false
	}
	p := &preparedHost{hostNamespace: s, entries: entries, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer sock.close()
		begin := time.Now()
		p.recs = newRecords(int(entries))
		p.err = sock.dump(p.recs.add)
		p.took = time.Since(begin)
	}()
	return p, true
}

// preparedHost is the host step of one Resolve call, with the dump of the
// host table that started before the call.
type preparedHost struct {
	hostNamespace
	entries uint32
	done    chan struct{}

	// Set before done is closed.
	recs *records
	err  error
	took time.Duration
}

// Resolve answers from the dump. Connections opened after the dump started
// are not in it: those are looked up one by one.
func (p *preparedHost) Resolve(ctx context.Context, qs []record.Query, idx []int, out []record.Destination) []int {
	c := p.c
	// Index the connections while the dump may still be running.
	x := newQueryIndex(qs, idx, out, ResolverConntrack)
	select {
	case <-p.done:
	case <-ctx.Done():
		fail(out, idx, ResolverConntrack, ctx.Err())
		return idx
	}
	if p.err != nil {
		c.logger.Debug("cannot dump the host conntrack table ahead", "err", p.err)
		return p.hostNamespace.Resolve(ctx, qs, idx, out)
	}
	p.recs.join(x)
	rest, missing := x.rest()
	c.looked[methodDump].Add(uint64(len(idx) - len(missing)))
	c.logger.Debug("looked up conntrack", "netns", c.hostIno, "method", "dump_ahead", "entries", p.entries,
		"queries", len(idx), "missing", len(missing), "dump_seconds", p.took.Seconds())
	if len(missing) == 0 {
		return rest
	}
	return append(rest, p.hostNamespace.Resolve(ctx, qs, missing, out)...)
}
