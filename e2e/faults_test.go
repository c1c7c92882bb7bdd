package e2e

import (
	"net/netip"
	"testing"
	"time"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
)

// TestNamespaceGone: a pod's connections close and its namespace is gone
// before the scrape: they are still counted and resolved from the host's
// table, and the unreadable namespace is counted as an error.
func TestNamespaceGone(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	pod := lab.NetNS("shortlived")
	lab.Link(pod, []string{"10.77.3.2/24"}, cl.Node, []string{"10.77.3.1/24"})
	pod.Run("ip", "route", "add", "default", "via", "10.77.3.1")
	exp := startExporter(t, cl.Node)
	exp.scrape()

	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)
	conns := dialAll(t, pod, dst, 5)
	want := truth(t, cl, sources(conns))
	for _, c := range conns {
		c.Close()
	}
	time.Sleep(200 * time.Millisecond)
	pod.Delete()

	s := exp.scrape()
	match := map[string]string{"process": process(t), "destination": dst.String(), "resolver": "conntrack"}
	if got := s.byActual("connection_opened_total", match); !equal(got, want) {
		t.Errorf("connections of a vanished namespace: %v, backends saw %v", got, want)
	}
	if e := s.samples("connection_exporter_resolve_errors_total", map[string]string{"resolver": "conntrack_netns"}); len(e) != 1 || e[0].value < 1 {
		t.Errorf("vanished namespace not counted as an error: %v", e)
	}
}

// TestConntrackEntryGone: the NAT entry of an open connection is gone (it
// expired, or conntrack -D): the connection is exported with what is known.
func TestConntrackEntryGone(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	exp := startExporter(t, cl.Node)
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)
	dialAll(t, cl.Client, dst, 3)
	cl.Node.Run("conntrack", "-D", "-d", cl.VIP4.String())
	s := exp.scrape()
	got := s.samples("connection_active", map[string]string{"process": process(t), "destination": dst.String()})
	if len(got) != 1 || got[0].value != 3 || got[0].labels["resolver"] != "none" || got[0].labels["actual_destination"] != dst.String() {
		t.Errorf("connections without a NAT entry: %v", got)
	}
}

// TestFullMap: more connections than the kernel map holds: the scrape
// answers, and what did not fit is counted.
func TestFullMap(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	exp := startExporter(t, cl.Node, "--bpf.max-connections=16")
	dialAll(t, cl.Client, netip.AddrPortFrom(cl.VIP4, cl.Port), 40)
	s := exp.scrape()
	if f := s.samples("connection_exporter_map_full_total", nil); len(f) != 1 || f[0].value < 24 {
		t.Errorf("map_full_total = %v, want at least 24", f)
	}
	if n := s.samples("connection_exporter_tracked_connections", nil); len(n) != 1 || n[0].value > 16 {
		t.Errorf("tracked_connections = %v with a map of 16", n)
	}
}

// TestNoBPFFS: no BPF filesystem where Cilium's maps would be: nothing to
// look up, nothing counted as an error.
func TestNoBPFFS(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	exp := startExporter(t, cl.Node, "--path.bpffs=/nonexistent")
	dialAll(t, cl.Client, netip.AddrPortFrom(cl.VIP4, cl.Port), 2)
	s := exp.scrape()
	if e := s.samples("connection_exporter_resolve_errors_total", map[string]string{"resolver": "cilium"}); len(e) != 1 || e[0].value != 0 {
		t.Errorf("cilium errors without a bpffs: %v", e)
	}
	if got := s.samples("connection_active", map[string]string{"resolver": "conntrack", "process": process(t)}); len(got) == 0 {
		t.Error("connections not resolved")
	}
}
