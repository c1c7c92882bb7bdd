package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// UnmountUnder lazily unmounts every mount below dir, deepest first.
func UnmountUnder(dir string) {
	b, _ := os.ReadFile("/proc/self/mounts")
	var mounts []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 && (f[1] == dir || strings.HasPrefix(f[1], dir+"/")) {
			mounts = append(mounts, f[1])
		}
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		syscall.Unmount(mounts[i], syscall.MNT_DETACH)
	}
}

// RemoveCgroups removes the cgroup name, and the cgroups under it, from
// every cgroup hierarchy mounted. A container's cgroup empties shortly
// after the runtime stops it: removal is retried for a few seconds, then what
// is left fails the test.
func RemoveCgroups(t TB, name string) {
	for _, h := range CgroupHierarchies() {
		dir := filepath.Join(h, name)
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		deadline := time.Now().Add(5 * time.Second)
		var err error
		for {
			err = removeCgroupTree(dir)
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("remove cgroup %s: %v", dir, err)
		}
	}
}

// CgroupHierarchies lists the mount points of the cgroup hierarchies (v1
// and v2) mounted.
func CgroupHierarchies() []string {
	b, _ := os.ReadFile("/proc/self/mounts")
	var out []string
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) >= 3 && (f[2] == "cgroup" || f[2] == "cgroup2") {
			out = append(out, f[1])
		}
	}
	return out
}

// removeCgroupTree removes the cgroup dir after the cgroups under it,
// deepest first; a cgroup's files go with it.
func removeCgroupTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeCgroupTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return os.Remove(dir)
}

// LinkNames returns the names of the network links of this namespace.
func LinkNames() map[string]bool {
	out, _ := exec.Command("ip", "-o", "link", "show").Output()
	m := map[string]bool{}
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) > 1 {
			m[strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]] = true
		}
	}
	return m
}
