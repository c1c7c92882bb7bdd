package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/connection-exporter/connection_exporter/internal/dockerlab"
)

// dockerLab starts a private daemon with the peer image built.
func dockerLab(t *testing.T) *dockerlab.Daemon {
	t.Helper()
	d := dockerlab.Start(t)
	bin := dockerlab.BuildStatic(t, "github.com/connection-exporter/connection_exporter/internal/dockerlab/peer", t.TempDir(), "peer")
	d.BuildImage("peer", bin)
	return d
}

func dockerArgs(d *dockerlab.Daemon) []string {
	return []string{"--docker.host=" + d.Host, "--path.docker-netns=" + filepath.Join(d.ExecRoot, "netns")}
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
}

// TestDockerPublished: a published port reached through the host's DNAT
// resolves to the container.
func TestDockerPublished(t *testing.T) {
	d := dockerLab(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	d.Docker("run", "-d", "--name", "pub", "-p", fmt.Sprintf("127.0.0.1:%d:8080", port), "peer", "serve", ":8080")
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
		t.Fatalf("connections to %v: %v", dst, got)
	}
	if l := got[0].labels; l["actual_destination"] != pub || l["resolver"] != "conntrack" || l["destination_workload"] != "pub" {
		t.Errorf("labels %v, want actual %s by conntrack, destination_workload pub", l, pub)
	}
}
