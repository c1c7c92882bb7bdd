package bpf

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
	"github.com/connection-exporter/connection_exporter/record"
)

// fill inserts n established entries into the connection map from user
// space, as the tracepoint would, and returns a function that marks them
// all changed again.
func fill(b *testing.B, tr *Tracker, n int) (change func()) {
	b.Helper()
	keys := make([]uint64, n)
	vals := make([]trackerConn, n)
	for i := range keys {
		keys[i] = uint64(1<<40 + i)
		vals[i] = trackerConn{Pid: 1, Netns: 4026531840, Family: afInet, State: uint32(record.StateEstablished),
			Sport: uint16(i), Dport: 80, Saddr: [16]uint8{10, 0, 0, 1}, Daddr: [16]uint8{10, 0, 0, 2}, Version: 1}
	}
	change = func() {
		if _, err := tr.objs.Conns.BatchUpdate(keys, vals, &ebpf.BatchOptions{}); err != nil {
			b.Fatal(err)
		}
		tr.walked = false // the kernel's counters do not see changes made here
	}
	change()
	b.Cleanup(func() { tr.Release(keys) })
	return change
}

// BenchmarkSnapshot reads a map of 50,000 connections: the warm path's
// floor. Run as root: go test -run X -bench Snapshot -benchmem ./bpf
func BenchmarkSnapshot(b *testing.B) {
	tr := newTracker(b, Config{})
	fill(b, tr, 50000)
	var buf []record.Conn
	var err error
	b.ReportAllocs()
	for b.Loop() {
		if buf, err = tr.snapshot(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(buf)), "conns")
}

// BenchmarkRead reads a map of 50,000 connections: all of them changed, as
// on a cold scrape; none of them but with a walk of the map, as when other
// connections changed; and none, as on a scrape with nothing new. Run as
// root: go test -run X -bench 'Read$' -benchmem ./bpf
func BenchmarkRead(b *testing.B) {
	tr := newTracker(b, Config{})
	change := fill(b, tr, 50000)
	read := func(b *testing.B) int {
		n := 0
		if _, err := tr.Read(func(*record.Conn) { n++ }); err != nil {
			b.Fatal(err)
		}
		return n
	}
	// Each case reads once to start from everything reported, then times
	// reads that each follow prep.
	sub := func(name string, prep func(b *testing.B)) {
		b.Run(name, func(b *testing.B) {
			read(b)
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				prep(b)
				n = read(b)
			}
			b.ReportMetric(float64(n), "conns")
		})
	}
	sub("changed", func(b *testing.B) {
		b.StopTimer()
		change()
		b.StartTimer()
	})
	sub("walk", func(*testing.B) { tr.walked = false })
	sub("unchanged", func(*testing.B) {})
}

// BenchmarkLookupConntrack looks 50,000 connections up in a namespace's
// conntrack table from the kernel, with every connection in the table, in
// the order the entries were made (found) and in a random order (shuffled),
// and with an empty table (missing). A scrape asks in the order of the
// connection map's hash, which is random: the entries' memory is then
// touched out of order, which costs a third more on the development VM.
// Run as root:
// go test -run X -bench LookupConntrack ./bpf
func BenchmarkLookupConntrack(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("loading BPF programs needs root")
	}
	l, err := NewConntrackLookup(testTypes)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	const n = 50000
	lab := netlab.New(b)
	full, empty := lab.NetNS("full"), lab.NetNS("empty")
	// The table holds each connection's entry, translated to a backend.
	orig := make([]record.Tuple, n)
	entries := make([]netlab.NATEntry, n)
	client, svc := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	for i := range orig {
		sport := uint16(1024 + i)
		orig[i] = record.Tuple{Src: client.As16(), Dst: svc.As16(), SrcPort: sport, DstPort: 80}
		entries[i] = netlab.NATEntry{
			Client:  netip.AddrPortFrom(client, sport),
			Service: netip.AddrPortFrom(svc, 80),
			Backend: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 8080),
		}
	}
	full.InsertConntrack(entries)
	shuffled := slices.Clone(orig)
	rand.New(rand.NewPCG(1, 2)).Shuffle(n, func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	found := make([]bool, n)
	for _, bc := range []struct {
		name string
		ns   *netlab.NS
		want bool
		orig []record.Tuple
	}{{"found", full, true, orig}, {"shuffled", full, true, shuffled}, {"missing", empty, false, orig}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				clear(found)
				err := bc.ns.Do(func() error {
					return l.Lookup(n, func(i int) record.Tuple { return bc.orig[i] }, func(i int, _ record.Tuple) { found[i] = true })
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			if found[0] != bc.want || found[n-1] != bc.want {
				b.Fatalf("found %v, want %v", found[0], bc.want)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/lookup")
		})
	}
}

// BenchmarkConnectClose opens and closes loopback connections with the
// programs attached and reports the programs' own run time per
// connect/close cycle, as the kernel's BPF statistics count it: the
// exporter's cost on every connection of the host, free of the wall-clock
// noise that hides a few percent. Run as root:
// go test -run X -bench ConnectClose ./bpf
func BenchmarkConnectClose(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("loading BPF programs needs root")
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Skipf("BPF statistics: %v", err)
	}
	defer stats.Close()
	tr := newTracker(b, Config{})
	ln := listen(b, "tcp4", "127.0.0.1:0")
	netlab.CloseAccepted(ln)
	run0, runs0, _, err := tr.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	// Drained and released every 1,024 cycles, as scrapes would, so that
	// the logs never fill: the reader is another program, not counted.
	n := 0
	for b.Loop() {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
		if n++; n%1024 == 0 {
			if err := tr.releaseClosed(); err != nil {
				b.Fatal(err)
			}
		}
	}
	run, runs, _, err := tr.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(run-run0)/float64(b.N), "prog-ns/cycle")
	b.ReportMetric(float64(runs-runs0)/float64(b.N), "runs/cycle")
}
