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
	"github.com/connection-exporter/connection_exporter/record"
)

// TestKernelLookup resolves through lookups from inside the kernel in the
// node's table, in one call and one by one: connections of both families
// and one that nothing translates, each checked against the backend that
// accepted it, all counted as the kernel's.
func TestKernelLookup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading BPF programs needs root")
	}
	l, err := bpf.NewConntrackLookup(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	ct, err := NewConntrack(ConntrackConfig{HostNetNS: cl.Node.Path(), NetNSDirs: []string{"/run/netns"}, Kernel: l},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}

	var qs []record.Query
	var want []netip.AddrPort
	for _, vip := range []netip.Addr{cl.VIP4, cl.VIP6} {
		for range 20 {
			q := dialQuery(t, cl, netip.AddrPortFrom(vip, cl.Port))
			qs = append(qs, q)
			want = append(want, waitAccepted(t, cl, q.Src))
		}
	}
	direct := len(qs)
	d := netip.AddrPortFrom(cl.Backends[0].Addr4, cl.BackendPort)
	qs = append(qs, dialQuery(t, cl, d))
	want = append(want, d)

	chain, whole := Chain{ct.OwnNamespace(), ct.HostNamespace()}.Prepare(context.Background(), 10000)
	if whole {
		t.Errorf("prepared chain %T dumps the table: the kernel's lookups cost less", chain[1])
	}
	check := func(t *testing.T, qs []record.Query, want []netip.AddrPort, direct int) {
		t.Helper()
		out := make([]record.Destination, len(qs))
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
	}
	check(t, qs, want, direct)
	for i := range qs {
		check(t, qs[i:i+1], want[i:i+1], direct-i)
	}
	if k, g, dump := ct.looked[methodKernel].Load(), ct.looked[methodGet].Load(), ct.looked[methodDump].Load(); k != uint64(2*len(qs)) || g+dump != 0 {
		t.Errorf("looked up %d by the kernel and %d by netlink, want %d and 0", k, g+dump, 2*len(qs))
	}
}
