// Package deploy holds the deployment examples; its test checks that they
// ask for exactly the privileges the exporter needs.
package deploy

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/connection-exporter/connection_exporter/internal/lab"
)

// kubeletURL is the kubelet of the exporter's own node, at the node's IP
// (HOST_IP, from the downward API): many clusters cannot resolve node names.
const kubeletURL = "--kubelet.url=https://$(HOST_IP):10250"

// leastPrivilege is the capability set the exporter checks at start
// (caps.go) and README documents.
var leastPrivilege = []string{"NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}

func docs(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, path, b)
}

// decode returns the YAML documents of b, leaving out empty ones.
func decode(t *testing.T, name string, b []byte) []map[string]any {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var out []map[string]any
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if d != nil {
			out = append(out, d)
		}
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

// strs returns a list of strings sorted.
func strs(v any) []string {
	out := list(v)
	slices.Sort(out)
	return out
}

// list returns a list of strings in order; nil when v is not one.
func list(v any) []string {
	var out []string
	l, _ := v.([]any)
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

// checkPrivileges checks that the DaemonSet and ClusterRole among kinds ask
// for what the exporter needs and no more: the host's pid and network
// namespaces, exactly the capabilities of leastPrivilege, a read-only root,
// and get on the kubelet's resources, and no other.
func checkPrivileges(t *testing.T, kinds map[string]map[string]any, resources ...string) {
	t.Helper()
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
	if get(c, "securityContext", "readOnlyRootFilesystem") != true {
		t.Error("DaemonSet's root filesystem is writable")
	}
	rules, _ := get(kinds["ClusterRole"], "rules").([]any)
	if len(rules) != 1 || !slices.Equal(strs(get(rules[0], "verbs")), []string{"get"}) ||
		!slices.Equal(strs(get(rules[0], "resources")), resources) {
		t.Errorf("ClusterRole rules %v, want get on %v only", rules, resources)
	}
}

func TestKubernetes(t *testing.T) {
	kinds := map[string]map[string]any{}
	for _, d := range docs(t, "kubernetes/connection-exporter.yaml") {
		kinds[d["kind"].(string)] = d
	}
	checkPrivileges(t, kinds, "nodes/pods")
	checkPod(t, kinds, "connection-exporter", "")
	args := list(get(kinds["DaemonSet"], "spec", "template", "spec", "containers", 0, "args"))
	if !slices.Contains(args, kubeletURL) || !slices.Contains(args, "--kubelet.insecure-skip-verify") {
		t.Errorf("args %q: want %s and --kubelet.insecure-skip-verify", args, kubeletURL)
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

// chart is the Helm chart, relative to this package.
const chart = "helm/connection-exporter"

// helmBinary returns $HELM, or the helm that scripts/helm builds (which
// needs to write /var/cache/connection-exporter: root, as CI runs it).
func helmBinary(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
		return h
	}
	h, err := lab.Script("helm")
	if err != nil {
		t.Fatalf("%v (or set HELM to a helm v4 binary)", err)
	}
	return h
}

// rendered is one helm template run: its objects by kind (the chart makes
// at most one of each) and the exporter container's arguments in order.
type rendered struct {
	kinds map[string]map[string]any
	args  []string
}

// container returns the exporter's container of the rendered DaemonSet.
func (r rendered) container() any {
	return get(r.kinds["DaemonSet"], "spec", "template", "spec", "containers", 0)
}

// TestHelmChart lints the chart and renders it with its defaults and with
// each optional part on, and checks what each rendering deploys: the same
// privileges as the plain manifest, the kubelet reached at the node's IP,
// the kubelet's certificate verified only when a CA is given, and the
// Prometheus Operator objects only when asked for.
func TestHelmChart(t *testing.T) {
	helm := helmBinary(t)
	const release, namespace = "ce", "monitoring"
	for _, tc := range []struct {
		name  string
		set   []string // helm --set arguments
		check func(t *testing.T, r rendered)
	}{
		{"defaults", nil, func(t *testing.T, r rendered) {
			if !slices.Contains(r.args, kubeletURL) || !slices.Contains(r.args, "--kubelet.insecure-skip-verify") {
				t.Errorf("args %q: want %s and --kubelet.insecure-skip-verify", r.args, kubeletURL)
			}
			if slices.ContainsFunc(r.args, func(a string) bool { return strings.HasPrefix(a, "--kubelet.ca-file") }) {
				t.Errorf("args %q: --kubelet.ca-file without kubelet.caFile", r.args)
			}
			for _, k := range []string{"PodMonitor", "ServiceMonitor", "Service"} {
				if r.kinds[k] != nil {
					t.Errorf("%s rendered though not enabled", k)
				}
			}
			checkSamePod(t, r.kinds["DaemonSet"])
		}},
		{"caFile", []string{"kubelet.caFile=/etc/kubelet-ca/ca.crt"}, func(t *testing.T, r rendered) {
			if !slices.Contains(r.args, "--kubelet.ca-file=/etc/kubelet-ca/ca.crt") || slices.Contains(r.args, "--kubelet.insecure-skip-verify") {
				t.Errorf("args %q: want --kubelet.ca-file=/etc/kubelet-ca/ca.crt instead of --kubelet.insecure-skip-verify", r.args)
			}
		}},
		{"extraArgs", []string{"extraArgs={--log.level=debug,--no-docker}"}, func(t *testing.T, r rendered) {
			if len(r.args) < 3 || !slices.Equal(r.args[len(r.args)-2:], []string{"--log.level=debug", "--no-docker"}) ||
				!slices.Contains(r.args, kubeletURL) {
				t.Errorf("args %q: want the chart's, then --log.level=debug --no-docker", r.args)
			}
		}},
		{"kubeletURL", []string{"kubelet.url=http://127.0.0.1:10255"}, func(t *testing.T, r rendered) {
			if !slices.Contains(r.args, "--kubelet.url=http://127.0.0.1:10255") || slices.Contains(r.args, kubeletURL) {
				t.Errorf("args %q: want --kubelet.url=http://127.0.0.1:10255 only", r.args)
			}
		}},
		{"nodesProxy", []string{"rbac.nodesProxy=true"}, func(t *testing.T, r rendered) {}},
		{"netnsMountPropagation", []string{"netnsMountPropagation=HostToContainer"}, func(t *testing.T, r rendered) {}},
		{"noKubelet", []string{"kubelet.enabled=false"}, func(t *testing.T, r rendered) {
			if slices.ContainsFunc(r.args, func(a string) bool { return strings.HasPrefix(a, "--kubelet.") }) {
				t.Errorf("args %q: --kubelet flags with kubelet.enabled=false", r.args)
			}
		}},
		{"podMonitor", []string{"podMonitor.enabled=true", "podMonitor.interval=15s"}, func(t *testing.T, r rendered) {
			pm := r.kinds["PodMonitor"]
			if get(pm, "apiVersion") != "monitoring.coreos.com/v1" || get(pm, "spec", "podMetricsEndpoints", 0, "port") != "metrics" ||
				get(pm, "spec", "podMetricsEndpoints", 0, "interval") != "15s" ||
				get(pm, "spec", "podMetricsEndpoints", 0, "scrapeTimeout") != "10s" {
				t.Errorf("PodMonitor %v: want port metrics every 15s, timeout 10s", pm)
			}
			checkSelects(t, get(pm, "spec", "selector", "matchLabels"), get(r.kinds["DaemonSet"], "spec", "template", "metadata", "labels"))
			if r.kinds["ServiceMonitor"] != nil || r.kinds["Service"] != nil {
				t.Error("ServiceMonitor rendered though not enabled")
			}
		}},
		{"serviceMonitor", []string{"serviceMonitor.enabled=true", "scrapeAnnotations=false"}, func(t *testing.T, r rendered) {
			svc, sm := r.kinds["Service"], r.kinds["ServiceMonitor"]
			if get(svc, "spec", "clusterIP") != "None" || get(svc, "spec", "ports", 0, "name") != "metrics" {
				t.Errorf("Service %v: want headless, port metrics", svc)
			}
			checkSelects(t, get(svc, "spec", "selector"), get(r.kinds["DaemonSet"], "spec", "template", "metadata", "labels"))
			if get(sm, "apiVersion") != "monitoring.coreos.com/v1" || get(sm, "spec", "endpoints", 0, "port") != "metrics" ||
				get(sm, "spec", "endpoints", 0, "interval") != "30s" {
				t.Errorf("ServiceMonitor %v: want port metrics every 30s", sm)
			}
			checkSelects(t, get(sm, "spec", "selector", "matchLabels"), get(svc, "metadata", "labels"))
			if r.kinds["PodMonitor"] != nil {
				t.Error("PodMonitor rendered though not enabled")
			}
			if get(r.kinds["DaemonSet"], "spec", "template", "metadata", "annotations", "prometheus.io/scrape") != nil {
				t.Error("prometheus.io annotations with scrapeAnnotations=false")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var set []string
			for _, s := range tc.set {
				set = append(set, "--set", s)
			}
			lint := exec.Command(helm, append([]string{"lint", "--strict", chart}, set...)...)
			if out, err := lint.CombinedOutput(); err != nil || bytes.Contains(out, []byte("[WARNING]")) {
				t.Errorf("helm lint: %v\n%s", err, out)
			}
			var stderr bytes.Buffer
			tmpl := exec.Command(helm, append([]string{"template", release, chart, "--namespace", namespace}, set...)...)
			tmpl.Stderr = &stderr
			out, err := tmpl.Output()
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, stderr.Bytes())
			}
			r := rendered{kinds: map[string]map[string]any{}}
			for _, d := range decode(t, "helm template", out) {
				kind, _ := d["kind"].(string)
				if r.kinds[kind] != nil {
					t.Errorf("two objects of kind %q", kind)
				}
				r.kinds[kind] = d
				if kind == "Namespace" {
					t.Error("the chart makes a Namespace; it belongs to the release")
				}
				if ns := get(d, "metadata", "namespace"); ns != nil && ns != namespace {
					t.Errorf("%s in namespace %v, want the release's %s", kind, ns, namespace)
				}
			}
			resources := []string{"nodes/pods"}
			if slices.Contains(tc.set, "rbac.nodesProxy=true") {
				resources = append(resources, "nodes/proxy")
			}
			checkPrivileges(t, r.kinds, resources...)
			propagation := ""
			if slices.Contains(tc.set, "netnsMountPropagation=HostToContainer") {
				propagation = "HostToContainer"
			}
			checkPod(t, r.kinds, namespace, propagation)
			r.args = list(get(r.container(), "args"))
			tc.check(t, r)
		})
	}
}

// checkPod checks what the plain manifest and every rendering of the chart
// share: the pod runs as the ServiceAccount the ClusterRole is bound to, learns its node's
// IP from the downward API, and mounts the host's folders read-only, and
// /run/netns with the mount propagation given ("": none, since propagation
// fails the pod's start where /run is not a shared mount).
func checkPod(t *testing.T, kinds map[string]map[string]any, namespace, propagation string) {
	t.Helper()
	spec := get(kinds["DaemonSet"], "spec", "template", "spec")
	sa := get(kinds["ServiceAccount"], "metadata", "name")
	if sa == nil || get(spec, "serviceAccountName") != sa {
		t.Errorf("pod runs as %v, want the chart's ServiceAccount %v", get(spec, "serviceAccountName"), sa)
	}
	binding := kinds["ClusterRoleBinding"]
	if get(binding, "roleRef", "name") != get(kinds["ClusterRole"], "metadata", "name") ||
		get(binding, "subjects", 0, "name") != sa || get(binding, "subjects", 0, "namespace") != namespace {
		t.Errorf("ClusterRoleBinding %v does not bind the ClusterRole to %v in %s", binding, sa, namespace)
	}
	checkSelects(t, get(kinds["DaemonSet"], "spec", "selector", "matchLabels"), get(kinds["DaemonSet"], "spec", "template", "metadata", "labels"))
	c := get(spec, "containers", 0)
	env, _ := get(c, "env").([]any)
	var hostIP any
	for _, e := range env {
		if get(e, "name") == "HOST_IP" {
			hostIP = get(e, "valueFrom", "fieldRef", "fieldPath")
		}
	}
	if hostIP != "status.hostIP" {
		t.Errorf("HOST_IP from %v, want the downward API's status.hostIP", hostIP)
	}
	mounts, _ := get(c, "volumeMounts").([]any)
	want := map[string]bool{"/sys/fs/bpf": true, "/run/netns": true}
	for _, m := range mounts {
		path, _ := get(m, "mountPath").(string)
		if !want[path] {
			continue
		}
		delete(want, path)
		if get(m, "readOnly") != true {
			t.Errorf("%s mounted writable", path)
		}
		if p, _ := get(m, "mountPropagation").(string); path == "/run/netns" && p != propagation {
			t.Errorf("/run/netns mounted with mountPropagation %q, want %q", p, propagation)
		}
	}
	if len(want) > 0 {
		t.Errorf("host folders %v not mounted", want)
	}
}

// checkSamePod checks that the chart's DaemonSet, with its default values,
// runs the pod the plain manifest runs: the same containers, host
// namespaces, volumes, tolerations, priority and scrape annotations. Only
// the names that come from the release differ.
func checkSamePod(t *testing.T, ds map[string]any) {
	t.Helper()
	var plain map[string]any
	for _, d := range docs(t, "kubernetes/connection-exporter.yaml") {
		if d["kind"] == "DaemonSet" {
			plain = d
		}
	}
	for _, path := range [][]any{
		{"spec", "updateStrategy"},
		{"spec", "template", "metadata", "annotations"},
		{"spec", "template", "spec", "containers"},
		{"spec", "template", "spec", "volumes"},
		{"spec", "template", "spec", "hostPID"},
		{"spec", "template", "spec", "hostNetwork"},
		{"spec", "template", "spec", "dnsPolicy"},
		{"spec", "template", "spec", "priorityClassName"},
		{"spec", "template", "spec", "tolerations"},
	} {
		if got, want := get(ds, path...), get(plain, path...); !reflect.DeepEqual(got, want) {
			t.Errorf("DaemonSet %v: chart renders\n%v\nplain manifest has\n%v", path, got, want)
		}
	}
	chart, _ := get(ds, "spec", "template", "spec").(map[string]any)
	manifest, _ := get(plain, "spec", "template", "spec").(map[string]any)
	chart, manifest = maps.Clone(chart), maps.Clone(manifest)
	delete(chart, "serviceAccountName")
	delete(manifest, "serviceAccountName")
	if got, want := slices.Sorted(maps.Keys(chart)), slices.Sorted(maps.Keys(manifest)); !slices.Equal(got, want) {
		t.Errorf("pod spec fields: chart %v, plain manifest %v", got, want)
	}
}

// checkSelects fails unless every label of selector is in labels.
func checkSelects(t *testing.T, selector, labels any) {
	t.Helper()
	sel, _ := selector.(map[string]any)
	have, _ := labels.(map[string]any)
	if len(sel) == 0 {
		t.Errorf("empty selector")
	}
	for k, v := range sel {
		if have[k] != v {
			t.Errorf("selector %v does not select labels %v", sel, have)
			return
		}
	}
}
