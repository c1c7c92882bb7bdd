package netlab

import (
	"errors"
	"os"
	"strings"
)

// CgroupRoot returns where the cgroup v2 hierarchy is mounted, as the
// process's mount table says: /sys/fs/cgroup on unified hosts,
// /sys/fs/cgroup/unified on hybrid ones. Tests and the benchmark put
// processes in groups of their own under it.
func CgroupRoot() (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(string(b)) {
		// The mount point is the fifth field; the filesystem type follows
		// the " - " separator.
		pre, post, ok := strings.Cut(line, " - ")
		f := strings.Fields(pre)
		if ok && len(f) >= 5 && strings.HasPrefix(post, "cgroup2 ") {
			return f[4], nil
		}
	}
	return "", errors.New("no cgroup v2 hierarchy mounted")
}
