package resolve

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/connection-exporter/connection_exporter/internal/netns"
	"github.com/connection-exporter/connection_exporter/record"
)

// ResolverSwarmLB names a Docker Swarm load balancer's conntrack in the
// resolver label.
const ResolverSwarmLB = "swarm_lb"

// SwarmConfig configures the Swarm load-balancer step.
type SwarmConfig struct {
	// NetNSDir is Docker's directory of network namespaces
	// (/run/docker/netns, or <exec-root>/netns).
	NetNSDir string
	// Network returns the id of the overlay network whose load balancer
	// may have translated a connection to an address (from the Docker
	// cache): the network on which it is a service's virtual IP, else the
	// overlay network whose subnet holds it, so that a service created
	// after the cache last read its networks resolves all the same.
	Network func(netip.Addr) (string, bool)
}

// Swarm returns the step that resolves connections to addresses of Swarm
// overlay networks in the conntrack of the network's load-balancer
// namespace, lb_<first 9 characters of the network id>, where IPVS (with
// net.ipv4.vs.conntrack=1) leaves the translated entry of a connection to a
// service VIP. A connection to a task's own address finds no entry there
// and goes on to the next step.
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

func (s swarmLB) Resolve(ctx context.Context, qs []record.Query, idx []int, out []record.Destination) (rest []int) {
	if s.cfg.Network == nil {
		return idx
	}
	byNet := make(map[string][]int)
	rest = idx[:0] // written behind the reading; what is appended later fits too
	// Connections come in runs to the same address: ask the cache once
	// per run.
	var last netip.Addr
	var id string
	var ok bool
	for _, i := range idx {
		if a := qs[i].Dst.Addr(); a != last || !last.IsValid() {
			last = a
			id, ok = s.cfg.Network(a)
		}
		if ok {
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
		rest = append(rest, s.c.lookup(ctx, fd, ino, nil, qs, idx, out, ResolverSwarmLB)...)
		fd.Close()
	}
	return rest
}

// Refiner improves answers that earlier steps gave: Chain calls it on every
// query after all steps.
type Refiner interface {
	Refine(ctx context.Context, qs []record.Query, out []record.Destination)
}

// IngressConfig configures the routing mesh step.
type IngressConfig struct {
	// NetNSDir is Docker's directory of network namespaces.
	NetNSDir string
	// IngressAddr returns the address of the ingress_sbox namespace on
	// docker_gwbridge (from the Docker cache).
	IngressAddr func() (netip.Addr, bool)
}

// Ingress returns the step that follows connections to a published port of
// a Swarm service through the routing mesh: the host's conntrack sends them
// to the ingress_sbox namespace, whose conntrack holds the task IPVS chose.
// It refines host conntrack answers whose actual destination is
// ingress_sbox, looking the connection up there as ingress_sbox saw it (the
// host entry's reply tuple, reversed).
func (c *Conntrack) Ingress(cfg IngressConfig) Step { return ingress{c: c, cfg: cfg} }

type ingress struct {
	c   *Conntrack
	cfg IngressConfig
}

// Resolve passes every connection on: the work is done in Refine.
func (ingress) Resolve(_ context.Context, _ []record.Query, idx []int, _ []record.Destination) []int {
	return idx
}

func (s ingress) Refine(ctx context.Context, qs []record.Query, out []record.Destination) {
	if s.cfg.IngressAddr == nil {
		return
	}
	sbox, ok := s.cfg.IngressAddr()
	if !ok {
		return
	}
	var hop []record.Query
	var from []int
	for i := range out {
		if out[i].Resolver == ResolverConntrack && out[i].Actual.Addr() == sbox && out[i].Via.IsValid() {
			hop = append(hop, record.Query{Src: out[i].Via, Dst: out[i].Actual})
			from = append(from, i)
		}
	}
	if len(hop) == 0 {
		return
	}
	path := filepath.Join(s.cfg.NetNSDir, "ingress_sbox")
	hopOut := make([]record.Destination, len(hop))
	idx := make([]int, len(hop))
	for n := range hop {
		hopOut[n] = record.Destination{Actual: hop[n].Dst, Resolver: ResolverNone}
		idx[n] = n
	}
	ino, err := netns.Inode(path)
	if err == nil {
		var fd *os.File
		if fd, err = netns.Open(path, ino); err == nil {
			s.c.lookup(ctx, fd, ino, nil, hop, idx, hopOut, ResolverSwarmLB)
			fd.Close()
		}
	}
	for n, i := range from {
		if err != nil {
			out[i].Err, out[i].ErrResolver = fmt.Errorf("routing mesh: %w", err), ResolverSwarmLB
			continue
		}
		if hopOut[n].Resolver == ResolverSwarmLB {
			out[i].Actual, out[i].Resolver = hopOut[n].Actual, ResolverSwarmLB
		} else if hopOut[n].Err != nil {
			out[i].Err, out[i].ErrResolver = hopOut[n].Err, hopOut[n].ErrResolver
		}
	}
}
