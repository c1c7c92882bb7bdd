package kube

import (
	"os"
	"slices"
	"testing"
)

func TestParsePods(t *testing.T) {
	b, err := os.ReadFile("testdata/pods.json")
	if err != nil {
		t.Fatal(err)
	}
	pods, err := parsePods(b)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		ns, name, workload string
		host               bool
		ips                []string
		containers         map[string]string
	}{
		{"default", "nginx-7c79c4bf97-x2k9p", "nginx", false, []string{"10.42.1.7", "fd00:42:1::7"}, map[string]string{
			"4bd9f0ac1b6c2e6f3e8b7c9d0a1b2c3d4e5f60718293a4b5c6d7e8f901234567": "nginx",
			"9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0": "init-config"}},
		{"cache", "redis-0", "redis", false, []string{"10.42.1.8"}, map[string]string{
			"5ce0a1bd2c7d3f704f9c8d0e1b2c3d4e5f60718293a4b5c6d7e8f90123456ab1": "redis"}},
		{"kube-system", "node-agent-8xq2l", "node-agent", true, []string{"192.0.2.10"}, map[string]string{
			"6df1b2ce3d8e4a815a0d9e1f2c3d4e5f60718293a4b5c6d7e8f90123456ab7c2": "agent"}},
		{"ops", "backup-29145600-abcde", "backup-29145600", false, nil, map[string]string{}},
		{"default", "debug", "debug", false, []string{"10.42.1.9"}, map[string]string{
			"7e02c3df4e9f5b926b1e0f2a3d4e5f60718293a4b5c6d7e8f90123456abc8d93": "shell"}},
	}
	if len(pods) != len(want) {
		t.Fatalf("%d pods, want %d", len(pods), len(want))
	}
	for i, w := range want {
		p := pods[i]
		if p.Namespace != w.ns || p.Name != w.name || p.Workload != w.workload || p.HostNetwork != w.host || !slices.Equal(p.IPs, w.ips) {
			t.Errorf("pod %d = %+v, want %+v", i, p, w)
		}
		if len(p.Containers) != len(w.containers) {
			t.Errorf("pod %s containers %v, want %v", p.Name, p.Containers, w.containers)
		}
		for id, name := range w.containers {
			if p.Containers[id] != name {
				t.Errorf("pod %s container %s = %q, want %q", p.Name, id, p.Containers[id], name)
			}
		}
	}
}

func TestParsePodsRejects(t *testing.T) {
	for name, in := range map[string]string{
		"garbage":    "<html>bad gateway</html>",
		"truncated":  `{"kind": "PodList", "items": [{"metadata": {`,
		"other kind": `{"kind": "Status", "status": "Failure", "code": 401}`,
	} {
		if _, err := parsePods([]byte(in)); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

func FuzzParsePods(f *testing.F) {
	b, err := os.ReadFile("testdata/pods.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"kind":"PodList","items":[{"metadata":{"name":"a","namespace":"b","ownerReferences":[{"kind":"ReplicaSet","name":"-"}]}}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		pods, err := parsePods(b)
		if err != nil {
			return
		}
		for _, p := range pods {
			if p.Name == "" || p.Namespace == "" || p.Workload == "" {
				t.Errorf("incomplete pod %+v", p)
			}
		}
	})
}
