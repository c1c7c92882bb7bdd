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
	capPerfmon   = 38
	capBPF       = 39
)

// missingCapabilities names the capabilities the exporter needs and lacks:
// CAP_BPF and CAP_PERFMON to load and attach the tracing programs (both
// implied by CAP_SYS_ADMIN), CAP_NET_ADMIN to query conntrack, and
// CAP_SYS_PTRACE to open other processes' network namespaces and files.
func missingCapabilities() []string {
	eff, err := effectiveCapabilities("/proc/self/status")
	if err != nil {
		return []string{"unknown (" + err.Error() + ")"}
	}
	return missingFrom(eff)
}

func missingFrom(eff uint64) []string {
	has := func(c uint) bool { return eff&(1<<c) != 0 }
	var missing []string
	if !has(capSysAdmin) {
		if !has(capBPF) {
			missing = append(missing, "CAP_BPF")
		}
		if !has(capPerfmon) {
			missing = append(missing, "CAP_PERFMON")
		}
	}
	if !has(capNetAdmin) {
		missing = append(missing, "CAP_NET_ADMIN")
	}
	if !has(capSysPtrace) {
		missing = append(missing, "CAP_SYS_PTRACE")
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
