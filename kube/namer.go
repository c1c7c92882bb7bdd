package kube

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/connection-exporter/connection_exporter/internal/netns"
)

// Owner is who runs a process, as Kubernetes names it.
type Owner struct {
	Namespace, Pod, Container, Workload string
}

// Namer names processes and addresses from a Client's pods. Its methods
// read one small procfs file at most and never wait on the kubelet; they
// are safe for concurrent use.
type Namer struct {
	client *Client
	procfs string

	mu    sync.RWMutex
	netns map[uint32]string // network namespace inode -> pod uid
}

// NewNamer returns a Namer reading process cgroups under procfs.
func NewNamer(c *Client, procfs string) *Namer {
	if procfs == "" {
		procfs = "/proc"
	}
	return &Namer{client: c, procfs: procfs}
}

// Owner names the pod container that process pid runs in, or, when the
// process is gone, the pod whose network namespace netns is (without a
// container). It reports false for host processes and containers the last
// pod list does not know; for a container started in a pod that list
// holds, the Owner then names the pod alone, the best name until the next
// list names the container.
func (n *Namer) Owner(pid, netns uint32) (Owner, bool) {
	var cg CgroupContainer
	inContainer := false
	if pid != 0 {
		cg, inContainer = ProcessCgroup(n.procfs, pid)
	}
	return n.OwnerOf(cg, inContainer, netns)
}

// OwnerOf is Owner for a process whose cgroup the caller read already
// (ProcessCgroup): cg is the container it names, if inContainer.
func (n *Namer) OwnerOf(cg CgroupContainer, inContainer bool, netns uint32) (Owner, bool) {
	if inContainer {
		if p, name, ok := n.client.Container(cg.ID); ok {
			return Owner{Namespace: p.Namespace, Pod: p.Name, Container: name, Workload: p.Workload}, true
		}
		// A container started since the last refresh: its pod may be known.
		if p, ok := n.client.PodByUID(cg.PodUID); ok && cg.PodUID != "" {
			return Owner{Namespace: p.Namespace, Pod: p.Name, Workload: p.Workload}, false
		}
	}
	n.mu.RLock()
	uid, ok := n.netns[netns]
	n.mu.RUnlock()
	if p, found := n.client.PodByUID(uid); ok && found {
		return Owner{Namespace: p.Namespace, Pod: p.Name, Workload: p.Workload}, true
	}
	return Owner{}, false
}

// Synced reports whether a pod list was ever fetched.
func (n *Namer) Synced() bool {
	n.client.mu.RLock()
	defer n.client.mu.RUnlock()
	return !n.client.fetched.IsZero()
}

// Workload names the workload of the pod of this node at addr, if any.
func (n *Namer) Workload(addr netip.Addr) (string, bool) {
	p, ok := n.client.PodByIP(addr.Unmap().String())
	if !ok {
		return "", false
	}
	return p.Workload, true
}

// Run indexes pods' network namespaces every interval until ctx is done,
// so that connections of processes that have exited are still named by
// their pod.
func (n *Namer) Run(ctx context.Context, interval time.Duration) {
	for {
		n.Index()
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// Index maps the network namespace of every process in a pod's cgroup to
// that pod (host-network pods excluded: they share the host's).
func (n *Namer) Index() {
	index := make(map[uint32]string)
	entries, _ := os.ReadDir(n.procfs)
	for _, e := range entries {
		pid, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil {
			continue
		}
		cg, ok := ProcessCgroup(n.procfs, uint32(pid))
		if !ok || cg.PodUID == "" {
			continue
		}
		p, ok := n.client.PodByUID(cg.PodUID)
		if !ok || p.HostNetwork {
			continue
		}
		target, err := os.Readlink(filepath.Join(n.procfs, e.Name(), "ns", "net"))
		if err != nil {
			continue
		}
		if ino, ok := netns.ParseLink(target); ok {
			index[ino] = cg.PodUID
		}
	}
	n.mu.Lock()
	n.netns = index
	n.mu.Unlock()
}
