package main

import (
	"slices"
	"testing"
)

func TestMissingCapabilities(t *testing.T) {
	all := uint64(1)<<capNetAdmin | 1<<capSysPtrace | 1<<capSysAdmin
	for _, tc := range []struct {
		name string
		eff  uint64
		want []string
	}{
		{"root", ^uint64(0), nil},
		{"exact set", all, nil},
		{"none", 0, []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_PTRACE"}},
		{"no ptrace", all &^ (1 << capSysPtrace), []string{"CAP_SYS_PTRACE"}},
		{"bpf and perfmon instead of sys_admin", all&^(1<<capSysAdmin) | 1<<39 | 1<<38, []string{"CAP_SYS_ADMIN"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := missingFrom(tc.eff); !slices.Equal(got, tc.want) {
				t.Errorf("missingFrom(%#x) = %v, want %v", tc.eff, got, tc.want)
			}
		})
	}
}

func TestEffectiveCapabilities(t *testing.T) {
	if _, err := effectiveCapabilities("/proc/self/status"); err != nil {
		t.Fatal(err)
	}
	if _, err := effectiveCapabilities("/nonexistent"); err == nil {
		t.Error("missing file accepted")
	}
}
