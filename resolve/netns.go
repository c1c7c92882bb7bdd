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

// HostNetNSPath picks the file that names the host network namespace: the
// namespace of <procfs>/1 when it can be read (the exporter runs in a
// container with the host's pid namespace), else the exporter's own
// (it runs in the host namespace, where pid 1 may be unreadable).
func HostNetNSPath(procfs string) string {
	p := filepath.Join(procfs, "1", "ns", "net")
	if f, err := os.Open(p); err == nil {
		f.Close()
		return p
	}
	return "/proc/self/ns/net"
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
