package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/connection-exporter/connection_exporter/internal/kubelab"
	"github.com/connection-exporter/connection_exporter/internal/lab"
)

// clusterImages imports the exporter's image, built as scripts/image
// builds it (the static binary FROM scratch, as /bin/connection_exporter),
// and the workloads' image.
func clusterImages(t *testing.T, c *kubelab.Cluster) {
	t.Helper()
	dir := t.TempDir()
	exporter := lab.BuildStatic(t, "github.com/connection-exporter/connection_exporter", dir, "connection_exporter")
	c.Import(kubelab.Image{Ref: "connection-exporter:latest", Binary: exporter, Path: "/bin/connection_exporter"})
	peer := lab.BuildStatic(t, "github.com/connection-exporter/connection_exporter/internal/dockerlab/peer", dir, "peer")
	c.Import(kubelab.Image{Ref: "peer:latest", Binary: peer, Path: "/peer"})
}

// shopManifest is the workloads of the cluster tests, in namespace shop: a
// Deployment web of 3 servers behind a ClusterIP Service, and a client
// Deployment and a StatefulSet that dial the service address.
func shopManifest(clients, stateful int, vip string) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
      - name: app
        image: peer:latest
        imagePullPolicy: Never
        args: [connect, "%[3]s:80", "%[1]d"]
---
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: shop}
spec:
  clusterIP: None
  selector: {app: ledger}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: ledger, namespace: shop}
spec:
  serviceName: ledger
  replicas: 1
  selector: {matchLabels: {app: ledger}}
  template:
    metadata: {labels: {app: ledger}}
    spec:
      containers:
      - name: writer
        image: peer:latest
        imagePullPolicy: Never
        args: [connect, "%[3]s:80", "%[2]d"]
`, clients, stateful, vip)
}

// webManifest is the server Deployment and its Service.
const webManifest = `apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: server
        image: peer:latest
        imagePullPolicy: Never
        args: [serve, ":8080"]
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
`

// accepted counts the connections that web's pods accepted from peers (pod
// addresses), by the address that accepted each, from the pods' logs: the
// ground truth of where each connection went.
func accepted(c *kubelab.Cluster, peers []string) map[string]float64 {
	out := map[string]float64{}
	pods, err := c.TryKubectl("get", "pods", "-n", "shop", "-l", "app=web", "-o", "name")
	if err != nil {
		return out
	}
	for _, pod := range strings.Fields(pods) {
		logs, _ := c.TryKubectl("logs", "-n", "shop", pod)
		for _, line := range strings.Split(logs, "\n") {
			f := strings.Fields(line)
			if len(f) != 3 || f[0] != "accepted" {
				continue
			}
			if peer, err := netip.ParseAddrPort(f[1]); err == nil && slices.Contains(peers, peer.Addr().String()) {
				out[f[2]]++
			}
		}
	}
	return out
}

// pods returns the names and addresses of the running pods of selector in
// namespace shop, leaving out those being deleted.
func pods(c *kubelab.Cluster, selector string) (names, ips []string) {
	out, err := c.TryKubectl("get", "pods", "-n", "shop", "--selector="+selector,
		"--field-selector=status.phase=Running", "-o", `jsonpath={range .items[*]}{.metadata.name} {.status.podIP} {.metadata.deletionTimestamp}{"\n"}{end}`)
	if err != nil {
		return nil, nil
	}
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) == 2 {
			names, ips = append(names, f[0]), append(ips, f[1])
		}
	}
	return names, ips
}

// clusterExporter returns the exporter of the DaemonSet, serving on the
// node's address (it runs in the host's network namespace).
func clusterExporter(t *testing.T, c *kubelab.Cluster) *exporter {
	t.Helper()
	t.Cleanup(func() {
		if t.Failed() {
			for _, ns := range []string{"connection-exporter", "monitoring"} {
				if logs, err := c.TryKubectl("logs", "-n", ns, "-l", "app.kubernetes.io/name=connection-exporter", "--tail=200"); err == nil && logs != "" {
					t.Logf("exporter log:\n%s", logs)
				}
			}
		}
	})
	return &exporter{t: t, url: "http://" + netip.AddrPortFrom(c.NodeIP, 10074).String() + "/metrics", logs: &lab.Output{}}
}

// waitRollout waits for a workload's rollout.
func waitRollout(t *testing.T, c *kubelab.Cluster, ns, what string) {
	t.Helper()
	if _, err := c.TryKubectl("rollout", "status", "-n", ns, what, "--timeout=180s"); err != nil {
		t.Fatalf("rollout of %s: %v\n%s", what, err, c.Kubectl("get", "pods", "-A", "-o", "wide"))
	}
}

// TestClusterManifest applies deploy/kubernetes unchanged on a real node,
// then deploys the shop, and checks its connections: named by pod,
// namespace, container and workload, resolved by conntrack to the backend
// that accepted each, with every pod's address in connection_endpoint_info.
// Then the world changes under the running exporter: the backends scale
// up, the client is restarted, and a service points at a port nothing
// listens on.
func TestClusterManifest(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts kubelab.Options
	}{
		{"iptables, self-signed kubelet", kubelab.Options{ProxyMode: "iptables"}},
		{"nftables, kubelet signed by the cluster CA", kubelab.Options{ProxyMode: "nftables", ServingCertFromCA: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := kubelab.Start(t, tc.opts)
			clusterImages(t, c)
			manifest, err := os.ReadFile("../deploy/kubernetes/connection-exporter.yaml")
			if err != nil {
				t.Fatal(err)
			}
			c.Apply(string(manifest))
			waitRollout(t, c, "connection-exporter", "daemonset/connection-exporter")
			exp := clusterExporter(t, c)
			waitKubelet(t, exp)
			shop(t, c, exp)
			if tc.opts.ProxyMode == "iptables" {
				forbidden(t, c, exp)
			}
		})
	}
}

// forbidden takes the manifest's ClusterRole rules away and checks that
// the kubelet then refuses the exporter, counted as http_403: the rules
// are what lets it in.
func forbidden(t *testing.T, c *kubelab.Cluster, exp *exporter) {
	t.Helper()
	c.Kubectl("patch", "clusterrole", "connection-exporter", "--type=json", `-p=[{"op":"replace","path":"/rules","value":[]}]`)
	waitFor(t, "the kubelet's 403 counted", 60*time.Second, func() bool {
		s, err := exp.fetch()
		if err != nil {
			return false
		}
		p := s.samples("connection_exporter_kubelet_errors_total", map[string]string{"reason": "http_403"})
		return len(p) == 1 && p[0].value > 0
	})
}

// TestClusterHelm installs the Helm chart on a real node whose kubelet
// serves a certificate the cluster CA signed, verified as the chart's
// values document it, and runs the same checks.
func TestClusterHelm(t *testing.T) {
	c := kubelab.Start(t, kubelab.Options{ServingCertFromCA: true})
	helm, err := lab.Script("helm")
	if err != nil {
		t.Fatal(err)
	}
	clusterImages(t, c)
	cmd := exec.Command(helm, "install", "connection-exporter", "../deploy/helm/connection-exporter",
		"--kubeconfig", c.Kubeconfig(), "--namespace", "monitoring", "--create-namespace",
		"--set", "image.pullPolicy=Never",
		"--set", "kubelet.caFile=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
		"--wait", "--timeout", "3m")
	// Its caches and the API discovery cache (~/.kube/cache) stay in the
	// test's folder.
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helm install: %v\n%s\n%s", err, out, c.Kubectl("get", "pods", "-A", "-o", "wide"))
	}
	args := c.Kubectl("get", "daemonset", "-n", "monitoring", "connection-exporter", "-o", "jsonpath={.spec.template.spec.containers[0].args}")
	if !strings.Contains(args, "--kubelet.ca-file=") || strings.Contains(args, "insecure-skip-verify") {
		t.Errorf("the chart's exporter does not verify the kubelet: %s", args)
	}
	exp := clusterExporter(t, c)
	waitKubelet(t, exp)
	shop(t, c, exp)
}

// waitKubelet waits for the exporter's first pod list.
func waitKubelet(t *testing.T, exp *exporter) {
	t.Helper()
	waitFor(t, "the exporter's pod list", 90*time.Second, func() bool {
		s, err := exp.fetch()
		if err != nil {
			return false
		}
		p := s.samples("connection_exporter_kubelet_pods", nil)
		return len(p) == 1 && p[0].value >= 1
	})
}

// shop deploys the shop under a running exporter, checks it, changes it and
// checks it again.
func shop(t *testing.T, c *kubelab.Cluster, exp *exporter) {
	t.Helper()
	defer watchNames(t, exp)()
	c.Apply(webManifest)
	waitRollout(t, c, "shop", "deployment/web")
	vip := c.Kubectl("get", "service", "-n", "shop", "web", "-o", "jsonpath={.spec.clusterIP}")
	c.Apply(shopManifest(clientConns, ledgerConns, vip))
	waitRollout(t, c, "shop", "deployment/client")
	waitRollout(t, c, "shop", "statefulset/ledger")
	checkShop(t, c, exp, vip)
	if t.Failed() {
		return
	}

	// New backends, then a new client pod whose connections reach them:
	// with 20 connections over 5 backends, the chance that none reaches
	// the 2 new ones is 0.6^20, 4e-5.
	_, before := pods(c, "app=web")
	c.Kubectl("scale", "-n", "shop", "deployment/web", "--replicas=5")
	waitRollout(t, c, "shop", "deployment/web")
	c.Kubectl("rollout", "restart", "-n", "shop", "deployment/client")
	waitRollout(t, c, "shop", "deployment/client")
	reached := checkShop(t, c, exp, vip)
	_, webIPs := pods(c, "app=web")
	var fresh []string
	for a := range reached {
		if ap, err := netip.ParseAddrPort(a); err == nil && !slices.Contains(before, ap.Addr().String()) {
			fresh = append(fresh, a)
		}
	}
	if len(fresh) == 0 {
		t.Errorf("no connection reached the backends added by scaling (%v before, %v after): %v", before, webIPs, reached)
	}

	// A service whose pods refuse: its port is one nothing listens on. The
	// prober's attempts count as failed, named by its container from the
	// first one on. A conntrack entry whose only answer was a reset is
	// deleted at once, so the refusing pod is not known: the attempts keep
	// the service address.
	c.Apply(closedService)
	closed := c.Kubectl("get", "service", "-n", "shop", "closed", "-o", "jsonpath={.spec.clusterIP}") + ":80"
	c.Apply(fmt.Sprintf(proberManifest, closed))
	waitRollout(t, c, "shop", "deployment/prober")
	prober := map[string]string{"namespace": "shop", "workload": "prober"}
	var s scraped
	waitFor(t, "the prober's refused connections", 60*time.Second, func() bool {
		var err error
		if s, err = exp.fetch(); err != nil {
			return false
		}
		total := 0.0
		for _, smp := range s.samples("connection_failed_total", prober) {
			total += smp.value
		}
		return total >= 3
	})
	probers, _ := pods(c, "app=prober")
	for _, smp := range s.samples("connection_failed_total", prober) {
		l := smp.labels
		if l["container"] != "probe" || !slices.Contains(probers, l["pod"]) || l["destination"] != closed || l["actual_destination"] != closed {
			t.Errorf("refused connections counted as %v, want container probe of pod %v to %s", l, probers, closed)
		}
	}
	for _, smp := range s.samples("connection_opened_total", prober) {
		if smp.value != 0 {
			t.Errorf("refused connections counted as opened: %v", smp)
		}
	}
	// Nothing failed on the way: not a kubelet fetch, not a collector.
	for _, smp := range s.samples("connection_exporter_kubelet_errors_total", nil) {
		if smp.value != 0 {
			t.Errorf("kubelet fetches failed: %v", smp)
		}
	}
	for _, smp := range s.samples("connection_exporter_scrape_collector_success", nil) {
		if smp.value != 1 {
			t.Errorf("a collector failed: %v", smp)
		}
	}
}

// watchNames scrapes the exporter every 200 ms, as an eager Prometheus
// would, until the function it returns is called, and fails the test if a
// scrape exported a pod's connection without its container: the label set
// would stay that way for good. A new pod's first connections are made
// while the kubelet does not list its container yet.
func watchNames(t *testing.T, exp *exporter) (stop func()) {
	t.Helper()
	done, stopped := make(chan struct{}), make(chan struct{})
	var bad []string
	go func() {
		defer close(stopped)
		for {
			select {
			case <-done:
				return
			case <-time.After(200 * time.Millisecond):
			}
			s, err := exp.fetch()
			if err != nil {
				continue
			}
			for _, name := range []string{"connection_active", "connection_opened_total", "connection_failed_total"} {
				for _, smp := range s.samples(name, map[string]string{"process": "peer", "container": ""}) {
					bad = append(bad, fmt.Sprintf("%s%v", name, smp.labels))
				}
			}
			if len(bad) > 0 {
				return
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
		if len(bad) > 0 {
			t.Errorf("a pod's connections exported without their container: %v", bad)
		}
	}
}

// closedService is a Service in front of web's pods on a port nothing
// listens on; proberManifest a Deployment that keeps dialling an address.
const closedService = `apiVersion: v1
kind: Service
metadata: {name: closed, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 9}]
`

const proberManifest = `apiVersion: apps/v1
kind: Deployment
metadata: {name: prober, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: prober}}
  template:
    metadata: {labels: {app: prober}}
    spec:
      containers:
      - name: probe
        image: peer:latest
        imagePullPolicy: Never
        args: [connect, "%s", "1"]
`

// The connections the client's pod and the ledger's hold.
const clientConns, ledgerConns = 20, 4

// checkShop checks the exporter's view of the connections the client's
// and the ledger's running pods hold: by backend as web's pods logged
// them, named by their pods. It returns the connections by backend.
func checkShop(t *testing.T, c *kubelab.Cluster, exp *exporter, vip string) map[string]float64 {
	t.Helper()
	clients, clientIPs := pods(c, "app=client")
	ledgers, ledgerIPs := pods(c, "app=ledger")
	peers := append(clientIPs, ledgerIPs...)
	var want map[string]float64
	waitFor(t, "the connections accepted by web", 60*time.Second, func() bool {
		want = accepted(c, peers)
		total := 0.0
		for _, v := range want {
			total += v
		}
		return total == clientConns+ledgerConns
	})
	dst := vip + ":80"
	var s scraped
	got := map[string]float64{}
	waitFor(t, "the connections named and resolved", 60*time.Second, func() bool {
		var err error
		if s, err = exp.fetch(); err != nil {
			return false
		}
		got = map[string]float64{}
		for _, w := range []string{"client", "ledger"} {
			for a, v := range s.byActual("connection_active", map[string]string{"namespace": "shop", "workload": w,
				"destination": dst, "resolver": "conntrack", "destination_workload": "web"}) {
				if v != 0 { // not a label set whose connections all closed
					got[a] += v
				}
			}
		}
		return equal(got, want)
	})
	if !equal(got, want) {
		t.Fatalf("connections to %s by actual destination %v, web's pods accepted %v\n%s", dst, got, want, grep(s.text, "connection_active"))
	}
	for _, w := range []struct {
		workload, container string
		pods                []string
		n                   float64
	}{
		{"client", "app", clients, clientConns},
		{"ledger", "writer", ledgers, ledgerConns},
	} {
		var n float64
		for _, smp := range s.samples("connection_active", map[string]string{"namespace": "shop", "workload": w.workload}) {
			if smp.value == 0 {
				continue // a label set whose connections all closed
			}
			if smp.labels["container"] != w.container || !slices.Contains(w.pods, smp.labels["pod"]) {
				t.Errorf("connection of %s named %v, want container %s and one of the pods %v", w.workload, smp.labels, w.container, w.pods)
			}
			n += smp.value
		}
		if n != w.n {
			t.Errorf("%s holds %v connections, want %v\n%s", w.workload, n, w.n, grep(s.text, "connection_active"))
		}
	}
	_, ips := pods(c, "")
	for _, ip := range ips {
		if len(s.samples("connection_endpoint_info", map[string]string{"ip": ip, "namespace": "shop"})) != 1 {
			t.Errorf("no connection_endpoint_info for pod address %s\n%s", ip, grep(s.text, "connection_endpoint_info"))
		}
	}
	promtoolCheck(t, s.text)
	return got
}
