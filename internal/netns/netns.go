// Package netns finds and opens network namespaces by inode: through the
// processes that live in them (/proc/<pid>/ns/net) and through bind mounts
// (/run/netns, /run/docker/netns). It also runs functions inside a
// namespace on a thread that moves back afterwards (Do), the one way the
// exporter and its tests enter namespaces.
package netns

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Inode returns the inode of the namespace file at path.
func Inode(path string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return uint32(st.Ino), nil
}

// Scan indexes network namespaces by inode: the bind mounts in dirs first,
// then one process of each namespace found under procfs. Entries that
// cannot be read are skipped.
func Scan(procfs string, dirs []string) map[uint32]string {
	found := make(map[uint32]string)
	for _, dir := range dirs {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			p := filepath.Join(dir, e.Name())
			if ino, err := Inode(p); err == nil {
				found[ino] = p
			}
		}
	}
	entries, _ := os.ReadDir(procfs)
	for _, e := range entries {
		if _, err := strconv.ParseUint(e.Name(), 10, 32); err != nil {
			continue
		}
		p := filepath.Join(procfs, e.Name(), "ns", "net")
		target, err := os.Readlink(p)
		if err != nil {
			continue
		}
		ino, ok := ParseLink(target)
		if _, seen := found[ino]; ok && !seen {
			found[ino] = p
		}
	}
	return found
}

// ParseLink parses a namespace link target of the form "net:[4026531840]".
func ParseLink(target string) (uint32, bool) {
	ino, ok := LinkInode(target, "net")
	if !ok || ino > 1<<32-1 {
		return 0, false
	}
	return uint32(ino), true
}

// LinkInode parses a /proc link target of the form "kind:[inode]", as
// namespace files ("net:[4026531840]") and socket descriptors
// ("socket:[123]") read.
func LinkInode(target, kind string) (uint64, bool) {
	rest, ok := strings.CutPrefix(target, kind+":[")
	if !ok {
		return 0, false
	}
	rest, ok = strings.CutSuffix(rest, "]")
	if !ok {
		return 0, false
	}
	ino, err := strconv.ParseUint(rest, 10, 64)
	if err != nil {
		return 0, false
	}
	return ino, true
}

// Open opens path and checks that it is the namespace ino: a pid can be
// reused by a process in another namespace.
func Open(path string, ino uint32) (*os.File, error) {
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
