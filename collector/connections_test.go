package collector

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/connection-exporter/connection_exporter/record"
)

var update = flag.Bool("update", false, "rewrite golden files")

// fakeSource serves scripted connections as the kernel map does: each
// read reports those whose state changed since a read reported them. It
// records releases.
type fakeSource struct {
	conns    []record.Conn
	released []uint64
	err      error
	recorded uint64
	reported map[uint64]record.State // the state last reported of each connection

	releaseErr, getErr error
	capacity           uint32 // 0 for 1024
}

func (s *fakeSource) Read(fn func(*record.Conn)) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.reported == nil {
		s.reported = make(map[uint64]record.State)
	}
	var c record.Conn // one copy reused, as the real source does: it must not be kept
	for i := range s.conns {
		// The kernel marks a change when a connection is established,
		// fails or closes, not when it starts connecting.
		st := s.conns[i].State
		last, reported := s.reported[s.conns[i].Cookie]
		if st == record.StateConnecting || last == st {
			continue
		}
		s.reported[s.conns[i].Cookie] = st
		c = s.conns[i]
		c.Reported = reported
		fn(&c)
	}
	return len(s.conns), nil
}

func (s *fakeSource) Get(cookies []uint64, fn func(*record.Conn)) error {
	if s.getErr != nil {
		return s.getErr
	}
	var c record.Conn
	for i := range s.conns {
		if slices.Contains(cookies, s.conns[i].Cookie) {
			c = s.conns[i]
			_, c.Reported = s.reported[c.Cookie]
			// As the kernel's: growth is Read's to report.
			c.TCP = record.TCPStats{SRTT: c.TCP.SRTT}
			fn(&c)
		}
	}
	return nil
}

func (s *fakeSource) Release(cookies []uint64) error {
	if s.releaseErr != nil {
		return s.releaseErr
	}
	s.released = append(s.released, cookies...)
	// Released entries leave the map, as the kernel map does.
	s.conns = slices.DeleteFunc(s.conns, func(c record.Conn) bool { return slices.Contains(cookies, c.Cookie) })
	return nil
}

func (s *fakeSource) Lost() (uint64, error) { return 3, nil }

// Recorded counts the connections ever served: the tests hand out cookies
// in order from 1, as the kernel does.
func (s *fakeSource) Recorded() (uint64, error) {
	for _, c := range s.conns {
		s.recorded = max(s.recorded, c.Cookie)
	}
	return s.recorded, nil
}

func (s *fakeSource) Capacity() uint32 {
	if s.capacity != 0 {
		return s.capacity
	}
	return 1024
}

// fakeResolver translates by a table and counts the lookups it was asked.
// Like the real one it may be called for several batches at once.
type fakeResolver struct {
	nat     map[netip.AddrPort]record.Destination
	err     error
	mu      sync.Mutex
	lookups int
}

func (r *fakeResolver) Resolve(_ context.Context, in []record.Query, out []record.Destination) {
	r.mu.Lock()
	r.lookups += len(in)
	r.mu.Unlock()
	for i, l := range in {
		d, ok := r.nat[l.Dst]
		if !ok {
			d = record.Destination{Actual: l.Dst, Resolver: "none"}
		}
		if r.err != nil {
			d.Err, d.ErrResolver = r.err, "conntrack"
		}
		out[i] = d
	}
}

func comm(s string) (c [16]byte) {
	copy(c[:], s)
	return c
}

func conn(cookie uint64, process, src, dst string, st record.State) record.Conn {
	return record.Conn{
		Cookie: cookie, PID: 100, Comm: comm(process), NetNS: 4026531840,
		Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst), State: st,
	}
}

var vip = netip.MustParseAddrPort("10.43.0.10:80")

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newTestCollector(t *testing.T, cfg ConnectionsConfig, src Source, res record.Resolver) *Connections {
	t.Helper()
	if cfg.MaxSeries == 0 {
		cfg.MaxSeries = 100
	}
	if cfg.SeriesIdle == 0 {
		cfg.SeriesIdle = time.Minute
	}
	c, err := NewConnections(cfg, src, res, ProcessNamer{}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// collect runs one scrape through a registry, as the HTTP handler does, and
// returns its result: gathering it again does not scrape again.
func collect(t *testing.T, c *Connections) prometheus.Gatherer {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	exp := NewExporter(map[string]Collector{"connections": c}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	reg.MustRegister(exp.Scrape(context.Background()))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return mfs, nil })
}

// golden compares a scrape's connection metrics with testdata/name.prom.
func golden(t *testing.T, reg prometheus.Gatherer, name string, metrics ...string) {
	t.Helper()
	path := filepath.Join("testdata", name+".prom")
	if *update {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, mf := range mfs {
			if slices.Contains(metrics, mf.GetName()) {
				if err := writeText(&b, mf); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := testutil.GatherAndCompare(reg, f, metrics...); err != nil {
		t.Error(err)
	}
}

var connMetrics = []string{"connection_destination_info", "connection_active", "connection_opened_total", "connection_failed_total"}

func TestConnectionsLifecycle(t *testing.T) {
	src := &fakeSource{conns: []record.Conn{
		conn(1, "curl", "10.0.0.5:40001", "10.43.0.10:80", record.StateEstablished),
		conn(2, "curl", "10.0.0.5:40002", "10.43.0.10:80", record.StateClosed), // opened and closed before the scrape
		conn(3, "curl", "10.0.0.5:40003", "10.43.0.10:81", record.StateFailed),
		conn(4, "curl", "10.0.0.5:0", "10.43.0.10:80", record.StateConnecting),
		conn(5, "nginx", "[fd00::5]:40005", "[fd00::9]:443", record.StateEstablished),
	}}
	res := &fakeResolver{nat: map[netip.AddrPort]record.Destination{
		vip:                                      {Actual: netip.MustParseAddrPort("10.42.1.7:8080"), Resolver: "conntrack"},
		netip.MustParseAddrPort("10.43.0.10:81"): {Actual: netip.MustParseAddrPort("10.42.1.7:8081"), Resolver: "conntrack"},
	}}
	c := newTestCollector(t, ConnectionsConfig{}, src, res)

	golden(t, collect(t, c), "lifecycle_1", connMetrics...)
	if want := []uint64{2, 3}; !slices.Equal(sorted(src.released), want) {
		t.Errorf("released %v, want %v", src.released, want)
	}
	if res.lookups != 4 {
		t.Errorf("first scrape resolved %d connections, want 4", res.lookups)
	}

	// Second scrape: connection 1 closes, 4 establishes. Nothing seen
	// before is resolved again.
	src.conns[0].State = record.StateClosed
	src.conns[1].State = record.StateEstablished
	src.conns[1].Src = netip.MustParseAddrPort("10.0.0.5:40004")
	golden(t, collect(t, c), "lifecycle_2", connMetrics...)
	if res.lookups != 5 {
		t.Errorf("after the second scrape %d lookups, want 5", res.lookups)
	}
}

func sorted(s []uint64) []uint64 {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestConnectionsSeriesBound(t *testing.T) {
	src := &fakeSource{conns: []record.Conn{
		conn(1, "a", "10.0.0.5:40001", "10.0.0.1:80", record.StateEstablished),
		conn(2, "b", "10.0.0.5:40002", "10.0.0.2:80", record.StateEstablished),
		conn(3, "c", "10.0.0.5:40003", "10.0.0.3:80", record.StateEstablished),
	}}
	c := newTestCollector(t, ConnectionsConfig{MaxSeries: 1}, src, &fakeResolver{})
	reg := collect(t, c)
	if got := value(t, reg, "connection_exporter_series_overflow_connections_total"); got != 2 {
		t.Errorf("overflow connections = %v, want 2", got)
	}
	golden(t, reg, "bound", "connection_active")
}

func TestConnectionsIdleSeriesDropped(t *testing.T) {
	src := &fakeSource{conns: []record.Conn{conn(1, "a", "10.0.0.5:40001", "10.0.0.1:80", record.StateClosed)}}
	c := newTestCollector(t, ConnectionsConfig{SeriesIdle: time.Minute}, src, &fakeResolver{})
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	count := func() int {
		n, err := testutil.GatherAndCount(collect(t, c), "connection_opened_total")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 1 {
		t.Fatalf("%d opened series, want 1", n)
	}
	now = now.Add(30 * time.Second)
	if n := count(); n != 1 {
		t.Errorf("series dropped before its idle time: %d", n)
	}
	now = now.Add(31 * time.Second)
	if n := count(); n != 0 {
		t.Errorf("idle series kept: %d", n)
	}
}

func TestConnectionsResolveRetry(t *testing.T) {
	src := &fakeSource{conns: []record.Conn{conn(1, "a", "10.0.0.5:40001", "10.43.0.10:80", record.StateEstablished)}}
	res := &fakeResolver{err: errors.New("netns gone"), nat: map[netip.AddrPort]record.Destination{
		vip: {Actual: netip.MustParseAddrPort("10.42.1.7:8080"), Resolver: "conntrack"},
	}}
	c := newTestCollector(t, ConnectionsConfig{ResolveAttempts: 2}, src, res)
	reg := collect(t, c)
	if n, _ := testutil.GatherAndCount(reg, "connection_active"); n != 0 {
		t.Errorf("connection accounted before its retry: %d series", n)
	}
	if got := value(t, reg, "connection_exporter_resolve_errors_total", "resolver", "conntrack"); got != 1 {
		t.Errorf("errors = %v, want 1", got)
	}
	// The second failure exhausts the attempts: the best known answer stands.
	reg = collect(t, c)
	if n, _ := testutil.GatherAndCount(reg, "connection_active"); n != 1 {
		t.Errorf("connection not accounted after its last attempt: %d series", n)
	}
	if res.lookups != 2 {
		t.Errorf("%d lookups, want 2", res.lookups)
	}
}

func TestConnectionsSourceFailureKeepsCounters(t *testing.T) {
	src := &fakeSource{conns: []record.Conn{conn(1, "a", "10.0.0.5:40001", "10.0.0.1:80", record.StateEstablished)}}
	c := newTestCollector(t, ConnectionsConfig{}, src, &fakeResolver{})
	collect(t, c)
	src.err, src.conns = errors.New("map gone"), nil
	reg := collect(t, c)
	if got := value(t, reg, "connection_exporter_scrape_collector_success"); got != 0 {
		t.Errorf("success = %v after a failed read", got)
	}
	if n, _ := testutil.GatherAndCount(reg, "connection_opened_total"); n != 1 {
		t.Errorf("counter lost after a failed read: %d series", n)
	}
	// The map reads again: the connection is the one already counted.
	src.err, src.conns = nil, []record.Conn{conn(1, "a", "10.0.0.5:40001", "10.0.0.1:80", record.StateEstablished)}
	if got := value(t, collect(t, c), "connection_opened_total"); got != 1 {
		t.Errorf("opened = %v after the map read again, want the connection counted once", got)
	}
}

func TestConnectionsLint(t *testing.T) {
	src := &fakeSource{conns: []record.Conn{conn(1, "a", "10.0.0.5:40001", "10.0.0.1:80", record.StateEstablished)}}
	c := newTestCollector(t, ConnectionsConfig{}, src, &fakeResolver{})
	exp := NewExporter(map[string]Collector{"connections": c}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	problems, err := testutil.CollectAndLint(exp.Scrape(context.Background()))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
}

// TestGoldenPromtool checks the golden files with promtool when installed
// (the CI installs it).
func TestGoldenPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed")
	}
	files, _ := filepath.Glob("testdata/*.prom")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(string(b))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics %s: %v\n%s", f, err, out)
		}
	}
}

// value returns the value of the one sample of name with the given label
// pairs, failing the test when there is none.
func value(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no sample %s%v", name, labels)
	return 0
}

func writeText(w io.Writer, mf *dto.MetricFamily) error {
	_, err := expfmt.MetricFamilyToText(w, mf)
	return err
}

// cacheNamer names the process "nginx" after the container web-1 from a
// fake cache that knows the container only once a fetch started after the
// container did, as the kubelet's and Docker's caches do; other processes
// are host processes. An answer the cache may not have caught up with
// waits for the kubelet and asks for a fetch, which fetch makes, and
// Settle too when settles is set.
type cacheNamer struct {
	mu        sync.Mutex
	clock     func() time.Time
	started   time.Time // when the container started
	fetched   time.Time // when the last fetch started
	requested int
	settles   bool
}

func (n *cacheNamer) Owner(c *record.Conn, since time.Time) (record.Owner, record.Wait) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if c.Command() == "nginx" && n.fetched.After(n.started) {
		return record.Owner{Container: "web-1", Workload: "web"}, 0
	}
	if n.fetched.After(since) {
		return record.Owner{Workload: c.Command()}, 0 // caught up: a host process
	}
	n.requested++
	return record.Owner{Workload: c.Command()}, record.WaitKubelet
}

func (n *cacheNamer) DestinationWorkload(netip.AddrPort, time.Time) (string, record.Wait) {
	return "", 0
}

func (n *cacheNamer) Settle(context.Context) {
	if n.settles {
		n.fetch()
	}
}

// fetch is a fetch of the cache, starting now.
func (n *cacheNamer) fetch() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.fetched = n.clock()
}

// fakeClock is a clock the test moves.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newFakeClock() *fakeClock               { return &fakeClock{t: time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)} }

// newNamingCollector returns a collector over src named by n, on clock.
func newNamingCollector(t *testing.T, cfg ConnectionsConfig, src Source, n *cacheNamer, clock *fakeClock) *Connections {
	t.Helper()
	cfg.MaxSeries, cfg.SeriesIdle = 10, time.Hour
	n.clock = clock.now
	c, err := NewConnections(cfg, src, &fakeResolver{}, n, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	c.now = clock.now
	return c
}

// A connection of a container that started after the cache's last fetch
// waits, unexported, for a fetch after it was first seen, which it asks
// for; it is then named by its container.
func TestConnectionsOwnerWaitsForCache(t *testing.T) {
	src := &fakeSource{conns: []record.Conn{conn(1, "nginx", "10.0.0.5:40001", "10.0.0.1:80", record.StateEstablished)}}
	clock := newFakeClock()
	n := &cacheNamer{started: clock.now()}
	n.fetched = clock.now().Add(-time.Second) // before the container started
	c := newNamingCollector(t, ConnectionsConfig{}, src, n, clock)
	clock.advance(time.Second)
	reg := collect(t, c)
	if k, _ := testutil.GatherAndCount(reg, "connection_active"); k != 0 {
		t.Errorf("connection of an unknown container exported at once: %d series", k)
	}
	if n.requested == 0 {
		t.Error("the cache was not asked to catch up")
	}
	if got := value(t, reg, "connection_exporter_naming_waiting_connections", "reason", "kubelet"); got != 1 {
		t.Errorf("waiting connections = %v, want 1", got)
	}
	clock.advance(100 * time.Millisecond)
	n.fetch()
	clock.advance(time.Second)
	checkNamed(t, collect(t, c), "after the fetch")
}

// checkNamed checks that a scrape has connection 1 named after web-1 and
// no connection waiting.
func checkNamed(t *testing.T, reg prometheus.Gatherer, when string) {
	t.Helper()
	if got := value(t, reg, "connection_active", "container", "web-1", "workload", "web"); got != 1 {
		t.Errorf("%s: connection named web-1 active = %v, want 1", when, got)
	}
	if got := value(t, reg, "connection_exporter_naming_waiting_connections", "reason", "kubelet"); got != 0 {
		t.Errorf("%s: waiting connections = %v, want 0", when, got)
	}
}

// With NameSettle, a scrape waits for the fetch its connections asked for
// and exports them named in the same scrape.
func TestConnectionsNamedInTheScrapeThatSettles(t *testing.T) {
	src := &fakeSource{conns: []record.Conn{conn(1, "nginx", "10.0.0.5:40001", "10.0.0.1:80", record.StateEstablished)}}
	clock := newFakeClock()
	n := &cacheNamer{started: clock.now(), settles: true}
	n.fetched = clock.now().Add(-time.Second)
	c := newNamingCollector(t, ConnectionsConfig{NameSettle: time.Second}, src, n, clock)
	clock.advance(time.Second)
	// The fetch that Settle makes starts after the scrape's admission.
	c.now = func() time.Time { t := clock.now(); clock.advance(time.Millisecond); return t }
	checkNamed(t, collect(t, c), "the first scrape")
}

// A cache that never catches up holds a connection back for NameTimeout
// at most: then it is exported with the best names known and counted.
func TestConnectionsNameTimeout(t *testing.T) {
	src := &fakeSource{conns: []record.Conn{conn(1, "nginx", "10.0.0.5:40001", "10.0.0.1:80", record.StateEstablished)}}
	clock := newFakeClock()
	n := &cacheNamer{started: clock.now()} // never fetched
	c := newNamingCollector(t, ConnectionsConfig{NameTimeout: 30 * time.Second}, src, n, clock)
	for _, step := range []time.Duration{time.Second, 15 * time.Second, 14 * time.Second} {
		clock.advance(step)
		if k, _ := testutil.GatherAndCount(collect(t, c), "connection_active"); k != 0 {
			t.Fatalf("exported before the timeout, %v in", step)
		}
	}
	clock.advance(2 * time.Second)
	reg := collect(t, c)
	if got := value(t, reg, "connection_active", "container", "", "workload", "nginx", "process", "nginx"); got != 1 {
		t.Errorf("after the timeout: active = %v, want 1 under the process", got)
	}
	if got := value(t, reg, "connection_exporter_naming_timeouts_total", "reason", "kubelet"); got != 1 {
		t.Errorf("timeouts = %v, want 1", got)
	}
	if got := value(t, reg, "connection_exporter_naming_timeouts_total", "reason", "docker"); got != 0 {
		t.Errorf("docker timeouts = %v, want 0", got)
	}
}

// A connection that existed before the exporter started is older than
// every fetch: the first fetch names it, however late the first scrape.
// A connection opened after that fetch waits for the next.
func TestConnectionsSeededOlderThanCaches(t *testing.T) {
	seeded := conn(1, "curl", "10.0.0.5:40001", "10.0.0.1:80", record.StateEstablished)
	seeded.Seeded = true
	later := conn(2, "curl", "10.0.0.5:40002", "10.0.0.1:80", record.StateEstablished)
	later.PID = 101 // another process: its owner is named on its own
	src := &fakeSource{conns: []record.Conn{seeded, later}}
	clock := newFakeClock()
	n := &cacheNamer{started: clock.now().Add(time.Hour)} // no container
	c := newNamingCollector(t, ConnectionsConfig{}, src, n, clock)
	n.fetch()
	clock.advance(5 * time.Second)
	reg := collect(t, c)
	if got := value(t, reg, "connection_active", "process", "curl"); got != 1 {
		t.Errorf("active = %v at the first scrape, want 1: the seeded connection", got)
	}
}

// Closed and failed connections wait for their names like open ones: the
// first attempts of a new pod, refused while its dependencies start, are
// named by its container.
func TestConnectionsClosedAndFailedWait(t *testing.T) {
	src := &fakeSource{conns: []record.Conn{
		conn(1, "nginx", "10.0.0.5:40001", "10.0.0.1:80", record.StateClosed),
		conn(2, "nginx", "10.0.0.5:40002", "10.0.0.1:81", record.StateFailed),
	}}
	clock := newFakeClock()
	n := &cacheNamer{started: clock.now()}
	c := newNamingCollector(t, ConnectionsConfig{}, src, n, clock)
	clock.advance(time.Second)
	collect(t, c)
	if len(src.released) != 0 {
		t.Errorf("released %v, want none: both wait", src.released)
	}
	n.fetch()
	clock.advance(time.Second)
	reg := collect(t, c)
	if got := value(t, reg, "connection_opened_total", "container", "web-1", "destination", "10.0.0.1:80"); got != 1 {
		t.Errorf("closed connection named: opened = %v, want 1", got)
	}
	if got := value(t, reg, "connection_failed_total", "container", "web-1", "destination", "10.0.0.1:81"); got != 1 {
		t.Errorf("failed connection named: failed = %v, want 1", got)
	}
	slices.Sort(src.released)
	if !slices.Equal(src.released, []uint64{1, 2}) {
		t.Errorf("released %v, want [1 2]", src.released)
	}
}

// chunkResolver records the size of each Resolve call and translates the
// service address to one of three backends by source port.
type chunkResolver struct {
	mu     sync.Mutex
	chunks []int
}

func (r *chunkResolver) Resolve(_ context.Context, in []record.Query, out []record.Destination) {
	r.mu.Lock()
	r.chunks = append(r.chunks, len(in))
	r.mu.Unlock()
	for i, l := range in {
		be := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 1, byte(l.Src.Port() % 3)}), 8080)
		out[i] = record.Destination{Actual: be, Resolver: "conntrack"}
	}
}

// newConns returns n established connections from one process to the
// service address, cookies from first on.
func newConns(first uint64, n int) []record.Conn {
	conns := make([]record.Conn, n)
	for i := range conns {
		conns[i] = conn(first+uint64(i), "app", fmt.Sprintf("10.0.%d.5:%d", i/50000, 10000+i%50000), vip.String(), record.StateEstablished)
	}
	return conns
}

// Many new connections are resolved in batches while the changes are read,
// each exactly once, and the memory they take is bounded and reused.
func TestConnectionsBatched(t *testing.T) {
	const n = 5*batchSize + 100
	src := &fakeSource{conns: newConns(1, n)}
	res := &chunkResolver{}
	c := newTestCollector(t, ConnectionsConfig{}, src, res)
	// The batches a scrape can use at once are taken at start, so that
	// the first scrape with many new connections allocates none.
	initial := slices.Clone(c.free)
	distinct := make(map[*batch]bool)
	for _, b := range initial {
		distinct[b] = true
	}
	if len(distinct) != maxInFlight+1 {
		t.Fatalf("%d distinct batches taken at start, want %d", len(distinct), maxInFlight+1)
	}
	reg := collect(t, c)
	for _, b := range c.free {
		if !slices.Contains(initial, b) {
			t.Error("the first scrape allocated a batch although enough were taken at start")
		}
	}
	total := 0
	for b := range 3 {
		got := value(t, reg, "connection_active", "actual_destination", fmt.Sprintf("10.0.1.%d:8080", b))
		want := 0
		for i := range n {
			if (10000+i%50000)%3 == b {
				want++
			}
		}
		if int(got) != want {
			t.Errorf("backend %d: %v active, want %d", b, got, want)
		}
		total += int(got)
	}
	if total != n {
		t.Errorf("%d active in all, want %d", total, n)
	}
	if got := value(t, reg, "connection_exporter_resolved_connections_total", "resolver", "conntrack"); got != n {
		t.Errorf("%v connections counted resolved by conntrack, want %d", got, n)
	}
	// Batches are resolved at once: they may finish in any order.
	want := []int{100, batchSize, batchSize, batchSize, batchSize, batchSize}
	if got := slices.Sorted(slices.Values(res.chunks)); !slices.Equal(got, want) {
		t.Errorf("resolved in batches %v, want %v in some order", res.chunks, want)
	}
	if len(c.free) > maxInFlight+1 {
		t.Errorf("%d batches kept, want at most %d", len(c.free), maxInFlight+1)
	}
	kept := slices.Clone(c.free)

	// Nothing new: nothing resolved again.
	res.chunks = nil
	collect(t, c)
	if len(res.chunks) != 0 {
		t.Errorf("second scrape resolved %v", res.chunks)
	}
	// New ones again: the kept batches are reused.
	src.conns = append(src.conns, newConns(n+1, 2*batchSize)...)
	collect(t, c)
	if !slices.Equal(res.chunks, []int{batchSize, batchSize}) {
		t.Errorf("third scrape resolved in batches %v", res.chunks)
	}
	for _, b := range c.free {
		if !slices.Contains(kept, b) {
			t.Errorf("a batch was allocated although %d were kept", len(kept))
		}
	}
}

// wholeResolver is a Preparer that reads a whole table ahead.
type wholeResolver struct{ chunkResolver }

func (r *wholeResolver) Prepare(context.Context, int) (record.Resolver, bool) { return r, true }

// A resolver that reads a whole table is asked about all new connections
// in one call.
func TestConnectionsWholeTable(t *testing.T) {
	const n = 2*batchSize + 7
	src := &fakeSource{conns: newConns(1, n)}
	res := &wholeResolver{}
	c := newTestCollector(t, ConnectionsConfig{}, src, res)
	if got := value(t, collect(t, c), "connection_opened_total", "actual_destination", "10.0.1.0:8080"); got == 0 {
		t.Error("nothing opened to the first backend")
	}
	if !slices.Equal(res.chunks, []int{n}) {
		t.Errorf("resolved in calls of %v, want one of %d", res.chunks, n)
	}
	for _, b := range c.free {
		if cap(b.lookups) > batchSize {
			t.Errorf("kept a batch grown to %d", cap(b.lookups))
		}
	}
}

// twiceSource reports a connection established and, further on in the
// same read, closed, as the kernel does when it changes between two runs
// of its reader.
type twiceSource struct {
	fakeSource
	first, again int // positions of the two reports
}

func (s *twiceSource) Read(fn func(*record.Conn)) (int, error) {
	if s.first < 0 {
		return s.fakeSource.Read(fn)
	}
	var c record.Conn
	for i := range s.conns {
		c = s.conns[i]
		if i == s.first {
			c.State = record.StateEstablished
		}
		fn(&c)
		if i == s.again {
			c = s.conns[s.first]
			c.Reported = true
			fn(&c)
		}
	}
	s.first = -1
	return len(s.conns), nil
}

// A connection reported twice in one scrape, after its first report went
// out in an earlier batch, is counted once and closed.
func TestConnectionsReportedTwice(t *testing.T) {
	src := &twiceSource{fakeSource: fakeSource{conns: newConns(1, batchSize+10)}, first: 3, again: batchSize + 5}
	src.conns[3].State = record.StateClosed
	c := newTestCollector(t, ConnectionsConfig{}, src, &chunkResolver{})
	reg := collect(t, c)
	var active, opened float64
	for b := range 3 {
		active += value(t, reg, "connection_active", "actual_destination", fmt.Sprintf("10.0.1.%d:8080", b))
		opened += value(t, reg, "connection_opened_total", "actual_destination", fmt.Sprintf("10.0.1.%d:8080", b))
	}
	if active != batchSize+9 || opened != batchSize+10 {
		t.Errorf("active %v, opened %v; want %d and %d", active, opened, batchSize+9, batchSize+10)
	}
	if !slices.Equal(src.released, []uint64{4}) {
		t.Errorf("released %v, want [4]", src.released)
	}
}

// A connection postponed for a name at its first report, and reported
// again, closed, in the same scrape after its first batch was admitted, is
// counted from its second report, once its name is known.
func TestConnectionsPostponedReportedTwice(t *testing.T) {
	n := (maxInFlight+1)*batchSize + 10
	conns := append([]record.Conn{conn(1, "nginx", "10.0.0.5:40001", "10.0.0.1:80", record.StateClosed)}, newConns(2, n-1)...)
	src := &twiceSource{fakeSource: fakeSource{conns: conns, capacity: 1 << 20}, first: 0, again: n - 1}
	clock := newFakeClock()
	namer := &cacheNamer{started: clock.now()}
	c := newNamingCollector(t, ConnectionsConfig{}, src, namer, clock)
	c.cfg.MaxSeries = 10000
	clock.advance(time.Second)
	collect(t, c)
	if len(src.released) != 0 {
		t.Errorf("released %v before the connection was named", src.released)
	}
	namer.fetch()
	clock.advance(time.Second)
	reg := collect(t, c)
	if !slices.Equal(src.released, []uint64{1}) {
		t.Errorf("released %v, want [1]: the closed report of connection 1 was dropped", src.released)
	}
	if got := value(t, reg, "connection_opened_total", "container", "web-1", "destination", "10.0.0.1:80"); got != 1 {
		t.Errorf("closed connection opened = %v, want 1", got)
	}
	if got := value(t, reg, "connection_active", "container", "web-1"); got != 0 {
		t.Errorf("closed connection active = %v, want 0", got)
	}
}

// Only what changed is read, yet every scrape counts every open
// connection; releases that fail are made again at the next scrape.
func TestConnectionsAccountsChanges(t *testing.T) {
	src := &fakeSource{conns: []record.Conn{
		conn(1, "a", "10.0.0.5:40001", vip.String(), record.StateEstablished),
		conn(2, "a", "10.0.0.5:40002", vip.String(), record.StateEstablished),
		conn(3, "a", "10.0.0.5:40003", vip.String(), record.StateEstablished),
	}}
	res := &fakeResolver{}
	c := newTestCollector(t, ConnectionsConfig{}, src, res)
	// tracked is what the map held when it was read, before releases.
	check := func(reg prometheus.Gatherer, active, opened, tracked float64) {
		t.Helper()
		if got := value(t, reg, "connection_active", "process", "a"); got != active {
			t.Errorf("active = %v, want %v", got, active)
		}
		if got := value(t, reg, "connection_opened_total", "process", "a"); got != opened {
			t.Errorf("opened = %v, want %v", got, opened)
		}
		if got := value(t, reg, "connection_exporter_tracked_connections"); got != tracked {
			t.Errorf("tracked = %v, want %v", got, tracked)
		}
	}
	check(collect(t, c), 3, 3, 3)
	check(collect(t, c), 3, 3, 3) // nothing changed, nothing read
	if res.lookups != 3 {
		t.Errorf("%d lookups, want 3", res.lookups)
	}

	src.conns[1].State = record.StateClosed
	check(collect(t, c), 2, 3, 3)
	if !slices.Equal(src.released, []uint64{2}) {
		t.Errorf("released %v, want [2]", src.released)
	}

	src.conns[0].State = record.StateClosed
	src.releaseErr = errors.New("map busy")
	reg := collect(t, c)
	check(reg, 1, 3, 2)
	if got := value(t, reg, "connection_exporter_scrape_collector_success"); got != 0 {
		t.Errorf("success = %v after a failed release", got)
	}
	src.releaseErr = nil
	check(collect(t, c), 1, 3, 2)
	if !slices.Equal(src.released, []uint64{2, 1}) {
		t.Errorf("released %v, want [2 1]: the failed release made again", src.released)
	}
}

// A postponed connection is read again although it did not change, and
// kept postponed while the source cannot be read.
func TestConnectionsPostponedSurvivesFailedRead(t *testing.T) {
	src := &fakeSource{conns: []record.Conn{conn(1, "nginx", "10.0.0.5:40001", "10.0.0.1:80", record.StateEstablished)}}
	clock := newFakeClock()
	namer := &cacheNamer{started: clock.now()}
	c := newNamingCollector(t, ConnectionsConfig{}, src, namer, clock)
	clock.advance(time.Second)
	collect(t, c)
	namer.fetch()
	src.getErr = errors.New("map gone")
	clock.advance(time.Second)
	collect(t, c)
	src.getErr = nil
	clock.advance(time.Second)
	if got := value(t, collect(t, c), "connection_active", "container", "web-1", "workload", "web"); got != 1 {
		t.Errorf("postponed connection: active = %v, want 1", got)
	}
}

func TestConnectionsMapMadeAtStart(t *testing.T) {
	// The connections recorded before the collector starts have their map
	// made then, with room for those opened until the first scrape: that
	// scrape, with every connection new, keeps it.
	src := &fakeSource{conns: newConns(1, 900)}
	c := newTestCollector(t, ConnectionsConfig{}, src, &chunkResolver{})
	made := reflect.ValueOf(c.conns).UnsafePointer()
	src.conns = append(src.conns, newConns(901, 50)...)
	reg := collect(t, c)
	if reflect.ValueOf(c.conns).UnsafePointer() != made {
		t.Error("the first scrape made the map of connections again")
	}
	if got := value(t, reg, "connection_exporter_tracked_connections"); got != 950 {
		t.Errorf("tracked %v connections, want 950", got)
	}
}

// manyResolvers names a resolver of its own for each connection, by its
// source port.
type manyResolvers struct{}

func (manyResolvers) Resolve(_ context.Context, in []record.Query, out []record.Destination) {
	for i, l := range in {
		out[i] = record.Destination{Actual: l.Dst, Resolver: fmt.Sprintf("r%d", l.Src.Port()%300)}
	}
}

func TestConnectionsManyResolverNames(t *testing.T) {
	// More resolver names than a name key indexes: each connection is
	// still counted under its own resolver.
	src := &fakeSource{conns: newConns(1, 600)}
	c := newTestCollector(t, ConnectionsConfig{MaxSeries: 1000}, src, manyResolvers{})
	reg := collect(t, c)
	for _, r := range []int{0, 255, 256, 299} {
		name := fmt.Sprintf("r%d", (10000+r)%300)
		if got := value(t, reg, "connection_active", "resolver", name); got != 2 {
			t.Errorf("resolver %s: %v active, want 2", name, got)
		}
		if got := value(t, reg, "connection_exporter_resolved_connections_total", "resolver", name); got != 2 {
			t.Errorf("resolver %s: %v counted resolved, want 2", name, got)
		}
	}
	if got := value(t, reg, "connection_exporter_series"); got != 300 {
		t.Errorf("%v label sets, want 300", got)
	}
}
