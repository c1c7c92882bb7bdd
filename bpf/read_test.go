package bpf

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/connection-exporter/connection_exporter/record"
)

// readOurs reads the map and returns the states of the connections to dst
// whose local address is in srcs, failing on one of them reported twice.
// Both ends are matched: a connection an earlier test left closing may
// have had the same local address. Other connections of the host may be
// reported twice in a read that takes several runs of the reader: once as
// established, once more if they close before the next run walks by.
func readOurs(t *testing.T, tr *Tracker, dst netip.AddrPort, srcs map[netip.AddrPort]bool) (map[netip.AddrPort]record.State, int) {
	t.Helper()
	r := readSlowly(t, tr, dst, srcs, 0)
	return r.got, r.total
}

// aRead is what readSlowly saw.
type aRead struct {
	got      map[netip.AddrPort]record.State // ours, by local address
	reported map[netip.AddrPort]bool         // ours reported before
	total    int                             // as Read returned it
	calls    int                             // of the callback, for any connection
}

// readSlowly is readOurs whose first callback takes pause: the reader's
// ring fills meanwhile if the changes do not fit it.
func readSlowly(t *testing.T, tr *Tracker, dst netip.AddrPort, srcs map[netip.AddrPort]bool, pause time.Duration) aRead {
	t.Helper()
	r := aRead{got: make(map[netip.AddrPort]record.State), reported: make(map[netip.AddrPort]bool)}
	cookies := make(map[uint64]bool)
	total, err := tr.Read(func(c *record.Conn) {
		if r.calls++; r.calls == 1 {
			time.Sleep(pause)
		}
		if c.Dst == dst && srcs[c.Src] {
			if cookies[c.Cookie] {
				t.Errorf("connection %d (%v) reported twice in one read", c.Cookie, c.Src)
			}
			cookies[c.Cookie] = true
			r.got[c.Src] = c.State
			r.reported[c.Src] = c.Reported
		}
	})
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	r.total = total
	return r
}

func TestTrackerReadsChanges(t *testing.T) {
	const ringSize = 1000
	tr := newTracker(t, Config{MaxConnections: 16384, changes: ringSize})
	ln := listen(t, "tcp4", "127.0.0.1:0")

	// More connections than the reader's ring holds, and a first callback
	// slow enough for the walk to fill the ring and stop: the next run must
	// go on with the rest and report none twice.
	const n = 2*ringSize + 500
	srcs := make(map[netip.AddrPort]bool, n)
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		srcs[addrPort(c.LocalAddr())] = true
	}

	r := readSlowly(t, tr, addrPort(ln.Addr()), srcs, 100*time.Millisecond)
	got, reported, total := r.got, r.reported, r.total
	if len(got) != n {
		t.Fatalf("first read reported %d of %d new connections", len(got), n)
	}
	if tr.runs < 2 {
		t.Errorf("first read took %d runs of the reader, want at least 2 (the ring filled)", tr.runs)
	}
	for src, st := range got {
		if st != record.StateEstablished || reported[src] {
			t.Fatalf("%v: state %v, reported before %v; want established, new", src, st, reported[src])
		}
	}
	snap, err := tr.snapshot(nil)
	if err != nil {
		t.Fatal(err)
	}
	// Other processes of the host may connect meanwhile.
	if total < n || total > len(snap)+50 || len(snap) > total+50 {
		t.Errorf("total = %d, want about the %d entries of a batch read, at least %d", total, len(snap), n)
	}

	if got, total2 := readOurs(t, tr, addrPort(ln.Addr()), srcs); len(got) != 0 || total2 < n {
		t.Errorf("read without changes reported %d connections (total %d), want 0 (total at least %d)", len(got), total2, n)
	}

	// With nothing counted since the last walk, a read does not walk and
	// gives the same total. Other processes of the host may connect
	// meanwhile: then it walks, and that is checked no further.
	counters := func() [2]uint64 {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		n, err := tr.logged()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	quiet := false
	for try := 0; try < 20 && !quiet; try++ {
		before, last, walks, total := counters(), tr.last, tr.walks, tr.total
		_, got := readOurs(t, tr, addrPort(ln.Addr()), srcs)
		if quiet = before == last && counters() == before; quiet && (tr.walks != walks || got != total) {
			t.Errorf("read with nothing changed walked %d times, total %d, want %d", tr.walks-walks, got, total)
		}
	}
	if !quiet {
		t.Error("no read without a change elsewhere on the host in 20 tries")
	}

	// Closing changes the state: those connections, and only those, are
	// reported again. A reset closes a socket at once, even one whose
	// peer has not accepted it yet.
	closed := make(map[netip.AddrPort]bool)
	for _, c := range conns[:n/3] {
		closed[addrPort(c.LocalAddr())] = true
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	conns = conns[n/3:]
	var last map[netip.AddrPort]record.State
	deadline := time.Now().Add(5 * time.Second)
	seen := make(map[netip.AddrPort]record.State)
	for len(seen) < len(closed) && time.Now().Before(deadline) {
		r := readSlowly(t, tr, addrPort(ln.Addr()), srcs, 0)
		last = r.got
		for src, st := range last {
			if !r.reported[src] {
				t.Fatalf("%v reported as new when it closed", src)
			}
			if !closed[src] {
				t.Fatalf("%v reported although it did not change (state %v)", src, st)
			}
			if st != record.StateClosed {
				t.Fatalf("%v: state %v, want closed", src, st)
			}
			if _, dup := seen[src]; dup {
				t.Fatalf("%v reported again without a change", src)
			}
			seen[src] = st
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(seen) != len(closed) {
		t.Errorf("reported %d of %d closed connections", len(seen), len(closed))
	}
}

func TestTrackerGet(t *testing.T) {
	tr := newTracker(t, Config{MaxConnections: 1024})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	k, ok := find(t, tr, addrPort(c.LocalAddr()))
	if !ok {
		t.Fatal("connection not recorded")
	}
	var got []record.Conn
	if err := tr.Get([]uint64{k.Cookie, 1<<63 + 5}, func(c *record.Conn) { got = append(got, *c) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != k {
		t.Errorf("Get = %+v, want only %+v", got, k)
	}
}

func TestTrackerReadsInOneRunWhatFits(t *testing.T) {
	// 500 changes and a ring of 1000, however slowly they are taken: one
	// run of the reader walks the map once.
	tr := newTracker(t, Config{MaxConnections: 16384, changes: 1000})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	srcs := make(map[netip.AddrPort]bool)
	for range 500 {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		srcs[addrPort(c.LocalAddr())] = true
	}
	r := readSlowly(t, tr, addrPort(ln.Addr()), srcs, 100*time.Millisecond)
	if len(r.got) != len(srcs) {
		t.Fatalf("read %d of %d new connections", len(r.got), len(srcs))
	}
	// Other connections of the host may change meanwhile: as long as all
	// the read reported fit the ring, one run had to do.
	if tr.runs != 1 && r.calls <= 1000 {
		t.Errorf("first read of %d changes took %d runs, want 1", r.calls, tr.runs)
	}
}
