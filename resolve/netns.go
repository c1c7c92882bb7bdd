// Package resolve owns finding where a connection really goes: a chain of
// steps that look a connection's original tuple up in the conntrack table of
// its own network namespace (sidecar redirects), in a Swarm load balancer's,
// in Cilium's maps and in the host namespace's table (kube-proxy, Docker
// DNAT). Conntrack tables are read by lookups from inside the kernel
// (KernelLookup) where the kernel offers them, else through netlink sockets
// opened in their namespaces; either way an empty table is skipped after a
// netlink count of its entries.
package resolve

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/connection-exporter/connection_exporter/internal/netns"
)

// HostNetNSPath is the default file of the host network namespace: the
// exporter's own. Every documented way to run it puts it there (docker run
// --network host, hostNetwork: true in the DaemonSet), and a node whose
// network is a namespace of its own (a nested node, some sandboxes) has it
// there too, where pid 1's may be another.
const HostNetNSPath = "/proc/self/ns/net"

// CheckHostNetNS compares the namespace chosen as the host's, at path, with
// pid 1's under procfs, and returns a warning when pid 1's can be read and
// is another: the exporter may not run in the host's network namespace, or
// the host's network is in a namespace of its own. It returns "" when they
// agree or pid 1's cannot be read (as on a host whose init hides it).
func CheckHostNetNS(path, procfs string) string {
	chosen, err := netns.Inode(path)
	if err != nil {
		return ""
	}
	init, err := netns.Inode(filepath.Join(procfs, "1", "ns", "net"))
	if err != nil || init == chosen {
		return ""
	}
	return fmt.Sprintf("the host network namespace taken (%s, inode %d) is not pid 1's (inode %d): run the exporter in the host's network namespace (docker run --network host, hostNetwork: true), or name the host's with --path.host-netns", path, chosen, init)
}

// errNetNSGone is returned when no process or bind mount holds a namespace.
var errNetNSGone = errors.New("network namespace not found")

// nsFinder opens network namespaces by inode. It is used within one scrape
// and is not safe for concurrent use.
type nsFinder struct {
	procfs  string
	extra   []string          // directories of bind-mounted namespaces
	scanned map[uint32]string // inode -> path, filled by one scan on a miss
}

// open returns an open file of the network namespace ino, trying the
// process that opened the connection first.
func (f *nsFinder) open(ino, pid uint32) (*os.File, error) {
	if pid != 0 {
		p := filepath.Join(f.procfs, strconv.FormatUint(uint64(pid), 10), "ns", "net")
		if fd, err := netns.Open(p, ino); err == nil {
			return fd, nil
		}
	}
	if f.scanned == nil {
		f.scanned = netns.Scan(f.procfs, f.extra)
	}
	if p, ok := f.scanned[ino]; ok {
		return netns.Open(p, ino)
	}
	return nil, fmt.Errorf("netns %d: %w", ino, errNetNSGone)
}
