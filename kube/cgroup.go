// Package kube owns knowing which Kubernetes pod a process or a network
// namespace belongs to: the pods of this node from the kubelet API, and the
// container ids in processes' cgroup paths that tie processes to them.
package kube

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// CgroupContainer is what a cgroup path says about a container.
type CgroupContainer struct {
	// PodUID is the pod's uid in its canonical dashed form, empty when the
	// path is not under a kubepods hierarchy.
	PodUID string
	// ID is the 64-hex-digit container id, as the runtime reports it
	// without its "containerd://" style prefix.
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

// ParseCgroupPath finds a container in one cgroup path, such as
// "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f2e...slice/cri-containerd-<id>.scope".
func ParseCgroupPath(path string) (CgroupContainer, bool) {
	var c CgroupContainer
	elems := strings.Split(path, "/")
	for i := len(elems) - 1; i >= 0; i-- {
		e := elems[i]
		if c.ID == "" {
			if strings.HasPrefix(e, "crio-conmon-") {
				return CgroupContainer{}, false
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

// ParseProcCgroup reads a /proc/<pid>/cgroup file (cgroup v1 or v2) and
// returns the container it names, preferring the unified hierarchy's line.
func ParseProcCgroup(r io.Reader) (CgroupContainer, bool) {
	var found CgroupContainer
	ok := false
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path; the path may hold ':'.
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		c, cok := ParseCgroupPath(parts[2])
		if !cok {
			continue
		}
		if parts[0] == "0" || !ok {
			found, ok = c, true
		}
	}
	return found, ok
}

// ProcessCgroup reads /proc/<pid>/cgroup under procfs and returns the
// container it names; false for host processes and processes that are gone.
func ProcessCgroup(procfs string, pid uint32) (CgroupContainer, bool) {
	f, err := os.Open(filepath.Join(procfs, strconv.FormatUint(uint64(pid), 10), "cgroup"))
	if err != nil {
		return CgroupContainer{}, false
	}
	defer f.Close()
	return ParseProcCgroup(f)
}
