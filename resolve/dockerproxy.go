package resolve

import (
	"context"
	"net/netip"

	"github.com/connection-exporter/connection_exporter/record"
)

// ResolverDockerProxy names Docker's userland proxy in the resolver label.
const ResolverDockerProxy = "docker_proxy"

// DockerProxyConfig configures the Docker userland proxy step.
type DockerProxyConfig struct {
	// HostNetNS is the inode of the host's network namespace, where
	// docker-proxy listens.
	HostNetNS uint32
	// Target returns the container address behind a TCP port published
	// on the host at an address of the host's (from the Docker cache).
	Target func(netip.AddrPort) (netip.AddrPort, bool)
	// Gateway reports whether an address is the host's on a Docker
	// network's bridge, which containers reach the host at (nil: none).
	Gateway func(netip.Addr) bool
}

// DockerProxy returns the step for connections to a port a container
// publishes on the host that no NAT rule translates when dockerd runs with
// its default --userland-proxy=true: from the host to a loopback address,
// and from a container to its own bridge's gateway (dockerd DNATs only
// what comes from other interfaces). A docker-proxy process accepts them
// and opens its own connection to the container (exported as a connection
// of its own). With the proxy off, dockerd DNATs them and the conntrack
// steps answer first. The step needs no table: the proxy's target is the
// container's binding.
func DockerProxy(cfg DockerProxyConfig) Step { return dockerProxy(cfg) }

type dockerProxy DockerProxyConfig

func (p dockerProxy) Resolve(_ context.Context, qs []record.Query, idx []int, out []record.Destination) (rest []int) {
	if p.Target == nil {
		return idx
	}
	rest = idx[:0] // written behind the reading
	// Connections come in runs to the same address: ask the cache once
	// per run.
	var last netip.Addr
	var gateway bool
	for _, i := range idx {
		q := &qs[i]
		a := q.Dst.Addr().Unmap()
		if a != last || !last.IsValid() {
			last, gateway = a, p.Gateway != nil && p.Gateway(a)
		}
		if q.NetNS == p.HostNetNS && a.IsLoopback() || gateway {
			if t, ok := p.Target(q.Dst); ok {
				// An error an earlier step met stays: a later attempt
				// may still find a translation there.
				out[i].Actual, out[i].Resolver = t, ResolverDockerProxy
				continue
			}
		}
		rest = append(rest, i)
	}
	return rest
}
