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

func (l trackerLookup) LookupConntrack() (uint32, int, error) {
	r, err := l.t.LookupConntrack()
	return r.ID, r.Entries, err
}

// withReplies returns qs with the answers the tracker holds for them.
func withReplies(t *testing.T, tr *bpf.Tracker, qs []Query) []Query {
	t.Helper()
	conns, err := tr.Snapshot(nil)
	if err != nil {
		t.Fatal(err)
	}
	bySrc := map[netip.AddrPort]bpf.Reply{}
	for _, c := range conns {
		bySrc[c.Src] = c.Reply
	}
	out := make([]Query, len(qs))
	for i, q := range qs {
		q.Host = HostReply(bySrc[q.Src])
		out[i] = q
	}
	return out
}

// TestKernelLookup resolves through the kernel's lookups in the node's
// table, as a cold scrape does where the kernel can: connections of both
// families that the kernel looked up, one that nothing translates,
// connections opened after its run and one whose answer is stale (looked
// up through netlink), each checked against the backend that accepted it.
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
	k, ok := chain[1].(kernelHost)
	if whole || !ok {
		t.Fatalf("prepared chain %T, whole=%v: want the kernel's lookups", chain[1], whole)
	}
	before := len(qs)
	for range 5 {
		dial(netip.AddrPortFrom(cl.VIP4, cl.Port))
	}
	qs = withReplies(t, tr, qs)
	for i, q := range qs {
		if looked := q.Host.Run == k.run; looked != (i < before) {
			t.Errorf("%v: reply %+v after run %d: looked up %v, want %v", q.Src, q.Host, k.run, looked, i < before)
		}
	}
	// An answer from an earlier run that found nothing says nothing now.
	stale := qs[0]
	stale.Host = HostReply{Run: k.run - 1}
	qs = append(qs, stale)
	want = append(want, want[0])

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

	// Unprepared, the host step keeps using the translations found.
	out = make([]Result, before)
	Chain{ct.OwnNamespace(), ct.HostNamespace()}.Resolve(context.Background(), qs[:before], out)
	for i, r := range out {
		if r.Actual != want[i] {
			t.Errorf("unprepared: %v resolved to %v, want %v", qs[i].Src, r.Actual, want[i])
		}
	}
}
