package kube

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func TestNamer(t *testing.T) {
	k := newFakeKubelet(t)
	c := newTestClient(t, k, token)
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	procfs := t.TempDir()
	write := func(pid, content string) {
		if err := os.MkdirAll(filepath.Join(procfs, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(procfs, pid, "cgroup"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// nginx under containerd with the systemd driver.
	write("100", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f2e3d4c_5b6a_4978_8695_a4b3c2d1e0f9.slice/cri-containerd-4bd9f0ac1b6c2e6f3e8b7c9d0a1b2c3d4e5f60718293a4b5c6d7e8f901234567.scope\n")
	// redis under cri-o with cgroupfs, cgroup v1.
	write("200", "4:pids:/kubepods/burstable/pod2a3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d/crio-5ce0a1bd2c7d3f704f9c8d0e1b2c3d4e5f60718293a4b5c6d7e8f90123456ab1\n")
	// A new container of the nginx pod, not yet in the pod list.
	write("300", "0::/kubepods/pod1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n")
	// A host process.
	write("400", "0::/system.slice/sshd.service\n")

	n := NewNamer(c, procfs)
	for _, tc := range []struct {
		pid  uint32
		want Owner
		ok   bool
	}{
		{100, Owner{"default", "nginx-7c79c4bf97-x2k9p", "nginx", "nginx"}, true},
		{200, Owner{"cache", "redis-0", "redis", "redis"}, true},
		{300, Owner{"default", "nginx-7c79c4bf97-x2k9p", "", "nginx"}, false},
		{400, Owner{}, false},
		{999, Owner{}, false},
		{0, Owner{}, false},
	} {
		got, ok := n.Owner(tc.pid, 0)
		if got != tc.want || ok != tc.ok {
			t.Errorf("Owner(%d) = %+v, %v; want %+v, %v", tc.pid, got, ok, tc.want, tc.ok)
		}
	}
	// A process gone since: its pod is found by its network namespace.
	os.MkdirAll(filepath.Join(procfs, "100", "ns"), 0o755)
	if err := os.Symlink("net:[4026532999]", filepath.Join(procfs, "100", "ns", "net")); err != nil {
		t.Fatal(err)
	}
	n.Index()
	if got, ok := n.Owner(555, 4026532999); !ok || got != (Owner{"default", "nginx-7c79c4bf97-x2k9p", "", "nginx"}) {
		t.Errorf("Owner by netns = %+v, %v", got, ok)
	}
	if _, ok := n.Owner(555, 4026532000); ok {
		t.Error("unknown namespace named")
	}
	if w, ok := n.Workload(netip.MustParseAddr("fd00:42:1::7")); !ok || w != "nginx" {
		t.Errorf("Workload(nginx v6) = %q, %v", w, ok)
	}
	if _, ok := n.Workload(netip.MustParseAddr("10.99.0.1")); ok {
		t.Error("unknown address named")
	}
}
