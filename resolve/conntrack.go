package resolve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/connection-exporter/connection_exporter/internal/netns"
)

// Names of the tables that can answer, as exported in the resolver label.
const (
	ResolverNone           = "none"            // nothing rewrote the destination
	ResolverConntrack      = "conntrack"       // host namespace conntrack
	ResolverConntrackNetNS = "conntrack_netns" // the connection's own namespace
)

// Query is one connection to resolve.
type Query struct {
	// NetNS is the inode of the connection's network namespace.
	NetNS uint32
	// PID is the process that opened the connection (0 if unknown); its
	// namespace file is the cheapest way into NetNS.
	PID uint32
	// Src and Dst are the connection's local address and the address the
	// application dialled.
	Src, Dst netip.AddrPort
}

// KernelLookup looks tuples up in the conntrack table of the calling
// thread's network namespace from inside the kernel: cheaper than netlink
// requests, and unlike a dump its cost does not grow with the table.
type KernelLookup interface {
	// Lookup looks n tuples up: orig(i) is the i-th, and found(i, reply)
	// is called for each whose original tuple is that of an entry of the
	// table, with the entry's reply tuple.
	Lookup(n int, orig func(int) Tuple, found func(int, Tuple)) error
}

// Tuple is one direction of a conntrack entry as a KernelLookup sees it:
// addresses in 16-byte form (IPv4-mapped for IPv4).
type Tuple struct {
	Src, Dst         [16]byte
	SrcPort, DstPort uint16
}

// Result is where a connection really goes.
type Result struct {
	// Actual is the address that answers; Dst when nothing rewrote it.
	Actual netip.AddrPort
	// Resolver names the table that answered (one of the Resolver* names).
	Resolver string
	// Err is set when a table could not be read; ErrResolver names it. The
	// result is still the best known, but a later attempt may do better.
	Err         error
	ErrResolver string

	// via is the reply destination of the translating entry: the client as
	// the next hop sees it, for a second translation (Swarm's ingress).
	via netip.AddrPort
}

// ConntrackConfig configures a Conntrack resolver.
type ConntrackConfig struct {
	// ProcFS is the mount point of the host's procfs.
	ProcFS string
	// HostNetNS is the path of the host network namespace file, usually
	// HostNetNSPath(ProcFS).
	HostNetNS string
	// NetNSDirs are directories of bind-mounted namespace files (such as
	// /run/netns) searched when no process of a namespace can be found.
	NetNSDirs []string
	// Kernel, when set, looks connections up from inside the kernel
	// instead of through netlink requests or a dump.
	Kernel KernelLookup
}

// Conntrack resolves connections from the conntrack tables of their own and
// of the host network namespace. Each Resolve call opens one netlink socket
// per namespace it needs, inside that namespace, and closes it before it
// returns, so it never keeps a dead namespace alive. It is safe for
// concurrent use.
type Conntrack struct {
	cfg     ConntrackConfig
	logger  *slog.Logger
	hostIno uint32

	// looked counts connections looked up, by method.
	looked [len(methods)]atomic.Uint64
}

// tableCounts are the entry counts of the tables read during one scrape,
// by namespace inode: the scrape's batches share them, instead of each
// entering each namespace to ask the kernel again (300 µs a batch at
// 50,000 connections), and a table empty at the first batch is not looked
// at by the others, as if the batches had been one. The next scrape
// prepares its own. A nil *tableCounts keeps nothing.
type tableCounts struct {
	mu sync.Mutex
	m  map[uint32]uint32
}

func newTableCounts() *tableCounts { return &tableCounts{m: make(map[uint32]uint32)} }

// known returns the entry count of namespace ino's table if it was read.
func (k *tableCounts) known(ino uint32) (uint32, bool) {
	if k == nil {
		return 0, false
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	n, ok := k.m[ino]
	return n, ok
}

// get returns the entry count of namespace ino's table, read with count
// unless it is known. A failed read is not kept.
func (k *tableCounts) get(ino uint32, count func() (uint32, error)) (uint32, error) {
	if n, ok := k.known(ino); ok {
		return n, nil
	}
	n, err := count()
	if err != nil || k == nil {
		return n, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.m[ino] = n
	return n, nil
}

// How a conntrack table is read, as exported in the method label.
const (
	methodKernel = iota // lookups from inside the kernel
	methodDump          // a dump of the whole table
	methodGet           // one netlink request per connection
)

var methods = [...]string{methodKernel: "kernel", methodDump: "dump", methodGet: "get"}

var lookupsDesc = prometheus.NewDesc("connection_exporter_conntrack_lookups_total",
	"Connections looked up in a conntrack table, by method: kernel (lookups from a BPF program), dump (a dump of the table), get (one netlink request each).",
	[]string{"method"}, nil)

// Describe implements prometheus.Collector.
func (c *Conntrack) Describe(ch chan<- *prometheus.Desc) { ch <- lookupsDesc }

// Collect implements prometheus.Collector.
func (c *Conntrack) Collect(ch chan<- prometheus.Metric) {
	for m, name := range methods {
		ch <- prometheus.MustNewConstMetric(lookupsDesc, prometheus.CounterValue, float64(c.looked[m].Load()), name)
	}
}

// NewConntrack checks that the host namespace can be opened and its
// conntrack table queried (which needs CAP_NET_ADMIN).
func NewConntrack(cfg ConntrackConfig, logger *slog.Logger) (*Conntrack, error) {
	if cfg.ProcFS == "" {
		cfg.ProcFS = "/proc"
	}
	if cfg.HostNetNS == "" {
		cfg.HostNetNS = HostNetNSPath(cfg.ProcFS)
	}
	ino, err := netns.Inode(cfg.HostNetNS)
	if err != nil {
		return nil, fmt.Errorf("host network namespace: %w", err)
	}
	c := &Conntrack{cfg: cfg, logger: logger, hostIno: ino}
	fd, err := netns.Open(cfg.HostNetNS, ino)
	if err != nil {
		return nil, fmt.Errorf("host network namespace: %w", err)
	}
	defer fd.Close()
	sock, err := openCT(fd)
	if err != nil {
		return nil, err
	}
	defer sock.close()
	if _, err := sock.count(); err != nil {
		return nil, fmt.Errorf("query conntrack in host netns: %w", err)
	}
	return c, nil
}

// HostNetNS returns the inode of the host network namespace.
func (c *Conntrack) HostNetNS() uint32 { return c.hostIno }

// Resolve fills out[i] with the destination of qs[i]; out must be at least
// as long as qs. It is Chain{c.OwnNamespace(), c.HostNamespace()}.Resolve.
func (c *Conntrack) Resolve(ctx context.Context, qs []Query, out []Result) {
	Chain{c.OwnNamespace(), c.HostNamespace()}.Resolve(ctx, qs, out)
}

// OwnNamespace returns the step that looks each connection up in the
// conntrack table of its own network namespace, where a translated entry
// answers with ResolverConntrackNetNS (sidecar redirects). Connections of
// the host namespace are left to HostNamespace.
func (c *Conntrack) OwnNamespace() Step { return ownNamespace{c: c} }

// HostNamespace returns the step that looks connections up in the host
// namespace's conntrack table (kube-proxy, Docker DNAT).
func (c *Conntrack) HostNamespace() Step { return hostNamespace{c: c} }

type ownNamespace struct {
	c      *Conntrack
	counts *tableCounts // of the prepared scrape, or nil
}

// Prepare returns the step for one scrape, whose batches share the
// tables' entry counts.
func (s ownNamespace) Prepare(context.Context, int) (Step, bool) {
	return ownNamespace{c: s.c, counts: newTableCounts()}, false
}

func (s ownNamespace) Resolve(ctx context.Context, qs []Query, idx []int, out []Result) (rest []int) {
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

func (s hostNamespace) Resolve(ctx context.Context, qs []Query, idx []int, out []Result) []int {
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
func (p *preparedHost) Resolve(ctx context.Context, qs []Query, idx []int, out []Result) []int {
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

// records are the TCP entries of a dump in the order it gave them: cheaper
// to collect than a table while the dump runs, and joined with the
// connections once both are known.
type records struct {
	v4 []pair4
	v6 []pair
}

type pair4 struct{ orig, reply tuple4 }
type pair struct{ orig, reply tuple }

func newRecords(entries int) *records {
	return &records{v4: make([]pair4, 0, entries)}
}

// add adds a dumped entry's attributes if it is TCP.
func (r *records) add(b []byte) {
	e, ok := parseEntry(b)
	if !ok || e.proto != unix.IPPROTO_TCP {
		return
	}
	if e.orig.is4() && e.reply.is4() {
		r.v4 = append(r.v4, pair4{e.orig.short(), e.reply.short()})
	} else {
		r.v6 = append(r.v6, pair{e.orig, e.reply})
	}
}

// join answers each indexed connection from the reply of its entry.
func (r *records) join(x *queryIndex) {
	for _, p := range r.v4 {
		if n, ok := x.v4[p.orig]; ok {
			x.answer(n, p.reply.long())
		}
	}
	for _, p := range r.v6 {
		x.probe(p.orig, p.reply)
	}
}

// queryIndex finds connections by their original tuple and answers them in
// place. Connections of different namespaces can share a tuple
// (overlapping private networks): those are chained through next.
type queryIndex struct {
	qs       []Query
	idx      []int
	out      []Result
	resolver string

	v4    map[tuple4]int32 // last position in idx with the tuple
	v6    map[tuple]int32
	next  []int32 // previous position with the same tuple, or -1
	found []uint8 // per position: notFound, untranslated or translated
}

const (
	notFound = iota
	untranslated
	translated
)

func newQueryIndex(qs []Query, idx []int, out []Result, resolver string) *queryIndex {
	x := &queryIndex{qs: qs, idx: idx, out: out, resolver: resolver,
		v4: make(map[tuple4]int32, len(idx)), v6: make(map[tuple]int32),
		next: make([]int32, len(idx)), found: make([]uint8, len(idx))}
	for n, i := range idx {
		x.next[n] = -1
		if t := tupleOf(qs[i].Src, qs[i].Dst); t.is4() {
			k := t.short()
			if prev, ok := x.v4[k]; ok {
				x.next[n] = prev
			}
			x.v4[k] = int32(n)
		} else {
			if prev, ok := x.v6[t]; ok {
				x.next[n] = prev
			}
			x.v6[t] = int32(n)
		}
	}
	return x
}

// answer answers the connections at position n and those chained to it
// from reply, the reply tuple of their entry.
func (x *queryIndex) answer(n int32, reply tuple) {
	for ; n >= 0; n = x.next[n] {
		i := x.idx[n]
		x.found[n] = untranslated
		if translate(&x.out[i], x.qs[i].Dst, reply, x.resolver) {
			x.found[n] = translated
		}
	}
}

// translate sets out from reply, the reply tuple of the entry of a
// connection dialled to dst, when the entry rewrote the destination, and
// reports whether it did.
func translate(out *Result, dst netip.AddrPort, reply tuple, resolver string) bool {
	src := reply.source()
	if src == dst {
		return false
	}
	out.Actual, out.Resolver, out.via = src, resolver, reply.destination()
	return true
}

// probe answers the indexed connections whose original tuple is orig, if
// there are any.
func (x *queryIndex) probe(orig, reply tuple) {
	var n int32
	var ok bool
	if orig.is4() {
		n, ok = x.v4[orig.short()]
	} else {
		n, ok = x.v6[orig]
	}
	if ok {
		x.answer(n, reply)
	}
}

// rest returns the connections found untranslated, written over idx, and
// apart from them those not found at all.
func (x *queryIndex) rest() (rest, missing []int) {
	rest = x.idx[:0] // written behind the reading
	for n, i := range x.idx {
		switch x.found[n] {
		case notFound:
			missing = append(missing, i)
		case untranslated:
			rest = append(rest, i)
		}
	}
	return rest, missing
}

// openFor opens namespace ino through the process of any of its queries.
func (c *Conntrack) openFor(f *nsFinder, ino uint32, qs []Query, idx []int) (*os.File, error) {
	var err error
	tried := make(map[uint32]bool)
	for _, i := range idx {
		pid := qs[i].PID
		if tried[pid] {
			continue
		}
		tried[pid] = true
		var fd *os.File
		if fd, err = f.open(ino, pid); err == nil {
			return fd, nil
		}
		if errors.Is(err, errNetNSGone) {
			break // a full scan found nothing: other pids will not help
		}
	}
	return nil, err
}

func fail(out []Result, idx []int, resolver string, err error) {
	for _, i := range idx {
		out[i].Err, out[i].ErrResolver = err, resolver
	}
}

// Costs of the ways to read a table, measured with scripts/bench on the
// development machine, in tenths of a microsecond: a pipelined lookup costs
// about 3 µs; a dump costs about 1.4 µs per entry of the namespace plus a
// walk of the whole conntrack hash table, shared by every namespace, of
// about 10 ms. A namespace with a handful of entries is never dumped.
//
// A lookup from inside the kernel costs 0.2 to 1 µs.
const (
	getCost       = 30
	dumpPerEntry  = 14
	dumpFixedCost = 100000
)

// dumpCheaper reports whether one dump of a table of entries costs less
// than n lookups.
func dumpCheaper(n int, entries uint32) bool {
	return n*getCost > int(entries)*dumpPerEntry+dumpFixedCost
}

// lookup resolves the queries idx in the namespace open as fd and returns the
// ones it did not translate. counts keeps the table's entry count for the
// rest of the scrape, if not nil.
func (c *Conntrack) lookup(ctx context.Context, fd *os.File, ino uint32, counts *tableCounts, qs []Query, idx []int, out []Result, resolver string) (rest []int) {
	if c.cfg.Kernel != nil {
		if rest, done := c.lookupKernel(fd, ino, counts, qs, idx, out, resolver); done {
			return rest
		}
	}
	sock, err := openCT(fd)
	if err != nil {
		fail(out, idx, resolver, err)
		return idx
	}
	defer sock.close()
	entries, err := counts.get(ino, sock.count)
	if err != nil {
		fail(out, idx, resolver, fmt.Errorf("conntrack stats in netns %d: %w", ino, err))
		return idx
	}
	if entries == 0 {
		// No entries: conntrack is not even enabled in many pod namespaces.
		return idx
	}
	begin := time.Now()
	if dumpCheaper(len(idx), entries) {
		// One pass over the table. The queries were read before it
		// started, so each one's entry is in it if it exists at all.
		x := newQueryIndex(qs, idx, out, resolver)
		err := sock.dump(func(b []byte) {
			if e, ok := parseEntry(b); ok && e.proto == unix.IPPROTO_TCP {
				x.probe(e.orig, e.reply)
			}
		})
		if err != nil {
			fail(out, idx, resolver, fmt.Errorf("dump conntrack in netns %d: %w", ino, err))
			return idx
		}
		rest, missing := x.rest()
		rest = append(rest, missing...)
		c.looked[methodDump].Add(uint64(len(idx)))
		c.logger.Debug("looked up conntrack", "netns", ino, "method", "dump", "entries", entries,
			"queries", len(idx), "seconds", time.Since(begin).Seconds())
		return rest
	}
	rest, err = sock.resolve(qs, idx, out, resolver)
	if err != nil {
		fail(out, idx, resolver, fmt.Errorf("get conntrack in netns %d: %w", ino, err))
		return idx
	}
	c.looked[methodGet].Add(uint64(len(idx)))
	c.logger.Debug("looked up conntrack", "netns", ino, "method", "get", "entries", entries,
		"queries", len(idx), "seconds", time.Since(begin).Seconds())
	return rest
}

// lookupKernel looks the queries idx up from inside the kernel, on one
// thread in the namespace open as fd that first counts the table's entries
// (an empty table is not looked at), and returns the ones it did not
// translate. done is false when the kernel's lookup failed and netlink
// should be tried instead.
func (c *Conntrack) lookupKernel(fd *os.File, ino uint32, counts *tableCounts, qs []Query, idx []int, out []Result, resolver string) (rest []int, done bool) {
	translated := make([]bool, len(idx))
	orig := func(n int) Tuple {
		t := tupleOf(qs[idx[n]].Src, qs[idx[n]].Dst)
		return Tuple{t.src, t.dst, t.sport, t.dport}
	}
	found := func(n int, r Tuple) {
		i := idx[n]
		translated[n] = translate(&out[i], qs[i].Dst, tuple{r.Src, r.Dst, r.SrcPort, r.DstPort}, resolver)
	}
	// The table's errors fail the queries, as on the netlink path; a
	// failed kernel lookup leaves them to that path.
	var entries uint32
	var lookupErr error
	begin := time.Now()
	err := netns.Do(fd, func() error {
		var err error
		entries, err = counts.get(ino, func() (uint32, error) {
			sock, err := openCTHere()
			if err != nil {
				return 0, err
			}
			defer sock.close()
			return sock.count()
		})
		if err != nil {
			return fmt.Errorf("conntrack stats in netns %d: %w", ino, err)
		}
		if entries > 0 {
			lookupErr = c.cfg.Kernel.Lookup(len(idx), orig, found)
		}
		return nil
	})
	switch {
	case err != nil:
		fail(out, idx, resolver, err)
		return idx, true
	case entries == 0:
		// No entries: conntrack is not even enabled in many pod namespaces.
		return idx, true
	case lookupErr != nil:
		c.logger.Debug("cannot look conntrack up from the kernel", "netns", ino, "err", lookupErr)
		return nil, false
	}
	c.looked[methodKernel].Add(uint64(len(idx)))
	c.logger.Debug("looked up conntrack", "netns", ino, "method", "kernel", "entries", entries,
		"queries", len(idx), "seconds", time.Since(begin).Seconds())
	return keepUntranslated(idx, translated), true
}

// keepUntranslated returns the queries of idx whose position is not marked
// translated, in idx's own storage.
func keepUntranslated(idx []int, translated []bool) []int {
	rest := idx[:0] // written behind the reading
	for n, i := range idx {
		if !translated[n] {
			rest = append(rest, i)
		}
	}
	return rest
}

// resolve looks the queries idx up one by one and returns the ones it did
// not translate.
func (s *ctSocket) resolve(qs []Query, idx []int, out []Result, resolver string) (rest []int, err error) {
	replies := make([]tuple, len(idx)) // zero where no entry
	if err := s.get(qs, idx, replies); err != nil {
		return idx, err
	}
	translated := make([]bool, len(idx))
	for n, i := range idx {
		if r := replies[n]; r != (tuple{}) {
			translated[n] = translate(&out[i], qs[i].Dst, r, resolver)
		}
	}
	return keepUntranslated(idx, translated), nil
}

// tuple is one direction of a conntrack entry, kept without pointers so
// that a large table of them costs the garbage collector nothing to scan.
// IPv4 addresses are held in their IPv4-mapped form, as netip.Addr.As16
// gives them; the zero tuple is no tuple.
type tuple struct {
	src, dst     [16]byte
	sport, dport uint16
}

func tupleOf(src, dst netip.AddrPort) tuple {
	return tuple{src.Addr().As16(), dst.Addr().As16(), src.Port(), dst.Port()}
}

func (t tuple) source() netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(t.src).Unmap(), t.sport)
}

func (t tuple) destination() netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(t.dst).Unmap(), t.dport)
}

// v4prefix is the start of an IPv4-mapped IPv6 address.
var v4prefix = [12]byte{10: 0xff, 11: 0xff}

func (t tuple) is4() bool {
	return [12]byte(t.src[:12]) == v4prefix && [12]byte(t.dst[:12]) == v4prefix
}

// tuple4 is an IPv4 tuple in a third of the space: most tables hold only
// those, and a smaller table is a faster one.
type tuple4 struct {
	src, dst     [4]byte
	sport, dport uint16
}

func (t tuple) short() tuple4 {
	return tuple4{[4]byte(t.src[12:]), [4]byte(t.dst[12:]), t.sport, t.dport}
}

func (t tuple4) long() tuple {
	l := tuple{sport: t.sport, dport: t.dport}
	copy(l.src[:], v4prefix[:])
	copy(l.src[12:], t.src[:])
	copy(l.dst[:], v4prefix[:])
	copy(l.dst[12:], t.dst[:])
	return l
}
