package naming

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/connection-exporter/connection_exporter/docker"
	"github.com/connection-exporter/connection_exporter/kube"
	"github.com/connection-exporter/connection_exporter/record"
)

const (
	hostNS    = 4026531840
	podNS     = 4026532100
	ctrNS     = 4026532200
	otherNS   = 4026532300
	podUID    = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"
	newUID    = "2a3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d"
	appID     = "4bd9f0ac1b6c2e6f3e8b7c9d0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
	restartID = "5ce0a1bd2c7d3f704f9c8d0e1b2c3d4e5f60718293a4b5c6d7e8f90123456ab1"
	webID     = "6df1b2ce3d8e4a815a0d9e1f2c3d4e5f60718293a4b5c6d7e8f90123456ab7c2"
	hostID    = "7e02c3df4e9f5b926b1e0f2a3d4e5f60718293a4b5c6d7e8f90123456ab7c2d3"
	otherID   = "8f13d4e05fa06ca37c2f1a3b4e5f60718293a4b5c6d7e8f90123456ab7c2d3e4"
)

// Processes of the fake procfs, by pid.
const (
	pidApp       = 100 // the app container of the listed pod
	pidRestarted = 101 // a new container of the listed pod
	pidNewPod    = 102 // a container of a pod not listed
	pidWeb       = 200 // a Docker container
	pidHostCtr   = 201 // a host-network Docker container
	pidOtherCtr  = 202 // a container of another runtime
	pidHost      = 300 // a host process
	pidGone      = 999 // exited
)

func fakeProcFS(t *testing.T) string {
	t.Helper()
	procfs := t.TempDir()
	for pid, cg := range map[int]string{
		pidApp:       "0::/kubepods/besteffort/pod" + podUID + "/" + appID,
		pidRestarted: "0::/kubepods/besteffort/pod" + podUID + "/" + restartID,
		pidNewPod:    "0::/kubepods/besteffort/pod" + newUID + "/" + otherID,
		pidWeb:       "0::/docker/" + webID,
		pidHostCtr:   "0::/system.slice/docker-" + hostID + ".scope",
		pidOtherCtr:  "0::/system.slice/podman-x/" + otherID,
		pidHost:      "0::/process_api/77",
	} {
		dir := filepath.Join(procfs, strconv.Itoa(pid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte(cg+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return procfs
}

// fakePods is a pod cache: the client pod with its app container, whose
// namespace is podNS, listed at fetched.
type fakePods struct {
	fetched   time.Time
	waitable  bool
	requested int
}

var clientPod = kube.Pod{Namespace: "shop", Name: "client-6f7d8c9b5-x7k2p", UID: podUID, Workload: "client",
	IPs: []string{"10.77.1.2"}, Containers: map[string]string{appID: "app"}}

var nginxPod = kube.Pod{Namespace: "shop", Name: "nginx-5d9c7b6f4-00001", UID: "3b4c5d6e-7f80-4a9b-8c1d-2e3f4a5b6c7d",
	Workload: "nginx", IPs: []string{"10.77.11.2"}}

func (p *fakePods) Container(id string) (kube.Pod, string, bool) {
	if name, ok := clientPod.Containers[id]; ok {
		return clientPod, name, true
	}
	return kube.Pod{}, "", false
}

func (p *fakePods) PodByUID(uid string) (kube.Pod, bool) {
	return clientPod, uid == podUID
}

func (p *fakePods) PodByNetNS(ino uint32) (kube.Pod, bool) { return clientPod, ino == podNS }

func (p *fakePods) PodByIP(a netip.Addr) (kube.Pod, bool) {
	return nginxPod, a == netip.MustParseAddr("10.77.11.2")
}

func (p *fakePods) Fresh(t time.Time) bool { return p.fetched.After(t) }
func (p *fakePods) Waitable() bool         { return p.waitable }
func (p *fakePods) Request()               { p.requested++ }
func (p *fakePods) Settle(context.Context) {}

// fakeContainers is a Docker cache: web (namespace ctrNS, 172.18.0.2) and
// the host-network hostagent, with a bridge 172.18.0.0/16, an overlay
// 10.0.1.0/24 whose VIP is 10.0.1.2, and a task 10.0.1.5 of svc.
type fakeContainers struct {
	up, waitable               bool
	containersAt, networksAt   time.Time
	absent                     map[string]bool
	reqContainers, reqNetworks int
	reqIDs                     []string
}

var (
	web       = docker.Container{ID: webID, Name: "web", NetNS: ctrNS, Addrs: []netip.Addr{netip.MustParseAddr("172.18.0.2")}}
	hostAgent = docker.Container{ID: hostID, Name: "hostagent", ComposeService: "agent"}
)

func (d *fakeContainers) ByNetNS(ino uint32) (docker.Container, bool) { return web, ino == ctrNS }

func (d *fakeContainers) ByID(id string) (docker.Container, bool) {
	switch id {
	case webID:
		return web, true
	case hostID:
		return hostAgent, true
	}
	return docker.Container{}, false
}

func (d *fakeContainers) Workload(a netip.Addr) (string, docker.AddrKind) {
	switch {
	case a == netip.MustParseAddr("172.18.0.2"):
		return "web", docker.AddrContainer
	case a == netip.MustParseAddr("10.0.1.5"):
		return "svc", docker.AddrContainer
	case a == netip.MustParseAddr("10.0.1.2") || a == netip.MustParseAddr("172.18.0.1"):
		return "", docker.AddrInfra
	case netip.MustParsePrefix("172.18.0.0/16").Contains(a):
		return "", docker.AddrLocalSubnet
	case netip.MustParsePrefix("10.0.1.0/24").Contains(a):
		return "", docker.AddrOverlaySubnet
	}
	return "", docker.AddrOther
}

func (d *fakeContainers) Up() bool                         { return d.up }
func (d *fakeContainers) Waitable() bool                   { return d.waitable }
func (d *fakeContainers) ContainersFresh(t time.Time) bool { return d.containersAt.After(t) }
func (d *fakeContainers) NetworksFresh(t time.Time) bool   { return d.networksAt.After(t) }
func (d *fakeContainers) Absent(id string) bool            { return d.absent[id] }
func (d *fakeContainers) RequestContainers()               { d.reqContainers++ }
func (d *fakeContainers) RequestNetworks()                 { d.reqNetworks++ }
func (d *fakeContainers) RequestID(id string)              { d.reqIDs = append(d.reqIDs, id) }
func (d *fakeContainers) Settle(context.Context)           {}

// The moments of the tests: caches read before the connection was first
// seen are stale, those read after are fresh.
var (
	seen   = time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	before = seen.Add(-time.Second)
	after  = seen.Add(time.Second)
)

func connOf(pid, netns uint32, comm string) *record.Conn {
	c := &record.Conn{PID: pid, NetNS: netns}
	copy(c.Comm[:], comm)
	return c
}

func TestOwner(t *testing.T) {
	procfs := fakeProcFS(t)
	process := func(comm string) record.Owner { return record.Owner{Workload: comm} }
	appOwner := record.Owner{Container: "app", Pod: clientPod.Name, Namespace: "shop", Workload: "client"}
	podOnly := record.Owner{Pod: clientPod.Name, Namespace: "shop", Workload: "client"}
	for _, tc := range []struct {
		name       string
		kube       *fakePods // nil: no kubelet
		docker     *fakeContainers
		conn       *record.Conn
		want       record.Owner
		wait       record.Wait
		kubeAsked  bool
		dockerWant string // what Docker was asked for: "containers", an id, or ""
	}{
		{name: "pod container listed", kube: &fakePods{fetched: before, waitable: true},
			conn: connOf(pidApp, podNS, "app"), want: appOwner},
		{name: "new container of a listed pod waits for its name", kube: &fakePods{fetched: after, waitable: true},
			conn: connOf(pidRestarted, podNS, "app"), want: podOnly, wait: record.WaitKubelet, kubeAsked: true},
		{name: "pod not listed yet, list stale", kube: &fakePods{fetched: before, waitable: true},
			conn: connOf(pidNewPod, otherNS, "job"), want: process("job"), wait: record.WaitKubelet, kubeAsked: true},
		{name: "pod not in a list fetched after", kube: &fakePods{fetched: after, waitable: true},
			conn: connOf(pidNewPod, otherNS, "job"), want: process("job"), wait: record.WaitKubelet, kubeAsked: true},
		{name: "kubelet never reached", kube: &fakePods{},
			conn: connOf(pidNewPod, otherNS, "job"), want: process("job")},
		{name: "process gone, pod's namespace", kube: &fakePods{fetched: before, waitable: true},
			conn: connOf(pidGone, podNS, "curl"), want: podOnly},
		{name: "process gone, unknown namespace, list stale", kube: &fakePods{fetched: before, waitable: true},
			conn: connOf(pidGone, otherNS, "curl"), want: process("curl"), wait: record.WaitKubelet, kubeAsked: true},
		{name: "process gone, unknown namespace, list fresh", kube: &fakePods{fetched: after, waitable: true},
			conn: connOf(pidGone, otherNS, "curl"), want: process("curl")},
		{name: "host process", kube: &fakePods{fetched: before, waitable: true}, docker: &fakeContainers{up: true, waitable: true},
			conn: connOf(pidHost, hostNS, "curl"), want: process("curl")},
		{name: "plain process in a namespace of its own", kube: &fakePods{fetched: before, waitable: true}, docker: &fakeContainers{up: true, waitable: true},
			conn: connOf(pidHost, otherNS, "curl"), want: process("curl")},
		{name: "docker container by namespace", docker: &fakeContainers{up: true, waitable: true},
			conn: connOf(pidWeb, ctrNS, "nginx"), want: record.Owner{Container: "web", Workload: "web"}},
		{name: "docker container by namespace, cgroup unread", docker: &fakeContainers{up: true, waitable: true},
			conn: connOf(pidGone, ctrNS, "nginx"), want: record.Owner{Container: "web", Workload: "web"}},
		{name: "host-network container by cgroup", docker: &fakeContainers{up: true, waitable: true},
			conn: connOf(pidHostCtr, hostNS, "agent"), want: record.Owner{Container: "hostagent", Workload: "agent"}},
		{name: "container unknown to the cache is inspected", docker: &fakeContainers{up: true, waitable: true},
			conn: connOf(pidOtherCtr, hostNS, "podman"), want: process("podman"), wait: record.WaitDocker, dockerWant: otherID},
		{name: "container of another runtime", docker: &fakeContainers{up: true, waitable: true, absent: map[string]bool{otherID: true}},
			conn: connOf(pidOtherCtr, hostNS, "podman"), want: process("podman")},
		{name: "process gone, unknown namespace, containers stale", docker: &fakeContainers{up: true, waitable: true, containersAt: before},
			conn: connOf(pidGone, otherNS, "curl"), want: process("curl"), wait: record.WaitDocker, dockerWant: "containers"},
		{name: "process gone, unknown namespace, containers fresh", docker: &fakeContainers{up: true, waitable: true, containersAt: after},
			conn: connOf(pidGone, otherNS, "curl"), want: process("curl")},
		{name: "engine away", docker: &fakeContainers{waitable: true},
			conn: connOf(pidWeb, ctrNS, "nginx"), want: process("nginx"), wait: record.WaitDocker},
		{name: "engine never reached", docker: &fakeContainers{},
			conn: connOf(pidOtherCtr, otherNS, "podman"), want: process("podman")},
		{name: "pod named before docker", kube: &fakePods{fetched: before, waitable: true}, docker: &fakeContainers{up: true, waitable: true},
			conn: connOf(pidApp, ctrNS, "app"), want: appOwner},
		{name: "a new pod's container waits for the kubelet, not docker", kube: &fakePods{fetched: before, waitable: true}, docker: &fakeContainers{up: true, waitable: true},
			conn: connOf(pidNewPod, otherNS, "job"), want: process("job"), wait: record.WaitKubelet, kubeAsked: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{ProcFS: procfs, HostNetNS: hostNS}
			if tc.kube != nil {
				cfg.Pods = tc.kube
			}
			if tc.docker != nil {
				cfg.Containers = tc.docker
			}
			got, wait := New(cfg).Owner(tc.conn, seen)
			if got != tc.want || wait != tc.wait {
				t.Errorf("Owner = %+v, wait %b; want %+v, wait %b", got, wait, tc.want, tc.wait)
			}
			if tc.kube != nil && (tc.kube.requested > 0) != tc.kubeAsked {
				t.Errorf("kubelet asked %d times, want asked: %v", tc.kube.requested, tc.kubeAsked)
			}
			if d := tc.docker; d != nil {
				asked := ""
				switch {
				case d.reqContainers > 0:
					asked = "containers"
				case len(d.reqIDs) > 0:
					asked = d.reqIDs[0]
				}
				if asked != tc.dockerWant {
					t.Errorf("docker asked for %q, want %q", asked, tc.dockerWant)
				}
			}
		})
	}
}

func TestDestinationWorkload(t *testing.T) {
	for _, tc := range []struct {
		name   string
		kube   *fakePods
		docker *fakeContainers
		addr   string
		want   string
		wait   record.Wait
		asked  string // "kubelet", "containers", "networks", "containers+networks" or ""
	}{
		{name: "pod address", kube: &fakePods{fetched: before, waitable: true}, addr: "10.77.11.2:8080", want: "nginx"},
		{name: "unknown address, list stale", kube: &fakePods{fetched: before, waitable: true}, addr: "10.77.12.2:8080",
			wait: record.WaitKubelet, asked: "kubelet"},
		{name: "unknown address, list fresh", kube: &fakePods{fetched: after, waitable: true}, addr: "10.77.12.2:8080"},
		{name: "loopback is nobody's", kube: &fakePods{fetched: before, waitable: true}, addr: "127.0.0.1:15001"},
		{name: "kubelet never reached", kube: &fakePods{}, addr: "10.77.12.2:8080"},
		{name: "container address", docker: &fakeContainers{up: true, waitable: true}, addr: "172.18.0.2:80", want: "web"},
		{name: "task address", docker: &fakeContainers{up: true, waitable: true}, addr: "10.0.1.5:8080", want: "svc"},
		{name: "service VIP", docker: &fakeContainers{up: true, waitable: true}, addr: "10.0.1.2:8080"},
		{name: "container starting", docker: &fakeContainers{up: true, waitable: true, containersAt: before}, addr: "172.18.0.9:80",
			wait: record.WaitDocker, asked: "containers"},
		{name: "no container there after a listing", docker: &fakeContainers{up: true, waitable: true, containersAt: after}, addr: "172.18.0.9:80"},
		{name: "overlay address unknown", docker: &fakeContainers{up: true, waitable: true, containersAt: after, networksAt: before},
			addr: "10.0.1.9:8080", wait: record.WaitDocker, asked: "networks"},
		{name: "overlay address after both reads", docker: &fakeContainers{up: true, waitable: true, containersAt: after, networksAt: after},
			addr: "10.0.1.9:8080"},
		{name: "engine away learns nothing", docker: &fakeContainers{waitable: true}, addr: "172.18.0.9:80"},
		{name: "outside docker's networks, no kubelet", docker: &fakeContainers{up: true, waitable: true}, addr: "192.0.2.1:443"},
		{name: "outside docker's networks, kubelet stale", kube: &fakePods{fetched: before, waitable: true}, docker: &fakeContainers{up: true, waitable: true},
			addr: "192.0.2.1:443", wait: record.WaitKubelet, asked: "kubelet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{HostNetNS: hostNS}
			if tc.kube != nil {
				cfg.Pods = tc.kube
			}
			if tc.docker != nil {
				cfg.Containers = tc.docker
			}
			got, wait := New(cfg).DestinationWorkload(netip.MustParseAddrPort(tc.addr), seen)
			if got != tc.want || wait != tc.wait {
				t.Errorf("DestinationWorkload = %q, wait %b; want %q, wait %b", got, wait, tc.want, tc.wait)
			}
			asked := ""
			if tc.kube != nil && tc.kube.requested > 0 {
				asked = "kubelet"
			}
			if d := tc.docker; d != nil {
				switch {
				case d.reqContainers > 0 && d.reqNetworks > 0:
					asked = "containers+networks"
				case d.reqContainers > 0:
					asked = "containers"
				case d.reqNetworks > 0:
					asked = "networks"
				}
			}
			if asked != tc.asked {
				t.Errorf("asked %q, want %q", asked, tc.asked)
			}
		})
	}
}
