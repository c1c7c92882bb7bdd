// Package dockerlab runs a private Docker daemon for tests: its own data
// and exec roots and socket, test images built FROM scratch around a
// static binary, and a cleanup that stops it and removes what it changed
// on the host (nft tables, links, sysctls, mounts, files, cgroups), even when the
// test fails.
package dockerlab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/moby/moby/client"

	"github.com/connection-exporter/connection_exporter/internal/lab"
)

// TB is what the lab needs of a test.
type TB = lab.TB

// Daemon is a running private dockerd.
type Daemon struct {
	t        TB
	Root     string // everything the daemon writes lives here
	Host     string // unix:// address of its API
	ExecRoot string
	cmd      *exec.Cmd
	logs     *lab.Output
	args     []string
	done     chan struct{}
}

// Option changes how Start runs the daemon.
type Option func(*options)

type options struct {
	userlandProxy bool
}

// WithUserlandProxy has published ports served, for connections to the
// host's loopback addresses, by docker-proxy processes (dockerd's default)
// instead of DNAT rules alone (the lab's default).
func WithUserlandProxy() Option { return func(o *options) { o.userlandProxy = true } }

// Start runs a daemon. It skips when not root and fails when dockerd is
// not installed (scripts/deps installs docker.io).
func Start(t TB, opts ...Option) *Daemon {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a Docker daemon needs root")
	}
	if _, err := exec.LookPath("dockerd"); err != nil {
		t.Fatalf("dockerd is needed (apt-get install docker.io): %v", err)
	}
	// Short paths: containerd's sockets live under the exec root.
	root, err := os.MkdirTemp("/tmp", "cxd")
	if err != nil {
		t.Fatalf("%v", err)
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	d := &Daemon{t: t, Root: root, Host: "unix://" + filepath.Join(root, "d.sock"), ExecRoot: filepath.Join(root, "x"), logs: &lab.Output{}}
	d.args = []string{
		"--data-root", filepath.Join(root, "data"), "--exec-root", d.ExecRoot,
		"--pidfile", filepath.Join(root, "d.pid"), "-H", d.Host,
		fmt.Sprintf("--userland-proxy=%t", o.userlandProxy), "--bip", "172.31.254.1/24",
		"--default-address-pool", "base=172.30.0.0/16,size=24",
		// Containers' cgroups under a parent of the lab's own, removed
		// at cleanup, rather than dockerd's default /docker, which it
		// creates in every hierarchy and leaves behind.
		"--cgroup-parent", "/" + filepath.Base(root),
	}
	restore := hostState(t)
	// On a systemd host / is a shared mount, so the namespace directory can
	// be bind-mounted into a container with slave propagation; this VM's /
	// is private: make the directory a shared mount of its own, as
	// `ip netns add` does for /run/netns.
	netnsDir := filepath.Join(d.ExecRoot, "netns")
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		t.Fatalf("%v", err)
	}
	if err := syscall.Mount(netnsDir, netnsDir, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind %s: %v", netnsDir, err)
	}
	if err := syscall.Mount("", netnsDir, "", syscall.MS_SHARED, ""); err != nil {
		t.Fatalf("share %s: %v", netnsDir, err)
	}
	t.Cleanup(func() {
		d.stop()
		lab.RemoveCgroups(t, filepath.Base(root))
		lab.UnmountUnder(root)
		os.RemoveAll(root)
		restore()
		if t, ok := d.t.(interface{ Failed() bool }); ok && t.Failed() {
			d.t.Logf("dockerd log:\n%s", d.logs)
		}
	})
	d.start()
	return d
}

func (d *Daemon) start() {
	d.t.Helper()
	d.cmd = exec.Command("dockerd", d.args...)
	d.cmd.Env = append(os.Environ(), "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1")
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		d.t.Fatalf("start dockerd: %v", err)
	}
	d.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(d.cmd, d.done)
	api, err := client.New(client.WithHost(d.Host))
	if err != nil {
		d.t.Fatalf("%v", err)
	}
	defer api.Close()
	for range 300 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err = api.Ping(ctx, client.PingOptions{})
		cancel()
		if err == nil {
			return
		}
		select {
		case <-d.done:
			d.t.Fatalf("dockerd exited at start:\n%s", d.logs)
		case <-time.After(100 * time.Millisecond):
		}
	}
	d.t.Fatalf("dockerd did not answer: %v\n%s", err, d.logs)
}

// Stop stops the daemon (its containers stop with it).
func (d *Daemon) Stop() { d.stop() }

// Restart starts a stopped daemon again, on the same data.
func (d *Daemon) Restart() {
	d.t.Helper()
	d.start()
}

func (d *Daemon) stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	select {
	case <-d.done:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
	}
}

// Docker runs the docker CLI against the daemon and returns its output,
// failing the test on error.
func (d *Daemon) Docker(args ...string) string {
	d.t.Helper()
	out, err := d.TryDocker(args...)
	if err != nil {
		d.t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TryDocker is Docker returning the error instead of failing.
func (d *Daemon) TryDocker(args ...string) (string, error) {
	cmd := exec.Command("/usr/bin/docker", append([]string{"-H", d.Host}, args...)...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// BuildImage builds image name FROM scratch around the static binary bin
// (copied in as /name), with that binary as its entry point.
func (d *Daemon) BuildImage(name, bin string) {
	d.t.Helper()
	dir, err := os.MkdirTemp("", "cxd-image")
	if err != nil {
		d.t.Fatalf("%v", err)
	}
	defer os.RemoveAll(dir)
	b, err := os.ReadFile(bin)
	if err != nil {
		d.t.Fatalf("%v", err)
	}
	base := filepath.Base(bin)
	os.WriteFile(filepath.Join(dir, base), b, 0o755)
	os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(fmt.Sprintf("FROM scratch\nCOPY %s /%s\nENTRYPOINT [\"/%s\"]\n", base, base, base)), 0o644)
	d.Docker("build", "-q", "-t", name, dir)
}

// hostState records what dockerd changes on the host and returns the
// function that puts it back: ip_forward (set on first, so that dockerd
// leaves the FORWARD policy alone), nft tables, iptables rules, links and
// the files it writes outside its roots.
func hostState(t TB) func() {
	fwd, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	tables := nftTables()
	// dockerd adds chains and rules to the iptables tables that exist
	// already (a kube-proxy's, or any other's), which deleting the tables
	// it created does not undo: those tables get their rules back.
	rules, err := exec.Command("iptables-save").Output()
	if err != nil {
		t.Fatalf("iptables-save: %v", err)
	}
	links := lab.LinkNames()
	os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	var had []string
	for _, p := range []string{"/var/lib/docker/network/files", "/run/docker/plugins", "/run/docker/netns", "/run/docker"} {
		if _, err := os.Stat(p); err == nil {
			had = append(had, p)
		}
	}
	return func() {
		for tbl := range nftTables() {
			if !tables[tbl] {
				if out, err := exec.Command("nft", append([]string{"delete", "table"}, strings.Fields(tbl)...)...).CombinedOutput(); err != nil {
					t.Errorf("delete nft table %s: %v %s", tbl, err, out)
				}
			}
		}
		if len(rules) > 0 { // iptables-save prints nothing when there is no table
			restore := exec.Command("iptables-restore")
			restore.Stdin = bytes.NewReader(rules)
			if out, err := restore.CombinedOutput(); err != nil {
				t.Errorf("restore iptables rules: %v %s", err, out)
			}
		}
		for l := range lab.LinkNames() {
			if !links[l] {
				exec.Command("ip", "link", "delete", l).Run()
			}
		}
		for _, p := range []string{"/var/lib/docker/network/files", "/run/docker/plugins", "/run/docker/netns", "/run/docker"} {
			keep := false
			for _, h := range had {
				keep = keep || h == p
			}
			if !keep {
				lab.UnmountUnder(p)
				os.RemoveAll(p)
			}
		}
		if len(fwd) > 0 {
			os.WriteFile("/proc/sys/net/ipv4/ip_forward", fwd, 0o644)
		}
	}
}

func nftTables() map[string]bool {
	out, _ := exec.Command("nft", "list", "tables").Output()
	m := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		if f, ok := strings.CutPrefix(strings.TrimSpace(l), "table "); ok {
			m[f] = true
		}
	}
	return m
}
