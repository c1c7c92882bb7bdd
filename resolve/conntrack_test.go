package resolve

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
	"github.com/connection-exporter/connection_exporter/record"
)

func newConntrack(t *testing.T, host *netlab.NS) *Conntrack {
	t.Helper()
	c, err := NewConntrack(ConntrackConfig{HostNetNS: host.Path(), NetNSDirs: []string{"/run/netns"}},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("new conntrack resolver: %v", err)
	}
	return c
}

func tcpAddr(a net.Addr) netip.AddrPort {
	p := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(p.Addr().Unmap(), p.Port())
}

// dialQuery opens a connection from the cluster's client namespace to dst,
// closed when the test ends, and returns it as a query.
func dialQuery(t *testing.T, cl *netlab.Cluster, dst netip.AddrPort) record.Query {
	t.Helper()
	c, err := cl.Client.Dial("tcp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return record.Query{NetNS: cl.Client.Inode(), Src: tcpAddr(c.LocalAddr()), Dst: dst}
}

// waitAccepted waits for the cluster's servers to record client.
func waitAccepted(t *testing.T, c *netlab.Cluster, client netip.AddrPort) netip.AddrPort {
	t.Helper()
	a, ok := c.AwaitAccepted(client)
	if !ok {
		t.Fatalf("no backend accepted %v", client)
	}
	return a
}

// TestKubeProxy resolves connections to a service address DNATed by
// kube-proxy-style chains in the node namespace, checking every connection
// against the backend that accepted it, all in one call (pipelined lookups)
// and one by one. TestPreparedDump covers the dump.
func TestKubeProxy(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	ct := newConntrack(t, cl.Node)

	for _, vip := range []netip.Addr{cl.VIP4, cl.VIP6} {
		t.Run(vip.String(), func(t *testing.T) {
			dst := netip.AddrPortFrom(vip, cl.Port)
			var qs []record.Query
			var want []netip.AddrPort
			backends := map[netip.AddrPort]bool{}
			for range 30 {
				q := dialQuery(t, cl, dst)
				qs = append(qs, q)
				w := waitAccepted(t, cl, q.Src)
				want = append(want, w)
				backends[w] = true
			}
			if len(backends) < 2 {
				t.Fatalf("30 connections reached only %v: the random balancing is not working", backends)
			}
			check := func(t *testing.T, qs []record.Query, want []netip.AddrPort) {
				out := make([]record.Destination, len(qs))
				ct.Resolve(context.Background(), qs, out)
				for i, r := range out {
					if r.Err != nil {
						t.Errorf("%v: error from %s: %v", qs[i].Src, r.ErrResolver, r.Err)
					}
					if r.Actual != want[i] || r.Resolver != ResolverConntrack {
						t.Errorf("%v -> %v resolved to %v by %s, backend saw it at %v",
							qs[i].Src, qs[i].Dst, r.Actual, r.Resolver, want[i])
					}
				}
			}
			t.Run("batch", func(t *testing.T) { check(t, qs, want) })
			t.Run("get", func(t *testing.T) {
				for i := range qs {
					check(t, qs[i:i+1], want[i:i+1])
				}
			})
		})
	}
}

// TestPreparedDump resolves through a dump of the node's table started
// before the connections were known, as a cold scrape does: connections of
// both families present when it ran, connections opened after it (looked up
// one by one), and one that nothing translates.
func TestPreparedDump(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	ct := newConntrack(t, cl.Node)
	var qs []record.Query
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
	dial(netip.AddrPortFrom(cl.Backends[0].Addr4, cl.BackendPort))

	// As many expected connections as make a dump cheaper than lookups.
	chain, whole := Chain{ct.OwnNamespace(), ct.HostNamespace()}.Prepare(context.Background(), 10000)
	p, ok := chain[1].(*preparedHost)
	if !whole || !ok {
		t.Fatalf("prepared chain %T, whole=%v: want the host table dumped ahead", chain[1], whole)
	}
	<-p.done
	if p.err != nil {
		t.Fatalf("dump: %v", p.err)
	}
	before := len(qs)
	for range 5 {
		dial(netip.AddrPortFrom(cl.VIP4, cl.Port))
	}
	if x := newQueryIndex(qs, []int{before}, make([]record.Destination, len(qs)), ResolverConntrack); func() bool { p.recs.join(x); return x.found[0] != notFound }() {
		t.Fatalf("a connection opened after the dump is in it")
	}

	out := make([]record.Destination, len(qs))
	chain.Resolve(context.Background(), qs, out)
	for i, r := range out {
		resolver := ResolverConntrack
		if i == before-1 {
			resolver = ResolverNone
		}
		if r.Err != nil || r.Actual != want[i] || r.Resolver != resolver {
			t.Errorf("%v -> %v resolved to %v by %s (err %v), want %v by %s",
				qs[i].Src, qs[i].Dst, r.Actual, r.Resolver, r.Err, want[i], resolver)
		}
	}
}

// TestDirect resolves a connection that nothing translates.
func TestDirect(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	ct := newConntrack(t, cl.Node)
	dst := netip.AddrPortFrom(cl.Backends[1].Addr4, cl.BackendPort)
	c, err := cl.Client.Dial("tcp4", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	qs := []record.Query{{NetNS: cl.Client.Inode(), Src: tcpAddr(c.LocalAddr()), Dst: dst}}
	out := make([]record.Destination, 1)
	ct.Resolve(context.Background(), qs, out)
	if out[0] != (record.Destination{Actual: dst, Resolver: ResolverNone}) {
		t.Errorf("direct connection resolved to %+v", out[0])
	}
}

// TestSidecar resolves an application's connection redirected to an
// Istio-style proxy in its own namespace, and the proxy's onward connection
// through the node's DNAT.
func TestSidecar(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	proxy := cl.Client.Sidecar(15001)
	ct := newConntrack(t, cl.Node)
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)

	app, err := cl.Client.Dial("tcp4", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	src := tcpAddr(app.LocalAddr())
	up, ok := proxy.AwaitUpstream(src)
	if !ok {
		t.Fatal("the proxy did not forward the connection")
	}
	backend := waitAccepted(t, cl, up)

	ns := cl.Client.Inode()
	qs := []record.Query{
		{NetNS: ns, Src: src, Dst: dst},
		{NetNS: ns, Src: up, Dst: dst},
	}
	out := make([]record.Destination, len(qs))
	ct.Resolve(context.Background(), qs, out)
	if want := (record.Destination{Actual: proxy.Addr, Resolver: ResolverConntrackNetNS}); answer(out[0]) != want {
		t.Errorf("application connection resolved to %+v, want %+v", out[0], want)
	}
	if want := (record.Destination{Actual: backend, Resolver: ResolverConntrack}); answer(out[1]) != want {
		t.Errorf("proxy connection resolved to %+v, want %+v", out[1], want)
	}
}

// TestGoneNamespace: a connection whose namespace no longer exists is still
// looked up in the host namespace, and the failure is reported.
func TestGoneNamespace(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	ct := newConntrack(t, cl.Node)
	dst := netip.MustParseAddrPort("10.77.0.10:80")
	qs := []record.Query{{NetNS: 1, PID: 0, Src: netip.MustParseAddrPort("10.77.1.2:40000"), Dst: dst}}
	out := make([]record.Destination, 1)
	ct.Resolve(context.Background(), qs, out)
	if out[0].Err == nil || out[0].ErrResolver != ResolverConntrackNetNS {
		t.Errorf("missing namespace not reported: %+v", out[0])
	}
	if out[0].Actual != dst || out[0].Resolver != ResolverNone {
		t.Errorf("unknown connection resolved to %+v", out[0])
	}
}

// TestOwnNamespaceGroups: queries of several namespaces, interleaved with
// those of the host, are each looked up once in their own namespace (here
// gone, so they fail) and all handed on to the next step.
func TestOwnNamespaceGroups(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	ct := newConntrack(t, cl.Node)
	dst := netip.MustParseAddrPort("10.77.0.10:80")
	inos := []uint32{1, ct.HostNetNS(), 2, 0, 1, 2, 3, ct.HostNetNS()}
	qs := make([]record.Query, len(inos))
	idx := make([]int, len(inos))
	for i, ino := range inos {
		qs[i] = record.Query{NetNS: ino, Src: netip.AddrPortFrom(netip.MustParseAddr("10.77.1.2"), uint16(40000+i)), Dst: dst}
		idx[i] = i
	}
	out := make([]record.Destination, len(qs))
	rest := ct.OwnNamespace().Resolve(context.Background(), qs, idx, out)
	if got := slices.Sorted(slices.Values(rest)); !slices.Equal(got, []int{0, 1, 2, 3, 4, 5, 6, 7}) {
		t.Errorf("handed on %v, want every query once", rest)
	}
	for i, ino := range inos {
		own := ino != ct.HostNetNS() && ino != 0
		if failed := out[i].Err != nil && out[i].ErrResolver == ResolverConntrackNetNS; failed != own {
			t.Errorf("query %d of namespace %d: error %v (%s), want one: %v", i, ino, out[i].Err, out[i].ErrResolver, own)
		}
	}
}

// answer is what a record.Destination tells the collector, without the lookup's
// internal state.
func answer(r record.Destination) record.Destination {
	return record.Destination{Actual: r.Actual, Resolver: r.Resolver, Err: r.Err, ErrResolver: r.ErrResolver}
}

// TestCount reads the number of conntrack entries of a namespace: none in a
// pod namespace without NAT rules, the translated connections in the node.
func TestCount(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	for range 4 {
		c, err := cl.Client.Dial("tcp4", netip.AddrPortFrom(cl.VIP4, cl.Port).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	count := func(ns *netlab.NS) uint32 {
		n, err := openCTAt(t, ns.Path()).count()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(cl.Client); n != 0 {
		t.Errorf("client namespace without NAT rules holds %d entries", n)
	}
	if n := count(cl.Node); n < 4 {
		t.Errorf("node namespace holds %d entries, want at least the 4 connections", n)
	}
}

// TestDumpLookup resolves thousands of connections from a table filled
// through ctnetlink: enough that one dump is cheaper than lookups, both
// when the connections are known first and when the dump runs ahead.
func TestDumpLookup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	const n = 8000
	ns := netlab.New(t).NetNS("filled")
	fillTable(t, ns.Path(), n)
	msgs, qs := natTable(n, false)
	if !dumpCheaper(n, n) {
		t.Fatalf("the cost model would not dump %d entries for %d connections", n, n)
	}
	ct := newConntrack(t, ns)
	check := func(t *testing.T, out []record.Destination) {
		for i, r := range out {
			want, _ := parseEntry(msgs[i])
			if r.Err != nil || r.Actual != want.reply.source() || r.Resolver != ResolverConntrack {
				t.Fatalf("%v -> %v resolved to %v by %s (err %v), want %v", qs[i].Src, qs[i].Dst, r.Actual, r.Resolver, r.Err, want.reply.source())
			}
		}
	}
	t.Run("dump", func(t *testing.T) {
		out := make([]record.Destination, n)
		Chain{ct.HostNamespace()}.Resolve(context.Background(), qs, out)
		check(t, out)
	})
	t.Run("ahead", func(t *testing.T) {
		chain, whole := Chain{ct.HostNamespace()}.Prepare(context.Background(), n)
		if !whole {
			t.Fatal("no dump ahead")
		}
		out := make([]record.Destination, n)
		chain.Resolve(context.Background(), qs, out)
		check(t, out)
	})
}

func TestCountShared(t *testing.T) {
	// A table's count is read once for the batches of a scrape; a failed
	// read is not kept, and nil (an unprepared step) keeps nothing.
	reads := 0
	read := func(n uint32, err error) func() (uint32, error) {
		return func() (uint32, error) { reads++; return n, err }
	}
	k := newTableCounts()
	if _, err := k.get(7, read(0, errors.New("no table"))); err == nil {
		t.Fatal("a failed read gave no error")
	}
	for range 3 {
		if n, err := k.get(7, read(5, nil)); n != 5 || err != nil {
			t.Fatalf("count = %d, %v; want 5", n, err)
		}
	}
	if n, err := k.get(8, read(0, nil)); n != 0 || err != nil {
		t.Fatalf("count of another table = %d, %v; want 0", n, err)
	}
	if reads != 3 {
		t.Errorf("%d reads, want 3: one failed, one for each table", reads)
	}
	if n, ok := k.known(8); !ok || n != 0 {
		t.Errorf("known count of the empty table = %d, %v", n, ok)
	}
	var none *tableCounts
	for range 2 {
		none.get(7, read(5, nil))
	}
	if _, ok := none.known(7); ok || reads != 5 {
		t.Errorf("nil counts kept a count (%d reads, want 5)", reads)
	}
}

// TestPreparedCountsPerScrape: a table empty when one scrape counted it is
// looked at again by the next scrape, however soon.
func TestPreparedCountsPerScrape(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	ct := newConntrack(t, cl.Node)
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)
	resolve := func(qs []record.Query) []record.Destination {
		chain, _ := Chain{ct.OwnNamespace(), ct.HostNamespace()}.Prepare(context.Background(), len(qs))
		out := make([]record.Destination, len(qs))
		chain.Resolve(context.Background(), qs, out)
		return out
	}
	// A first scrape counts the node's table while nothing goes through it.
	ns := cl.Client.Inode()
	resolve([]record.Query{{NetNS: ns, Src: netip.MustParseAddrPort("10.77.1.2:40000"), Dst: dst}})
	c, err := cl.Client.Dial("tcp4", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	src := tcpAddr(c.LocalAddr())
	backend := waitAccepted(t, cl, src)
	out := resolve([]record.Query{{NetNS: ns, Src: src, Dst: dst}})
	if want := (record.Destination{Actual: backend, Resolver: ResolverConntrack}); answer(out[0]) != want {
		t.Errorf("connection made after a scrape found the table empty resolved to %+v, want %+v", out[0], want)
	}
}
