package e2e

import (
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/connection-exporter/connection_exporter/internal/dockerlab"
)

// swarmDemo is a Swarm with an overlay network demo_net and server
// services on it (demo_nginx, three tasks, from the start), each behind a
// VIP, with the load balancer reproduced in the real lb_ namespace with
// iptables (no IPVS in this kernel): DNAT to the tasks at random, SNAT to
// the load balancer's address, which leaves the conntrack entries IPVS with
// conntrack=1 leaves.
type swarmDemo struct {
	d         *dockerlab.Daemon
	networkID string
	lb        string // the load balancer namespace's path
	lbAddr    string
	services  map[string]*swarmService
	// vip and tasks are demo_nginx's.
	vip   netip.Addr
	tasks map[string]string
}

// swarmService is a service the demo balances: its VIP on demo_net and its
// tasks' containers (id -> address), as of the last balance.
type swarmService struct {
	vip   netip.Addr
	tasks map[string]string
	// gone are containers of tasks replaced since: their logs still count.
	gone []string
}

func newSwarmDemo(t *testing.T, d *dockerlab.Daemon) *swarmDemo {
	t.Helper()
	d.Docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377")
	t.Cleanup(func() { d.TryDocker("swarm", "leave", "--force") })
	d.Docker("network", "create", "-d", "overlay", "--attachable", "demo_net")
	s := &swarmDemo{d: d, services: map[string]*swarmService{}}
	s.networkID = d.Docker("network", "inspect", "-f", "{{.Id}}", "demo_net")
	s.serve(t, "demo_nginx", 3)
	svc := s.services["demo_nginx"]
	s.vip, s.tasks = svc.vip, svc.tasks
	return s
}

// serve creates a server service of n tasks on demo_net and balances it.
func (s *swarmDemo) serve(t *testing.T, name string, n int) {
	t.Helper()
	s.d.Docker("service", "create", "-d", "--name", name, "--replicas", fmt.Sprint(n), "--network", "demo_net",
		"--no-resolve-image", "peer", "serve", ":8080")
	s.balance(t, name, n)
}

// runningTasks returns the running containers of a service's tasks.
func (s *swarmDemo) runningTasks(name string) []string {
	out, _ := s.d.TryDocker("ps", "-q", "--no-trunc", "--filter", "label=com.docker.swarm.service.name="+name)
	return strings.Fields(out)
}

// balance waits for n running tasks of service name and installs the load
// balancer's rules for them, in place of the rules of its earlier tasks.
func (s *swarmDemo) balance(t *testing.T, name string, n int) {
	t.Helper()
	var ids []string
	waitFor(t, fmt.Sprintf("%d tasks of %s", n, name), 90*time.Second, func() bool {
		ids = s.runningTasks(name)
		return len(ids) == n
	})
	svc := s.services[name]
	if svc == nil {
		svc = &swarmService{}
		vip := s.d.Docker("service", "inspect", "-f", `{{range .Endpoint.VirtualIPs}}{{if eq .NetworkID "`+s.networkID+`"}}{{.Addr}}{{end}}{{end}}`, name)
		svc.vip = netip.MustParsePrefix(vip).Addr()
		s.services[name] = svc
	}
	for id := range svc.tasks {
		if !slices.Contains(ids, id) {
			svc.gone = append(svc.gone, id)
		}
	}
	svc.tasks = map[string]string{}
	for _, id := range ids {
		svc.tasks[id] = s.d.Docker("inspect", "-f", `{{(index .NetworkSettings.Networks "demo_net").IPAddress}}`, id)
	}

	if s.lb == "" {
		s.lb = filepath.Join(s.d.ExecRoot, "netns", "lb_"+s.networkID[:9])
		waitFor(t, "the load balancer namespace", 20*time.Second, func() bool {
			_, err := exec.Command("nsenter", "--net="+s.lb, "true").CombinedOutput()
			return err == nil
		})
		for _, f := range strings.Fields(s.in(t, "ip", "-o", "-4", "addr", "show", "dev", "eth0")) {
			if p, err := netip.ParsePrefix(f); err == nil && p.Bits() < 32 {
				s.lbAddr = p.Addr().String()
			}
		}
		if s.lbAddr == "" {
			t.Fatalf("no load balancer address in %s", s.lb)
		}
		s.in(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		s.in(t, "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-m", "conntrack", "--ctstate", "DNAT", "-j", "SNAT", "--to-source", s.lbAddr)
	}
	if !strings.Contains(s.in(t, "ip", "-o", "-4", "addr", "show", "dev", "eth0"), " "+svc.vip.String()+"/32") {
		// dockerd puts the VIP on eth0 along with its IPVS service; with no
		// IPVS in the kernel it gives up before: do its part.
		s.in(t, "ip", "addr", "add", svc.vip.String()+"/32", "dev", "eth0")
	}
	chain := "SVC-" + strings.ToUpper(strings.ReplaceAll(name, "_", "-"))
	if _, err := exec.Command("nsenter", "--net="+s.lb, "iptables", "-w", "-t", "nat", "-N", chain).CombinedOutput(); err == nil {
		s.in(t, "iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-d", svc.vip.String(), "-p", "tcp", "--dport", "8080", "-j", chain)
	}
	s.in(t, "iptables", "-w", "-t", "nat", "-F", chain)
	i := 0
	for _, ip := range svc.tasks {
		rule := []string{"iptables", "-w", "-t", "nat", "-A", chain, "-p", "tcp"}
		if left := len(svc.tasks) - i; left > 1 {
			rule = append(rule, "-m", "statistic", "--mode", "random", "--probability", fmt.Sprintf("%.5f", 1/float64(left)))
		}
		s.in(t, append(rule, "-j", "DNAT", "--to-destination", ip+":8080")...)
		i++
	}
}

// in runs a command in the load balancer's namespace.
func (s *swarmDemo) in(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=" + s.lb}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s: %v\n%s", s.lb, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// accepted counts demo_nginx's accepted connections by the task address
// that accepted them, as the servers logged it.
func (s *swarmDemo) accepted() map[string]float64 { return s.acceptedBy("demo_nginx", false) }

// acceptedBy counts the connections a service's tasks accepted, by the
// address that accepted them: those of its current tasks, and of replaced
// ones too if all.
func (s *swarmDemo) acceptedBy(name string, all bool) map[string]float64 {
	svc := s.services[name]
	ids := make([]string, 0, len(svc.tasks))
	for id := range svc.tasks {
		ids = append(ids, id)
	}
	if all {
		ids = append(ids, svc.gone...)
	}
	out := map[string]float64{}
	for _, id := range ids {
		logs, _ := s.d.TryDocker("logs", id)
		for _, line := range strings.Split(logs, "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "accepted" {
				out[f[2]]++
			}
		}
	}
	return out
}

func (s *swarmDemo) total() int {
	n := 0
	for _, v := range s.accepted() {
		n += int(v)
	}
	return n
}

// check checks that every demo_client connection to the VIP resolved
// to the task that accepted it, with Swarm service names.
func (s *swarmDemo) check(t *testing.T, exp *exporter, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d connections accepted by the tasks", n), 30*time.Second, func() bool { return s.total() >= n })
	want := s.accepted()
	dst := netip.AddrPortFrom(s.vip, 8080).String()
	var got map[string]float64
	var sc scraped
	for range 50 { // the cache learns of the client task from the events stream
		sc = exp.scrape()
		got = sc.byActual("connection_active", map[string]string{"workload": "demo_client", "destination": dst,
			"resolver": "swarm_lb", "destination_workload": "demo_nginx"})
		if equal(got, want) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Errorf("demo_client's connections to %s by actual destination %v, tasks accepted %v\n%s", dst, got, want, grep(sc.text, "connection_active"))
}
