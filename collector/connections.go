package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"slices"
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
	// State is the connection's state when the source read it.
	State State
	// Reported says whether the source reported the connection before: a
	// connection it reports for the first time is new to the collector.
	Reported bool
	// Seeded says that the connection existed before the source started:
	// before any cache that names connections started too.
	Seeded bool
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
	// next read holds, known before reading it.
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
	// called from several goroutines at once for the batches of one scrape.
	Resolve(ctx context.Context, in []Lookup, out []Destination)
}

// Preparer is a Resolver that can start reading its tables while the
// collector reads the changes, when many new connections are coming.
type Preparer interface {
	// Prepare returns the Resolver for the Resolve calls of the coming
	// scrape, about n connections in all, with its reading started, and
	// whether it reads a whole table: then it answers best when asked
	// about all of them in one call, rather than in batches while the
	// changes are read.
	Prepare(ctx context.Context, n int) (r Resolver, whole bool)
}

// Owner is who opened a connection.
type Owner struct {
	Container, Pod, Namespace, Workload string
}

// Wait says which caches a name waits for, because they may not have
// caught up yet with the moment the connection was first seen; zero means
// that the name is final.
type Wait uint8

// The caches a name can wait for.
const (
	// WaitKubelet waits for a pod list fetched after the moment.
	WaitKubelet Wait = 1 << iota
	// WaitDocker waits for the Docker cache to have listed or inspected
	// the containers, or read the networks, after the moment (or for the
	// engine to come back).
	WaitDocker
)

// waitReasons are the reason label values of the naming metrics, by bit.
var waitReasons = [...]string{"kubelet", "docker"}

// reason returns the reason label value of the first cache w waits for.
func (w Wait) reason() string {
	for i, r := range waitReasons {
		if w&(1<<i) != 0 {
			return r
		}
	}
	return "none"
}

// Namer names the owner of a connection and the workload behind an address.
// It must answer from memory: it is called within a scrape. since is the
// moment the connection was first seen (zero for one that existed before
// the exporter started): an answer is final once every cache that could
// change it has caught up with that moment; until then the Namer says what
// it waits for, asks the caches to catch up, and gives the best name it
// has.
type Namer interface {
	// Owner names who opened c.
	Owner(c *Conn, since time.Time) (Owner, Wait)
	// DestinationWorkload names the workload at addr.
	DestinationWorkload(addr netip.AddrPort, since time.Time) (string, Wait)
}

// Settler is a Namer whose caches can be waited for: Settle returns once
// the refreshes its answers asked for are done, or ctx is done. A scrape
// waits for them (up to ConnectionsConfig.NameSettle) and names the
// connections that waited at once, rather than at the next scrape.
type Settler interface {
	Settle(ctx context.Context)
}

// ProcessNamer names every connection by its process: the Namer for hosts
// without a container runtime.
type ProcessNamer struct{}

// Owner returns the process name as the workload.
func (ProcessNamer) Owner(c *Conn, _ time.Time) (Owner, Wait) { return Owner{Workload: c.Command()}, 0 }

// DestinationWorkload knows no destinations.
func (ProcessNamer) DestinationWorkload(netip.AddrPort, time.Time) (string, Wait) { return "", 0 }

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
	// NameTimeout is how long a connection may wait, from the scrape that
	// first saw it, for the caches its names wait for (Wait); then it is
	// counted under the best names known. Zero means DefaultNameTimeout.
	NameTimeout time.Duration
	// NameSettle is how long a scrape waits for the refreshes that its new
	// connections' names asked for, within its own deadline, before it
	// names those connections again; zero leaves them to the next scrape.
	NameSettle time.Duration
}

// DefaultNameTimeout is the default of ConnectionsConfig.NameTimeout: two
// of the kubelet's default refresh intervals.
const DefaultNameTimeout = 30 * time.Second

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
	namingWaitingDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "naming", "waiting_connections"),
		"Connections not exported yet because a cache that names them (reason) may not have caught up with them.",
		[]string{"reason"}, nil)
	namingTimeoutsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "naming", "timeouts_total"),
		"Connections exported with the best names known because a cache that names them (reason) did not catch up within --collector.name-timeout.",
		[]string{"reason"}, nil)
	namingDelayDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "naming", "delay_seconds"),
		"Time from the scrape that first saw a connection to its export, for connections that waited for their names.",
		nil, nil)
)

// namingDelayBuckets are the upper bounds of the naming delay histogram.
var namingDelayBuckets = []float64{0.1, 0.5, 1, 2, 5, 10, 15, 30, 60}

// series is the state of one label set.
type series struct {
	values         []string
	active         int
	opened, failed float64
	lastSeen       time.Time
	touched        bool // had a connection in the current scrape
}

// retry is a connection postponed to a later scrape or pass.
type retry struct {
	n    int    // failed attempts to read its tables
	read uint64 // the scrape that last read it
	// seen is when the collector first saw it; wait what its names wait
	// for, zero when it waits for a table only.
	seen time.Time
	wait Wait
}

// Resolvers that can fail, reported with zero errors from the start.
var resolvers = []string{"conntrack", "conntrack_netns", "swarm_lb", "cilium"}

// tracked is what the collector remembers of a connection it admitted. It
// is held by value in a map: no allocation per connection, and nothing for
// the garbage collector to find one by one.
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
	conns         map[uint64]tracked // admitted open connections
	connsSize     int                // the size conns was made for
	attempts      map[uint64]retry   // open connections whose resolution is retried
	errors        map[string]float64
	resolved      map[string]float64
	overflowConns float64
	warned        map[string]bool
	resolverNames []string  // resolvers seen, indexed in name keys
	resolvedN     []float64 // this scrape's admissions by resolverNames index
	recorded      uint64    // Source.Recorded at the last scrape

	free []*batch // batches to reuse, kept between scrapes
	seen int      // connections recorded at the last scrape

	timeouts    map[string]float64 // naming timeouts by reason
	delayCounts []uint64           // naming delay histogram, by bucket
	delayCount  uint64
	delaySum    float64

	// Per-scrape state.
	again   []uint64                // postponed connections that did not change
	release []uint64                // connections to release
	named   map[nameKey]named       // label sets of this scrape's new connections
	owners  map[ownerKey]owned      // owners of this scrape's new connections
	dests   map[netip.AddrPort]dest // destinations of this scrape's new connections
	fresh   int                     // new connections
	unnamed int                     // new connections postponed for a name
}

// freshConn is what a new connection is besides its Lookup, without
// pointers: the two halves are kept apart so that the Lookups need no copy.
type freshConn struct {
	cookie, cgroup   uint64
	comm             [16]byte
	state            State
	reported, seeded bool
}

// conn joins the halves of a new connection.
func (f *freshConn) conn(l *Lookup) Conn {
	return Conn{Cookie: f.cookie, PID: l.PID, Comm: f.comm, NetNS: l.NetNS, CgroupID: f.cgroup,
		Src: l.Src, Dst: l.Dst, State: f.state, Reported: f.reported, Seeded: f.seeded}
}

type dest struct {
	name string
	wait Wait
}

// ownerKey is what a Namer names an owner from.
type ownerKey struct {
	comm       [16]byte
	pid, netns uint32
	cgroup     uint64
}

type owned struct {
	owner Owner
	wait  Wait
}

// nameKey is what decides a new connection's label set within one scrape:
// the owner is named from the process, namespace and cgroup, the rest from
// the destination. It is plain bytes, the resolver's name stood for by its
// index in resolverNames: the map hashes and compares it as one block,
// where a string field made it hash and compare field by field.
type nameKey struct {
	comm         [16]byte
	pid, netns   uint32
	cgroup       uint64
	dst, actual  [16]byte
	dport, aport uint16
	resolver     uint8
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
	if cfg.NameTimeout <= 0 {
		cfg.NameTimeout = DefaultNameTimeout
	}
	c := &Connections{
		cfg: cfg, src: src, resolver: resolver, namer: namer, logger: logger, now: time.Now,
		series:      make(map[string]*series),
		conns:       make(map[uint64]tracked),
		attempts:    make(map[uint64]retry),
		errors:      make(map[string]float64, len(resolvers)),
		resolved:    make(map[string]float64),
		warned:      make(map[string]bool),
		timeouts:    make(map[string]float64, len(waitReasons)),
		delayCounts: make([]uint64, len(namingDelayBuckets)),
	}
	for _, r := range resolvers {
		c.errors[r] = 0
	}
	for _, r := range waitReasons {
		c.timeouts[r] = 0
	}
	// The connections recorded by now are new to the first scrape: their
	// map is made now rather than in that scrape.
	if n, err := src.Recorded(); err == nil {
		c.sizeConns(int(min(n, uint64(src.Capacity()))))
	}
	// The batches a scrape can use at once (about 4 MB) are taken now, and
	// their pages touched: fresh memory costs a page fault per 4 kB (14 µs
	// each on the development VM), better paid at start than in the first
	// scrape with many new connections. They are kept between scrapes
	// anyway.
	for range maxInFlight + 1 {
		b := allocBatch()
		clear(b.fresh[:cap(b.fresh)])
		clear(b.lookups[:cap(b.lookups)])
		clear(b.results)
		c.free = append(c.free, b)
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

// releaseKeep bounds the capacity of the release list kept between scrapes.
const releaseKeep = 4096

// account folds what changed since the last scrape into the label sets.
// Connections already known are accounted as they are read, with no copy;
// new ones are gathered in batches, each resolved on its own goroutine
// while the changes are still read, and admitted in order. A scrape with
// nothing new costs what the source's read costs and nothing per
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
	c.fresh, c.unnamed = 0, 0

	begin := time.Now()
	st := c.newStream(ctx, now)
	postponedRead, err := c.read(st, now)
	read := time.Since(begin)
	st.finish()
	waited := st.waited
	if c.unnamed > 0 {
		if serr := c.settle(ctx, now); serr != nil {
			err = errors.Join(err, serr)
		}
	}
	// Admissions were counted by resolver index, not in the map by name
	// one connection at a time.
	for i, n := range c.resolvedN {
		if n > 0 {
			c.resolved[c.resolverNames[i]] += n
			c.resolvedN[i] = 0
		}
	}
	c.named, c.owners, c.dests = nil, nil, nil
	if c.fresh > 0 {
		c.logger.Debug("admitted new connections", "count", c.fresh, "batches", st.batches,
			"waiting_for_names", c.unnamed, "waited_seconds", waited.Seconds())
	}
	// Releases that fail are tried again at the next scrape: the source
	// does not report a connection again without a change.
	if rerr := c.src.Release(c.release); rerr != nil {
		err = errors.Join(err, fmt.Errorf("release connections: %w", rerr))
	} else {
		c.release = c.release[:0]
	}
	c.tidy(now, postponedRead)
	c.logger.Debug("accounted changes", "connections", c.seen, "read_seconds", read.Seconds(),
		"total_seconds", time.Since(begin).Seconds())
	return err
}

// read reads what changed: known connections are accounted, new ones handed
// to st. Postponed connections are read too, changed or not, for another
// attempt; postponedRead says whether that read succeeded. A failed read of
// the changes keeps going with what was read: counters stay where they
// were.
func (c *Connections) read(st *stream, now time.Time) (postponedRead bool, err error) {
	fn := func(k *Conn) {
		if k.State == StateConnecting {
			return
		}
		if !k.Reported {
			// New for sure: no need to look for it (on a cold scrape, a
			// miss in a large map for each connection).
			st.add(k)
			return
		}
		if t, ok := c.conns[k.Cookie]; ok {
			c.apply(t, k, now)
			return
		}
		if r, ok := c.attempts[k.Cookie]; ok {
			r.read = c.gen // read: not to be fetched below
			c.attempts[k.Cookie] = r
		}
		st.add(k)
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

// settle waits, up to NameSettle and within ctx, for the refreshes that
// this scrape's answers of the Namer asked for, then reads the connections
// postponed for names in this scrape again and admits them anew: a
// connection is exported at the first scrape that can name it.
func (c *Connections) settle(ctx context.Context, now time.Time) error {
	s, ok := c.namer.(Settler)
	if !ok || c.cfg.NameSettle <= 0 {
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, c.cfg.NameSettle)
	s.Settle(sctx)
	cancel()
	if ctx.Err() != nil {
		return nil
	}
	c.again = c.again[:0]
	for cookie, r := range c.attempts {
		if r.read == c.gen && r.wait != 0 {
			c.again = append(c.again, cookie)
		}
	}
	if len(c.again) == 0 {
		return nil
	}
	// The answers of the first pass are not asked again from memory.
	c.named, c.owners, c.dests = nil, nil, nil
	c.unnamed = 0
	st := &stream{c: c, ctx: ctx, r: c.resolver, now: now, limit: batchSize}
	err := c.src.Get(c.again, func(k *Conn) {
		if k.State != StateConnecting {
			st.add(k)
		}
	})
	st.finish()
	if err != nil {
		return fmt.Errorf("read connections waiting for names: %w", err)
	}
	return nil
}

// tidy forgets postponed connections that left the map (when postponedRead
// says they were looked for) and drops idle label sets.
func (c *Connections) tidy(now time.Time, postponedRead bool) {
	if len(c.release) == 0 && cap(c.release) > releaseKeep {
		c.release = nil
	}
	// A postponed connection not read again (neither changed nor found)
	// has left the map.
	if postponedRead {
		for cookie, r := range c.attempts {
			if r.read != c.gen {
				delete(c.attempts, cookie)
			}
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
	lookups []Lookup
	results []Destination
	done    chan struct{} // closed when results are filled
}

// stream gathers the new connections of one scrape into batches, has each
// resolved on its own goroutine as it fills, and admits them in order.
type stream struct {
	c        *Connections
	ctx      context.Context
	r        Resolver
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
func (st *stream) add(k *Conn) {
	if st.cur == nil {
		st.cur = st.c.newBatch()
	}
	b := st.cur
	b.fresh = append(b.fresh, freshConn{cookie: k.Cookie, cgroup: k.CgroupID, comm: k.Comm, state: k.State, reported: k.Reported, seeded: k.Seeded})
	b.lookups = append(b.lookups, Lookup{NetNS: k.NetNS, PID: k.PID, Src: k.Src, Dst: k.Dst})
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
		b.results = make([]Destination, len(b.lookups))
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
		lookups: make([]Lookup, 0, batchSize),
		results: make([]Destination, batchSize),
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
	var k Conn // one for all: the namer's interface makes it escape
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

// expected returns how many new connections the coming read holds at
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

// apply accounts for the state of an admitted connection, whose record
// was t, and keeps its record while it is open. Applying the same state
// twice changes nothing.
func (c *Connections) apply(t tracked, k *Conn, now time.Time) {
	s := t.s
	switch k.State {
	case StateEstablished:
		if t.open && t.counted {
			s.lastSeen, s.touched = now, true
			return
		}
		if !t.open {
			s.active++
			t.open = true
		}
		if !t.counted {
			s.opened++
			t.counted = true
		}
		s.lastSeen, s.touched = now, true
		c.conns[k.Cookie] = t
		return
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
	if t.open { // only open connections have a record
		s.active--
		delete(c.conns, k.Cookie)
	}
	c.release = append(c.release, k.Cookie)
}

// admit returns the label set of a connection seen for the first time,
// whose destination is d, admitted at at, or nil when it is postponed:
// while a cache that names it may not have caught up with it and the
// naming timeout is not over, or while a table could not be read and
// attempts are left.
func (c *Connections) admit(k *Conn, d *Destination, at time.Time) *series {
	nk, keyed := c.nameKeyOf(k, d)
	if n, ok := c.named[nk]; keyed && ok && n.known && d.Err == nil {
		// Another new connection of this scrape had the same owner and
		// destinations, all named: nothing to ask again. Its names hold
		// for this one too: they depend on the process and the address,
		// not on the connection.
		c.track(k, d, nk, keyed)
		return n.s
	}
	r, postponed := c.attempts[k.Cookie]
	seen := at
	if postponed && !r.seen.IsZero() {
		seen = r.seen
	}
	since := seen
	if k.Seeded {
		since = time.Time{} // older than anything the caches read
	}
	wait := c.owner(k, since).wait
	if d.Err == nil {
		_, w := c.destination(d.Actual, since)
		wait |= w
	}
	if wait != 0 {
		if c.mayWait(k) && at.Sub(seen) < c.cfg.NameTimeout {
			c.attempts[k.Cookie] = retry{n: r.n, read: c.gen, seen: seen, wait: wait}
			c.unnamed++
			return nil
		}
		c.timeouts[wait.reason()]++
		c.logger.Debug("naming timed out", "reason", wait.reason(), "process", k.Command(), "destination", k.Dst)
	}
	if postponed && r.wait != 0 {
		c.observeDelay(at.Sub(seen))
	}
	if d.Err != nil {
		c.errors[d.ErrResolver]++
		if !c.warned[d.ErrResolver] {
			c.warned[d.ErrResolver] = true
			c.logger.Warn("cannot resolve connection", "resolver", d.ErrResolver, "err", d.Err)
		} else {
			c.logger.Debug("cannot resolve connection", "resolver", d.ErrResolver, "err", d.Err)
		}
		if k.State == StateEstablished && c.retry(k, seen) {
			return nil
		}
	}
	c.track(k, d, nk, keyed)
	if !keyed {
		return c.seriesByLabels(k, d, since)
	}
	return c.seriesFor(nk, k, d, since, wait == 0 && d.Err == nil)
}

// mayWait reports whether a connection may wait for its names: an open one
// always, a closed one while the source is less than half full (it holds
// the connection until it is counted), a failed one never (its socket may
// connect again, which the source records in the same entry).
func (c *Connections) mayWait(k *Conn) bool {
	switch k.State {
	case StateEstablished:
		return true
	case StateClosed:
		return c.seen < int(c.src.Capacity()/2)
	}
	return false
}

// observeDelay adds a naming delay to the histogram.
func (c *Connections) observeDelay(d time.Duration) {
	v := d.Seconds()
	for i, ub := range namingDelayBuckets {
		if v <= ub {
			c.delayCounts[i]++
		}
	}
	c.delayCount++
	c.delaySum += v
}

// track notes that a connection is admitted, resolved by d; nk is its name
// key if keyed.
func (c *Connections) track(k *Conn, d *Destination, nk nameKey, keyed bool) {
	delete(c.attempts, k.Cookie)
	if keyed {
		c.resolvedN[nk.resolver]++
	} else {
		c.resolved[d.Resolver]++
	}
}

// retry counts an attempt to admit an open connection whose tables could
// not be read, first seen at seen, and reports whether attempts are left,
// so that the connection should wait for a later scrape.
func (c *Connections) retry(k *Conn, seen time.Time) bool {
	r := retry{n: c.attempts[k.Cookie].n + 1, read: c.gen, seen: seen}
	if r.n < c.cfg.ResolveAttempts {
		c.attempts[k.Cookie] = r
		return true
	}
	return false
}

// destination names the workload behind an actual destination, once per
// address in a pass of a scrape: an answer holds for every connection to
// the address, however long ago each was first seen.
func (c *Connections) destination(a netip.AddrPort, since time.Time) (string, Wait) {
	if d, ok := c.dests[a]; ok {
		return d.name, d.wait
	}
	name, wait := c.namer.DestinationWorkload(a, since)
	if c.dests != nil {
		c.dests[a] = dest{name, wait}
	}
	return name, wait
}

// owner names a connection's owner, once per owner in a pass of a scrape:
// an answer holds for every connection of the process.
func (c *Connections) owner(k *Conn, since time.Time) owned {
	ok := ownerKey{comm: k.Comm, pid: k.PID, netns: k.NetNS, cgroup: k.CgroupID}
	if o, found := c.owners[ok]; found {
		return o
	}
	var o owned
	o.owner, o.wait = c.namer.Owner(k, since)
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

// nameKeyOf returns the name key of a connection resolved by d, and false
// when its resolver's name cannot be given an index: the resolvers are a
// handful, but the key holds no more than 256.
func (c *Connections) nameKeyOf(k *Conn, d *Destination) (nameKey, bool) {
	r := slices.Index(c.resolverNames, d.Resolver)
	if r < 0 && len(c.resolverNames) <= math.MaxUint8 {
		r = len(c.resolverNames)
		c.resolverNames = append(c.resolverNames, d.Resolver)
		c.resolvedN = append(c.resolvedN, 0)
	}
	return nameKey{
		comm: k.Comm, pid: k.PID, netns: k.NetNS, cgroup: k.CgroupID,
		dst: k.Dst.Addr().As16(), dport: k.Dst.Port(),
		actual: d.Actual.Addr().As16(), aport: d.Actual.Port(), resolver: uint8(r),
	}, r >= 0
}

// seriesFor returns the label set of a connection, whose name key is nk,
// creating it if the bound allows, else the overflow label set. known says
// whether its owner and destination were named and its table read.
func (c *Connections) seriesFor(nk nameKey, k *Conn, d *Destination, since time.Time, known bool) *series {
	if n, ok := c.named[nk]; ok {
		return n.s
	}
	s := c.seriesByLabels(k, d, since)
	if c.named != nil {
		c.named[nk] = named{s: s, known: known}
	}
	return s
}

// seriesByLabels names a connection and finds or creates its label set.
func (c *Connections) seriesByLabels(k *Conn, d *Destination, since time.Time) *series {
	o := c.owner(k, since).owner
	dw, _ := c.destination(d.Actual, since)
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
	var waiting [len(waitReasons)]float64
	for _, r := range c.attempts {
		for i := range waitReasons {
			if r.wait&(1<<i) != 0 {
				waiting[i]++
				break
			}
		}
	}
	for i, r := range waitReasons {
		ch <- prometheus.MustNewConstMetric(namingWaitingDesc, prometheus.GaugeValue, waiting[i], r)
		ch <- prometheus.MustNewConstMetric(namingTimeoutsDesc, prometheus.CounterValue, c.timeouts[r], r)
	}
	buckets := make(map[float64]uint64, len(namingDelayBuckets))
	for i, ub := range namingDelayBuckets {
		buckets[ub] = c.delayCounts[i]
	}
	ch <- prometheus.MustNewConstHistogram(namingDelayDesc, c.delayCount, c.delaySum, buckets)
}
