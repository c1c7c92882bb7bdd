// Package resolve owns finding where a connection really goes: lookups of a
// connection's original tuple in the conntrack table of its own network
// namespace (sidecar redirects) and of the host namespace (kube-proxy,
// Docker DNAT), each through a netlink socket opened in that namespace.
package resolve

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// netnsInode returns the inode of the network namespace file at path.
func netnsInode(path string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return uint32(st.Ino), nil
}

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
		if fd, err := openNetNS(p, ino); err == nil {
			return fd, nil
		}
	}
	if f.scanned == nil {
		f.scan()
	}
	if p, ok := f.scanned[ino]; ok {
		return openNetNS(p, ino)
	}
	return nil, fmt.Errorf("netns %d: %w", ino, errNetNSGone)
}

// scan indexes the namespaces of all processes and bind mounts by inode.
func (f *nsFinder) scan() {
	f.scanned = make(map[uint32]string)
	for _, dir := range f.extra {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			p := filepath.Join(dir, e.Name())
			if ino, err := netnsInode(p); err == nil {
				f.scanned[ino] = p
			}
		}
	}
	entries, _ := os.ReadDir(f.procfs)
	for _, e := range entries {
		if _, err := strconv.ParseUint(e.Name(), 10, 32); err != nil {
			continue
		}
		p := filepath.Join(f.procfs, e.Name(), "ns", "net")
		target, err := os.Readlink(p)
		if err != nil {
			continue
		}
		ino, ok := parseNSLink(target)
		if _, seen := f.scanned[ino]; ok && !seen {
			f.scanned[ino] = p
		}
	}
}

// parseNSLink parses a namespace link target of the form "net:[4026531840]".
func parseNSLink(target string) (uint32, bool) {
	rest, ok := strings.CutPrefix(target, "net:[")
	if !ok {
		return 0, false
	}
	rest, ok = strings.CutSuffix(rest, "]")
	if !ok {
		return 0, false
	}
	ino, err := strconv.ParseUint(rest, 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(ino), true
}

// openNetNS opens path and checks that it is the namespace ino: a pid can be
// reused by a process in another namespace.
func openNetNS(path string, ino uint32) (*os.File, error) {
	fd, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(fd.Fd()), &st); err != nil {
		fd.Close()
		return nil, err
	}
	if uint32(st.Ino) != ino {
		fd.Close()
		return nil, fmt.Errorf("%s is netns %d, not %d", path, st.Ino, ino)
	}
	return fd, nil
}
