package resolve

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/connection-exporter/connection_exporter/record"
)

// Config configures a Resolver: where the tables are, and which are asked.
type Config struct {
	// ProcFS is the mount point of the host's procfs. Empty means /proc.
	ProcFS string
	// HostNetNS is the path of the host network namespace file; empty
	// means HostNetNSPath.
	HostNetNS string
	// NetNSDirs are directories of bind-mounted namespace files (such as
	// /run/netns) searched when no process of a namespace can be found.
	NetNSDirs []string
	// BPFFS is the BPF filesystem where Cilium pins its maps.
	BPFFS string
	// Kernel, when set, looks connections up in conntrack tables from
	// inside the kernel instead of through netlink.
	Kernel KernelLookup
	// Docker, when set, adds the steps that need Docker's cache: Swarm's
	// load balancers and routing mesh, whose namespaces are in
	// DockerNetNS, and docker-proxy.
	Docker      Docker
	DockerNetNS string
}

// Docker is what resolution needs of Docker's cache (docker.Client).
type Docker interface {
	// OverlayNetwork returns the id of the Swarm overlay network whose
	// load balancer may have translated a connection to an address.
	OverlayNetwork(netip.Addr) (string, bool)
	// IngressAddr returns the routing mesh sandbox's address.
	IngressAddr() (netip.Addr, bool)
	// PublishedTarget returns the container address behind a port
	// published on the host.
	PublishedTarget(netip.AddrPort) (netip.AddrPort, bool)
	// IsBridgeGateway reports whether an address is the host's on a
	// Docker bridge.
	IsBridgeGateway(netip.Addr) bool
}

// Resolver resolves connections through every table that can have
// translated them, in order: the conntrack of the connection's own network
// namespace (sidecar redirects), Swarm's load balancers, Cilium's maps, the
// conntrack of the host namespace (kube-proxy, Docker's DNAT), and, where
// nothing translated a connection, docker-proxy's port bindings; Swarm's
// routing mesh then follows host answers one hop further. It implements
// record.Resolver and is safe for concurrent use.
type Resolver struct {
	ct    *Conntrack
	chain Chain
}

// New returns the Resolver of cfg. It fails when the host's conntrack
// table cannot be queried (which needs CAP_NET_ADMIN).
func New(cfg Config, logger *slog.Logger) (*Resolver, error) {
	ct, err := NewConntrack(ConntrackConfig{ProcFS: cfg.ProcFS, HostNetNS: cfg.HostNetNS, NetNSDirs: cfg.NetNSDirs, Kernel: cfg.Kernel},
		logger.With("component", "conntrack"))
	if err != nil {
		return nil, err
	}
	chain := Chain{ct.OwnNamespace()}
	var last Chain // after the host's conntrack: where it translated nothing
	if d := cfg.Docker; d != nil {
		chain = append(chain,
			ct.Swarm(SwarmConfig{NetNSDir: cfg.DockerNetNS, Network: d.OverlayNetwork}),
			ct.Ingress(IngressConfig{NetNSDir: cfg.DockerNetNS, IngressAddr: d.IngressAddr}))
		last = append(last, DockerProxy(DockerProxyConfig{HostNetNS: ct.HostNetNS(), Target: d.PublishedTarget, Gateway: d.IsBridgeGateway}))
	}
	chain = append(chain,
		NewCilium(CiliumConfig{BPFFS: cfg.BPFFS}, logger.With("component", "cilium")),
		ct.HostNamespace())
	return &Resolver{ct: ct, chain: append(chain, last...)}, nil
}

// Resolve fills out[i] with the destination of qs[i]; out must be at least
// as long as qs.
func (r *Resolver) Resolve(ctx context.Context, qs []record.Query, out []record.Destination) {
	r.chain.Resolve(ctx, qs, out)
}

// Prepare starts reading the tables for about n connections still being
// read, and returns the resolver for them (see Chain.Prepare).
func (r *Resolver) Prepare(ctx context.Context, n int) (record.Resolver, bool) {
	return r.chain.Prepare(ctx, n)
}

// HostNetNS returns the inode of the host network namespace.
func (r *Resolver) HostNetNS() uint32 { return r.ct.HostNetNS() }

// Lookups returns how many connections were looked up in conntrack tables
// since start, by method (Conntrack.Lookups).
func (r *Resolver) Lookups() (kernel, dump, get uint64) { return r.ct.Lookups() }
