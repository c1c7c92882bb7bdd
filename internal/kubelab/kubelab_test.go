package kubelab

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/connection-exporter/connection_exporter/internal/lab"
)

// failingTB is a test that fails on purpose, whose cleanups the test runs
// itself, to check what they leave.
type failingTB struct {
	*testing.T
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

func (f *failingTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

func (f *failingTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	f.failed = true
	f.mu.Unlock()
	f.T.Logf("(failing on purpose) "+format, args...)
}

// Fatalf fails and ends the goroutine, which must not be the test's.
func (f *failingTB) Fatalf(format string, args ...any) {
	f.Errorf(format, args...)
	runtime.Goexit()
}

func (f *failingTB) Failed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed
}

// runCleanups runs the cleanups registered, last first, once.
func (f *failingTB) runCleanups() {
	f.mu.Lock()
	cleanups := f.cleanups
	f.cleanups = nil
	f.mu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
}

// hostSnapshot is what a cluster may change on the host.
type hostSnapshot struct {
	mounts, cgroups, netns, links, processes, shared []string
	sysctls                                          map[string]string
}

func snapshot(t *testing.T) hostSnapshot {
	t.Helper()
	var s hostSnapshot
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) > 1 {
			s.mounts = append(s.mounts, f[1])
		}
	}
	for _, h := range lab.CgroupHierarchies() {
		entries, _ := os.ReadDir(h)
		for _, e := range entries {
			if e.IsDir() {
				s.cgroups = append(s.cgroups, filepath.Join(h, e.Name()))
			}
		}
	}
	s.netns = slices.Sorted(maps.Keys(netnsNames()))
	s.links = slices.Sorted(maps.Keys(lab.LinkNames()))
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(cmd) == 0 {
			continue
		}
		name := filepath.Base(strings.SplitN(string(cmd), "\x00", 2)[0])
		if slices.Contains([]string{"containerd", "containerd-shim-runc-v2", "kubelet", "kube-proxy",
			"kube-apiserver", "kube-scheduler", "kube-controller-manager", "etcd", "pause"}, name) {
			s.processes = append(s.processes, fmt.Sprintf("%s %s", e.Name(), name))
		}
	}
	s.shared = slices.Sorted(maps.Keys(existing(sharedDirs)))
	s.sysctls = map[string]string{}
	for _, k := range kubeletSysctls {
		b, _ := os.ReadFile("/proc/sys/" + k)
		s.sysctls[k] = string(b)
	}
	return s
}

// kubeletSysctls are the host-wide settings kubelet v1.34 writes at start
// (setupKernelTunables in pkg/kubelet/cm/container_manager_linux.go), kept
// apart from the lab's own list so that an entry it lacks shows here.
var kubeletSysctls = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

// TestCleanupAfterFailure boots a cluster, runs a pod, fails, and checks
// that the cleanups leave the host as it was: no daemon, shim or pod
// process, mount, cgroup, network namespace or link, no file in the
// folders the kubelet and containerd share with the host, and the
// sysctls the kubelet changes put back.
func TestCleanupAfterFailure(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a Kubernetes node needs root")
	}
	before := snapshot(t)
	f := &failingTB{T: t}
	defer f.runCleanups() // also when this test ends early
	var c *Cluster
	done := make(chan struct{})
	go func() {
		// Everything the lab is given f for runs here: f.Fatalf ends
		// this goroutine, never the test's.
		defer close(done)
		c = Start(f, Options{})
		c.Apply(`apiVersion: v1
kind: Pod
metadata: {name: idle, namespace: default}
spec:
  containers:
  - name: idle
    image: ` + PauseImage + `
    imagePullPolicy: Never
`)
		deadline := time.Now().Add(90 * time.Second)
		for {
			phase, _ := c.TryKubectl("get", "pod", "idle", "-o", "jsonpath={.status.phase}")
			if phase == "Running" {
				break
			}
			if time.Now().After(deadline) {
				f.Fatalf("the pod did not start: %s", phase)
			}
			time.Sleep(200 * time.Millisecond)
		}
		// As the kubelet may, with protectKernelDefaults off.
		c.Node.Run("sysctl", "-qw", "vm.overcommit_memory=1", "kernel.keys.root_maxkeys=999999")
	}()
	<-done
	if f.Failed() {
		t.Error("the cluster and its pod did not start")
	}
	f.Errorf("failing on purpose: the cleanups must still leave nothing")
	f.runCleanups()
	if c == nil {
		t.FailNow()
	}
	// A second later: a process the cleanups missed would write by then.
	time.Sleep(time.Second)
	after := snapshot(t)
	for _, d := range []struct {
		what          string
		before, after []string
	}{
		{"mounts", before.mounts, after.mounts},
		{"cgroups", before.cgroups, after.cgroups},
		{"network namespaces", before.netns, after.netns},
		{"links", before.links, after.links},
		{"processes", before.processes, after.processes},
		{"files in the shared folders", before.shared, after.shared},
	} {
		var left []string
		for _, a := range d.after {
			if !slices.Contains(d.before, a) {
				left = append(left, a)
			}
		}
		if len(left) > 0 {
			t.Errorf("%s left behind: %v", d.what, left)
		}
	}
	if !maps.Equal(before.sysctls, after.sysctls) {
		t.Errorf("sysctls were %v, are %v", before.sysctls, after.sysctls)
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Errorf("the cluster's folder %s is still there: %v", c.Dir, err)
	}
}
