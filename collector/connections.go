package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/connection-exporter/connection_exporter/internal/labels"
	"github.com/connection-exporter/connection_exporter/resolve"
)

// State is where a connection is in its life, as the capture reports it.
type State uint8

// Connection states. Closed and Failed are final: the collector releases
// such connections once it has counted them.
const (
	StateConnecting State = iota + 1
	StateEstablished
	StateClosed
	StateFailed
)

// Conn is one actively opened TCP connection.
type Conn struct {
	// Cookie identifies the connection for as long as the kernel runs.
	Cookie uint64
	// PID and Comm are the connecting process (PID 0 when unknown); Comm
	// is NUL-padded, as the kernel keeps it.
	PID  uint32
	Comm [16]byte
	// NetNS is the inode of the connection's network namespace.
	NetNS uint32
	// CgroupID is the cgroup v2 id of the connecting task.
	CgroupID uint64
	// Src is the local address; Dst the address the application dialled.
	// Neither is valid while State is StateConnecting.
	Src, Dst netip.AddrPort
	// State is the connection's state when the snapshot was taken.
	State State
}

// Command returns the connecting process's command name.
func (k *Conn) Command() string {
	n := 0
	for n < len(k.Comm) && k.Comm[n] != 0 {
		n++
	}
	return string(k.Comm[:n])
}

// Source gives the connections the kernel recorded, as they change.
type Source interface {
	// Connections calls fn once for every recorded connection whose state
	// changed since a call reported it: a connection is reported when it is
	// established or fails, and again when it closes. The Conn is only
	// valid during the call. It returns how many connections are recorded
	// in all. It must not block on anything slower than reading kernel
	// memory.
	Connections(fn func(*Conn)) (int, error)
	// Get calls fn for each of cookies that is still recorded, whether it
	// changed or not.
	Get(cookies []uint64, fn func(*Conn)) error
	// Release forgets connections in a final state once they are counted.
	// Only the collector releases connections: those it tracks stay
	// recorded until it does.
	Release(cookies []uint64) error
	// Lost returns how many connections could not be recorded since start.
	Lost() (uint64, error)
	// Capacity returns how many connections can be recorded at once.
	Capacity() uint32
	// Recorded returns how many connections were recorded since start:
	// the difference between two calls bounds how many new connections the
	// next snapshot holds, known before reading it.
	Recorded() (uint64, error)
}

// Lookup is a connection to resolve.
type Lookup = resolve.Query

// Destination is where a connection really goes: Actual is the address that
// answers, Resolver the table that answered ("none" when nothing did); Err,
// when set, says that the table ErrResolver could not be read.
type Destination = resolve.Result

// Resolver finds where connections really go.
type Resolver interface {
	// Resolve fills out[i] for in[i]; out is as long as in. It returns when
	// ctx is done, marking what it did not resolve with ctx's error. It is
	// called from several goroutines at once for the chunks of one scrape.
	Resolve(ctx context.Context, in []Lookup, out []Destination)
}

// Preparer is a Resolver that can start reading its tables while the
// collector reads the snapshot, when many new connections are coming.
type Preparer interface {
	// Prepare returns the Resolver for the next Resolve call, about n
	// connections, with its reading started, and whether it reads a whole
	// table: then it answers best when asked about all of them at once,
	// rather than in chunks while the snapshot is read.
	Prepare(ctx context.Context, n int) (r Resolver, whole bool)
}

// Owner is who opened a connection.
type Owner struct {
	Container, Pod, Namespace, Workload string
}

// Namer names the owner of a connection and the workload behind an address.
// It must answer from memory: it is called within a scrape.
type Namer interface {
	// Owner names who opened c. It returns false when c likely belongs to
	// a container its caches do not know yet (one that just started): the
	// collector then asks again at later scrapes, up to ResolveAttempts,
	// before taking the answer as final.
	Owner(c *Conn) (Owner, bool)
	// DestinationWorkload names the workload at addr. It returns false
	// when addr likely belongs to a workload its caches do not know yet;
	// the collector then waits as for an owner.
	DestinationWorkload(addr netip.AddrPort) (string, bool)
}

// ProcessNamer names every connection by its process: the Namer for hosts
// without a container runtime.
type ProcessNamer struct{}

// Owner returns the process name as the workload.
func (ProcessNamer) Owner(c *Conn) (Owner, bool) { return Owner{Workload: c.Command()}, true }

// DestinationWorkload knows no destinations.
func (ProcessNamer) DestinationWorkload(netip.AddrPort) (string, bool) { return "", true }

// ConnectionsConfig configures the connections collector.
type ConnectionsConfig struct {
	// MaxSeries bounds the number of label sets. Connections of further
	// label sets are counted in one overflow label set.
	MaxSeries int
	// SeriesIdle is how long a label set with no open connection is kept.
	SeriesIdle time.Duration
	// ResolveAttempts is how many scrapes may try to resolve an open
	// connection whose tables could not be read before its best known
	// destination is taken as final.
	ResolveAttempts int
}

// Label names of the connection metrics, in order.
var connLabels = []string{
	"container", "pod", "namespace", "workload", "process",
	"destination", "actual_destination", "destination_workload", "resolver",
}

// overflowValue fills every label of the series that aggregates connections
// beyond the series bound.
const overflowValue = "_other"

var (
	infoDesc = prometheus.NewDesc("connection_destination_info",
		"Where connections of a workload to a destination really go; one series per label set with an open connection or one seen since the previous scrape.",
		connLabels, nil)
	activeDesc = prometheus.NewDesc("connection_active",
		"Connections open now.", connLabels, nil)
	openedDesc = prometheus.NewDesc("connection_opened_total",
		"Connections established.", connLabels, nil)
	failedDesc = prometheus.NewDesc("connection_failed_total",
		"Connection attempts that never established.", connLabels, nil)

	resolveErrorsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "resolve_errors_total"),
		"Lookups of a connection's destination that failed, by the table that could not be read.",
		[]string{"resolver"}, nil)
	resolvedDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "resolved_connections_total"),
		"Connections whose destination was resolved, by the table that answered.",
		[]string{"resolver"}, nil)
	trackedDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "tracked_connections"),
		"Connections recorded in the kernel map at the scrape.", nil, nil)
	capacityDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "tracked_connections_capacity"),
		"Size of the kernel map of connections (--bpf.max-connections).", nil, nil)
	lostDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "map_full_total"),
		"Connections the kernel could not record because the map was full.", nil, nil)
	seriesDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "series"),
		"Label sets of the connection metrics held now.", nil, nil)
	seriesLimitDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "series_limit"),
		"Bound on the label sets of the connection metrics (--collector.max-series).", nil, nil)
	overflowDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "series_overflow_connections_total"),
		"Connections counted in the overflow label set because the series bound was reached.", nil, nil)
)

// series is the state of one label set.
type series struct {
	values         []string
	active         int
	opened, failed float64
	lastSeen       time.Time
	touched        bool // had a connection in the current scrape
}

// retry counts the failed resolution attempts of an open connection.
type retry struct {
	n    int
	read uint64 // the scrape that last read it
}

// Resolvers that can fail, reported with zero errors from the start.
var resolvers = []string{"conntrack", "conntrack_netns", "swarm_lb", "cilium"}

// tracked is what the collector remembers of a connection it accounted for.
type tracked struct {
	s       *series
	counted bool // counted in opened
	open    bool // counted in active
}

// Connections is the collector of the connection metrics. It is safe for
// concurrent use; scrapes are serialised.
type Connections struct {
	cfg      ConnectionsConfig
	src      Source
	resolver Resolver
	namer    Namer
	logger   *slog.Logger
	now      func() time.Time

	mu            sync.Mutex
	gen           uint64
	series        map[string]*series
	overflow      *series
	conns         map[uint64]*tracked
	attempts      map[uint64]retry // open connections whose resolution is retried
	errors        map[string]float64
	resolved      map[string]float64
	overflowConns float64
	warned        map[string]bool
	recorded      uint64 // Source.Recorded at the last scrape

	// Per-scrape state.
	seen    int                     // connections recorded at the last scrape
	again   []uint64                // postponed connections that did not change
	fresh   []freshConn             // connections seen for the first time
	lookups []Lookup                // and what to resolve of them, index for index
	release []uint64                // connections to release
	named   map[nameKey]named       // label sets of this scrape's new connections
	owners  map[ownerKey]owned      // owners of this scrape's new connections
	dests   map[netip.AddrPort]dest // destinations of this scrape's new connections
	unnamed int                     // new connections postponed for a name
}

// freshConn is what a new connection is besides its Lookup, without
// pointers: the two halves are kept apart so that the Lookups need no copy.
type freshConn struct {
	cookie, cgroup uint64
	comm           [16]byte
	state          State
}

// conn joins the halves of a new connection.
func (f *freshConn) conn(l *Lookup) Conn {
	return Conn{Cookie: f.cookie, PID: l.PID, Comm: f.comm, NetNS: l.NetNS, CgroupID: f.cgroup, Src: l.Src, Dst: l.Dst, State: f.state}
}

type dest struct {
	name  string
	known bool
}

// ownerKey is what a Namer names an owner from.
type ownerKey struct {
	comm       [16]byte
	pid, netns uint32
	cgroup     uint64
}

type owned struct {
	owner Owner
	known bool
}

// nameKey is what decides a new connection's label set within one scrape:
// the owner is named from the process, namespace and cgroup, the rest from
// the destination. It holds no pointers, so a large map of them costs the
// garbage collector nothing.
type nameKey struct {
	comm         [16]byte
	pid, netns   uint32
	cgroup       uint64
	dst, actual  [16]byte
	dport, aport uint16
	resolver     string
}

// NewConnections returns the connections collector.
func NewConnections(cfg ConnectionsConfig, src Source, resolver Resolver, namer Namer, logger *slog.Logger) (*Connections, error) {
	if cfg.MaxSeries < 1 {
		return nil, fmt.Errorf("series bound must be at least 1, got %d", cfg.MaxSeries)
	}
	if cfg.SeriesIdle <= 0 {
		return nil, fmt.Errorf("series idle time must be positive, got %v", cfg.SeriesIdle)
	}
	if cfg.ResolveAttempts < 1 {
		cfg.ResolveAttempts = 1
	}
	c := &Connections{
		cfg: cfg, src: src, resolver: resolver, namer: namer, logger: logger, now: time.Now,
		series:   make(map[string]*series),
		conns:    make(map[uint64]*tracked),
		attempts: make(map[uint64]retry),
		errors:   make(map[string]float64, len(resolvers)),
		resolved: make(map[string]float64),
		warned:   make(map[string]bool),
	}
	for _, r := range resolvers {
		c.errors[r] = 0
	}
	return c, nil
}

// Update reads what changed, accounts for it and sends the metrics.
func (c *Connections) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.account(ctx)
	c.emit(ch)
	return err
}

// scratchKeep bounds the scratch buffers kept between scrapes: a cold
// scrape's thousands of new connections are rare, and their buffers are
// better returned to the garbage collector than held for ever.
const scratchKeep = 4096

// freeAfter is the number of new connections in one scrape after which the
// scrape's garbage is returned to the operating system at once.
const freeAfter = 20000

// account folds what changed since the last scrape into the label sets.
// Connections already known are accounted as they are read, with no copy;
// new ones are set aside, resolved together (starting while the changes
// are still read when many are expected), then admitted. A scrape with
// nothing new costs the source's walk of its map and nothing per
// connection.
func (c *Connections) account(ctx context.Context) error {
	now := c.now()
	c.gen++
	for _, s := range c.series {
		s.touched = false
	}
	if c.overflow != nil {
		c.overflow.touched = false
	}
	c.fresh, c.lookups = c.fresh[:0], c.lookups[:0]

	begin := time.Now()
	resolver, pipe := c.prepare(ctx)
	prepared := time.Since(begin)
	postponedRead, err := c.read(pipe, now)
	read := time.Since(begin)
	c.admitFresh(ctx, resolver, pipe, now)
	admitted := time.Since(begin)
	// Releases that fail are tried again at the next scrape: the source
	// does not report a connection again without a change.
	released := len(c.release)
	if rerr := c.src.Release(c.release); rerr != nil {
		err = errors.Join(err, fmt.Errorf("release connections: %w", rerr))
	} else {
		c.release = c.release[:0]
	}
	releasedAt := time.Since(begin)
	c.tidy(now, postponedRead)
	c.logger.Debug("accounted changes", "connections", c.seen, "prepared_seconds", prepared.Seconds(), "read_seconds", read.Seconds(),
		"admitted_seconds", admitted.Seconds(), "released", released, "released_seconds", releasedAt.Seconds(),
		"total_seconds", time.Since(begin).Seconds())
	return err
}

// prepare sizes the buffers for the new connections the source announces
// and, when there are many, gets the resolver reading ahead: it returns the
// resolver for this scrape and the pipeline that resolves while reading,
// if any.
func (c *Connections) prepare(ctx context.Context) (Resolver, *pipeline) {
	n := c.expected()
	if n == 0 {
		return c.resolver, nil
	}
	if cap(c.fresh) < n {
		c.fresh, c.lookups = make([]freshConn, 0, n), make([]Lookup, 0, n)
	}
	resolver, whole := c.resolver, false
	if p, ok := resolver.(Preparer); ok {
		resolver, whole = p.Prepare(ctx, n)
	}
	if n >= pipelineMin && !whole {
		return resolver, startPipeline(ctx, resolver, n)
	}
	return resolver, nil
}

// read reads what changed: known connections are accounted, new ones set
// aside (and handed to the pipeline, if any). Postponed connections are
// read too, changed or not, for another attempt; postponedRead says whether
// that read succeeded. A failed read of the changes keeps going with what
// was read: counters stay where they were.
func (c *Connections) read(pipe *pipeline, now time.Time) (postponedRead bool, err error) {
	fn := func(k *Conn) {
		if k.State == StateConnecting {
			return
		}
		if t, ok := c.conns[k.Cookie]; ok {
			c.apply(t, k, now)
			return
		}
		if r, ok := c.attempts[k.Cookie]; ok {
			if r.read == c.gen {
				return // changed and fetched again in the same scrape
			}
			r.read = c.gen
			c.attempts[k.Cookie] = r
		}
		c.fresh = append(c.fresh, freshConn{cookie: k.Cookie, cgroup: k.CgroupID, comm: k.Comm, state: k.State})
		c.lookups = append(c.lookups, Lookup{NetNS: k.NetNS, PID: k.PID, Src: k.Src, Dst: k.Dst})
		if pipe != nil {
			pipe.offer(c.lookups)
		}
	}
	if n, rerr := c.src.Connections(fn); rerr != nil {
		err = fmt.Errorf("read connections: %w", rerr)
	} else {
		c.seen = n
	}
	c.again = c.again[:0]
	for cookie, r := range c.attempts {
		if r.read != c.gen {
			c.again = append(c.again, cookie)
		}
	}
	if gerr := c.src.Get(c.again, fn); gerr != nil {
		return false, errors.Join(err, fmt.Errorf("read postponed connections: %w", gerr))
	}
	return true, err
}

// admitFresh resolves the new connections and admits them.
func (c *Connections) admitFresh(ctx context.Context, resolver Resolver, pipe *pipeline, now time.Time) {
	if len(c.fresh) == 0 {
		if pipe != nil {
			pipe.finish(ctx, nil) // nothing was new after all
		}
		return
	}
	// They are resolved on another goroutine while this one makes room for
	// them: on a cold scrape, resolving mostly waits for a conntrack dump.
	start := time.Now()
	var results []Destination
	var resolved time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		if pipe != nil {
			results = pipe.finish(ctx, c.lookups)
		} else {
			results = make([]Destination, len(c.lookups))
			resolver.Resolve(ctx, c.lookups, results)
		}
		resolved = time.Since(start)
	}()
	if len(c.conns) == 0 {
		c.conns = make(map[uint64]*tracked, len(c.fresh))
	}
	slots := c.reserve()
	<-done

	c.named, c.owners, c.dests, c.unnamed = make(map[nameKey]named), make(map[ownerKey]owned), make(map[netip.AddrPort]dest), 0
	var k Conn // one for all: the namer's interface makes it escape
	for i := range c.fresh {
		k = c.fresh[i].conn(&c.lookups[i])
		if t := c.admit(&k, &results[i], slots[i]); t != nil {
			c.apply(t, &k, now)
		}
	}
	c.named, c.owners, c.dests = nil, nil, nil
	c.logger.Debug("resolved new connections", "count", len(c.fresh), "waiting_for_names", c.unnamed,
		"resolve_seconds", resolved.Seconds(), "admit_seconds", (time.Since(start) - resolved).Seconds())
}

// tidy returns large scratch buffers, forgets postponed connections that
// left the map (when postponedRead says they were looked for), and drops
// idle label sets.
func (c *Connections) tidy(now time.Time, postponedRead bool) {
	if len(c.fresh) > freeAfter {
		// A cold scrape of tens of thousands of connections leaves tens of
		// megabytes of garbage that the runtime would otherwise keep for
		// minutes: return it now, once, while the scrape is rare.
		c.fresh, c.lookups = nil, nil
		go debug.FreeOSMemory() // after the answer, not before it
	}
	if cap(c.fresh) > scratchKeep {
		c.fresh, c.lookups = nil, nil
	}
	if len(c.release) == 0 && cap(c.release) > scratchKeep {
		c.release = nil
	}

	// A postponed connection not read again (neither changed nor found)
	// has left the map.
	for cookie, r := range c.attempts {
		if postponedRead && r.read != c.gen {
			delete(c.attempts, cookie)
		}
	}
	for key, s := range c.series {
		if s.active > 0 {
			s.lastSeen = now
		} else if now.Sub(s.lastSeen) > c.cfg.SeriesIdle {
			delete(c.series, key)
		}
	}
	if o := c.overflow; o != nil {
		if o.active > 0 {
			o.lastSeen = now
		} else if now.Sub(o.lastSeen) > c.cfg.SeriesIdle {
			c.overflow = nil
		}
	}
}

// pipelineMin is the number of expected new connections from which they are
// resolved in chunks while the snapshot is still being read.
const pipelineMin = 1024

// pipeline resolves new connections in chunks on other goroutines while
// the snapshot is being read, so that looking them up overlaps reading, and
// chunks overlap each other once it is read.
type pipeline struct {
	size    int // lookups per chunk
	sent    int // lookups handed over so far
	results []Destination
	work    chan chunk
	done    chan struct{}
	r       Resolver
}

// chunk is a run of lookups starting at lookups[off].
type chunk struct {
	off int
	in  []Lookup
}

func startPipeline(ctx context.Context, r Resolver, n int) *pipeline {
	// A few large chunks: each Resolve call has a fixed cost per table.
	p := &pipeline{size: max(n/3, pipelineMin), results: make([]Destination, n), r: r}
	p.work, p.done = make(chan chunk, n/p.size+1), make(chan struct{})
	go func() {
		defer close(p.done)
		var wg sync.WaitGroup
		for c := range p.work {
			wg.Go(func() { r.Resolve(ctx, c.in, p.results[c.off:c.off+len(c.in)]) })
		}
		wg.Wait()
	}()
	return p
}

// offer hands the lookups not handed over yet to the resolving goroutine
// once there are a chunk of them. Those beyond the expected number wait
// for finish.
func (p *pipeline) offer(lookups []Lookup) {
	if n := len(lookups); n-p.sent >= p.size && n <= len(p.results) {
		p.work <- chunk{p.sent, lookups[p.sent:n]}
		p.sent = n
	}
}

// finish resolves what is left once the snapshot is read and returns the
// destinations of all lookups.
func (p *pipeline) finish(ctx context.Context, lookups []Lookup) []Destination {
	close(p.work)
	<-p.done
	if len(lookups) > len(p.results) {
		p.results = append(p.results, make([]Destination, len(lookups)-len(p.results))...)
	}
	if p.sent < len(lookups) {
		p.r.Resolve(ctx, lookups[p.sent:], p.results[p.sent:len(lookups)])
	}
	return p.results[:len(lookups)]
}

// expected returns how many new connections the coming snapshot holds at
// most: those recorded since the last scrape and those waiting for another
// attempt. It is 0 when the source cannot tell.
func (c *Connections) expected() int {
	rec, err := c.src.Recorded()
	if err != nil || rec < c.recorded {
		return 0
	}
	n := rec - c.recorded
	c.recorded = rec
	return int(min(n, uint64(c.src.Capacity()))) + len(c.attempts)
}

// apply accounts for a known connection's state. Applying the same state
// twice changes nothing.
func (c *Connections) apply(t *tracked, k *Conn, now time.Time) {
	s := t.s
	switch k.State {
	case StateEstablished:
		if !t.open {
			s.active++
			t.open = true
		}
		if !t.counted {
			s.opened++
			t.counted = true
		}
	case StateClosed:
		if !t.counted {
			s.opened++ // opened and closed between two scrapes
		}
	case StateFailed:
		s.failed++
	default:
		return
	}
	s.lastSeen, s.touched = now, true
	if k.State == StateEstablished {
		return
	}
	if t.open {
		s.active--
	}
	c.release = append(c.release, k.Cookie)
	delete(c.conns, k.Cookie)
}

// admit records the destination of a connection seen for the first time,
// or postpones it (returning nil) when a table could not be read and
// attempts are left.
func (c *Connections) admit(k *Conn, d *Destination, t *tracked) *tracked {
	nk := nameKeyOf(k, d)
	if n, ok := c.named[nk]; ok && n.known && d.Err == nil {
		// Another new connection of this scrape had the same owner and
		// destinations, all named: nothing to ask again.
		return c.track(k, d, n.s, t)
	}
	ok := c.owner(k).known
	if ok && d.Err == nil {
		_, ok = c.destination(d.Actual)
	}
	if !ok && k.State == StateEstablished && c.retry(k) {
		c.unnamed++
		return c.postpone(k)
	}
	if d.Err != nil {
		c.errors[d.ErrResolver]++
		if !c.warned[d.ErrResolver] {
			c.warned[d.ErrResolver] = true
			c.logger.Warn("cannot resolve connection", "resolver", d.ErrResolver, "err", d.Err)
		} else {
			c.logger.Debug("cannot resolve connection", "resolver", d.ErrResolver, "err", d.Err)
		}
		if k.State == StateEstablished && c.retry(k) {
			return c.postpone(k)
		}
	}
	return c.track(k, d, c.seriesFor(nk, k, d, ok && d.Err == nil), t)
}

// postpone gives up the reservation of a connection that waits for a
// later scrape.
func (c *Connections) postpone(k *Conn) *tracked {
	delete(c.conns, k.Cookie)
	return nil
}

// reserve makes room for this scrape's new connections before they are
// resolved: each gets its record in conns, without a label set yet.
func (c *Connections) reserve() []*tracked {
	slots := make([]*tracked, len(c.fresh))
	for i := range c.fresh {
		t := &tracked{}
		slots[i] = t
		c.conns[c.fresh[i].cookie] = t
	}
	return slots
}

// track starts accounting for an admitted connection, reserved as t, in
// label set s.
func (c *Connections) track(k *Conn, d *Destination, s *series, t *tracked) *tracked {
	delete(c.attempts, k.Cookie)
	c.resolved[d.Resolver]++
	t.s = s
	return t
}

// retry counts an attempt to admit an open connection and reports whether
// attempts are left, so that the connection should wait for a later scrape.
func (c *Connections) retry(k *Conn) bool {
	r := retry{n: c.attempts[k.Cookie].n + 1, read: c.gen}
	if r.n < c.cfg.ResolveAttempts {
		c.attempts[k.Cookie] = r
		return true
	}
	return false
}

// destination names the workload behind an actual destination, once per
// address in a scrape.
func (c *Connections) destination(a netip.AddrPort) (string, bool) {
	if d, ok := c.dests[a]; ok {
		return d.name, d.known
	}
	name, known := c.namer.DestinationWorkload(a)
	if c.dests != nil {
		c.dests[a] = dest{name, known}
	}
	return name, known
}

// owner names a connection's owner, once per owner in a scrape.
func (c *Connections) owner(k *Conn) owned {
	ok := ownerKey{comm: k.Comm, pid: k.PID, netns: k.NetNS, cgroup: k.CgroupID}
	if o, found := c.owners[ok]; found {
		return o
	}
	var o owned
	o.owner, o.known = c.namer.Owner(k)
	if c.owners != nil {
		c.owners[ok] = o
	}
	return o
}

// named is a label set of this scrape and whether its names were known.
type named struct {
	s     *series
	known bool
}

func nameKeyOf(k *Conn, d *Destination) nameKey {
	return nameKey{
		comm: k.Comm, pid: k.PID, netns: k.NetNS, cgroup: k.CgroupID,
		dst: k.Dst.Addr().As16(), dport: k.Dst.Port(),
		actual: d.Actual.Addr().As16(), aport: d.Actual.Port(), resolver: d.Resolver,
	}
}

// seriesFor returns the label set of a connection, whose name key is nk,
// creating it if the bound allows, else the overflow label set. known says
// whether its owner and destination were named and its table read.
func (c *Connections) seriesFor(nk nameKey, k *Conn, d *Destination, known bool) *series {
	if n, ok := c.named[nk]; ok {
		return n.s
	}
	s := c.seriesByLabels(k, d)
	if c.named != nil {
		c.named[nk] = named{s: s, known: known}
	}
	return s
}

// seriesByLabels names a connection and finds or creates its label set.
func (c *Connections) seriesByLabels(k *Conn, d *Destination) *series {
	o := c.owner(k).owner
	dw, _ := c.destination(d.Actual)
	values := []string{
		o.Container, o.Pod, o.Namespace, o.Workload, k.Command(),
		k.Dst.String(), d.Actual.String(), dw, d.Resolver,
	}
	for i, v := range values {
		values[i] = labels.Value(v)
	}
	key := strings.Join(values, "\x00")
	if s, ok := c.series[key]; ok {
		return s
	}
	if len(c.series) >= c.cfg.MaxSeries {
		c.overflowConns++
		if c.overflow == nil {
			v := make([]string, len(connLabels))
			for i := range v {
				v[i] = overflowValue
			}
			c.overflow = &series{values: v}
		}
		return c.overflow
	}
	s := &series{values: values}
	c.series[key] = s
	return s
}

func (c *Connections) emit(ch chan<- prometheus.Metric) {
	send := func(s *series) {
		if s.active > 0 || s.touched {
			ch <- prometheus.MustNewConstMetric(infoDesc, prometheus.GaugeValue, 1, s.values...)
		}
		ch <- prometheus.MustNewConstMetric(activeDesc, prometheus.GaugeValue, float64(s.active), s.values...)
		ch <- prometheus.MustNewConstMetric(openedDesc, prometheus.CounterValue, s.opened, s.values...)
		ch <- prometheus.MustNewConstMetric(failedDesc, prometheus.CounterValue, s.failed, s.values...)
	}
	for _, s := range c.series {
		send(s)
	}
	if c.overflow != nil {
		send(c.overflow)
	}
	for r, v := range c.errors {
		ch <- prometheus.MustNewConstMetric(resolveErrorsDesc, prometheus.CounterValue, v, r)
	}
	for r, v := range c.resolved {
		ch <- prometheus.MustNewConstMetric(resolvedDesc, prometheus.CounterValue, v, r)
	}
	ch <- prometheus.MustNewConstMetric(trackedDesc, prometheus.GaugeValue, float64(c.seen))
	ch <- prometheus.MustNewConstMetric(capacityDesc, prometheus.GaugeValue, float64(c.src.Capacity()))
	if lost, err := c.src.Lost(); err == nil {
		ch <- prometheus.MustNewConstMetric(lostDesc, prometheus.CounterValue, float64(lost))
	}
	ch <- prometheus.MustNewConstMetric(seriesDesc, prometheus.GaugeValue, float64(len(c.series)))
	ch <- prometheus.MustNewConstMetric(seriesLimitDesc, prometheus.GaugeValue, float64(c.cfg.MaxSeries))
	ch <- prometheus.MustNewConstMetric(overflowDesc, prometheus.CounterValue, c.overflowConns)
}
