package e2e

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
)

// sidecarHelper is the body of the sidecar proxy process (E2E_HELPER=
// sidecar): started inside the client namespace as the proxy's uid, it
// relays redirected connections to their original destinations.
func sidecarHelper() int {
	ln, err := net.Listen("tcp4", "127.0.0.1:15001")
	if err != nil {
		fmt.Fprintln(os.Stderr, "sidecar:", err)
		return 1
	}
	fmt.Println("ready")
	go netlab.Proxy(ln, func(addr string) (net.Conn, error) { return net.Dial("tcp4", addr) }, nil)
	io.Copy(io.Discard, os.Stdin) // until the test closes stdin
	return 0
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// podUID returns a random pod uid in Kubernetes' form.
func podUID() string {
	h := randomHex(16)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// cgroupRoot is the cgroup v2 hierarchy: /sys/fs/cgroup on unified hosts,
// /sys/fs/cgroup/unified on hybrid ones.
func cgroupRoot(t *testing.T) string {
	t.Helper()
	root, err := netlab.CgroupRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// containerCgroup creates the cgroup the kubelet's cgroupfs driver gives a
// container, /kubepods/besteffort/pod<uid>/<id>, and removes it at cleanup
// (register it before starting the processes that join it).
func containerCgroup(t *testing.T, uid, id string) string {
	t.Helper()
	root := cgroupRoot(t)
	rel := filepath.Join("kubepods", "besteffort", "pod"+uid, id)
	if err := os.MkdirAll(filepath.Join(root, rel), 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		for p := rel; p != "."; p = filepath.Dir(p) {
			if err := os.Remove(filepath.Join(root, p)); err != nil && !os.IsNotExist(err) {
				if p == rel {
					t.Errorf("remove cgroup %s: %v", p, err)
				}
				return // a parent still holds another container's cgroup
			}
		}
	})
	return filepath.Join(root, rel)
}

// kubePod describes one pod of the fake kubelet's answer.
type kubePod struct {
	namespace, name, uid, rs, hash string
	ips                            []string
	hostNetwork                    bool
	containers                     map[string]string // name -> id
}

// fakeKubelet serves a PodList of pods in the kubelet's JSON shape over
// TLS, requiring the bearer token.
func fakeKubelet(t *testing.T, pods []kubePod) (url, caFile, tokenFile string) {
	return fakeKubeletOf(t, func() []kubePod { return pods })
}

// fakeKubeletOf is fakeKubelet answering each request with the pods that
// list returns then.
func fakeKubeletOf(t *testing.T, list func() []kubePod) (url, caFile, tokenFile string) {
	t.Helper()
	token := randomHex(16)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/pods" || r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		body, err := podListJSON(list())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	caFile, tokenFile = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "token")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	os.WriteFile(tokenFile, []byte(token), 0o600)
	return srv.URL, caFile, tokenFile
}

// podListJSON renders pods as the kubelet's /pods answer.
func podListJSON(pods []kubePod) ([]byte, error) {
	items := []map[string]any{}
	for _, p := range pods {
		var statuses []map[string]any
		var specs []map[string]any
		for name, id := range p.containers {
			specs = append(specs, map[string]any{"name": name, "image": name + ":1"})
			statuses = append(statuses, map[string]any{"name": name, "ready": true, "restartCount": 0,
				"state": map[string]any{"running": map[string]any{"startedAt": "2026-11-25T10:00:00Z"}},
				"image": name + ":1", "imageID": "", "containerID": "containerd://" + id, "started": true})
		}
		var podIPs []map[string]string
		for _, ip := range p.ips {
			podIPs = append(podIPs, map[string]string{"ip": ip})
		}
		items = append(items, map[string]any{
			"metadata": map[string]any{
				"name": p.name, "namespace": p.namespace, "uid": p.uid,
				"labels": map[string]string{"app": p.rs, "pod-template-hash": p.hash},
				"ownerReferences": []map[string]any{{"apiVersion": "apps/v1", "kind": "ReplicaSet",
					"name": p.rs + "-" + p.hash, "uid": podUID(), "controller": true, "blockOwnerDeletion": true}},
			},
			"spec":   map[string]any{"containers": specs, "nodeName": "node-1", "hostNetwork": p.hostNetwork},
			"status": map[string]any{"phase": "Running", "podIP": p.ips[0], "podIPs": podIPs, "containerStatuses": statuses},
		})
	}
	return json.Marshal(map[string]any{"kind": "PodList", "apiVersion": "v1", "metadata": map[string]any{}, "items": items})
}

// kubeCluster is the kube-proxy cluster with pods named by a fake kubelet:
// a "client" Deployment pod holding the client namespace, and three "nginx"
// Deployment pods as backends.
type kubeCluster struct {
	*netlab.Cluster
	client             kubePod
	pods               []kubePod // the client first, then the backends
	appID, proxyID     string
	kubelet, ca, token string
}

func newKubeCluster(t *testing.T) *kubeCluster {
	t.Helper()
	lab := netlab.New(t)
	k := &kubeCluster{Cluster: lab.KubeProxy(), appID: randomHex(32), proxyID: randomHex(32)}
	k.client = kubePod{namespace: "shop", name: "client-6f7d8c9b5-x7k2p", uid: podUID(), rs: "client", hash: "6f7d8c9b5",
		ips: []string{"10.77.1.2", "fd77:1::2"}, containers: map[string]string{"app": k.appID, "istio-proxy": k.proxyID}}
	pods := []kubePod{k.client}
	for i, b := range k.Backends {
		pods = append(pods, kubePod{namespace: "shop", name: fmt.Sprintf("nginx-5d9c7b6f4-%05d", i), uid: podUID(), rs: "nginx",
			hash: "5d9c7b6f4", ips: []string{b.Addr4.String(), b.Addr6.String()}, containers: map[string]string{"nginx": randomHex(32)}})
	}
	k.pods = pods
	k.kubelet, k.ca, k.token = fakeKubelet(t, pods)
	return k
}

func (k *kubeCluster) exporterArgs() []string {
	return []string{"--kubelet.url=" + k.kubelet, "--kubelet.ca-file=" + k.ca, "--kubelet.token-file=" + k.token}
}

// app starts the application container: bash named "app", in the client
// pod's cgroup and namespace, holding n connections to dst.
func (k *kubeCluster) app(t *testing.T, n int, dst netip.AddrPort) {
	t.Helper()
	startInCgroup(t, containerCgroup(t, k.client.uid, k.appID), "app", k.Client, n, dst)
}

// startInCgroup starts bash named name in namespace ns (nil: the test's
// own), moves it into cgroup cg, and has it open n connections to dst,
// held until the test ends.
func startInCgroup(t *testing.T, cg, name string, ns *netlab.NS, n int, dst netip.AddrPort) {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), name)
	if err := os.Symlink(bash, link); err != nil {
		t.Fatal(err)
	}
	// ip netns exec remounts /sys, hiding the cgroup tree: the test moves
	// the process into its cgroup, and the script connects only then.
	script := "echo ready; read -r _; "
	for i := range n {
		script += fmt.Sprintf("exec %d<>/dev/tcp/%s/%d || exit 1; ", i+3, dst.Addr(), dst.Port())
	}
	script += "echo ready; read -r _"
	argv := []string{link, "-c", script}
	if ns != nil {
		argv = append([]string{"ip", "netns", "exec", ns.Name}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	stdin, out := waitReady(t, cmd, name)
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(fmt.Sprint(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatalf("move the %s into its cgroup: %v", name, err)
	}
	io.WriteString(stdin, "go\n")
	if line, err := out.ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("%s did not connect: %q %v", name, line, err)
	}
}

// sidecar starts the proxy container: this test binary named "envoy", as
// the proxy's uid, in the client pod's cgroup and namespace, with the
// redirect installed.
func (k *kubeCluster) sidecar(t *testing.T) {
	t.Helper()
	cg := containerCgroup(t, k.client.uid, k.proxyID)
	k.Client.Run("iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "!", "-d", "127.0.0.0/8",
		"-m", "owner", "!", "--uid-owner", fmt.Sprint(netlab.SidecarUID), "-j", "REDIRECT", "--to-ports", "15001")
	cmd, _ := startHelperAs(t, k.Client, netlab.SidecarUID, "envoy", "sidecar")
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(fmt.Sprint(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatalf("move the sidecar into its cgroup: %v", err)
	}
}

// startHelperAs runs this test binary as uid in ns, copied under name so
// that its process is called that, with E2E_HELPER=helper and env added to
// its environment. It waits for the helper to say ready (see waitReady) and
// returns the command and the helper's further output.
func startHelperAs(t *testing.T, ns *netlab.NS, uid int, name, helper string, env ...string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(filepath.Dir(binary), name)
	if err := copyFile(self, path); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "setpriv", fmt.Sprintf("--reuid=%d", uid),
		fmt.Sprintf("--regid=%d", uid), "--clear-groups", path, "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "E2E_HELPER="+helper), env...)
	_, out := waitReady(t, cmd, name)
	return cmd, out
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// waitReady starts cmd, waits for it to print "ready", and stops it at
// cleanup by closing its standard input. It returns the process's input
// and output for further exchanges.
func waitReady(t *testing.T, cmd *exec.Cmd, name string) (io.Writer, *bufio.Reader) {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	out := bufio.NewReader(stdout)
	line, err := out.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("%s did not start: %q %v %s", name, line, err, stderr.String())
	}
	return stdin, out
}

// accepted counts every backend's accepted connections by address.
func (k *kubeCluster) accepted() map[string]float64 {
	out := map[string]float64{}
	for _, b := range k.Backends {
		for a, n := range b.Server.All() {
			out[a.String()] += float64(n)
		}
	}
	return out
}

// TestKubeletNamesKubeProxy: the kube-proxy scenario with pod names from
// the kubelet: the client container, its pod, namespace and Deployment, and
// the Deployment behind each actual destination.
func TestKubeletNamesKubeProxy(t *testing.T) {
	k := newKubeCluster(t)
	exp := startExporter(t, k.Node, k.exporterArgs()...)
	dst := netip.AddrPortFrom(k.VIP4, k.Port)
	k.app(t, 6, dst)
	want := awaitAccepted(t, k, 6)

	s := exp.scrape()
	match := map[string]string{"namespace": "shop", "pod": k.client.name, "container": "app", "workload": "client",
		"process": "app", "destination": dst.String(), "resolver": "conntrack", "destination_workload": "nginx"}
	if got := s.byActual("connection_active", match); !equal(got, want) {
		t.Errorf("connection_active %v = %v, backends saw %v\n%s", match, got, want, grep(s.text, "connection_active"))
	}
	if got := s.samples("connection_endpoint_info", map[string]string{"workload": "nginx", "namespace": "shop"}); len(got) != 6 {
		t.Errorf("connection_endpoint_info for nginx: %d series, want 6 (three pods, two addresses each)", len(got))
	}
}

// TestKubeletNamesSidecar: the Istio scenario with pod names: the
// application's connections go to its sidecar in the same pod, the
// sidecar's own connections to the nginx pods.
func TestKubeletNamesSidecar(t *testing.T) {
	k := newKubeCluster(t)
	k.sidecar(t)
	exp := startExporter(t, k.Node, k.exporterArgs()...)
	dst := netip.AddrPortFrom(k.VIP4, k.Port)
	k.app(t, 4, dst)
	want := awaitAccepted(t, k, 4)

	s := exp.scrape()
	app := s.byActual("connection_active", map[string]string{"pod": k.client.name, "container": "app", "workload": "client",
		"destination": dst.String(), "resolver": "conntrack_netns"})
	if w := map[string]float64{"127.0.0.1:15001": 4}; !equal(app, w) {
		t.Errorf("application connections %v, want %v\n%s", app, w, grep(s.text, "connection_active"))
	}
	proxy := s.byActual("connection_active", map[string]string{"pod": k.client.name, "container": "istio-proxy", "workload": "client",
		"process": "envoy", "destination": dst.String(), "resolver": "conntrack", "destination_workload": "nginx"})
	if !equal(proxy, want) {
		t.Errorf("sidecar connections %v, backends saw %v\n%s", proxy, want, grep(s.text, "connection_active"))
	}
}

// awaitAccepted waits until the backends have accepted n connections in
// all and returns their counts.
func awaitAccepted(t *testing.T, k *kubeCluster, n int) map[string]float64 {
	t.Helper()
	var got map[string]float64
	for range 400 {
		got = k.accepted()
		total := 0.0
		for _, v := range got {
			total += v
		}
		if total >= float64(n) {
			return got
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("backends accepted %v, want %d connections", got, n)
	return nil
}

func grep(text, prefix string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestKubeletDown: with the kubelet unreachable, connections are still
// exported, named by their process, and the failures are counted.
func TestKubeletDown(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("token"), 0o600)
	exp := startExporter(t, cl.Node, "--kubelet.url=https://"+dead, "--kubelet.insecure-skip-verify",
		"--kubelet.token-file="+tok, "--kubelet.refresh-interval=200ms")
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)
	want := truth(t, cl, sources(dialAll(t, cl.Client, dst, 3)))
	time.Sleep(300 * time.Millisecond)
	// A process outside the host's namespace and outside any known pod may
	// belong to a pod the kubelet has not listed yet: its naming waits up to
	// --collector.resolve-attempts scrapes, then falls back to the process.
	var s scraped
	for range 3 {
		s = exp.scrape()
	}
	if got := s.byActual("connection_active", map[string]string{"process": process(t), "workload": process(t), "pod": "", "destination": dst.String()}); !equal(got, want) {
		t.Errorf("connection_active = %v, backends saw %v", got, want)
	}
	if errs := s.samples("connection_exporter_kubelet_errors_total", map[string]string{"reason": "connect"}); len(errs) != 1 || errs[0].value < 1 {
		t.Errorf("kubelet errors not counted: %v\n%s", errs, grep(s.text, "connection_exporter_kubelet"))
	}
	if n := strings.Count(exp.logs.String(), "cannot list pods from the kubelet"); n < 1 {
		t.Errorf("kubelet failure not logged")
	}
}

// TestKubeletNamesHostNetworkPod: a hostNetwork pod's process shares the
// host's namespace, and only its cgroup ties it to its pod. The pod starts
// after the kubelet's last list, as any pod does for up to
// --kubelet.refresh-interval: its connections wait for the pod's name
// instead of keeping the process's.
func TestKubeletNamesHostNetworkPod(t *testing.T) {
	agentID := randomHex(32)
	agent := hostAgentPod(map[string]string{"agent": agentID})
	other := kubePod{namespace: "shop", name: "web-6b7c8d9f5-m2n3p", uid: podUID(), rs: "web", hash: "6b7c8d9f5",
		ips: []string{"10.77.9.2"}, containers: map[string]string{"web": randomHex(32)}}
	var listed atomic.Bool
	exp := kubeletExporter(t, func() []kubePod {
		if listed.Load() {
			return []kubePod{other, agent}
		}
		return []kubePod{other}
	})
	dst := startHostAgent(t, agent.uid, agentID)
	got := namedLate(t, exp, dst, func() { listed.Store(true) })
	checkLabels(t, got, map[string]string{"namespace": "monitoring", "pod": agent.name, "container": "agent",
		"workload": "node-agent", "process": "agent", "actual_destination": dst.String(), "resolver": "none"})
}

// TestKubeletNamesRestartedContainer: a container that started in a
// listed pod since the last list (a restart) has its connections wait for
// the container's name, rather than keep the pod's alone.
func TestKubeletNamesRestartedContainer(t *testing.T) {
	oldID, newID := randomHex(32), randomHex(32)
	before := hostAgentPod(map[string]string{"agent": oldID})
	after := before
	after.containers = map[string]string{"agent": newID}
	var listed atomic.Bool
	exp := kubeletExporter(t, func() []kubePod {
		if listed.Load() {
			return []kubePod{after}
		}
		return []kubePod{before}
	})
	dst := startHostAgent(t, before.uid, newID)
	got := namedLate(t, exp, dst, func() { listed.Store(true) })
	checkLabels(t, got, map[string]string{"namespace": "monitoring", "pod": before.name, "container": "agent",
		"workload": "node-agent", "process": "agent"})
}

// hostAgentPod is a hostNetwork pod of a Deployment "node-agent" with the
// given containers (name -> id).
func hostAgentPod(containers map[string]string) kubePod {
	return kubePod{namespace: "monitoring", name: "node-agent-7f9c8d6b5-q4w8z", uid: podUID(), rs: "node-agent", hash: "7f9c8d6b5",
		ips: []string{"192.0.2.10"}, hostNetwork: true, containers: containers}
}

// kubeletExporter starts an exporter naming from a fake kubelet that
// answers with list, refreshed every 200 ms, and waits for its first list.
func kubeletExporter(t *testing.T, list func() []kubePod) *exporter {
	t.Helper()
	url, ca, token := fakeKubeletOf(t, list)
	exp := startExporter(t, nil, "--kubelet.url="+url, "--kubelet.ca-file="+ca, "--kubelet.token-file="+token,
		"--kubelet.refresh-interval=200ms", "--collector.resolve-attempts=100")
	waitFor(t, "the first pod list", 15*time.Second, func() bool {
		pods := exp.scrapeQuiet().samples("connection_exporter_kubelet_pods", nil)
		return len(pods) == 1 && pods[0].value >= 1
	})
	return exp
}

// startHostAgent starts bash named "agent" in the host's namespace, in the
// cgroup of container id of pod uid, holding two connections to a loopback
// listener of the test's, whose address it returns.
func startHostAgent(t *testing.T, uid, id string) netip.AddrPort {
	t.Helper()
	dst, _ := holdingListener(t)
	startInCgroup(t, containerCgroup(t, uid, id), "agent", nil, 2, dst)
	return dst
}
