package docker

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/moby/moby/client"
)

// subnet is one subnet of one of the engine's networks.
type subnet struct {
	prefix netip.Prefix
	id     string // the network's
	// overlay is true for a Swarm overlay network other than the routing
	// mesh's ingress: one with a load balancer namespace lb_<id> on each
	// node attached to it.
	overlay bool
}

// networkState is what the cache knows of the engine's networks.
type networkState struct {
	vips, tasks map[netip.Addr]string
	ingress     netip.Addr
	subnets     []subnet
	gateways    map[netip.Addr]string
}

// networks reads the engine's networks: subnets and gateways, Swarm VIPs
// and tasks, the routing mesh sandbox. It fails when the networks cannot be
// listed; what a single network's inspect lacks is left out.
func (c *Client) networks(ctx context.Context) (networkState, error) {
	n := networkState{vips: make(map[netip.Addr]string), tasks: make(map[netip.Addr]string), gateways: make(map[netip.Addr]string)}
	tctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	nets, err := c.api.NetworkList(tctx, client.NetworkListOptions{})
	if err != nil {
		c.fail("inspect", err)
		return n, fmt.Errorf("list networks: %w", err)
	}
	for _, nw := range nets.Items {
		overlay := nw.Driver == "overlay" && !nw.Ingress
		for _, cfg := range nw.IPAM.Config {
			if cfg.Subnet.IsValid() {
				n.subnets = append(n.subnets, subnet{prefix: cfg.Subnet.Masked(), id: nw.ID, overlay: overlay})
			}
			if cfg.Gateway.IsValid() {
				n.gateways[cfg.Gateway.Unmap()] = nw.Driver
			}
		}
		if nw.Driver == "overlay" {
			c.swarmAddresses(tctx, nw.ID, &n)
		}
	}
	n.ingress = c.ingressAddress(tctx)
	return n, nil
}

// swarmAddresses reads, from an overlay network this node is attached to,
// each Swarm service's VIP (with the network) and each task's address (with
// its service).
func (c *Client) swarmAddresses(ctx context.Context, id string, n *networkState) {
	r, err := c.api.NetworkInspect(ctx, id, client.NetworkInspectOptions{Verbose: true})
	if err != nil {
		// A network this node is not attached to has no verbose view.
		return
	}
	for name, svc := range r.Network.Services {
		if svc.VIP.IsValid() {
			n.vips[svc.VIP.Unmap()] = id
		}
		for _, task := range svc.Tasks {
			if task.EndpointIP.IsValid() {
				n.tasks[task.EndpointIP.Unmap()] = name
			}
		}
	}
}

// ingressAddress reads the address of the routing mesh's sandbox on
// docker_gwbridge, where the host's DNAT sends published ports of Swarm
// services. It is invalid when the node is in no Swarm.
func (c *Client) ingressAddress(ctx context.Context) netip.Addr {
	r, err := c.api.NetworkInspect(ctx, "docker_gwbridge", client.NetworkInspectOptions{})
	if err != nil {
		return netip.Addr{}
	}
	if ep, ok := r.Network.Containers["ingress-sbox"]; ok && ep.IPv4Address.IsValid() {
		return ep.IPv4Address.Addr()
	}
	return netip.Addr{}
}

// setNetworksLocked installs n; a container's own address takes precedence
// over a task record of it.
func (c *Client) setNetworksLocked(n networkState) {
	c.vips, c.ingress, c.subnets, c.gateways = n.vips, n.ingress, n.subnets, n.gateways
	for ip, w := range n.tasks {
		if _, ok := c.byIP[ip]; !ok {
			c.byIP[ip] = w
		}
	}
}

// refreshNetworks reads the networks again, a read that starts at start.
func (c *Client) refreshNetworks(ctx context.Context, start time.Time) {
	n, err := c.networks(ctx)
	if err != nil {
		return
	}
	c.mu.Lock()
	c.setNetworksLocked(n)
	c.fresh.networks = start
	c.mu.Unlock()
}
