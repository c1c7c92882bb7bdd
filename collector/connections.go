package collector

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/connection-exporter/connection_exporter/record"
)

// Source gives the connections the kernel recorded, as they change
// (bpf.Tracker).
type Source interface {
	// Read calls fn once for every recorded connection whose state changed
	// since a call reported it: a connection is reported when it is
	// established or fails, and again when it closes. The Conn is only
	// valid during the call. It returns how many connections are recorded
	// in all. It must not block on anything slower than reading kernel
	// memory.
	Read(fn func(*record.Conn)) (int, error)
	// Get calls fn for each of cookies that is still recorded, whether it
	// changed or not.
	Get(cookies []uint64, fn func(*record.Conn)) error
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

// Preparer is a record.Resolver that can start reading its tables while
// the collector reads the changes, when many new connections are coming.
type Preparer interface {
	// Prepare returns the Resolver for the Resolve calls of the coming
	// scrape, about n connections in all, with its reading started, and
	// whether it reads a whole table: then it answers best when asked
	// about all of them in one call, rather than in batches while the
	// changes are read.
	Prepare(ctx context.Context, n int) (r record.Resolver, whole bool)
}

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
	// first saw it, for the caches its names wait for (record.Wait); then it is
	// counted under the best names known. Zero means DefaultNameTimeout.
	NameTimeout time.Duration
	// NameSettle is how long a scrape waits for the refreshes that its new
	// connections' names asked for, within its own deadline, before it
	// names those connections again; zero leaves them to the next scrape.
	NameSettle time.Duration
	// TCPStats exports the kernel's counts of the connections of each label
	// set (record.TCPStats): bytes sent and received, retransmits, and the
	// mean round-trip time of those open.
	TCPStats bool
}

// DefaultNameTimeout is the default of ConnectionsConfig.NameTimeout: two
// of the kubelet's default refresh intervals.
const DefaultNameTimeout = 30 * time.Second

// series is the state of one label set.
type series struct {
	values         []string
	active         int
	opened, failed float64
	lastSeen       time.Time
	touched        bool // had a connection in the current scrape
	// The kernel's counts of its connections: sums of what each counted
	// since it was admitted, and the round-trip times of those open.
	sent, received, retrans float64
	rttSum                  time.Duration
	rttN                    int
}

// retry is a connection postponed to a later scrape or pass.
type retry struct {
	n    int    // failed attempts to read its tables
	read uint64 // the scrape that last read it
	// seen is when the collector first saw it; wait what its names wait
	// for, zero when it waits for a table only.
	seen time.Time
	wait record.Wait
	// tcp is the growth of the kernel's counts reported while it waited.
	tcp record.TCPStats
}

// Resolvers that can fail, reported with zero errors from the start.
var resolvers = []string{"conntrack", "conntrack_netns", "swarm_lb", "cilium"}

// tracked is what the collector remembers of a connection it admitted. It
// is held by value in a map: no allocation per connection, and nothing for
// the garbage collector to find one by one.
type tracked struct {
	s       *series
	counted bool   // counted in opened
	open    bool   // counted in active
	srtt    uint32 // round-trip time in microseconds, counted in the series' while open
}

// Connections is the collector of the connection metrics. It is safe for
// concurrent use; scrapes are serialised.
type Connections struct {
	cfg      ConnectionsConfig
	src      Source
	resolver record.Resolver
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

// freshConn is what a new connection is besides its Query, without
// pointers: the two halves are kept apart so that the Lookups need no copy.
type freshConn struct {
	cookie           uint64
	tcp              record.TCPStats
	comm             [16]byte
	state            record.State
	reported, seeded bool
}

// conn joins the halves of a new connection.
func (f *freshConn) conn(l *record.Query) record.Conn {
	return record.Conn{Cookie: f.cookie, PID: l.PID, Comm: f.comm, NetNS: l.NetNS, TCP: f.tcp,
		Src: l.Src, Dst: l.Dst, State: f.state, Reported: f.reported, Seeded: f.seeded}
}

type dest struct {
	name string
	wait record.Wait
}

// ownerKey is what a Namer names an owner from.
type ownerKey struct {
	comm       [16]byte
	pid, netns uint32
}

type owned struct {
	owner record.Owner
	wait  record.Wait
}

// nameKey is what decides a new connection's label set within one scrape:
// the owner is named from the process and namespace, the rest from
// the destination. It is plain bytes, the resolver's name stood for by its
// index in resolverNames: the map hashes and compares it as one block,
// where a string field made it hash and compare field by field.
type nameKey struct {
	comm         [16]byte
	pid, netns   uint32
	dst, actual  [16]byte
	dport, aport uint16
	resolver     uint8
}

// named is a label set of this scrape and whether its names were known.
type named struct {
	s     *series
	known bool
}

// NewConnections returns the connections collector.
func NewConnections(cfg ConnectionsConfig, src Source, resolver record.Resolver, namer Namer, logger *slog.Logger) (*Connections, error) {
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

// runsFirst has the Connections collector run before the others: its
// naming refreshes the caches they report.
func (*Connections) runsFirst() {}

// Update reads what changed, accounts for it and sends the metrics.
func (c *Connections) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.account(ctx)
	c.emit(ch)
	return err
}
