package resolve

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	cf "github.com/connection-exporter/connection_exporter/internal/ciliumfake"
	"github.com/connection-exporter/connection_exporter/internal/netlab"
	"github.com/connection-exporter/connection_exporter/record"
)

// dialLoopback opens a real connection and returns its tuple.
func dialLoopback(t *testing.T, network, addr string) record.Query {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	netlab.Serve(ln)
	c, err := net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return record.Query{Src: tcpAddr(c.LocalAddr()), Dst: tcpAddr(c.RemoteAddr())}
}

func resolveCilium(t *testing.T, f *cf.BPFFS, qs ...record.Query) []record.Destination {
	t.Helper()
	c := NewCilium(CiliumConfig{BPFFS: f.Root}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	out := make([]record.Destination, len(qs))
	Chain{c}.Resolve(context.Background(), qs, out)
	return out
}

// TestCilium fills the maps as the datapath of two Cilium versions on each
// side of the 1.16 change does for a service connection, with a real
// connection's tuple, and resolves it to its backend.
func TestCilium(t *testing.T) {
	for _, tc := range []struct {
		version string
		entry   func(backend uint64) any
	}{
		{"1.15", func(id uint64) any {
			return cf.CTEntry115{RxPackets: 1, BackendID: id, TxPackets: 1, TxBytes: 74, Lifetime: 21600, RevNATIndex: 0x0500, TxFlagsSeen: 2}
		}},
		{"1.16", func(id uint64) any {
			return cf.CTEntry116{BackendID: id, Packets: 2, Bytes: 148, Lifetime: 21600, RevNATIndex: 0x0500, TxFlagsSeen: 2}
		}},
	} {
		t.Run(tc.version, func(t *testing.T) {
			f := cf.Mount(t, t.TempDir())
			ct4 := f.Pin("cilium_ct4_global", ebpf.LRUHash, cf.Tuple4Size, cf.CTEntrySize)
			ct6 := f.Pin("cilium_ct6_global", ebpf.LRUHash, cf.Tuple6Size, cf.CTEntrySize)
			lb4 := f.Pin("cilium_lb4_backends_v3", ebpf.Hash, 4, 12)
			lb6 := f.Pin("cilium_lb6_backends_v3", ebpf.Hash, 4, 24)

			q4 := dialLoopback(t, "tcp4", "127.0.0.1:0")
			q6 := dialLoopback(t, "tcp6", "[::1]:0")
			f.Put(ct4, cf.ServiceKey4(q4.Src, q4.Dst), tc.entry(7))
			f.Put(ct6, cf.ServiceKey6(q6.Src, q6.Dst), tc.entry(9))
			// The egress entry the datapath also writes after DNAT must not
			// be taken for the service entry.
			f.Put(ct4, cf.Tuple4{Daddr: q4.Src.Addr().As4(), Saddr: [4]byte{10, 0, 7, 7}, Dport: cf.Port(8080), Sport: cf.Port(q4.Src.Port()), Nexthdr: 6}, tc.entry(0))
			f.Put(lb4, uint32(7), cf.LB4BackendV3{Address: [4]byte{10, 0, 7, 7}, Port: cf.Port(8080), Proto: 6})
			f.Put(lb6, uint32(9), cf.LB6BackendV3{Address: netip.MustParseAddr("fd00::9").As16(), Port: cf.Port(8080), Proto: 6})

			unknown := dialLoopback(t, "tcp4", "127.0.0.1:0")
			out := resolveCilium(t, f, q4, q6, unknown)
			want := []record.Destination{
				{Actual: netip.MustParseAddrPort("10.0.7.7:8080"), Resolver: ResolverCilium},
				{Actual: netip.MustParseAddrPort("[fd00::9]:8080"), Resolver: ResolverCilium},
				{Actual: unknown.Dst, Resolver: ResolverNone},
			}
			for i := range want {
				if out[i] != want[i] {
					t.Errorf("query %d (%v -> %v): %+v, want %+v", i, qs(q4, q6, unknown)[i].Src, qs(q4, q6, unknown)[i].Dst, out[i], want[i])
				}
			}
		})
	}
}

func qs(q ...record.Query) []record.Query { return q }

// TestCiliumBackendsV2 reads backends from the map of Cilium 1.12 and
// earlier when _v3 is not pinned.
func TestCiliumBackendsV2(t *testing.T) {
	f := cf.Mount(t, t.TempDir())
	ct4 := f.Pin("cilium_ct4_global", ebpf.LRUHash, cf.Tuple4Size, cf.CTEntrySize)
	lb4 := f.Pin("cilium_lb4_backends_v2", ebpf.Hash, 4, 8)
	q := dialLoopback(t, "tcp4", "127.0.0.1:0")
	f.Put(ct4, cf.ServiceKey4(q.Src, q.Dst), cf.CTEntry115{BackendID: 3})
	f.Put(lb4, uint32(3), cf.LB4BackendV2{Address: [4]byte{10, 0, 3, 3}, Port: cf.Port(80), Proto: 6})
	out := resolveCilium(t, f, q)
	if want := (record.Destination{Actual: netip.MustParseAddrPort("10.0.3.3:80"), Resolver: ResolverCilium}); out[0] != want {
		t.Errorf("%+v, want %+v", out[0], want)
	}
}

// TestCiliumUnknownLayout: a CT map whose value size is not one we know is
// refused with an error naming it, and the connection still resolves to
// its dialled address.
func TestCiliumUnknownLayout(t *testing.T) {
	f := cf.Mount(t, t.TempDir())
	f.Pin("cilium_ct4_global", ebpf.LRUHash, cf.Tuple4Size, 64)
	f.Pin("cilium_lb4_backends_v3", ebpf.Hash, 4, 12)
	q := dialLoopback(t, "tcp4", "127.0.0.1:0")
	out := resolveCilium(t, f, q)
	if out[0].Resolver != ResolverNone || out[0].Actual != q.Dst {
		t.Errorf("resolved through an unknown layout: %+v", out[0])
	}
	if out[0].Err == nil || out[0].ErrResolver != ResolverCilium || !strings.Contains(out[0].Err.Error(), "value size 64") {
		t.Errorf("unknown layout not reported: %+v", out[0])
	}
}

// TestCiliumAbsent: without Cilium's maps the step passes every connection
// on, with no error.
func TestCiliumAbsent(t *testing.T) {
	f := cf.Mount(t, t.TempDir())
	q := dialLoopback(t, "tcp4", "127.0.0.1:0")
	out := resolveCilium(t, f, q)
	if out[0] != (record.Destination{Actual: q.Dst, Resolver: ResolverNone}) {
		t.Errorf("%+v", out[0])
	}
}

func TestDecodeBackend(t *testing.T) {
	for _, tc := range []struct {
		b    []byte
		want string
		ok   bool
	}{
		{[]byte{10, 0, 0, 1, 0x1f, 0x90, 6, 0, 0, 0, 0, 0}, "10.0.0.1:8080", true},
		{[]byte{10, 0, 0, 1, 0, 80, 6, 0}, "10.0.0.1:80", true},
		{[]byte{1, 2, 3}, "", false},
	} {
		got, ok, _ := decodeBackend(tc.b)
		if ok != tc.ok || (ok && got.String() != tc.want) {
			t.Errorf("decodeBackend(%v) = %v, %v", tc.b, got, ok)
		}
	}
}

func FuzzDecodeBackend(f *testing.F) {
	f.Add([]byte{10, 0, 0, 1, 0x1f, 0x90, 6, 0, 0, 0, 0, 0})
	f.Add(make([]byte, 24))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, ok, err := decodeBackend(b)
		if ok && (err != nil || !a.IsValid()) {
			t.Errorf("decodeBackend(%v) = %v, %v, %v", b, a, ok, err)
		}
		if !ok && err == nil {
			t.Errorf("decodeBackend(%v) failed without an error", b)
		}
	})
}
