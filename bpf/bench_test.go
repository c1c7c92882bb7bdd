package bpf

import (
	"testing"

	"github.com/cilium/ebpf"
)

// fill inserts n established entries into the connection map from user
// space, as the tracepoint would.
func fill(b *testing.B, tr *Tracker, n int) {
	b.Helper()
	keys := make([]uint64, n)
	vals := make([]trackerConn, n)
	for i := range keys {
		keys[i] = uint64(1<<40 + i)
		vals[i] = trackerConn{Pid: 1, Netns: 4026531840, Family: afInet, State: uint8(StateEstablished),
			Sport: uint16(i), Dport: 80, Saddr: [16]uint8{10, 0, 0, 1}, Daddr: [16]uint8{10, 0, 0, 2}}
	}
	if _, err := tr.objs.Conns.BatchUpdate(keys, vals, &ebpf.BatchOptions{}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tr.Release(keys) })
}

// BenchmarkSnapshot reads a map of 50,000 connections: the warm path's
// floor. Run as root: go test -run X -bench Snapshot -benchmem ./bpf
func BenchmarkSnapshot(b *testing.B) {
	tr := newTracker(b, Config{MaxConnections: 65536})
	fill(b, tr, 50000)
	var buf []Conn
	var err error
	b.ReportAllocs()
	for b.Loop() {
		if buf, err = tr.Snapshot(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(buf)), "conns")
}
