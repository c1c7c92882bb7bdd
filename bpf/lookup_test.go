package bpf

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
	"github.com/connection-exporter/connection_exporter/record"
)

// TestLookupConntrack runs the lookup program in a namespace whose
// kube-proxy style DNAT sends a service address to a backend, and checks
// each connection's answer against the real conntrack entry, as the
// conntrack tool reads it: translated
// (IPv4, IPv6, and a dual-stack socket's IPv4 connection), untranslated,
// absent from the table, and asked in reverse.
func TestLookupConntrack(t *testing.T) {
	// Runs of 3 lookups, copied in 2 at a time: several of each, in the
	// second of two slots, so that an element that answered in one run is
	// asked again in the next.
	l := newLookup(t, 3, 2)
	first := <-l.slots
	defer func() { l.slots <- first }()
	second := <-l.slots
	second.buf = second.buf[:2]
	l.slots <- second

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

	var orig []record.Tuple
	var want []string // the reply source, empty when not found
	dial := func(ns *netlab.NS, network, addr, backend string) {
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
		src, dst := addrPort(c.LocalAddr()), addrPort(c.RemoteAddr())
		orig = append(orig, record.Tuple{Src: src.Addr().As16(), Dst: dst.Addr().As16(), SrcPort: src.Port(), DstPort: dst.Port()})
		want = append(want, backend)
	}
	dial(node, "tcp4", "10.99.0.2:80", "10.99.0.1:8080")
	dial(node, "tcp4", "10.99.0.2:80", "10.99.0.1:8080")
	dial(node, "tcp6", "[fd00:99::2]:80", "[fd00:99::1]:8080")
	dial(node, "mapped", "10.99.0.2:80", "10.99.0.1:8080")
	dial(node, "tcp4", "10.99.0.1:8080", "10.99.0.1:8080")
	dial(other, "tcp4", "127.0.0.1:8080", "")
	// The first connection's entry seen from its reply direction is not an
	// entry whose original tuple it is.
	o := orig[0]
	orig = append(orig, record.Tuple{Src: netip.MustParseAddr("::ffff:10.99.0.1").As16(), Dst: o.Src, SrcPort: 8080, DstPort: o.SrcPort})
	want = append(want, "")

	reply, found := make([]record.Tuple, len(orig)), make([]bool, len(orig))
	err := node.Do(func() error {
		return l.Lookup(len(orig), func(i int) record.Tuple { return orig[i] }, func(i int, r record.Tuple) {
			if found[i] {
				t.Errorf("%d answered twice", i)
			}
			reply[i], found[i] = r, true
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range orig {
		src := netip.AddrPortFrom(netip.AddrFrom16(o.Src).Unmap(), o.SrcPort)
		if found[i] != (want[i] != "") {
			t.Errorf("%v: found %v, want %v", src, found[i], want[i] != "")
			continue
		}
		if !found[i] {
			continue
		}
		r := reply[i]
		rsrc := netip.AddrPortFrom(netip.AddrFrom16(r.Src).Unmap(), r.SrcPort)
		rdst := netip.AddrPortFrom(netip.AddrFrom16(r.Dst).Unmap(), r.DstPort)
		// The reply goes back to the source, unless conntrack gave it
		// another port: when two connections share a source port (their
		// destinations differ), the translated one's reply tuple can be
		// the direct one's, and the entry made second is given a port of
		// its own. The conntrack tool's answer is the truth either way.
		if wdst := replyDst(t, node, o); rsrc.String() != want[i] || rdst != wdst {
			t.Errorf("%v: reply %v -> %v, want %s -> %v", src, rsrc, rdst, want[i], wdst)
		}
	}
}

// replyDst asks the conntrack tool in ns for the entry whose original
// tuple is o, and returns the destination of the entry's reply direction.
func replyDst(t *testing.T, ns *netlab.NS, o record.Tuple) netip.AddrPort {
	t.Helper()
	src, dst := netip.AddrFrom16(o.Src).Unmap(), netip.AddrFrom16(o.Dst).Unmap()
	// The family follows from the addresses' form.
	out := ns.Run("conntrack", "-G", "-p", "tcp", "-s", src.String(), "-d", dst.String(),
		"--sport", strconv.Itoa(int(o.SrcPort)), "--dport", strconv.Itoa(int(o.DstPort)))
	for line := range strings.Lines(out) {
		// tcp 6 431999 ESTABLISHED src=A dst=B sport=P dport=Q src=C dst=D sport=R dport=S ...:
		// the second dst and dport are the reply's.
		var addrs, ports []string
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "dst="); ok {
				addrs = append(addrs, v)
			} else if v, ok := strings.CutPrefix(f, "dport="); ok {
				ports = append(ports, v)
			}
		}
		if len(addrs) == 2 && len(ports) == 2 {
			return netip.MustParseAddrPort(net.JoinHostPort(addrs[1], ports[1]))
		}
	}
	t.Fatalf("no conntrack entry for %v -> %v in:\n%s", netip.AddrPortFrom(src, o.SrcPort), netip.AddrPortFrom(dst, o.DstPort), out)
	return netip.AddrPort{}
}

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

// newLookup loads the lookup program with runs of run lookups and slots
// slots, and closes it when the test ends. It skips only when not root.
func newLookup(t *testing.T, run, slots int) *ConntrackLookup {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loading BPF programs needs root")
	}
	l, err := newConntrackLookup(run, slots, testTypes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lookup: %v", err)
		}
	})
	return l
}

// TestLookupCloseDuringLookup closes the lookup while a Lookup is filling
// its part of the mapped array: Close must wait for it before unmapping
// the array, and a Lookup after Close must fail with ErrClosed.
func TestLookupCloseDuringLookup(t *testing.T) {
	l := newLookup(t, 4, 2)
	closeWaits(t, "a Lookup filling the array", func(hold func()) error {
		return l.Lookup(8, func(int) record.Tuple {
			hold()
			return record.Tuple{}
		}, func(int, record.Tuple) {})
	}, l.Close)
	if err := l.Lookup(1, func(int) record.Tuple { return record.Tuple{} }, func(int, record.Tuple) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("Lookup after Close: %v, want ErrClosed", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("Close again: %v", err)
	}
}
