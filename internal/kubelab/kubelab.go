// Package kubelab boots a real single-node Kubernetes cluster for end-to-end
// tests: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
// containerd, kubelet and kube-proxy, the Kubernetes programs built from
// source by scripts/kube-binaries, containerd, runc and the CNI plugins from
// Debian. Every daemon runs in a network namespace of the test's own (the
// node), linked to the test's namespace so that the test reaches the API
// server and the node's ports at the node's address. Pods never pull: their
// images are built FROM scratch around static programs and imported.
//
// Everything is removed at cleanup, even when the test fails: daemons and
// container shims, the pods' processes, mounts, cgroups and network
// namespaces, and the files the kubelet and containerd write outside the
// lab's folder; the host-wide sysctls the kubelet changes are put back.
package kubelab

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/connection-exporter/connection_exporter/internal/lab"
	"github.com/connection-exporter/connection_exporter/internal/netlab"
	"github.com/connection-exporter/connection_exporter/internal/netns"
)

// TB is what the lab needs of a test.
type TB = lab.TB

// Options change the cluster a test boots.
type Options struct {
	// ProxyMode is kube-proxy's mode: iptables (the default) or nftables.
	ProxyMode string
	// ServingCertFromCA has the kubelet serve with a certificate the
	// cluster CA signed for the node's name and address. Without, the
	// kubelet makes its own self-signed one, naming the node alone, as a
	// kubelet does by default.
	ServingCertFromCA bool
}

// The cluster's networks: the node's link to the test, pods, services.
const (
	hostSide    = "10.254.200.1/30"
	nodeSide    = "10.254.200.2/30"
	podCIDR     = "10.244.0.0/24"
	serviceCIDR = "10.96.0.0/24"
	apiService  = "10.96.0.1"
	// PauseImage is the sandbox image containerd is configured with.
	PauseImage = "registry.k8s.io/pause:3.10"
)

// Cluster is a running single-node cluster.
type Cluster struct {
	t TB
	// Name is the node's name; NodeIP its address, reachable from the
	// test.
	Name   string
	NodeIP netip.Addr
	// Node is the node's network namespace, where every daemon runs and
	// host-network pods live.
	Node *netlab.NS
	// Dir holds everything the cluster writes; Bin the programs.
	Dir, Bin string
	// CA is the cluster CA's certificate file.
	CA string

	opts       Options
	pki        *pki
	admin      string // the admin's kubeconfig
	containerd string // its socket
	cgroupRoot string // the kubelet's, under every hierarchy
	daemons    []*daemon
}

// daemon is one of the cluster's processes.
type daemon struct {
	name string
	cmd  *exec.Cmd
	logs *lab.Output
	done chan struct{}
}

// Start boots a cluster and waits for its node to be Ready. It skips the
// test when not root and fails it when a program is missing (scripts/deps
// and scripts/kube-binaries install them).
func Start(t TB, opts Options) *Cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a Kubernetes node needs root")
	}
	for _, tool := range []string{"containerd", "runc", "ctr", "nsenter", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (scripts/deps installs it): %v", tool, err)
		}
	}
	for _, plugin := range []string{"ptp", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cniBin, plugin)); err != nil {
			t.Fatalf("the CNI plugin %s is needed (apt-get install containernetworking-plugins): %v", plugin, err)
		}
	}
	if opts.ProxyMode == "" {
		opts.ProxyMode = "iptables"
	}
	bin, err := lab.Script("kube-binaries")
	if err != nil {
		t.Fatalf("kubernetes programs: %v", err)
	}
	// Short: containerd's sockets live under it.
	dir, err := os.MkdirTemp("/tmp", "kl")
	if err != nil {
		t.Fatalf("%v", err)
	}
	name := "kubelab-" + filepath.Base(dir)[2:]
	c := &Cluster{t: t, Name: name, Dir: dir, Bin: bin, opts: opts,
		NodeIP: netip.MustParsePrefix(nodeSide).Addr(), cgroupRoot: name}
	restore := c.hostState()
	// The node's namespace and link first, so that their cleanup runs
	// after the daemons' (cleanups run last registered first).
	net := netlab.New(t)
	c.Node = net.NetNS("kube")
	net.HostLink(c.Node, hostSide, nodeSide)
	t.Cleanup(func() {
		c.stop()
		restore()
		if f, ok := t.(interface{ Failed() bool }); ok && f.Failed() {
			c.dumpLogs()
		}
		os.RemoveAll(dir)
	})
	c.Node.Run("sysctl", "-qw", "net.ipv4.ip_forward=1")
	if err := c.setup(); err != nil {
		t.Fatalf("set the cluster up: %v", err)
	}
	c.boot()
	return c
}

// cniBin is where Debian's containernetworking-plugins installs them.
const cniBin = "/usr/lib/cni"

// path returns a file of the cluster's folder.
func (c *Cluster) path(parts ...string) string {
	return filepath.Join(append([]string{c.Dir}, parts...)...)
}

// setup writes the certificates and configuration files.
func (c *Cluster) setup() error {
	for _, d := range []string{"pki", "etcd", "containerd", "cni/net.d", "cni/ipam", "kubelet", "pod-logs", "kubectl-cache"} {
		if err := os.MkdirAll(c.path(d), 0o755); err != nil {
			return err
		}
	}
	p, err := newPKI(c.path("pki"))
	if err != nil {
		return err
	}
	c.pki, c.CA = p, p.path("ca.crt")
	node := net.IP(c.NodeIP.AsSlice())
	loop := net.IPv4(127, 0, 0, 1)
	for _, cert := range []struct {
		name, cn, org string
		ips           []net.IP
		dns           []string
	}{
		{"apiserver", "kube-apiserver", "", []net.IP{node, net.ParseIP(apiService), loop},
			[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"}},
		{"admin", "kubelab-admin", "system:masters", nil, nil},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters", nil, nil},
		{"controller-manager", "system:kube-controller-manager", "", nil, nil},
		{"scheduler", "system:kube-scheduler", "", nil, nil},
		{"kube-proxy", "system:kube-proxy", "", nil, nil},
		{"kubelet", "system:node:" + c.Name, "system:nodes", nil, nil},
		{"kubelet-serving", c.Name, "system:nodes", []net.IP{node}, []string{c.Name}},
	} {
		if err := p.issue(cert.name, cert.cn, cert.org, cert.ips, cert.dns); err != nil {
			return fmt.Errorf("certificate %s: %w", cert.name, err)
		}
	}
	if err := p.serviceAccountKeys(); err != nil {
		return err
	}
	server := "https://" + net.JoinHostPort(c.NodeIP.String(), "6443")
	for _, name := range []string{"admin", "controller-manager", "scheduler", "kube-proxy", "kubelet"} {
		kc, err := p.kubeconfig(name, server)
		if err != nil {
			return err
		}
		if name == "admin" {
			c.admin = kc
		}
	}
	c.containerd = c.path("containerd", "c.sock")
	files := map[string]string{
		"containerd/config.toml": fmt.Sprintf(containerdConfig, c.path("containerd", "root"), c.path("containerd", "state"),
			c.containerd, PauseImage, c.path("containerd", "runc"), cniBin, c.path("cni", "net.d")),
		"cni/net.d/10-kubelab.conflist": fmt.Sprintf(cniConfig, podCIDR, c.path("cni", "ipam")),
		"kubelet/config.yaml":           c.kubeletConfig(),
		"kube-proxy.yaml": fmt.Sprintf(kubeProxyConfig, p.path("kube-proxy.kubeconfig"), c.opts.ProxyMode, podCIDR,
			c.Name, c.NodeIP),
	}
	for name, content := range files {
		if err := os.WriteFile(c.path(name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return c.makeCgroupRoot()
}

// kubeletConfig is the kubelet's configuration file.
func (c *Cluster) kubeletConfig() string {
	serving := ""
	if c.opts.ServingCertFromCA {
		serving = fmt.Sprintf("tlsCertFile: %s\ntlsPrivateKeyFile: %s\n", c.pki.path("kubelet-serving.crt"), c.pki.path("kubelet-serving.key"))
	}
	return fmt.Sprintf(kubeletConfig, c.CA, "/"+c.cgroupRoot, c.containerd, c.path("pod-logs")) + serving
}

// boot starts the daemons in order, each once the one before answers.
func (c *Cluster) boot() {
	c.t.Helper()
	p := c.pki
	c.run("etcd", c.Bin+"/etcd", "--name=kubelab", "--data-dir="+c.path("etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=kubelab=http://127.0.0.1:2380", "--log-level=warn")
	c.await("etcd", 30*time.Second, func() error {
		return c.dialInNode("127.0.0.1:2379")
	})
	c.run("kube-apiserver", c.Bin+"/kube-apiserver",
		"--etcd-servers=http://127.0.0.1:2379", "--bind-address=0.0.0.0", "--advertise-address="+c.NodeIP.String(),
		"--secure-port=6443", "--service-cluster-ip-range="+serviceCIDR,
		"--tls-cert-file="+p.path("apiserver.crt"), "--tls-private-key-file="+p.path("apiserver.key"),
		"--client-ca-file="+c.CA, "--service-account-key-file="+p.path("sa.pub"),
		"--service-account-signing-key-file="+p.path("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction", "--allow-privileged=true",
		"--kubelet-client-certificate="+p.path("apiserver-kubelet-client.crt"),
		"--kubelet-client-key="+p.path("apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP")
	c.await("the API server", 90*time.Second, func() error {
		_, err := c.TryKubectl("get", "--raw", "/readyz")
		return err
	})
	c.run("kube-controller-manager", c.Bin+"/kube-controller-manager",
		"--kubeconfig="+p.path("controller-manager.kubeconfig"), "--service-account-private-key-file="+p.path("sa.key"),
		"--root-ca-file="+c.CA, "--cluster-signing-cert-file="+c.CA, "--cluster-signing-key-file="+p.path("ca.key"),
		"--use-service-account-credentials=true", "--leader-elect=false", "--bind-address=127.0.0.1",
		"--controllers=*,-nodeipam")
	c.run("kube-scheduler", c.Bin+"/kube-scheduler", "--kubeconfig="+p.path("scheduler.kubeconfig"),
		"--leader-elect=false", "--bind-address=127.0.0.1")
	c.run("containerd", "containerd", "--config="+c.path("containerd", "config.toml"))
	c.await("containerd", 30*time.Second, func() error {
		_, err := c.ctr("version")
		return err
	})
	c.importPause()
	c.run("kubelet", c.Bin+"/kubelet", "--config="+c.path("kubelet", "config.yaml"),
		"--kubeconfig="+p.path("kubelet.kubeconfig"), "--root-dir="+c.path("kubelet", "root"),
		"--cert-dir="+c.path("kubelet", "pki"), "--hostname-override="+c.Name, "--node-ip="+c.NodeIP.String())
	c.run("kube-proxy", c.Bin+"/kube-proxy", "--config="+c.path("kube-proxy.yaml"))
	c.await("the node to be Ready", 120*time.Second, func() error {
		out, err := c.TryKubectl("get", "node", c.Name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err != nil {
			return err
		}
		if out != "True" {
			return fmt.Errorf("the node's Ready condition is %q", out)
		}
		return nil
	})
	c.await("the default service account", 60*time.Second, func() error {
		_, err := c.TryKubectl("get", "serviceaccount", "default")
		return err
	})
}

// run starts a daemon in the node's network namespace.
func (c *Cluster) run(name, bin string, args ...string) {
	c.t.Helper()
	d := &daemon{name: name, logs: &lab.Output{}, done: make(chan struct{})}
	d.cmd = exec.Command("nsenter", append([]string{"--net=" + c.Node.Path(), bin}, args...)...)
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	d.cmd.Env = append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	if err := d.cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	c.daemons = append(c.daemons, d)
}

// await polls ready until it succeeds, failing the test after timeout or
// when a daemon exits.
func (c *Cluster) await(what string, timeout time.Duration, ready func() error) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = ready(); err == nil {
			return
		}
		for _, d := range c.daemons {
			select {
			case <-d.done:
				c.t.Fatalf("%s exited while waiting for %s:\n%s", d.name, what, tail(d.logs.String(), 4000))
			default:
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.t.Fatalf("waiting for %s: %v", what, err)
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// dialInNode connects to addr from inside the node's namespace.
func (c *Cluster) dialInNode(addr string) error {
	conn, err := c.Node.Dial("tcp", addr)
	if err == nil {
		conn.Close()
	}
	return err
}

// Kubectl runs kubectl as the cluster's admin and returns its output,
// failing the test on error.
func (c *Cluster) Kubectl(args ...string) string {
	c.t.Helper()
	out, err := c.TryKubectl(args...)
	if err != nil {
		c.t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// TryKubectl is Kubectl returning the error, with kubectl's output in it.
func (c *Cluster) TryKubectl(args ...string) (string, error) {
	return c.kubectlIn(nil, args...)
}

// Apply applies manifests given on standard input.
func (c *Cluster) Apply(manifest string) {
	c.t.Helper()
	if _, err := c.kubectlIn(strings.NewReader(manifest), "apply", "-f", "-"); err != nil {
		c.t.Fatalf("kubectl apply: %v\n%s", err, manifest)
	}
}

func (c *Cluster) kubectlIn(stdin *strings.Reader, args ...string) (string, error) {
	// Longer than the longest --timeout a test passes (rollout status).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Bin+"/kubectl", append([]string{"--kubeconfig=" + c.admin, "--cache-dir=" + c.path("kubectl-cache")}, args...)...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// Kubeconfig returns the admin's kubeconfig file, for other clients (helm).
func (c *Cluster) Kubeconfig() string { return c.admin }

// ctr runs ctr against the cluster's containerd, in its k8s.io namespace.
func (c *Cluster) ctr(args ...string) (string, error) {
	out, err := exec.Command("ctr", append([]string{"--address", c.containerd, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Import imports an image into the cluster's containerd, where pods find
// it without pulling (their imagePullPolicy must not be Always).
func (c *Cluster) Import(img Image) {
	c.t.Helper()
	tarball, err := img.archive(c.Dir)
	if err != nil {
		c.t.Fatalf("image %s: %v", img.Ref, err)
	}
	defer os.Remove(tarball)
	if _, err := c.ctr("images", "import", tarball); err != nil {
		c.t.Fatalf("import %s: %v", img.Ref, err)
	}
}

// importPause builds and imports the sandbox image.
func (c *Cluster) importPause() {
	c.t.Helper()
	bin := lab.BuildStatic(c.t, "github.com/connection-exporter/connection_exporter/internal/kubelab/pause", c.Dir, "pause")
	c.Import(Image{Ref: PauseImage, Binary: bin, Path: "/pause"})
}

// Logs returns a daemon's output so far.
func (c *Cluster) Logs(name string) string {
	for _, d := range c.daemons {
		if d.name == name {
			return d.logs.String()
		}
	}
	return ""
}

// dumpLogs logs the end of every daemon's output.
func (c *Cluster) dumpLogs() {
	for _, d := range c.daemons {
		c.t.Logf("%s log:\n%s", d.name, tail(d.logs.String(), 6000))
	}
}

// sysctls are the host-wide settings the kubelet changes (its
// setupKernelTunables, protectKernelDefaults off).
var sysctls = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

// hostState records what the cluster changes outside its folder and the
// node's namespace, and returns the function that puts it back.
func (c *Cluster) hostState() func() {
	saved := map[string][]byte{}
	for _, s := range sysctls {
		if b, err := os.ReadFile("/proc/sys/" + s); err == nil {
			saved[s] = b
		}
	}
	had := existing(sharedDirs)
	pinned := netnsNames()
	return func() {
		for s, b := range saved {
			os.WriteFile("/proc/sys/"+s, b, 0o644)
		}
		removeNew(sharedDirs, had)
		// The pods' network namespaces, which containerd pins under
		// /run/netns; one that a process is in is another runtime's.
		inUse := netnsInUse()
		for name := range netnsNames() {
			if pinned[name] || !strings.HasPrefix(name, "cni-") {
				continue
			}
			var st syscall.Stat_t
			if err := syscall.Stat(filepath.Join("/run/netns", name), &st); err == nil && !inUse[uint32(st.Ino)] {
				exec.Command("ip", "netns", "delete", name).Run()
			}
		}
	}
}

// netnsInUse returns the inodes of the network namespaces processes are
// in.
func netnsInUse() map[uint32]bool {
	m := map[uint32]bool{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "net"))
		if err != nil {
			continue
		}
		if ino, ok := netns.ParseLink(target); ok {
			m[ino] = true
		}
	}
	return m
}

// sharedDirs are the folders outside the lab's own that the kubelet and
// containerd write to whatever their configuration says: containerd 1.6
// puts its shims' sockets in /run/containerd/s, a fixed path.
var sharedDirs = []string{"/var/log/containers", "/var/log/pods", "/var/lib/kubelet", "/run/containerd", "/var/lib/cni"}

// existing returns every path in and under dirs.
func existing(dirs []string) map[string]bool {
	had := map[string]bool{}
	for _, d := range dirs {
		filepath.WalkDir(d, func(path string, _ os.DirEntry, err error) error {
			if err == nil {
				had[path] = true
			}
			return nil
		})
	}
	return had
}

// removeNew removes what is in and under dirs but not in had, mounts
// first: a folder made since, with all it holds, or a file, but for a
// socket something listens on (another containerd's shim).
func removeNew(dirs []string, had map[string]bool) {
	bound := boundSockets()
	for _, d := range dirs {
		filepath.WalkDir(d, func(path string, e os.DirEntry, err error) error {
			if err != nil || had[path] || bound[path] {
				return nil
			}
			lab.UnmountUnder(path)
			os.RemoveAll(path)
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		})
	}
}

// boundSockets returns the paths of the Unix sockets bound in this
// network namespace.
func boundSockets() map[string]bool {
	m := map[string]bool{}
	b, _ := os.ReadFile("/proc/net/unix")
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) == 8 && strings.HasPrefix(f[7], "/") {
			m[f[7]] = true
		}
	}
	return m
}

// netnsNames returns the names of the namespaces pinned under /run/netns.
func netnsNames() map[string]bool {
	entries, _ := os.ReadDir("/run/netns")
	m := map[string]bool{}
	for _, e := range entries {
		m[e.Name()] = true
	}
	return m
}

// makeCgroupRoot creates the kubelet's cgroup root in every hierarchy, as
// it wants it there before it starts.
func (c *Cluster) makeCgroupRoot() error {
	for _, h := range lab.CgroupHierarchies() {
		if err := os.MkdirAll(filepath.Join(h, c.cgroupRoot), 0o755); err != nil {
			return fmt.Errorf("cgroup root in %s: %w", h, err)
		}
	}
	return nil
}

// stop stops everything the cluster runs: the kubelet first, then the
// pods' processes and containerd's shims, then the other daemons; then it
// removes the mounts and cgroups they left.
func (c *Cluster) stop() {
	for _, name := range []string{"kubelet", "kube-proxy"} {
		c.stopDaemon(name)
	}
	// The pods' processes, wherever they are in the kubelet's tree.
	for range 3 {
		killCgroupTree(c.cgroupRoot)
	}
	killShims(c.containerd)
	for i := len(c.daemons) - 1; i >= 0; i-- {
		c.stopDaemon(c.daemons[i].name)
	}
	// And those containerd started while it stopped (shim delete), which
	// would make their socket under /run/containerd after the cleanup.
	killShims(c.containerd)
	lab.UnmountUnder(c.Dir)
	lab.RemoveCgroups(c.t, c.cgroupRoot)
}

// stopDaemon stops one daemon: SIGTERM, then SIGKILL after 10 seconds.
func (c *Cluster) stopDaemon(name string) {
	for _, d := range c.daemons {
		if d.name != name || d.cmd.Process == nil {
			continue
		}
		select {
		case <-d.done:
			continue
		default:
		}
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			<-d.done
		}
	}
}

// killCgroupTree kills every process in the cgroup name, and those under
// it, in every hierarchy.
func killCgroupTree(name string) {
	for _, h := range lab.CgroupHierarchies() {
		filepath.WalkDir(filepath.Join(h, name), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(path)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			return nil
		})
	}
	time.Sleep(200 * time.Millisecond)
}

// killShims kills the shims of the containerd at socket until none is
// left, for up to two seconds.
func killShims(socket string) {
	for range 20 {
		pids := shims(socket)
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// shims returns the containerd shims serving the containerd at socket:
// they leave containerd's process group and live on without it.
func shims(socket string) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmd, "containerd-shim") && strings.Contains(cmd, socket) {
			out = append(out, pid)
		}
	}
	return out
}
