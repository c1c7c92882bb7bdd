package resolve

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"testing"

	"github.com/connection-exporter/connection_exporter/bpf"
	"github.com/connection-exporter/connection_exporter/internal/netlab"
)

// trackerLookup is the real kernel program behind KernelLookup.
type trackerLookup struct{ t *bpf.Tracker }

func (l trackerLookup) LookupConntrack(add func(orig, reply Tuple)) error {
	_, err := l.t.LookupConntrack(func(orig, reply bpf.Tuple) { add(Tuple(orig), Tuple(reply)) })
	return err
}

// TestKernelLookup resolves through the kernel's lookups in the node's
// table, started before the connections were known, as a large scrape does
// where the kernel can: connections of both families, one that nothing
// translates, and connections opened after the lookups ran (looked up
// through netlink), each checked against the backend that accepted it.
func TestKernelLookup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading BPF programs needs root")
	}
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	tr, err := bpf.New(bpf.Config{MaxConnections: 4096}, discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	if !tr.CanLookUpConntrack() {
		t.Fatal("the kernel refused the lookup program")
	}
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	ct, err := NewConntrack(ConntrackConfig{HostNetNS: cl.Node.Path(), NetNSDirs: []string{"/run/netns"}, Kernel: trackerLookup{tr}}, discard)
	if err != nil {
		t.Fatal(err)
	}

	var qs []Query
	var want []netip.AddrPort
	dial := func(dst netip.AddrPort) {
		t.Helper()
		q := dialQuery(t, cl, dst)
		qs = append(qs, q)
		if dst.Addr() == cl.Backends[0].Addr4 {
			want = append(want, dst) // direct: nothing translates it
			return
		}
		want = append(want, waitAccepted(t, cl, q.Src))
	}
	for _, vip := range []netip.Addr{cl.VIP4, cl.VIP6} {
		for range 20 {
			dial(netip.AddrPortFrom(vip, cl.Port))
		}
	}
	direct := len(qs)
	dial(netip.AddrPortFrom(cl.Backends[0].Addr4, cl.BackendPort))

	chain, whole := Chain{ct.OwnNamespace(), ct.HostNamespace()}.Prepare(context.Background(), 100)
	p, ok := chain[1].(*preparedHost)
	if !whole || !ok || p.method != methodKernel {
		t.Fatalf("prepared chain %T, whole=%v: want the kernel's lookups", chain[1], whole)
	}
	<-p.done
	if p.err != nil {
		t.Fatalf("kernel lookups: %v", p.err)
	}
	if n := len(p.recs.v4) + len(p.recs.v6); n < len(qs) {
		t.Fatalf("the kernel looked up %d connections, want at least %d", n, len(qs))
	}
	before := len(qs)
	for range 5 {
		dial(netip.AddrPortFrom(cl.VIP4, cl.Port))
	}
	if x := newQueryIndex(qs, []int{before}, make([]Result, len(qs)), ResolverConntrack); func() bool { p.recs.join(x); return x.found[0] != notFound }() {
		t.Fatalf("a connection opened after the lookups is in them")
	}

	out := make([]Result, len(qs))
	chain.Resolve(context.Background(), qs, out)
	for i, r := range out {
		resolver := ResolverConntrack
		if i == direct {
			resolver = ResolverNone
		}
		if r.Err != nil || r.Actual != want[i] || r.Resolver != resolver {
			t.Errorf("%v -> %v resolved to %v by %s (err %v), want %v by %s",
				qs[i].Src, qs[i].Dst, r.Actual, r.Resolver, r.Err, want[i], resolver)
		}
	}
	if k, g := ct.looked[methodKernel].Load(), ct.looked[methodGet].Load(); k != uint64(before) || g != uint64(len(qs)-before) {
		t.Errorf("looked up %d by the kernel and %d by netlink requests, want %d and %d", k, g, before, len(qs)-before)
	}
}
