// Package naming owns deciding who opened a connection and which workload
// answers at its destination, from the caches of the kubelet's pods and of
// Docker's containers, and when such an answer is final.
//
// The order: a Kubernetes pod first (by the container id in the process's
// cgroup, else by the pod's network namespace), then a Docker container (by
// network namespace, else by the container id in the cgroup), else the
// process. An answer is final once every cache that could change it has
// caught up with the moment the connection was first seen; until then the
// Policy says which cache it waits for and asks that cache to catch up
// (Request*), so that the name arrives at once rather than at the cache's
// next periodic refresh.
package naming

import (
	"context"
	"net/netip"
	"time"

	"github.com/connection-exporter/connection_exporter/docker"
	"github.com/connection-exporter/connection_exporter/internal/cgroup"
	"github.com/connection-exporter/connection_exporter/kube"
	"github.com/connection-exporter/connection_exporter/record"
)

// Pods is what the policy needs of the kubelet's pod cache (kube.Client).
type Pods interface {
	Container(id string) (kube.Pod, string, bool)
	PodByUID(uid string) (kube.Pod, bool)
	PodByNetNS(ino uint32) (kube.Pod, bool)
	PodByIP(a netip.Addr) (kube.Pod, bool)
	// Fresh reports whether the cache holds a list fetched after t.
	Fresh(t time.Time) bool
	// Waitable reports whether the cache is worth waiting for.
	Waitable() bool
	// Request asks for a fetch soon; it never blocks.
	Request()
	// Settle waits for the fetches asked for, or ctx.
	Settle(ctx context.Context)
}

// Containers is what the policy needs of Docker's cache (docker.Client).
type Containers interface {
	ByNetNS(ino uint32) (docker.Container, bool)
	ByID(id string) (docker.Container, bool)
	Workload(a netip.Addr) (string, docker.AddrKind)
	// Up reports whether the cache follows a running engine now.
	Up() bool
	// Waitable reports whether the cache is worth waiting for.
	Waitable() bool
	// ContainersFresh and NetworksFresh report whether the containers,
	// or the networks, were read after t; Absent whether the engine said
	// that id is none of its containers.
	ContainersFresh(t time.Time) bool
	NetworksFresh(t time.Time) bool
	Absent(id string) bool
	// Request* ask for refreshes soon; they never block.
	RequestContainers()
	RequestNetworks()
	RequestID(id string)
	// Settle waits for the refreshes asked for, or ctx.
	Settle(ctx context.Context)
}

// Config configures a Policy.
type Config struct {
	// ProcFS is the host's procfs, where processes' cgroups are read.
	// Empty means /proc.
	ProcFS string
	// HostNetNS is the inode of the host's network namespace.
	HostNetNS uint32
	// Pods and Containers are the caches; nil when the kubelet, or
	// Docker, is not used.
	Pods       Pods
	Containers Containers
}

// Policy names connections; it implements collector.Namer and
// collector.Settler. It is safe for concurrent use if its caches are.
type Policy struct {
	procfs     string
	hostNS     uint32
	pods       Pods
	containers Containers
}

// New returns the Policy of cfg.
func New(cfg Config) *Policy {
	if cfg.ProcFS == "" {
		cfg.ProcFS = "/proc"
	}
	return &Policy{procfs: cfg.ProcFS, hostNS: cfg.HostNetNS, pods: cfg.Pods, containers: cfg.Containers}
}

// process is the cgroup of a connection's process, read once and only
// when needed.
type process struct {
	procfs string
	pid    uint32
	read   bool
	cg     cgroup.Container
	err    error // the cgroup could not be read: the process is gone
}

func (p *process) cgroup() (cgroup.Container, error) {
	if !p.read {
		p.cg, p.err = cgroup.Read(p.procfs, p.pid)
		p.read = true
	}
	return p.cg, p.err
}

// Owner names who opened c, first seen at since, and says which caches the
// answer waits for.
func (p *Policy) Owner(c *record.Conn, since time.Time) (record.Owner, record.Wait) {
	best := record.Owner{Workload: c.Command()}
	host := c.NetNS == p.hostNS
	proc := &process{procfs: p.procfs, pid: c.PID}
	var wait record.Wait

	if k := p.pods; k != nil {
		cg, err := proc.cgroup()
		if err == nil && cg.ID != "" {
			if pod, name, ok := k.Container(cg.ID); ok {
				return podOwner(pod, name), 0
			}
		}
		if err == nil && cg.PodUID != "" {
			// A pod's container that the last list lacks: a new pod, or
			// a new container of a pod listed (a restart). The cgroup
			// says that the pod exists: the kubelet lists it, and names
			// the container in its status once it has seen it start,
			// however fresh the last list. Only the timeout ends this.
			if pod, listed := k.PodByUID(cg.PodUID); listed {
				best = podOwner(pod, "")
			}
			if k.Waitable() {
				k.Request()
				return best, record.WaitKubelet
			}
			return best, 0
		}
		if !host {
			if pod, ok := k.PodByNetNS(c.NetNS); ok {
				// A process gone, or one that entered a pod's namespace
				// from outside its containers.
				return podOwner(pod, ""), 0
			}
			if err != nil && k.Waitable() && !k.Fresh(since) {
				// Gone, from a namespace that may be a new pod's.
				k.Request()
				wait |= record.WaitKubelet
			}
		}
	}

	if d := p.containers; d != nil {
		if !host {
			if d.Waitable() && !d.Up() {
				// The engine is away or restarting: the cache may name a
				// new container after an old one that had its namespace.
				return best, wait | record.WaitDocker
			}
			if ct, ok := d.ByNetNS(c.NetNS); ok {
				return containerOwner(ct), 0
			}
		}
		cg, err := proc.cgroup()
		switch {
		case err == nil && cg.ID != "":
			if ct, ok := d.ByID(cg.ID); ok {
				return containerOwner(ct), 0
			}
			if d.Waitable() && !d.Absent(cg.ID) {
				// A container that started since the cache heard of it
				// (a host-network one, or an event on its way).
				d.RequestID(cg.ID)
				wait |= record.WaitDocker
			}
		case err != nil && !host:
			// Gone, from a namespace that may be a new container's.
			if d.Waitable() && !d.ContainersFresh(since) {
				d.RequestContainers()
				wait |= record.WaitDocker
			}
		}
	}
	return best, wait
}

// DestinationWorkload names the workload at addr, for a connection first
// seen at since, and says which caches the answer waits for.
func (p *Policy) DestinationWorkload(addr netip.AddrPort, since time.Time) (string, record.Wait) {
	a := addr.Addr().Unmap()
	if a.IsLoopback() || a.IsUnspecified() || a.IsLinkLocalUnicast() {
		return "", 0 // never a pod's or a container network's
	}
	if k := p.pods; k != nil {
		if pod, ok := k.PodByIP(a); ok {
			return pod.Workload, 0
		}
	}
	var wait record.Wait
	if d := p.containers; d != nil {
		w, kind := d.Workload(a)
		switch kind {
		case docker.AddrContainer:
			return w, 0
		case docker.AddrInfra:
			return "", 0 // a VIP, a gateway: no workload of its own
		case docker.AddrLocalSubnet, docker.AddrOverlaySubnet:
			// A container starting, or a task or service the cache has
			// not read yet. While the engine is away nothing is learnt.
			if d.Waitable() && d.Up() {
				if !d.ContainersFresh(since) {
					d.RequestContainers()
					wait |= record.WaitDocker
				}
				if kind == docker.AddrOverlaySubnet && !d.NetworksFresh(since) {
					d.RequestNetworks()
					wait |= record.WaitDocker
				}
			}
			return "", wait
		}
	}
	if k := p.pods; k != nil && k.Waitable() && !k.Fresh(since) {
		// A pod of this node that started since the last list, or an
		// address that no list will name: only a list after since tells.
		k.Request()
		wait |= record.WaitKubelet
	}
	return "", wait
}

// Settle waits for the refreshes that the answers asked for, or ctx.
func (p *Policy) Settle(ctx context.Context) {
	// The caches refresh in the background on their own: waiting for one
	// after the other takes as long as waiting for both at once.
	if p.pods != nil {
		p.pods.Settle(ctx)
	}
	if p.containers != nil {
		p.containers.Settle(ctx)
	}
}

func podOwner(p kube.Pod, container string) record.Owner {
	return record.Owner{Container: container, Pod: p.Name, Namespace: p.Namespace, Workload: p.Workload}
}

func containerOwner(ct docker.Container) record.Owner {
	return record.Owner{Container: ct.Name, Workload: ct.Workload()}
}
