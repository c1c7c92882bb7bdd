package bpf

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
)

// fill inserts n established entries into the connection map from user
// space, as the tracepoint would.
func fill(b *testing.B, tr *Tracker, n int) ([]uint64, []trackerConn) {
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
	return keys, vals
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

// BenchmarkLookupConntrack looks 50,000 connections up in a namespace's
// conntrack table from the kernel, as a cold scrape does, with every
// connection in the table (found), with an empty table (missing), and with
// every connection already looked up (walk: the map walk alone). Run as
// root: go test -run X -bench LookupConntrack ./bpf
func BenchmarkLookupConntrack(b *testing.B) {
	tr := newTracker(b, Config{})
	if tr.lookup == nil {
		b.Fatal("the kernel refused the lookup program")
	}
	const n = 50000
	keys, vals := fill(b, tr, n)
	lab := netlab.New(b)
	full, empty := lab.NetNS("full"), lab.NetNS("empty")
	// The table holds each connection's entry, translated to a backend.
	var cmds bytes.Buffer
	for i := range vals {
		fmt.Fprintf(&cmds, "-I -p tcp -s 10.0.0.1 -d 10.0.0.2 --sport %d --dport 80 --reply-src 10.1.%d.%d --reply-dst 10.0.0.1 --reply-port-src 8080 --reply-port-dst %[1]d --state ESTABLISHED -t 600 -u ASSURED\n",
			vals[i].Sport, i>>8&255, i&255)
	}
	file := filepath.Join(b.TempDir(), "table")
	if err := os.WriteFile(file, cmds.Bytes(), 0o600); err != nil {
		b.Fatal(err)
	}
	full.Run("conntrack", "-R", file)

	for _, bc := range []struct {
		name   string
		ns     *netlab.NS
		looked bool
	}{{"found", full, false}, {"missing", empty, false}, {"walk", full, true}} {
		b.Run(bc.name, func(b *testing.B) {
			var looked int
			for range b.N {
				if !bc.looked {
					b.StopTimer()
					if _, err := tr.objs.Conns.BatchUpdate(keys, vals, nil); err != nil { // not looked up again
						b.Fatal(err)
					}
					b.StartTimer()
				}
				if err := bc.ns.Do(func() error {
					run, err := tr.LookupConntrack(func(Tuple, Tuple) {})
					looked = run.Looked
					return err
				}); err != nil {
					b.Fatal(err)
				}
			}
			if want := n - 1; !bc.looked && looked != want { // the connection with port 0 has no tuple
				b.Fatalf("looked up %d connections, want %d", looked, want)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(max(looked, 1)), "ns/lookup")
		})
	}
}
