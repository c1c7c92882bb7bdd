package netlab

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
)

// Sidecar is an Istio-style proxy inside a pod namespace: iptables in the
// namespace redirects every outbound TCP connection not owned by the proxy's
// uid to the proxy's port on loopback; the proxy reads the original
// destination and dials it itself.
type Sidecar struct {
	// Addr is where the proxy listens (127.0.0.1:port).
	Addr netip.AddrPort
	// Upstreams maps the address of each application connection the proxy
	// accepted to the local address of the connection it opened onwards.
	mu        sync.Mutex
	upstreams map[netip.AddrPort]netip.AddrPort
}

// Upstream returns the local address of the proxy's onward connection for
// the application connection from client.
func (s *Sidecar) Upstream(client netip.AddrPort) (netip.AddrPort, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.upstreams[client]
	return a, ok
}

// SidecarUID is the uid the proxy runs as and iptables exempts (Istio's).
const SidecarUID = 1337

// Sidecar starts a proxy on port inside n and installs the redirect.
func (n *NS) Sidecar(port uint16) *Sidecar {
	t := n.lab.t
	t.Helper()
	s := &Sidecar{
		Addr:      netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port),
		upstreams: make(map[netip.AddrPort]netip.AddrPort),
	}
	var ln net.Listener
	if err := n.DoAs(SidecarUID, func() (err error) {
		ln, err = net.Listen("tcp4", s.Addr.String())
		return err
	}); err != nil {
		t.Fatalf("sidecar listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	n.Run("iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "!", "-d", "127.0.0.0/8",
		"-m", "owner", "!", "--uid-owner", fmt.Sprint(SidecarUID), "-j", "REDIRECT", "--to-ports", fmt.Sprint(port))
	go Proxy(ln, func(addr string) (up net.Conn, err error) {
		err = n.DoAs(SidecarUID, func() (err error) {
			up, err = net.Dial("tcp4", addr)
			return err
		})
		return up, err
	}, func(client, upstream netip.AddrPort) {
		s.mu.Lock()
		s.upstreams[client] = upstream
		s.mu.Unlock()
	})
	return s
}

// Proxy accepts redirected connections on ln until it is closed, dials
// each one's original destination with dial, reports the pair to seen (if
// not nil), and relays until either side closes. It is the whole of a
// sidecar proxy, for tests that run it in a process of its own.
func Proxy(ln net.Listener, dial func(addr string) (net.Conn, error), seen func(client, upstream netip.AddrPort)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			orig, err := OriginalDst(c)
			if err != nil {
				return
			}
			up, err := dial(orig)
			if err != nil {
				return
			}
			defer up.Close()
			if seen != nil {
				seen(c.RemoteAddr().(*net.TCPAddr).AddrPort(), up.LocalAddr().(*net.TCPAddr).AddrPort())
			}
			go func() {
				io.Copy(up, c)
				up.(*net.TCPConn).CloseWrite()
			}()
			io.Copy(io.Discard, up)
		}()
	}
}

// AwaitUpstream is Upstream, waiting for the proxy to dial onwards.
func (s *Sidecar) AwaitUpstream(client netip.AddrPort) (netip.AddrPort, bool) {
	return await(func() (netip.AddrPort, bool) { return s.Upstream(client) })
}
