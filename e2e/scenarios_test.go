package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	cf "github.com/connection-exporter/connection_exporter/internal/ciliumfake"
	"github.com/connection-exporter/connection_exporter/internal/netlab"
)

// TestKubeProxy: a service address DNATed by kube-proxy-style chains in the
// node namespace to three backends; every connection's actual destination
// is the backend that accepted it, over IPv4 and IPv6, whether the kernel
// looks the connections up or netlink does.
func TestKubeProxy(t *testing.T) {
	for _, mode := range []struct {
		name string
		args []string
	}{
		{"kernel", nil},
		{"netlink", []string{"--no-bpf.conntrack-lookup"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			lab := netlab.New(t)
			cl := lab.KubeProxy()
			exp := startExporter(t, cl.Node, mode.args...)
			for _, vip := range []netip.Addr{cl.VIP4, cl.VIP6} {
				t.Run(vip.String(), func(t *testing.T) {
					checkBackends(t, cl, exp, netip.AddrPortFrom(vip, cl.Port))
				})
			}
			// With the kernel's lookups every connection went that way;
			// without, none did.
			lookups := map[string]float64{}
			for _, smp := range exp.scrape().samples("connection_exporter_conntrack_lookups_total", nil) {
				lookups[smp.labels["method"]] = smp.value
			}
			kernel, netlink := lookups["kernel"], lookups["get"]+lookups["dump"]
			if mode.args == nil && (kernel < 80 || netlink != 0) || mode.args != nil && (kernel != 0 || netlink < 80) {
				t.Errorf("conntrack lookups by method: %v", lookups)
			}
		})
	}
}

// checkBackends opens 40 connections to dst and checks the exporter's
// answer for each against the backend that accepted it.
func checkBackends(t *testing.T, cl *netlab.Cluster, exp *exporter, dst netip.AddrPort) {
	t.Helper()
	proc := process(t)
	conns := dialAll(t, cl.Client, dst, 40)
	want := truth(t, cl, sources(conns))
	if len(want) < 2 {
		t.Fatalf("40 connections all reached %v: balancing is not working", want)
	}
	s := exp.scrape()
	match := map[string]string{"process": proc, "destination": dst.String(), "resolver": "conntrack"}
	if got := s.byActual("connection_active", match); !equal(got, want) {
		t.Errorf("connection_active by actual_destination = %v, backends saw %v", got, want)
	}
	if got := s.byActual("connection_opened_total", match); !equal(got, want) {
		t.Errorf("connection_opened_total by actual_destination = %v, backends saw %v", got, want)
	}
	if got := s.byActual("connection_destination_info", match); len(got) != len(want) {
		t.Errorf("connection_destination_info for %v: %v, want one per backend of %v", dst, got, want)
	}
	other := s.samples("connection_active", map[string]string{"process": proc, "destination": dst.String()})
	for _, smp := range other {
		if smp.labels["resolver"] != "conntrack" {
			t.Errorf("connection to %v not resolved by conntrack: %v", dst, smp.labels)
		}
	}
}

// TestMappedIPv4: an IPv6 socket that connects to an IPv4 address, in its
// IPv4-mapped form (what Java does for every IPv4 connection, and any
// program that opens dual-stack sockets): the kernel connects over IPv4, so
// its NAT is in the IPv4 conntrack table, and its destination is exported
// as the IPv4 address.
func TestMappedIPv4(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	exp := startExporter(t, cl.Node)
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)
	mapped := netip.AddrFrom16(cl.VIP4.As16())
	var conns []net.Conn
	for range 20 {
		var c net.Conn
		err := cl.Client.Do(func() error {
			fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			f := os.NewFile(uintptr(fd), "tcp6")
			defer f.Close()
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
				return err
			}
			if err := unix.Connect(fd, &unix.SockaddrInet6{Port: int(dst.Port()), Addr: mapped.As16()}); err != nil {
				return fmt.Errorf("connect to %v: %w", netip.AddrPortFrom(mapped, dst.Port()), err)
			}
			c, err = net.FileConn(f)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	want := truth(t, cl, sources(conns))
	s := exp.scrape()
	match := map[string]string{"process": process(t), "destination": dst.String(), "resolver": "conntrack"}
	if got := s.byActual("connection_active", match); !equal(got, want) {
		t.Errorf("connection_active by actual_destination = %v, backends saw %v\n%s", got, want, grep(s.text, "connection_active"))
	}
}

// TestSidecar: an Istio-style redirect in the client namespace; the
// application's connections resolve to the proxy's port on loopback in its
// own namespace, the proxy's onward connections to the backends.
func TestSidecar(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	proxy := cl.Client.Sidecar(15001)
	exp := startExporter(t, cl.Node)
	proc := process(t)
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)

	conns := dialAll(t, cl.Client, dst, 12)
	var ups []netip.AddrPort
	for _, c := range conns {
		up, ok := proxy.AwaitUpstream(local(c))
		if !ok {
			t.Fatalf("the proxy did not forward %v", local(c))
		}
		ups = append(ups, up)
	}
	want := truth(t, cl, ups)

	s := exp.scrape()
	app := s.byActual("connection_active", map[string]string{"process": proc, "destination": dst.String(), "resolver": "conntrack_netns"})
	if w := map[string]float64{proxy.Addr.String(): 12}; !equal(app, w) {
		t.Errorf("application connections = %v, want %v", app, w)
	}
	onward := s.byActual("connection_active", map[string]string{"process": proc, "destination": dst.String(), "resolver": "conntrack"})
	if !equal(onward, want) {
		t.Errorf("proxy connections = %v, backends saw %v", onward, want)
	}
}

// TestDirect: nothing translates the connection.
func TestDirect(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	exp := startExporter(t, cl.Node)
	dst := netip.AddrPortFrom(cl.Backends[2].Addr4, cl.BackendPort)
	dialAll(t, cl.Client, dst, 3)

	s := exp.scrape()
	got := s.samples("connection_active", map[string]string{"process": process(t), "destination": dst.String()})
	if len(got) != 1 {
		t.Fatalf("%d series for %v, want 1: %v", len(got), dst, got)
	}
	if l := got[0].labels; l["resolver"] != "none" || l["actual_destination"] != dst.String() || got[0].value != 3 {
		t.Errorf("direct connections exported as %v = %v", l, got[0].value)
	}
	if w := got[0].labels["workload"]; w != process(t) {
		t.Errorf("workload = %q, want the process name %q", w, process(t))
	}
}

// closingLab starts the exporter on a kube-proxy lab, scrapes once, and
// opens 25 connections to the service address. It returns the exporter,
// the connections, how many each backend accepted, and the labels that
// select the connections' series.
func closingLab(t *testing.T) (*exporter, []net.Conn, map[string]float64, map[string]string) {
	t.Helper()
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	exp := startExporter(t, cl.Node)
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)
	exp.scrape()
	conns := dialAll(t, cl.Client, dst, 25)
	match := map[string]string{"process": process(t), "destination": dst.String(), "resolver": "conntrack"}
	return exp, conns, truth(t, cl, sources(conns)), match
}

// closeAll closes conns and waits for the closes to reach the kernel map.
func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
	time.Sleep(200 * time.Millisecond)
}

// checkClosed checks that a scrape counts the closed connections of match
// opened as the backends saw them, and none of them active.
func checkClosed(t *testing.T, s scraped, match map[string]string, want map[string]float64) {
	t.Helper()
	if got := s.byActual("connection_opened_total", match); !equal(got, want) {
		t.Errorf("connection_opened_total = %v, backends saw %v", got, want)
	}
	for _, smp := range s.samples("connection_active", match) {
		if smp.value != 0 {
			t.Errorf("closed connections still active: %v", smp)
		}
	}
}

// TestShortLived: connections opened and closed between two scrapes are
// counted and resolved.
func TestShortLived(t *testing.T) {
	exp, conns, want, match := closingLab(t)
	closeAll(conns)
	s := exp.scrape()
	checkClosed(t, s, match, want)
	if got := s.byActual("connection_destination_info", match); len(got) != len(want) {
		t.Errorf("connection_destination_info for closed connections: %v, want %v", got, want)
	}
	// Counted once: a later scrape does not count them again.
	s = exp.scrape()
	if got := s.byActual("connection_opened_total", match); !equal(got, want) {
		t.Errorf("after another scrape connection_opened_total = %v, want %v", got, want)
	}
}

// TestClosedAfterSeen: connections a scrape saw open and that closed before
// the next one are counted open, then closed, and opened once. The scrape in
// between reads only what changed, so the close must reach the collector as
// a change of a known connection.
func TestClosedAfterSeen(t *testing.T) {
	exp, conns, want, match := closingLab(t)
	if got := exp.scrape().byActual("connection_active", match); !equal(got, want) {
		t.Fatalf("connection_active = %v, backends saw %v", got, want)
	}
	closeAll(conns)
	// The scrape after the closes, and one with nothing new after it.
	for range 2 {
		checkClosed(t, exp.scrape(), match, want)
	}
}

// TestPreexisting: connections opened before the exporter started are
// exported after it starts.
func TestPreexisting(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)
	conns := dialAll(t, cl.Client, dst, 15)
	want := truth(t, cl, sources(conns))

	exp := startExporter(t, cl.Node)
	s := exp.scrape()
	match := map[string]string{"process": process(t), "destination": dst.String(), "resolver": "conntrack"}
	if got := s.byActual("connection_active", match); !equal(got, want) {
		t.Errorf("connection_active = %v, backends saw %v", got, want)
	}
}

// TestRefused: a connection refused behind DNAT counts as failed, never as
// opened. The kernel deletes a conntrack entry whose only answer was a
// reset, so nothing is left to say which backend refused it.
func TestRefused(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	exp := startExporter(t, cl.Node)
	dst := netip.AddrPortFrom(cl.VIP4, cl.RefusedPort)
	if c, err := cl.Client.Dial("tcp4", dst.String()); err == nil {
		c.Close()
		t.Fatalf("connection to %v was accepted", dst)
	}
	s := exp.scrape()
	match := map[string]string{"process": process(t), "destination": dst.String()}
	if got := s.samples("connection_failed_total", match); len(got) != 1 || got[0].value != 1 {
		t.Fatalf("connection_failed_total for %v = %v, want one series at 1", dst, got)
	}
	if o := s.samples("connection_opened_total", match); len(o) != 1 || o[0].value != 0 {
		t.Errorf("refused connection counted as opened: %v", o)
	}
	// Counted once.
	if got := exp.scrape().samples("connection_failed_total", match); len(got) != 1 || got[0].value != 1 {
		t.Errorf("after another scrape connection_failed_total = %v", got)
	}
}

// TestTimedOut: an attempt whose SYNs a backend drops fails after its
// retries; its conntrack entry outlives it, so the failure is resolved to
// the backend that never answered.
func TestTimedOut(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	cl.Client.Run("sysctl", "-qw", "net.ipv4.tcp_syn_retries=1")
	exp := startExporter(t, cl.Node)
	dst := netip.AddrPortFrom(cl.VIP4, cl.DroppedPort)
	if c, err := cl.Client.Dial("tcp4", dst.String()); err == nil {
		c.Close()
		t.Fatalf("connection to %v was accepted", dst)
	}
	s := exp.scrape()
	got := s.samples("connection_failed_total", map[string]string{"process": process(t), "destination": dst.String()})
	if len(got) != 1 || got[0].value != 1 {
		t.Fatalf("connection_failed_total for %v = %v, want one series at 1", dst, got)
	}
	dropper := netip.AddrPortFrom(cl.Backends[0].Addr4, cl.BackendPort+2).String()
	if l := got[0].labels; l["actual_destination"] != dropper || l["resolver"] != "conntrack" {
		t.Errorf("timed out connection labelled %v, want actual_destination %s by conntrack", l, dropper)
	}
}

// TestExpositionValid: the exporter's whole output passes promtool.
func TestExpositionValid(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	exp := startExporter(t, cl.Node)
	dialAll(t, cl.Client, netip.AddrPortFrom(cl.VIP4, cl.Port), 3)
	s := exp.scrape()
	promtoolCheck(t, s.text)
	for _, name := range []string{
		"connection_exporter_build_info",
		"connection_exporter_scrape_collector_success",
		"connection_exporter_scrape_collector_duration_seconds",
		"connection_exporter_resolve_errors_total",
		"connection_exporter_tracked_connections",
		"connection_exporter_tracked_connections_capacity",
		"connection_exporter_map_full_total",
	} {
		if s.mfs[name] == nil {
			t.Errorf("%s missing", name)
		}
	}
	v := s.samples("connection_exporter_scrape_collector_success", nil)
	if len(v) == 0 {
		t.Error("no collector success")
	}
	for _, c := range v {
		if c.value != 1 {
			t.Errorf("collector success = %v", v)
		}
	}
}

// TestCilium: with Cilium's maps pinned under --path.bpffs, a connection to
// a service address resolves from Cilium's service entry and backend map.
// The fake agent writes the entry as Cilium's datapath would, naming the
// backend that really accepted the connection.
func TestCilium(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	fs := cf.Mount(t, t.TempDir())
	ct4 := fs.Pin("cilium_ct4_global", ebpf.LRUHash, cf.Tuple4Size, cf.CTEntrySize)
	lb4 := fs.Pin("cilium_lb4_backends_v3", ebpf.Hash, 4, 12)
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)
	conns := dialAll(t, cl.Client, dst, 5)
	for i, c := range conns {
		accepted := truth(t, cl, []netip.AddrPort{local(c)})
		for a := range accepted {
			backend := netip.MustParseAddrPort(a)
			fs.Put(ct4, cf.ServiceKey4(local(c), dst), cf.CTEntry116{BackendID: uint64(i + 1), Packets: 3})
			fs.Put(lb4, uint32(i+1), cf.LB4BackendV3{Address: backend.Addr().As4(), Port: cf.Port(backend.Port()), Proto: 6})
		}
	}
	want := truth(t, cl, sources(conns))
	exp := startExporter(t, cl.Node, "--path.bpffs="+fs.Root)
	s := exp.scrape()
	match := map[string]string{"process": process(t), "destination": dst.String(), "resolver": "cilium"}
	if got := s.byActual("connection_active", match); !equal(got, want) {
		t.Errorf("connection_active by cilium = %v, backends saw %v", got, want)
	}
}
