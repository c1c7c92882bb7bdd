package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/connection-exporter/connection_exporter/internal/dockerlab"
	"github.com/connection-exporter/connection_exporter/internal/lab"
	"github.com/connection-exporter/connection_exporter/internal/netlab"
)

// dockerLab starts a private daemon with the peer image built.
func dockerLab(t *testing.T, opts ...dockerlab.Option) *dockerlab.Daemon {
	t.Helper()
	d := dockerlab.Start(t, opts...)
	bin := lab.BuildStatic(t, "github.com/connection-exporter/connection_exporter/internal/dockerlab/peer", t.TempDir(), "peer")
	d.BuildImage("peer", bin)
	return d
}

// dockerArgs points the exporter at the private daemon. The tests poll
// with scrapes a few hundred milliseconds apart, where Prometheus scrapes
// every 15 s or so: give a new container's connections as much time as
// they would have before they are named by their process.
func dockerArgs(d *dockerlab.Daemon) []string {
	return []string{"--docker.host=" + d.Host, "--path.docker-netns=" + filepath.Join(d.ExecRoot, "netns"),
		"--collector.resolve-attempts=100"}
}

// accepted counts the "accepted" lines of a peer server container.
func acceptedBy(d *dockerlab.Daemon, container string) int {
	out, _ := d.TryDocker("logs", container)
	return strings.Count(out, "accepted ")
}

// waitFor polls cond for up to timeout.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func containerIP(d *dockerlab.Daemon, name string) string {
	return d.Docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
}

// waitContainers waits until the exporter's cache holds n containers.
func waitContainers(t *testing.T, exp *exporter, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d containers in the exporter's cache", n), 15*time.Second, func() bool {
		c := exp.scrapeQuiet().samples("connection_exporter_docker_containers", nil)
		return len(c) == 1 && c[0].value >= float64(n)
	})
}

// TestDockerBridge: two containers on a user-defined bridge; the client's
// connections carry both container names.
func TestDockerBridge(t *testing.T) {
	d := dockerLab(t)
	d.Docker("network", "create", "shopnet")
	d.Docker("run", "-d", "--name", "web", "--network", "shopnet", "peer", "serve", ":8080")
	exp := startExporter(t, nil, dockerArgs(d)...)
	waitContainers(t, exp, 1)
	d.Docker("run", "-d", "--name", "client", "--network", "shopnet", "peer", "connect", "web:8080", "3")
	waitFor(t, "web to accept 3 connections", 20*time.Second, func() bool { return acceptedBy(d, "web") >= 3 })
	waitContainers(t, exp, 2)

	web := containerIP(d, "web") + ":8080"
	s := exp.scrape()
	got := s.samples("connection_active", map[string]string{"container": "client", "workload": "client", "destination": web})
	if len(got) != 1 || got[0].value != 3 {
		t.Fatalf("client's connections to %s: %v\n%s", web, got, grep(s.text, "connection_active"))
	}
	if l := got[0].labels; l["actual_destination"] != web || l["destination_workload"] != "web" || l["resolver"] != "none" {
		t.Errorf("labels %v, want actual %s, destination_workload web, resolver none", l, web)
	}

	// Whoever deploys a container chooses its labels: a Compose service
	// name with quotes, a newline and 100 KB names the workload.
	hostile := "x\"y\\z\n" + strings.Repeat("w", 100000)
	d.Docker("run", "-d", "--name", "evil", "--network", "shopnet", "--label", "com.docker.compose.service="+hostile,
		"peer", "connect", "web:8080", "1")
	waitFor(t, "web to accept the evil connection", 20*time.Second, func() bool { return acceptedBy(d, "web") >= 4 })
	waitContainers(t, exp, 3)
	s = exp.scrape()
	promtoolCheck(t, s.text)
	evil := s.samples("connection_active", map[string]string{"container": "evil", "destination": web})
	if len(evil) != 1 || evil[0].labels["workload"] != hostile[:256] {
		t.Errorf("hostile workload label not kept to its first 256 bytes: %d series\n%.3000s", len(evil), grep(s.text, "connection_active"))
	}
}

// TestDockerHostNetwork: a container on the host's network shares the
// host's namespace, so only its process's cgroup tells it apart: its
// connections carry its name, found by the container id in the cgroup path
// (under the lab's own cgroup parent, not dockerd's default /docker). The
// exporter hears of the container late here, as it may from a busy engine:
// the connections it sees before then wait for the container's name
// instead of keeping the process's.
func TestDockerHostNetwork(t *testing.T) {
	d := dockerLab(t)
	proxy := newGatedProxy(t, strings.TrimPrefix(d.Host, "unix://"))
	dst, accepted := holdingListener(t)

	args := dockerArgs(d)
	for i, a := range args {
		if strings.HasPrefix(a, "--docker.host=") {
			args[i] = "--docker.host=unix://" + proxy.path
		}
	}
	exp := startExporter(t, nil, args...)
	waitFor(t, "the exporter to reach the engine", 15*time.Second, func() bool {
		up := exp.scrapeQuiet().samples("connection_exporter_docker_up", nil)
		return len(up) == 1 && up[0].value == 1
	})

	proxy.hold()
	release := sync.OnceFunc(proxy.release)
	defer release()
	d.Docker("run", "-d", "--name", "hostclient", "--network", "host", "peer", "connect", dst.String(), "2")
	waitFor(t, "2 connections from the host-network container", 20*time.Second, func() bool { return accepted.Load() >= 2 })
	got := namedLate(t, exp, dst, release)
	checkLabels(t, got, map[string]string{"container": "hostclient", "workload": "hostclient", "process": "peer",
		"actual_destination": dst.String(), "resolver": "none"})
}

// gatedProxy forwards connections on a unix socket of its own to the
// Docker daemon's; while it is held, nothing the daemon sends reaches the
// client, as when the engine is slow to report.
type gatedProxy struct {
	path string
	gate sync.RWMutex // write-locked while held
}

func newGatedProxy(t *testing.T, daemon string) *gatedProxy {
	t.Helper()
	p := &gatedProxy{path: filepath.Join(t.TempDir(), "proxy.sock")}
	ln, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.forward(c, daemon)
		}
	}()
	return p
}

func (p *gatedProxy) forward(c net.Conn, daemon string) {
	defer c.Close()
	up, err := net.Dial("unix", daemon)
	if err != nil {
		return
	}
	defer up.Close()
	go func() {
		io.Copy(up, c)
		up.(*net.UnixConn).CloseWrite()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			p.gate.RLock()
			_, werr := c.Write(buf[:n])
			p.gate.RUnlock()
			if werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *gatedProxy) hold()    { p.gate.Lock() }
func (p *gatedProxy) release() { p.gate.Unlock() }

// TestDockerPublished: a published port resolves to the container behind
// it, from the host on its loopback address and from a container on the
// default bridge's gateway, whether dockerd serves it with DNAT rules
// (--userland-proxy=false) or, its default, with a docker-proxy process for
// both: then the client's connection ends at the proxy, with no NAT, and
// the proxy's own connection to the container is a second one.
func TestDockerPublished(t *testing.T) {
	for _, mode := range []struct {
		name     string
		opts     []dockerlab.Option
		resolver string
	}{
		{"dnat", nil, "conntrack"},
		{"userland-proxy", []dockerlab.Option{dockerlab.WithUserlandProxy()}, "docker_proxy"},
	} {
		t.Run(mode.name, func(t *testing.T) {
			d := dockerLab(t, mode.opts...)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port := ln.Addr().(*net.TCPAddr).Port
			ln.Close()
			gw := d.Docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", "bridge")
			d.Docker("run", "-d", "--name", "pub", "-p", fmt.Sprintf("127.0.0.1:%d:8080", port),
				"-p", fmt.Sprintf("%s:%d:8080", gw, port), "peer", "serve", ":8080")
			exp := startExporter(t, nil, dockerArgs(d)...)
			waitContainers(t, exp, 1)
			dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
			for range 4 {
				c, err := net.Dial("tcp4", dst.String())
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
			}
			waitFor(t, "pub to accept 4 connections", 10*time.Second, func() bool { return acceptedBy(d, "pub") >= 4 })
			pub := containerIP(d, "pub") + ":8080"
			s := exp.scrape()
			got := s.samples("connection_active", map[string]string{"process": process(t), "destination": dst.String()})
			if len(got) != 1 || got[0].value != 4 {
				t.Fatalf("connections to %v: %v\n%s", dst, got, grep(s.text, "connection_active"))
			}
			if l := got[0].labels; l["actual_destination"] != pub || l["resolver"] != mode.resolver || l["destination_workload"] != "pub" {
				t.Errorf("labels %v, want actual %s by %s, destination_workload pub", l, pub, mode.resolver)
			}

			// A container reaching the host, and the port, at its bridge's
			// gateway.
			gwDst := net.JoinHostPort(gw, fmt.Sprint(port))
			d.Docker("run", "-d", "--name", "gwclient", "peer", "connect", gwDst, "2")
			waitFor(t, "pub to accept 2 more connections", 20*time.Second, func() bool { return acceptedBy(d, "pub") >= 6 })
			waitContainers(t, exp, 2)
			match := map[string]string{"container": "gwclient", "destination": gwDst}
			waitFor(t, "gwclient's connections", 10*time.Second, func() bool {
				return len(exp.scrapeQuiet().samples("connection_active", match)) > 0
			})
			s = exp.scrape()
			got = s.samples("connection_active", match)
			if len(got) != 1 || got[0].value != 2 {
				t.Fatalf("gwclient's connections to %s: %v\n%s", gwDst, got, grep(s.text, "connection_active"))
			}
			if l := got[0].labels; l["actual_destination"] != pub || l["resolver"] != mode.resolver || l["destination_workload"] != "pub" {
				t.Errorf("gwclient's labels %v, want actual %s by %s, destination_workload pub", l, pub, mode.resolver)
			}

			if mode.resolver != "docker_proxy" {
				return
			}
			// The proxy's own connections, straight to the container.
			proxied := s.samples("connection_active", map[string]string{"process": "docker-proxy", "destination": pub})
			if len(proxied) != 1 || proxied[0].value != 6 || proxied[0].labels["resolver"] != "none" {
				t.Errorf("docker-proxy's connections to %s: %v", pub, proxied)
			}
		})
	}
}

// TestSwarm: every client connection to a service VIP resolves to the task
// that accepted it, in the overlay network's load-balancer namespace.
func TestSwarm(t *testing.T) {
	d := dockerLab(t)
	s := newSwarmDemo(t, d)
	exp := startExporter(t, nil, dockerArgs(d)...)
	waitContainers(t, exp, 3)
	d.Docker("service", "create", "-d", "--name", "demo_client", "--network", "demo_net", "--no-resolve-image",
		"peer", "connect", "demo_nginx:8080", "9")
	s.check(t, exp, 9)
}

// readmeDockerRun returns the arguments of the docker run command that
// README.md documents.
func readmeDockerRun(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := strings.Index(text, "docker run -d --name connection_exporter")
	if start < 0 {
		t.Fatal("README.md has no docker run command")
	}
	end := strings.Index(text[start:], "```")
	cmd := strings.ReplaceAll(text[start:start+end], "\\\n", " ")
	return strings.Fields(cmd)
}

// TestDockerImage: the image built from the Dockerfile, started with the
// README's docker run command (the daemon's private paths substituted for
// the standard ones), exports the Swarm case correctly.
func TestDockerImage(t *testing.T) {
	// The README mounts /run/netns with slave propagation, which needs it
	// to be a shared mount: `ip netns add` makes it one.
	netlab.New(t).NetNS("mk")
	d := dockerLab(t)
	s := newSwarmDemo(t, d)

	dir := t.TempDir()
	lab.BuildStatic(t, "github.com/connection-exporter/connection_exporter", dir, "connection_exporter")
	df, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "Dockerfile"), df, 0o644)
	d.Docker("build", "-q", "-t", "connection-exporter:latest", dir)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var args []string
	for _, a := range readmeDockerRun(t)[1:] { // without "docker"
		a = strings.Replace(a, "/var/run/docker.sock:", strings.TrimPrefix(d.Host, "unix://")+":", 1)
		a = strings.Replace(a, "/run/docker/netns:", filepath.Join(d.ExecRoot, "netns")+":", 1)
		args = append(args, a)
	}
	args = append(args, "--web.listen-address="+addr)
	d.Docker(args...)
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := d.TryDocker("logs", "connection_exporter")
			t.Logf("exporter container log:\n%s", logs)
		}
		d.TryDocker("rm", "-f", "connection_exporter")
	})
	exp := &exporter{t: t, url: "http://" + addr + "/metrics", logs: &lab.Output{}}
	waitFor(t, "the exporter container to serve", 20*time.Second, func() bool {
		resp, err := http.Get(exp.url)
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	waitContainers(t, exp, 4)
	d.Docker("service", "create", "-d", "--name", "demo_client", "--network", "demo_net", "--no-resolve-image",
		"peer", "connect", "demo_nginx:8080", "6")
	s.check(t, exp, 6)
}

// TestDockerRestart: the daemon stops and comes back during a run; the
// exporter keeps serving, counts the outage, and names the containers'
// new connections again.
func TestDockerRestart(t *testing.T) {
	d := dockerLab(t)
	d.Docker("network", "create", "shopnet")
	d.Docker("run", "-d", "--restart", "always", "--name", "web", "--network", "shopnet", "peer", "serve", ":8080")
	exp := startExporter(t, nil, dockerArgs(d)...)
	waitContainers(t, exp, 1)
	d.Docker("run", "-d", "--restart", "always", "--name", "client", "--network", "shopnet", "peer", "connect", "web:8080", "3")
	waitFor(t, "web to accept 3 connections", 20*time.Second, func() bool { return acceptedBy(d, "web") >= 3 })
	named := func() float64 {
		total := 0.0
		for _, smp := range exp.scrape().samples("connection_active", map[string]string{"container": "client", "workload": "client"}) {
			total += smp.value
		}
		return total
	}
	waitFor(t, "the client's connections named", 10*time.Second, func() bool { return named() == 3 })

	d.Stop()
	waitFor(t, "docker_up to drop", 10*time.Second, func() bool {
		up := exp.scrape().samples("connection_exporter_docker_up", nil)
		return len(up) == 1 && up[0].value == 0
	})
	if errs := exp.scrape().samples("connection_exporter_docker_errors_total", nil); len(errs) == 0 {
		t.Error("no docker error counted")
	}

	d.Restart()
	// The engine restarts its containers as it comes back, before the
	// exporter has reconnected: their connections wait for the names.
	waitFor(t, "the client's new connections named", 60*time.Second, func() bool { return named() == 3 })
	waitFor(t, "docker_up after the restart", 60*time.Second, func() bool {
		up := exp.scrape().samples("connection_exporter_docker_up", nil)
		return len(up) == 1 && up[0].value == 1
	})
}

// TestSwarmIngress: a connection to a published port of a Swarm service,
// through the routing mesh, resolves to the task behind it: the host's
// DNAT to ingress_sbox (DOCKER-INGRESS) and, inside ingress_sbox, the
// translation to a task. dockerd sets up neither without IPVS in the
// kernel, so the test installs the rules it would have, with iptables DNAT
// and SNAT standing in for IPVS.
func TestSwarmIngress(t *testing.T) {
	d := dockerLab(t)
	newSwarmDemo(t, d)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	d.Docker("service", "create", "-d", "--name", "pubsvc", "--replicas", "2", "--publish", fmt.Sprintf("%d:8080", port),
		"--no-resolve-image", "peer", "serve", ":8080")
	var tasks []string
	waitFor(t, "two pubsvc tasks", 60*time.Second, func() bool {
		out, _ := d.TryDocker("ps", "-q", "--filter", "label=com.docker.swarm.service.name=pubsvc")
		tasks = strings.Fields(out)
		return len(tasks) == 2
	})
	sbox := filepath.Join(d.ExecRoot, "netns", "ingress_sbox")
	prefix := func(network, container string) string {
		p := d.Docker("network", "inspect", "-f", `{{(index .Containers "`+container+`").IPv4Address}}`, network)
		return netip.MustParsePrefix(p).Addr().String()
	}
	gw := prefix("docker_gwbridge", "ingress-sbox")
	sboxIngress := prefix("ingress", "ingress-sbox")
	ipt := func(ns string, args ...string) {
		cmd := append([]string{"iptables", "-w"}, args...)
		if ns != "" {
			cmd = append([]string{"nsenter", "--net=" + ns}, cmd...)
		}
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(cmd, " "), err, out)
		}
	}
	// The host's side (removed with the daemon's nat table at cleanup, and
	// here explicitly).
	ipt("", "-t", "nat", "-N", "DOCKER-INGRESS")
	ipt("", "-t", "nat", "-I", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER-INGRESS")
	ipt("", "-t", "nat", "-I", "OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER-INGRESS")
	ipt("", "-t", "nat", "-A", "DOCKER-INGRESS", "-p", "tcp", "--dport", fmt.Sprint(port), "-j", "DNAT", "--to-destination", fmt.Sprintf("%s:%d", gw, port))
	t.Cleanup(func() {
		exec.Command("iptables", "-w", "-t", "nat", "-D", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER-INGRESS").Run()
		exec.Command("iptables", "-w", "-t", "nat", "-D", "OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER-INGRESS").Run()
		exec.Command("iptables", "-w", "-t", "nat", "-F", "DOCKER-INGRESS").Run()
		exec.Command("iptables", "-w", "-t", "nat", "-X", "DOCKER-INGRESS").Run()
	})
	// Loopback clients leave through docker_gwbridge (the link goes with
	// the daemon).
	if out, err := exec.Command("sysctl", "-qw", "net.ipv4.conf.docker_gwbridge.route_localnet=1").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	// ingress_sbox's side: IPVS's choice of a task and its SNAT.
	if out, err := exec.Command("nsenter", "--net="+sbox, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	for i, id := range tasks {
		ip := d.Docker("inspect", "-f", `{{(index .NetworkSettings.Networks "ingress").IPAddress}}`, id)
		rule := []string{"-t", "nat", "-A", "PREROUTING", "-d", gw, "-p", "tcp", "--dport", fmt.Sprint(port)}
		if i == 0 {
			rule = append(rule, "-m", "statistic", "--mode", "random", "--probability", "0.5")
		}
		ipt(sbox, append(rule, "-j", "DNAT", "--to-destination", ip+":8080")...)
	}
	ipt(sbox, "-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-m", "conntrack", "--ctstate", "DNAT", "-j", "SNAT", "--to-source", sboxIngress)

	exp := startExporter(t, nil, dockerArgs(d)...)
	waitContainers(t, exp, 5)
	dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	for range 6 {
		c, err := net.DialTimeout("tcp4", dst.String(), 5*time.Second)
		if err != nil {
			t.Fatalf("dial the published port: %v", err)
		}
		t.Cleanup(func() { c.Close() })
	}
	want := map[string]float64{}
	waitFor(t, "the tasks to accept 6 connections", 20*time.Second, func() bool {
		want = map[string]float64{}
		total := 0
		for _, id := range tasks {
			logs, _ := d.TryDocker("logs", id)
			for _, line := range strings.Split(logs, "\n") {
				if f := strings.Fields(line); len(f) == 3 && f[0] == "accepted" {
					want[f[2]]++
					total++
				}
			}
		}
		return total >= 6
	})
	s := exp.scrape()
	got := s.byActual("connection_active", map[string]string{"process": process(t), "destination": dst.String(),
		"resolver": "swarm_lb", "destination_workload": "pubsvc"})
	if !equal(got, want) {
		t.Errorf("connections to %v through the routing mesh %v, tasks accepted %v\n%s", dst, got, want, grep(s.text, "connection_active"))
	}
}
