package docker

import "net/netip"

// Up reports whether the cache follows a running engine now. While it does
// not, what it holds may be stale: containers restarted with the engine can
// have other addresses and namespaces.
func (c *Client) Up() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.up
}

// Known reports whether an engine was ever reached: its containers may be
// behind connections the cache cannot name yet, during a restart too.
func (c *Client) Known() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.synced
}

// Waitable reports whether waiting for the cache is worth it: an engine
// was reached once (it may be restarting now), or the first sync has not
// finished. An engine never reached since start is not waited for.
func (c *Client) Waitable() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.synced || !c.attempted
}

// IngressAddr returns the routing mesh sandbox's address on docker_gwbridge,
// if this node is in a Swarm.
func (c *Client) IngressAddr() (netip.Addr, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.ingress, c.ingress.IsValid()
}

// ByNetNS returns the container whose network namespace is ino.
func (c *Client) ByNetNS(ino uint32) (Container, bool) {
	return c.find(func() *Container { return c.byNetNS[ino] })
}

// ByID returns a container by its full id.
func (c *Client) ByID(id string) (Container, bool) {
	return c.find(func() *Container { return c.byID[id] })
}

// find returns a copy of the container that look finds under the lock.
func (c *Client) find(look func() *Container) (Container, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	ct := look()
	if ct == nil {
		return Container{}, false
	}
	return *ct, true
}

// PublishedTarget returns the container address and port behind a TCP
// port published on the host, for a connection from the host to dst, one
// of the host's own addresses: the binding to dst's address, else the one
// to all addresses of its family. It reports false when no container of
// a single network publishes that port there.
func (c *Client) PublishedTarget(dst netip.AddrPort) (netip.AddrPort, bool) {
	a := dst.Addr().Unmap()
	all := netip.IPv4Unspecified()
	if a.Is6() {
		all = netip.IPv6Unspecified()
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, host := range []netip.Addr{a, all} {
		if t, ok := c.published[netip.AddrPortFrom(host, dst.Port())]; ok {
			return t.addr, true
		}
	}
	return netip.AddrPort{}, false
}

// IsBridgeGateway reports whether a is the gateway address of one of the
// engine's bridge networks: the host's address on the network's bridge.
func (c *Client) IsBridgeGateway(a netip.Addr) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.gateways[a.Unmap()] == "bridge"
}

// AddrKind says what an address is to the engine.
type AddrKind uint8

// Kinds of addresses, as Workload tells them.
const (
	// AddrOther is outside every network of the engine.
	AddrOther AddrKind = iota
	// AddrContainer is a container's or a Swarm task's.
	AddrContainer
	// AddrInfra is a Swarm service VIP, a network's gateway or the routing
	// mesh sandbox's: no container holds it.
	AddrInfra
	// AddrLocalSubnet is in the subnet of a network of this host's
	// (bridge, macvlan...) and unknown: a container that is starting.
	AddrLocalSubnet
	// AddrOverlaySubnet is in a Swarm overlay network's subnet and
	// unknown: a task starting here or elsewhere, or a service whose VIP
	// the cache has not read yet.
	AddrOverlaySubnet
)

// Workload names the container or Swarm task at addr, and says what kind
// of address it is.
func (c *Client) Workload(addr netip.Addr) (string, AddrKind) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	addr = addr.Unmap()
	if w, ok := c.byIP[addr]; ok {
		return w, AddrContainer
	}
	_, vip := c.vips[addr]
	if _, gw := c.gateways[addr]; vip || gw || addr == c.ingress {
		return "", AddrInfra
	}
	for _, s := range c.subnets {
		if s.prefix.Contains(addr) {
			if s.overlay {
				return "", AddrOverlaySubnet
			}
			return "", AddrLocalSubnet
		}
	}
	return "", AddrOther
}

// OverlayNetwork returns the id of the Swarm overlay network whose load
// balancer may have translated a connection to addr: the network on which
// addr is a service's VIP, else the overlay network whose subnet holds it.
// The subnet answers for services whose VIP the cache has not read yet.
func (c *Client) OverlayNetwork(addr netip.Addr) (string, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	addr = addr.Unmap()
	if id, ok := c.vips[addr]; ok {
		return id, true
	}
	for _, s := range c.subnets {
		if s.overlay && s.prefix.Contains(addr) {
			return s.id, true
		}
	}
	return "", false
}
