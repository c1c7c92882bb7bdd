package bpf

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// readOurs reads the map and returns the states of the connections to dst
// whose local address is in srcs, failing on a connection reported twice.
// Both ends are matched: a connection an earlier test left closing may
// have had the same local address.
func readOurs(t *testing.T, tr *Tracker, dst netip.AddrPort, srcs map[netip.AddrPort]bool) (map[netip.AddrPort]State, int) {
	t.Helper()
	got, _, total := readReported(t, tr, dst, srcs)
	return got, total
}

// readReported is readOurs that also returns which of the connections
// were reported before.
func readReported(t *testing.T, tr *Tracker, dst netip.AddrPort, srcs map[netip.AddrPort]bool) (map[netip.AddrPort]State, map[netip.AddrPort]bool, int) {
	t.Helper()
	return readSlowly(t, tr, dst, srcs, 0)
}

// readSlowly is readReported whose first callback takes pause: the
// reader's ring fills meanwhile if the changes do not fit it.
func readSlowly(t *testing.T, tr *Tracker, dst netip.AddrPort, srcs map[netip.AddrPort]bool, pause time.Duration) (map[netip.AddrPort]State, map[netip.AddrPort]bool, int) {
	t.Helper()
	got := make(map[netip.AddrPort]State)
	reported := make(map[netip.AddrPort]bool)
	cookies := make(map[uint64]bool)
	total, err := tr.Read(func(c *Conn) {
		if len(cookies) == 0 {
			time.Sleep(pause)
		}
		if cookies[c.Cookie] {
			t.Errorf("connection %d reported twice in one read", c.Cookie)
		}
		cookies[c.Cookie] = true
		if c.Dst == dst && srcs[c.Src] {
			got[c.Src] = c.State
			reported[c.Src] = c.Reported
		}
	})
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return got, reported, total
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

	got, reported, total := readSlowly(t, tr, addrPort(ln.Addr()), srcs, 100*time.Millisecond)
	if len(got) != n {
		t.Fatalf("first read reported %d of %d new connections", len(got), n)
	}
	if tr.runs < 2 {
		t.Errorf("first read took %d runs of the reader, want at least 2 (the ring filled)", tr.runs)
	}
	for src, st := range got {
		if st != StateEstablished || reported[src] {
			t.Fatalf("%v: state %v, reported before %v; want established, new", src, st, reported[src])
		}
	}
	snap, err := tr.Snapshot(nil)
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
		ch, err1 := tr.counter(counterChanged)
		rec, err2 := tr.counter(counterRecorded)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		return [2]uint64{ch, rec}
	}
	quiet := false
	for try := 0; try < 20 && !quiet; try++ {
		before, walks, total := counters(), tr.walks, tr.total
		_, got := readOurs(t, tr, addrPort(ln.Addr()), srcs)
		if quiet = before == tr.last && counters() == before; quiet && (tr.walks != walks || got != total) {
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
	var last map[netip.AddrPort]State
	deadline := time.Now().Add(5 * time.Second)
	seen := make(map[netip.AddrPort]State)
	for len(seen) < len(closed) && time.Now().Before(deadline) {
		var again map[netip.AddrPort]bool
		last, again, _ = readReported(t, tr, addrPort(ln.Addr()), srcs)
		for src, st := range last {
			if !again[src] {
				t.Fatalf("%v reported as new when it closed", src)
			}
			if !closed[src] {
				t.Fatalf("%v reported although it did not change (state %v)", src, st)
			}
			if st != StateClosed {
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
	var got []Conn
	if err := tr.Get([]uint64{k.Cookie, 1<<63 + 5}, func(c *Conn) { got = append(got, *c) }); err != nil {
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
	if got, _, _ := readSlowly(t, tr, addrPort(ln.Addr()), srcs, 100*time.Millisecond); len(got) != len(srcs) {
		t.Fatalf("read %d of %d new connections", len(got), len(srcs))
	}
	if tr.runs != 1 {
		t.Errorf("first read of 500 changes took %d runs, want 1", tr.runs)
	}
}
