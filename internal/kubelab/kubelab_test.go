package kubelab

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
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

// runCleanups runs the cleanups registered, last first.
func (f *failingTB) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
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
	for _, h := range hierarchies() {
		entries, _ := os.ReadDir(h)
		for _, e := range entries {
			if e.IsDir() {
				s.cgroups = append(s.cgroups, filepath.Join(h, e.Name()))
			}
		}
	}
	s.netns = slices.Sorted(maps.Keys(netnsNames()))
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) > 1 {
			s.links = append(s.links, strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":"))
		}
	}
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
	for _, k := range sysctls {
		b, _ := os.ReadFile("/proc/sys/" + k)
		s.sysctls[k] = string(b)
	}
	return s
}

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
	done := make(chan *Cluster)
	go func() {
		// Start may call Fatalf, which ends this goroutine.
		defer close(done)
		done <- Start(f, Options{})
	}()
	c := <-done
	if c != nil {
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
				t.Errorf("the pod did not start: %s", phase)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		c.Node.Run("sysctl", "-qw", "vm.overcommit_memory=1")
	}
	f.Errorf("failing on purpose: the cleanups must still leave nothing")
	f.runCleanups()
	if c == nil {
		t.Fatal("the cluster did not start")
	}
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
