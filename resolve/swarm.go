package resolve

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/connection-exporter/connection_exporter/internal/netns"
)

// ResolverSwarmLB names a Docker Swarm load balancer's conntrack in the
// resolver label.
const ResolverSwarmLB = "swarm_lb"

// SwarmConfig configures the Swarm load-balancer step.
type SwarmConfig struct {
	// NetNSDir is Docker's directory of network namespaces
	// (/run/docker/netns, or <exec-root>/netns).
	NetNSDir string
	// ServiceNetwork returns the id of the overlay network on which an
	// address is a service's virtual IP (from the Docker cache).
	ServiceNetwork func(netip.Addr) (string, bool)
}

// Swarm returns the step that resolves connections to Swarm service VIPs
// in the conntrack of their overlay network's load-balancer namespace,
// lb_<first 9 characters of the network id>, where IPVS (with
// net.ipv4.vs.conntrack=1) leaves the translated entry.
func (c *Conntrack) Swarm(cfg SwarmConfig) Step { return swarmLB{c: c, cfg: cfg} }

type swarmLB struct {
	c   *Conntrack
	cfg SwarmConfig
}

// lbNamespace is the load balancer namespace's name for a network id.
func lbNamespace(networkID string) string {
	if len(networkID) > 9 {
		networkID = networkID[:9]
	}
	return "lb_" + networkID
}

func (s swarmLB) Resolve(ctx context.Context, qs []Query, idx []int, out []Result) (rest []int) {
	if s.cfg.ServiceNetwork == nil {
		return idx
	}
	byNet := make(map[string][]int)
	for _, i := range idx {
		if id, ok := s.cfg.ServiceNetwork(qs[i].Dst.Addr()); ok {
			byNet[id] = append(byNet[id], i)
		} else {
			rest = append(rest, i)
		}
	}
	for id, idx := range byNet {
		path := filepath.Join(s.cfg.NetNSDir, lbNamespace(id))
		ino, err := netns.Inode(path)
		if err != nil {
			// This node has no load balancer for the network (yet).
			fail(out, idx, ResolverSwarmLB, fmt.Errorf("load balancer of network %.12s: %w", id, err))
			rest = append(rest, idx...)
			continue
		}
		fd, err := netns.Open(path, ino)
		if err != nil {
			fail(out, idx, ResolverSwarmLB, err)
			rest = append(rest, idx...)
			continue
		}
		rest = append(rest, s.c.lookup(ctx, fd, ino, qs, idx, out, ResolverSwarmLB)...)
		fd.Close()
	}
	return rest
}
