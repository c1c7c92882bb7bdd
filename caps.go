package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// Capability numbers (include/uapi/linux/capability.h).
const (
	capNetAdmin  = 12
	capSysPtrace = 19
	capSysAdmin  = 21
)

// requiredCapabilities is the exporter's least privilege, each with why.
var requiredCapabilities = []struct {
	bit  uint
	name string
}{
	// Load and attach the tracing programs (it implies CAP_BPF and
	// CAP_PERFMON), and enter other network namespaces: the netlink
	// sockets for their conntrack tables and their socket iterators are
	// created inside them.
	{capSysAdmin, "CAP_SYS_ADMIN"},
	// Query and dump conntrack tables.
	{capNetAdmin, "CAP_NET_ADMIN"},
	// Open /proc/<pid>/ns/net of processes of other users. (The owners of
	// connections that predate the exporter come from a BPF iterator over
	// every process's files, not from /proc/<pid>/fd, so no DAC override.)
	{capSysPtrace, "CAP_SYS_PTRACE"},
}

// missingCapabilities names the required capabilities that the exporter's
// effective set lacks.
func missingCapabilities() []string {
	eff, err := effectiveCapabilities("/proc/self/status")
	if err != nil {
		return []string{"unknown (" + err.Error() + ")"}
	}
	return missingFrom(eff)
}

func missingFrom(eff uint64) []string {
	var missing []string
	for _, c := range requiredCapabilities {
		if eff&(1<<c.bit) == 0 {
			missing = append(missing, c.name)
		}
	}
	return missing
}

// effectiveCapabilities reads the CapEff mask from a /proc/<pid>/status file.
func effectiveCapabilities(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, os.ErrNotExist
}
