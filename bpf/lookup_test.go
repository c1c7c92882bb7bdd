package bpf

import (
	"net/netip"
	"testing"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
)

// TestLookupConntrack runs the lookup program in a namespace whose
// kube-proxy style DNAT sends a service address to a backend, and checks
// each connection's answer against the real conntrack entry: translated
// (IPv4 and IPv6), untranslated, and absent from the table.
func TestLookupConntrack(t *testing.T) {
	tr := newTracker(t, Config{MaxConnections: 1024})
	if tr.lookup == nil {
		t.Fatal("the kernel refused the lookup program")
	}
	lab := netlab.New(t)
	node := lab.NetNS("node")
	node.Run("ip", "link", "set", "lo", "up")
	node.Run("ip", "addr", "add", "10.99.0.1/24", "dev", "lo")
	node.Run("ip", "-6", "addr", "add", "fd00:99::1/64", "dev", "lo", "nodad")
	node.Run("iptables", "-t", "nat", "-A", "OUTPUT", "-d", "10.99.0.2", "-p", "tcp", "--dport", "80",
		"-j", "DNAT", "--to-destination", "10.99.0.1:8080")
	node.Run("ip6tables", "-t", "nat", "-A", "OUTPUT", "-d", "fd00:99::2", "-p", "tcp", "--dport", "80",
		"-j", "DNAT", "--to-destination", "[fd00:99::1]:8080")
	other := lab.NetNS("other") // no NAT rule: its connections are in no table
	other.Run("ip", "link", "set", "lo", "up")
	netlab.Serve(node.Listen("tcp4", "10.99.0.1:8080"))
	netlab.Serve(node.Listen("tcp6", "[fd00:99::1]:8080"))
	netlab.Serve(other.Listen("tcp4", "127.0.0.1:8080"))

	type want struct {
		found bool
		src   string // reply source when found
	}
	cases := map[netip.AddrPort]want{}
	dial := func(ns *netlab.NS, network, addr string, w want) {
		t.Helper()
		c, err := ns.Dial(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cases[addrPort(c.LocalAddr())] = w
	}
	dial(node, "tcp4", "10.99.0.2:80", want{true, "10.99.0.1:8080"})
	dial(node, "tcp4", "10.99.0.2:80", want{true, "10.99.0.1:8080"})
	dial(node, "tcp6", "[fd00:99::2]:80", want{true, "[fd00:99::1]:8080"})
	dial(node, "tcp4", "10.99.0.1:8080", want{true, "10.99.0.1:8080"})
	dial(other, "tcp4", "127.0.0.1:8080", want{false, ""})

	tr.lookupBudget = 2 // several runs, each stopping at its budget
	var run LookupRun
	if err := node.Do(func() (err error) { run, err = tr.LookupConntrack(); return err }); err != nil {
		t.Fatal(err)
	}
	if !run.Complete || run.ID != 1 || run.Looked < len(cases) || run.Found < 4 {
		t.Errorf("run = %+v, want complete run 1 with at least %d looked up and 4 found", run, len(cases))
	}
	check := func(runID uint32) {
		t.Helper()
		conns, err := tr.Snapshot(nil)
		if err != nil {
			t.Fatal(err)
		}
		seen := 0
		for _, c := range conns {
			w, ok := cases[c.Src]
			if !ok {
				continue
			}
			seen++
			r := c.Reply
			if r.Run != runID || r.Found != w.found {
				t.Errorf("%v -> %v: reply %+v, want run %d found %v", c.Src, c.Dst, r, runID, w.found)
				continue
			}
			if !w.found {
				continue
			}
			src := netip.AddrPortFrom(netip.AddrFrom16(r.Src).Unmap(), r.SrcPort)
			dst := netip.AddrPortFrom(netip.AddrFrom16(r.Dst).Unmap(), r.DstPort)
			if src.String() != w.src || dst != c.Src {
				t.Errorf("%v -> %v: reply %v -> %v, want %s -> %v", c.Src, c.Dst, src, dst, w.src, c.Src)
			}
		}
		if seen != len(cases) {
			t.Errorf("%d of %d connections recorded", seen, len(cases))
		}
	}
	check(1)

	// A second run looks none of them up again (it may look up connections
	// other tests opened meanwhile) and changes no answer.
	if err := node.Do(func() (err error) { run, err = tr.LookupConntrack(); return err }); err != nil {
		t.Fatal(err)
	}
	if run.ID != 2 || !run.Complete {
		t.Errorf("second run = %+v, want complete run 2", run)
	}
	check(1)
}
