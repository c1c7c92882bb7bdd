package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	id  = "4bd9f0ac1b6c2e6f3e8b7c9d0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
	uid = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"
)

func TestParsePath(t *testing.T) {
	us := strings.ReplaceAll(uid, "-", "_")
	for _, tc := range []struct {
		name, path string
		want       Container
		ok         bool
	}{
		{"containerd systemd v2", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + us + ".slice/cri-containerd-" + id + ".scope", Container{uid, id}, true},
		{"containerd systemd guaranteed", "/kubepods.slice/kubepods-pod" + us + ".slice/cri-containerd-" + id + ".scope", Container{uid, id}, true},
		{"containerd cgroupfs v1", "/kubepods/besteffort/pod" + uid + "/" + id, Container{uid, id}, true},
		{"containerd cgroupfs guaranteed", "/kubepods/pod" + uid + "/" + id, Container{uid, id}, true},
		{"cri-o systemd", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + us + ".slice/crio-" + id + ".scope", Container{uid, id}, true},
		{"cri-o cgroupfs", "/kubepods/burstable/pod" + uid + "/crio-" + id, Container{uid, id}, true},
		{"cri-o conmon is not the container", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + us + ".slice/crio-conmon-" + id + ".scope", Container{}, false},
		{"dockershim systemd", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + us + ".slice/docker-" + id + ".scope", Container{uid, id}, true},
		{"plain docker cgroupfs", "/docker/" + id, Container{"", id}, true},
		{"plain docker systemd", "/system.slice/docker-" + id + ".scope", Container{"", id}, true},
		{"kind nested", "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + us + ".slice/cri-containerd-" + id + ".scope", Container{uid, id}, true},
		{"host process", "/system.slice/sshd.service", Container{}, false},
		{"root", "/", Container{}, false},
		{"short id", "/docker/4bd9f0ac1b6c", Container{}, false},
		{"process api", "/process_api/1234", Container{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := ParsePath(tc.path)
			if got != tc.want || ok != tc.ok {
				t.Errorf("ParsePath(%q) = %+v, %v; want %+v, %v", tc.path, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestParse(t *testing.T) {
	v1 := "12:pids:/kubepods/besteffort/pod" + uid + "/" + id + "\n" +
		"11:cpu,cpuacct:/kubepods/besteffort/pod" + uid + "/" + id + "\n" +
		"1:name=systemd:/kubepods/besteffort/pod" + uid + "/" + id + "\n"
	hybrid := "1:name=systemd:/user.slice\n0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" +
		strings.ReplaceAll(uid, "-", "_") + ".slice/cri-containerd-" + id + ".scope\n"
	for name, in := range map[string]string{"v1": v1, "hybrid": hybrid, "v2": "0::/kubepods/pod" + uid + "/" + id + "\n"} {
		got, ok := Parse(strings.NewReader(in))
		if !ok || got != (Container{uid, id}) {
			t.Errorf("%s: %+v, %v", name, got, ok)
		}
	}
	if _, ok := Parse(strings.NewReader("0::/process_api/77\n")); ok {
		t.Error("host process taken for a container")
	}
}

func FuzzParsePath(f *testing.F) {
	f.Add("/kubepods/besteffort/pod" + uid + "/" + id)
	f.Add("/system.slice/docker-" + id + ".scope")
	f.Add("0::/")
	f.Fuzz(func(t *testing.T, path string) {
		c, ok := ParsePath(path)
		if ok && (len(c.ID) != 64 || !strings.Contains(path, c.ID)) {
			t.Errorf("ParsePath(%q) = %+v", path, c)
		}
		if !ok && c != (Container{}) {
			t.Errorf("ParsePath(%q) failed with %+v", path, c)
		}
		if c.PodUID != "" && len(c.PodUID) != 36 {
			t.Errorf("pod uid %q", c.PodUID)
		}
	})
}

func TestRead(t *testing.T) {
	procfs := t.TempDir()
	write := func(pid, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(procfs, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(procfs, pid, "cgroup"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("100", "0::/kubepods/pod"+uid+"/"+id+"\n")
	write("200", "0::/system.slice/sshd.service\n")
	for _, tc := range []struct {
		pid  uint32
		want Container
		gone bool
	}{
		{100, Container{uid, id}, false},
		{200, Container{}, false},
		{300, Container{}, true},
		{0, Container{}, true},
	} {
		got, err := Read(procfs, tc.pid)
		if got != tc.want || errors.Is(err, ErrGone) != tc.gone || (err != nil) != tc.gone {
			t.Errorf("Read(%d) = %+v, %v; want %+v, gone %v", tc.pid, got, err, tc.want, tc.gone)
		}
	}
}
