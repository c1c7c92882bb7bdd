// Package cgroup owns reading which container, and which Kubernetes pod, a
// process runs in from its cgroup path (/proc/<pid>/cgroup): the one tie
// between a process and its container that holds for every runtime and
// cgroup driver, and for containers that share the host's network
// namespace. Both the kubelet's and Docker's naming use it.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Container is what a cgroup path says about a container.
type Container struct {
	// PodUID is the pod's uid in its canonical dashed form, empty when the
	// path is not under a kubepods hierarchy.
	PodUID string
	// ID is the 64-hex-digit container id, as the runtime reports it
	// without its "containerd://" style prefix; empty when the path names
	// no container.
	ID string
}

var (
	// A container id: 64 hexadecimal digits.
	idRE = `([0-9a-f]{64})`
	// The last path element holding a container id, for every runtime and
	// driver: cgroupfs ("<id>"), systemd ("docker-<id>.scope",
	// "cri-containerd-<id>.scope", "crio-<id>.scope"), and cri-o's
	// cgroupfs ("crio-<id>"). conmon's cgroup ("crio-conmon-<id>.scope")
	// holds the monitor, not the container.
	containerRE = regexp.MustCompile(`^(?:(?:docker|cri-containerd|crio|containerd)-)?` + idRE + `(?:\.scope)?$`)
	// A pod element: "pod<uid>" (cgroupfs) or
	// "kubepods-<qos>-pod<uid_with_underscores>.slice" (systemd).
	podRE = regexp.MustCompile(`^(?:[a-z]+(?:-[a-z]+)*-)?pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$`)
)

// ParsePath finds a container in one cgroup path, such as
// "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f2e...slice/cri-containerd-<id>.scope".
// It reports false when the path names no container.
func ParsePath(path string) (Container, bool) {
	var c Container
	elems := strings.Split(path, "/")
	for i := len(elems) - 1; i >= 0; i-- {
		e := elems[i]
		if c.ID == "" {
			if strings.HasPrefix(e, "crio-conmon-") {
				return Container{}, false
			}
			if m := containerRE.FindStringSubmatch(e); m != nil {
				c.ID = m[1]
			}
			continue
		}
		if m := podRE.FindStringSubmatch(e); m != nil {
			c.PodUID = strings.ReplaceAll(m[1], "_", "-")
			break
		}
	}
	return c, c.ID != ""
}

// Parse reads a /proc/<pid>/cgroup file (cgroup v1 or v2) and returns the
// container it names, preferring the unified hierarchy's line. It reports
// false when no line names a container.
func Parse(r io.Reader) (Container, bool) {
	var found Container
	ok := false
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path; the path may hold ':'.
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		c, cok := ParsePath(parts[2])
		if !cok {
			continue
		}
		if parts[0] == "0" || !ok {
			found, ok = c, true
		}
	}
	return found, ok
}

// ErrGone is returned by Read for a process that has exited (or a pid of
// 0, which stands for an unknown process).
var ErrGone = errors.New("process gone")

// Read reads /proc/<pid>/cgroup under procfs and returns the container it
// names: the zero Container for a process in none (a host process). Any
// error means that it cannot tell; ErrGone, wrapped, that the process has
// exited.
func Read(procfs string, pid uint32) (Container, error) {
	if pid == 0 {
		return Container{}, ErrGone
	}
	f, err := os.Open(filepath.Join(procfs, strconv.FormatUint(uint64(pid), 10), "cgroup"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Container{}, fmt.Errorf("cgroup of process %d: %w", pid, ErrGone)
		}
		return Container{}, fmt.Errorf("cgroup of process %d: %w", pid, err)
	}
	defer f.Close()
	c, _ := Parse(f)
	return c, nil
}
