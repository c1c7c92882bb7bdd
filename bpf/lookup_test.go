package bpf

import (
	"net"
	"net/netip"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
)

// TestLookupConntrack runs the lookup program in a namespace whose
// kube-proxy style DNAT sends a service address to a backend, and checks
// each connection's result against the real conntrack entry: translated
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
		src   string         // reply source when found
		dst   netip.AddrPort // the dialled address
	}
	cases := map[netip.AddrPort]want{}
	dial := func(ns *netlab.NS, network, addr string, w want) {
		t.Helper()
		var c net.Conn
		var err error
		if network == "mapped" {
			c, err = dialMapped(ns, netip.MustParseAddrPort(addr))
		} else {
			c, err = ns.Dial(network, addr)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		w.dst = unmap(addrPort(c.RemoteAddr()))
		cases[unmap(addrPort(c.LocalAddr()))] = w
	}
	dial(node, "tcp4", "10.99.0.2:80", want{found: true, src: "10.99.0.1:8080"})
	dial(node, "tcp4", "10.99.0.2:80", want{found: true, src: "10.99.0.1:8080"})
	dial(node, "tcp6", "[fd00:99::2]:80", want{found: true, src: "[fd00:99::1]:8080"})
	// A dual-stack socket's connection to an IPv4 service.
	dial(node, "mapped", "10.99.0.2:80", want{found: true, src: "10.99.0.1:8080"})
	dial(node, "tcp4", "10.99.0.1:8080", want{found: true, src: "10.99.0.1:8080"})
	dial(other, "tcp4", "127.0.0.1:8080", want{})

	// A budget of 3 makes several runs, each stopping where it is spent,
	// and results copied out two at a time several chunks per run.
	tr.lookup.Close()
	if err := tr.loadLookup(3); err != nil {
		t.Fatal(err)
	}
	tr.lookup.buf = make([]lookupCtResult, 2)
	lookUp := func() (LookupRun, map[netip.AddrPort][2]netip.AddrPort) {
		t.Helper()
		got := map[netip.AddrPort][2]netip.AddrPort{}
		var run LookupRun
		err := node.Do(func() (err error) {
			run, err = tr.LookupConntrack(func(orig, reply Tuple) {
				src := netip.AddrPortFrom(netip.AddrFrom16(orig.Src).Unmap(), orig.SrcPort)
				if _, dup := got[src]; dup {
					t.Errorf("%v looked up twice", src)
				}
				got[src] = [2]netip.AddrPort{
					netip.AddrPortFrom(netip.AddrFrom16(reply.Src).Unmap(), reply.SrcPort),
					netip.AddrPortFrom(netip.AddrFrom16(reply.Dst).Unmap(), reply.DstPort),
				}
			})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return run, got
	}
	run, got := lookUp()
	if !run.Complete || run.Looked != len(got) || run.Looked < len(cases) {
		t.Errorf("run = %+v with %d results, want a complete run with at least %d", run, len(got), len(cases))
	}
	for src, w := range cases {
		r, ok := got[src]
		switch {
		case !ok:
			t.Errorf("%v not looked up", src)
		case r[1] != src:
			t.Errorf("%v: reply destination %v, want the connection's source", src, r[1])
		case w.found && r[0].String() != w.src:
			t.Errorf("%v: reply source %v, want %s", src, r[0], w.src)
		case !w.found && r[0] != w.dst:
			t.Errorf("%v: reply source %v, want the mirror of its own tuple %v", src, r[0], w.dst)
		}
	}

	// A second run looks none of them up again (it may look up connections
	// other tests opened meanwhile).
	run, got = lookUp()
	for src := range cases {
		if _, ok := got[src]; ok {
			t.Errorf("%v looked up again", src)
		}
	}
	if !run.Complete {
		t.Errorf("second run = %+v, want complete", run)
	}
}

func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// dialMapped connects an IPv6 socket in ns to the IPv4 address dst as an
// IPv4-mapped address, as dual-stack applications do (Go's dialer would use
// an IPv4 socket).
func dialMapped(ns *netlab.NS, dst netip.AddrPort) (c net.Conn, err error) {
	err = ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), "mapped")
		defer f.Close()
		sa := &unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()}
		if err := unix.Connect(fd, sa); err != nil {
			return err
		}
		c, err = net.FileConn(f)
		return err
	})
	return c, err
}
