// Package deploy holds the deployment examples; its test checks that they
// ask for exactly the privileges the exporter needs.
package deploy

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// leastPrivilege is the capability set the exporter checks at start
// (caps.go) and README documents.
var leastPrivilege = []string{"NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}

func docs(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var out []map[string]any
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, d)
	}
}

// get walks a decoded YAML tree by map keys and list indexes.
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[k]
		case int:
			l, _ := v.([]any)
			if k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func strs(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	slices.Sort(out)
	return out
}

func TestKubernetes(t *testing.T) {
	kinds := map[string]map[string]any{}
	for _, d := range docs(t, "kubernetes/connection-exporter.yaml") {
		kinds[d["kind"].(string)] = d
	}
	ds := kinds["DaemonSet"]
	if ds == nil {
		t.Fatal("no DaemonSet")
	}
	spec := get(ds, "spec", "template", "spec")
	if get(spec, "hostPID") != true || get(spec, "hostNetwork") != true {
		t.Error("DaemonSet must use the host's pid and network namespaces")
	}
	c := get(spec, "containers", 0)
	if got := strs(get(c, "securityContext", "capabilities", "add")); !slices.Equal(got, leastPrivilege) {
		t.Errorf("capabilities %v, want %v", got, leastPrivilege)
	}
	if got := strs(get(c, "securityContext", "capabilities", "drop")); !slices.Equal(got, []string{"ALL"}) {
		t.Errorf("capabilities dropped %v, want ALL", got)
	}
	if get(c, "securityContext", "privileged") != false {
		t.Error("DaemonSet is privileged")
	}
	args := strings.Join(strs(get(c, "args")), " ")
	if !strings.Contains(args, "--kubelet.url=https://$(NODE_NAME):10250") {
		t.Errorf("args %q do not point at this node's kubelet", args)
	}
	if get(c, "env", 0, "valueFrom", "fieldRef", "fieldPath") != "spec.nodeName" {
		t.Error("NODE_NAME does not come from the downward API")
	}
	rules := get(kinds["ClusterRole"], "rules").([]any)
	if len(rules) != 1 || !slices.Equal(strs(get(rules[0], "verbs")), []string{"get"}) ||
		!slices.Equal(strs(get(rules[0], "resources")), []string{"nodes/pods", "nodes/proxy"}) {
		t.Errorf("ClusterRole rules %v, want get on nodes/proxy and nodes/pods only", rules)
	}
	pm := docs(t, "kubernetes/podmonitor.yaml")
	if len(pm) != 1 || pm[0]["kind"] != "PodMonitor" || get(pm[0], "spec", "podMetricsEndpoints", 0, "port") != "metrics" {
		t.Errorf("podmonitor.yaml: %v", pm)
	}
}

func TestCompose(t *testing.T) {
	d := docs(t, "compose/docker-compose.yml")[0]
	svc := get(d, "services", "connection-exporter")
	if got := strs(get(svc, "cap_add")); !slices.Equal(got, leastPrivilege) {
		t.Errorf("cap_add %v, want %v", got, leastPrivilege)
	}
	if get(svc, "pid") != "host" || get(svc, "network_mode") != "host" {
		t.Error("the exporter must use the host's pid and network namespaces")
	}
}

// TestSwarm checks the Swarm example: Prometheus discovers every node and
// scrapes the exporter's port; every file the stack names exists.
func TestSwarm(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool is needed (apt-get install prometheus): %v", err)
	}
	if out, err := exec.Command(promtool, "check", "config", "swarm/prometheus.yml").CombinedOutput(); err != nil {
		t.Errorf("promtool check config: %v\n%s", err, out)
	}
	b, _ := os.ReadFile("swarm/prometheus.yml")
	if !strings.Contains(string(b), "replacement: $1:10074") || !strings.Contains(string(b), "role: nodes") {
		t.Error("prometheus.yml does not scrape port 10074 of every node")
	}
	stack := docs(t, "swarm/stack.yml")[0]
	for name, cfg := range get(stack, "configs").(map[string]any) {
		f := get(cfg, "file").(string)
		if _, err := os.Stat(filepath.Join("swarm", f)); err != nil {
			t.Errorf("config %s: %v", name, err)
		}
	}
}
