package netlab

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Server accepts TCP connections and records, for each, the peer that
// connected and the local address that accepted it: the truth that tests
// compare the exporter's answers with.
type Server struct {
	mu   sync.Mutex
	seen map[netip.AddrPort]netip.AddrPort // client address -> accepting address
}

// Serve accepts on ln until it is closed, holding each connection open
// until the peer closes it.
func Serve(ln net.Listener) *Server {
	s := &Server{seen: make(map[netip.AddrPort]netip.AddrPort)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
			local := c.LocalAddr().(*net.TCPAddr).AddrPort()
			s.mu.Lock()
			s.seen[unmap(peer)] = unmap(local)
			s.mu.Unlock()
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	return s
}

// CloseAccepted accepts on ln until it is closed and closes each connection
// at once: the far end of connect/close loops.
func CloseAccepted(ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// Accepted returns the accepting address of the connection from client.
func (s *Server) Accepted(client netip.AddrPort) (netip.AddrPort, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.seen[unmap(client)]
	return a, ok
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// Backend is one pod behind the service address.
type Backend struct {
	NS           *NS
	Addr4, Addr6 netip.Addr
	// Server is the in-process server started by KubeProxy, nil otherwise.
	Server *Server
}

// Cluster is a Kubernetes node in miniature: a "node" namespace routes
// between a client pod namespace and three backend pod namespaces, and
// translates a service address with kube-proxy's iptables chains
// (KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-*, random choice by statistic).
type Cluster struct {
	Node, Client *NS
	Backends     []*Backend
	// VIP4:Port and [VIP6]:Port are the service. On the same addresses,
	// RefusedPort is translated to a port of the first backend where
	// nothing listens (BackendPort+1), and DroppedPort to one whose packets
	// the backend drops (BackendPort+2).
	VIP4, VIP6                     netip.Addr
	Port, RefusedPort, DroppedPort uint16
	// BackendPort is where the backends listen.
	BackendPort uint16
}

// KubeProxy builds a Cluster whose backends run a Server each, in the
// calling process.
func (l *Lab) KubeProxy() *Cluster {
	l.t.Helper()
	c := l.KubeProxyTopology()
	for _, b := range c.Backends {
		b.Server = Serve(b.NS.Listen("tcp", fmt.Sprintf(":%d", c.BackendPort)))
	}
	return c
}

// KubeProxyTopology builds a Cluster without starting servers: the caller
// runs its own in the backends' namespaces, on BackendPort.
func (l *Lab) KubeProxyTopology() *Cluster {
	l.t.Helper()
	c := &Cluster{
		Node:        l.NetNS("node"),
		Client:      l.NetNS("client"),
		VIP4:        netip.MustParseAddr("10.77.0.10"),
		VIP6:        netip.MustParseAddr("fd77::10"),
		Port:        80,
		RefusedPort: 81,
		DroppedPort: 82,
		BackendPort: 8080,
	}
	c.Node.Run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	l.pod(c.Node, c.Client, 1)
	for i := range 3 {
		ns := l.NetNS(fmt.Sprintf("backend%d", i+1))
		a4, a6 := l.pod(c.Node, ns, 11+i)
		c.Backends = append(c.Backends, &Backend{NS: ns, Addr4: a4, Addr6: a6})
	}
	for _, family := range []struct {
		cmd string
		vip netip.Addr
		to  func(*Backend) string
	}{
		{"iptables", c.VIP4, func(b *Backend) string { return b.Addr4.String() }},
		{"ip6tables", c.VIP6, func(b *Backend) string { return "[" + b.Addr6.String() + "]" }},
	} {
		ipt := func(args ...string) { c.Node.Run(family.cmd, append([]string{"-w", "-t", "nat"}, args...)...) }
		ipt("-N", "KUBE-SERVICES")
		ipt("-A", "PREROUTING", "-j", "KUBE-SERVICES")
		ipt("-A", "OUTPUT", "-j", "KUBE-SERVICES")
		ipt("-N", "KUBE-SVC-DEMO")
		ipt("-A", "KUBE-SERVICES", "-d", family.vip.String(), "-p", "tcp", "--dport", fmt.Sprint(c.Port), "-j", "KUBE-SVC-DEMO")
		for i, b := range c.Backends {
			sep := fmt.Sprintf("KUBE-SEP-DEMO%d", i+1)
			ipt("-N", sep)
			ipt("-A", sep, "-p", "tcp", "-j", "DNAT", "--to-destination", fmt.Sprintf("%s:%d", family.to(b), c.BackendPort))
			rule := []string{"-A", "KUBE-SVC-DEMO"}
			if left := len(c.Backends) - i; left > 1 {
				rule = append(rule, "-m", "statistic", "--mode", "random", "--probability", fmt.Sprintf("%.5f", 1/float64(left)))
			}
			ipt(append(rule, "-j", sep)...)
		}
		for i, port := range []uint16{c.RefusedPort, c.DroppedPort} {
			ipt("-A", "KUBE-SERVICES", "-d", family.vip.String(), "-p", "tcp", "--dport", fmt.Sprint(port),
				"-j", "DNAT", "--to-destination", fmt.Sprintf("%s:%d", family.to(c.Backends[0]), int(c.BackendPort)+1+i))
		}
		c.Backends[0].NS.Run(family.cmd, "-w", "-A", "INPUT", "-p", "tcp", "--dport", fmt.Sprint(c.BackendPort+2), "-j", "DROP")
	}
	return c
}

// pod joins ns to the node on subnet n (10.77.n.0/24, fd77:n::/64) with a
// default route through the node, and returns the pod's addresses.
func (l *Lab) pod(node, ns *NS, n int) (netip.Addr, netip.Addr) {
	a4 := netip.MustParseAddr(fmt.Sprintf("10.77.%d.2", n))
	a6 := netip.MustParseAddr(fmt.Sprintf("fd77:%d::2", n))
	l.Link(ns, []string{a4.String() + "/24", a6.String() + "/64"},
		node, []string{fmt.Sprintf("10.77.%d.1/24", n), fmt.Sprintf("fd77:%d::1/64", n)})
	ns.Run("ip", "route", "add", "default", "via", fmt.Sprintf("10.77.%d.1", n))
	ns.Run("ip", "-6", "route", "add", "default", "via", fmt.Sprintf("fd77:%d::1", n))
	return a4, a6
}

// Backend returns the backend whose address is a.
func (c *Cluster) Backend(a netip.Addr) *Backend {
	for _, b := range c.Backends {
		if b.Addr4 == a.Unmap() || b.Addr6 == a {
			return b
		}
	}
	return nil
}

// Accepted returns the address of the backend that accepted the connection
// from client, asking every backend's server.
func (c *Cluster) Accepted(client netip.AddrPort) (netip.AddrPort, bool) {
	for _, b := range c.Backends {
		if a, ok := b.Server.Accepted(client); ok {
			return a, true
		}
	}
	return netip.AddrPort{}, false
}

// await polls fn for up to two seconds: servers record a connection
// shortly after the client sees it established.
func await(fn func() (netip.AddrPort, bool)) (netip.AddrPort, bool) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		if a, ok := fn(); ok || time.Now().After(deadline) {
			return a, ok
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// AwaitAccepted is Accepted, waiting for the backend to record client.
func (c *Cluster) AwaitAccepted(client netip.AddrPort) (netip.AddrPort, bool) {
	return await(func() (netip.AddrPort, bool) { return c.Accepted(client) })
}

// All returns how many connections each accepting address took.
func (s *Server) All() map[netip.AddrPort]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[netip.AddrPort]int)
	for _, a := range s.seen {
		out[a]++
	}
	return out
}
