package main

import (
	"slices"
	"testing"
	"time"
)

func TestScrapeTimeout(t *testing.T) {
	for _, tc := range []struct {
		header string
		offset time.Duration
		want   time.Duration
		bad    bool
	}{
		{"", time.Second, 0, false},
		{"10", 500 * time.Millisecond, 9500 * time.Millisecond, false},
		{"1.5", 500 * time.Millisecond, time.Second, false},
		{"0.4", 500 * time.Millisecond, 200 * time.Millisecond, false},
		{"abc", 0, 0, true},
		{"-1", 0, 0, true},
		{"0", 0, 0, true},
		{"NaN", 0, 0, true},
		{"1e30", 0, 0, true},
	} {
		got, err := scrapeTimeout(tc.header, tc.offset)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("scrapeTimeout(%q, %v) = %v, %v; want %v, error %v", tc.header, tc.offset, got, err, tc.want, tc.bad)
		}
	}
}

func FuzzScrapeTimeout(f *testing.F) {
	for _, s := range []string{"10", "0.5", "", "-3", "NaN", "Inf", "1e400"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		d, err := scrapeTimeout(h, 500*time.Millisecond)
		if err == nil && (d < 0 || d > 24*time.Hour) {
			t.Errorf("scrapeTimeout(%q) = %v", h, d)
		}
	})
}

func TestMissingCapabilities(t *testing.T) {
	all := uint64(1)<<capNetAdmin | 1<<capSysPtrace | 1<<capSysAdmin | 1<<capDacReadSearch
	for _, tc := range []struct {
		name string
		eff  uint64
		want []string
	}{
		{"root", ^uint64(0), nil},
		{"exact set", all, nil},
		{"none", 0, []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}},
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
