// Package e2e runs the exporter binary against real kernels, real iptables
// rules and real connections in throwaway network namespaces, and checks
// its metrics against what the servers themselves saw.
package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/connection-exporter/connection_exporter/internal/lab"
	"github.com/connection-exporter/connection_exporter/internal/netlab"
)

var binary string

func TestMain(m *testing.M) {
	switch os.Getenv("E2E_HELPER") {
	case "sidecar":
		os.Exit(sidecarHelper())
	case "hold":
		os.Exit(holdHelper())
	}
	dir, err := os.MkdirTemp("", "connection_exporter-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Helpers run as another user exec from here: let them in.
	os.Chmod(dir, 0o755)
	binary = filepath.Join(dir, "connection_exporter")
	// Under the race detector the exporter is built with it as well: a
	// data race in a scrape then makes the exporter exit with status 66,
	// which each test's cleanup reports.
	args := []string{"build", "-o", binary}
	if race {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "..")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build exporter:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// exporter is a running exporter binary.
type exporter struct {
	t    *testing.T
	url  string
	cmd  *exec.Cmd
	logs *lab.Output
}

// startExporter runs the binary with the node namespace as its host
// namespace, as it would run on a Kubernetes node, and waits until it
// serves. Cleanup stops it with SIGTERM and checks that it exits 0.
func startExporter(t *testing.T, node *netlab.NS, args ...string) *exporter {
	t.Helper()
	return startWrapped(t, node, nil, args...)
}

// startWrapped is startExporter with the binary run by a wrapper command
// (such as setpriv to limit its capabilities).
func startWrapped(t *testing.T, node *netlab.NS, wrapper []string, args ...string) *exporter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	e := &exporter{t: t, url: "http://" + addr + "/metrics", logs: &lab.Output{}}
	argv := append(wrapper, binary, "--web.listen-address="+addr, "--log.level=debug")
	if node != nil {
		argv = append(argv, "--path.host-netns="+node.Path())
	}
	if !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--docker.host") }) {
		argv = append(argv, "--no-docker") // no engine in these tests: no warning about it
	}
	argv = append(argv, args...)
	e.cmd = exec.Command(argv[0], argv[1:]...)
	e.cmd.Stdout, e.cmd.Stderr = e.logs, e.logs
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- e.cmd.Wait() }()
	t.Cleanup(func() {
		e.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("exporter exited with %v after SIGTERM; log:\n%s", err, e.logs)
			}
		case <-time.After(10 * time.Second):
			e.cmd.Process.Kill()
			t.Errorf("exporter did not exit within 10s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("exporter log:\n%s", e.logs)
		}
	})
	for range 100 {
		select {
		case err := <-exited:
			t.Fatalf("exporter exited at start: %v\n%s", err, e.logs)
		default:
		}
		if resp, err := http.Get("http://" + addr + "/"); err == nil {
			resp.Body.Close()
			return e
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("exporter did not start serving; log:\n%s", e.logs)
	return nil
}

// scrapeQuiet is scrape for polling loops.
func (e *exporter) scrapeQuiet() scraped { return e.scrape() }

// scrape fetches and parses the metrics.
func (e *exporter) scrape() scraped {
	e.t.Helper()
	resp, err := http.Get(e.url)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("scrape: %s\n%s", resp.Status, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		e.t.Fatalf("parse exposition: %v", err)
	}
	return scraped{t: e.t, mfs: mfs, text: string(body)}
}

type scraped struct {
	t    *testing.T
	mfs  map[string]*dto.MetricFamily
	text string
}

// sample is one sample's labels and value.
type sample struct {
	labels map[string]string
	value  float64
}

// samples returns the samples of name whose labels include match.
func (s scraped) samples(name string, match map[string]string) []sample {
	var out []sample
	mf := s.mfs[name]
	if mf == nil {
		return nil
	}
next:
	for _, m := range mf.GetMetric() {
		labels := map[string]string{}
		for _, lp := range m.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		for k, v := range match {
			if labels[k] != v {
				continue next
			}
		}
		v := m.GetGauge().GetValue()
		if m.Counter != nil {
			v = m.GetCounter().GetValue()
		}
		out = append(out, sample{labels, v})
	}
	return out
}

// byActual sums name over the samples matching match, by actual_destination.
func (s scraped) byActual(name string, match map[string]string) map[string]float64 {
	out := map[string]float64{}
	for _, smp := range s.samples(name, match) {
		out[smp.labels["actual_destination"]] += smp.value
	}
	return out
}

// process is the command name the kernel gives this test binary.
func process(t *testing.T) string {
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// dialAll opens n connections from ns to dst and returns them, closed at
// cleanup.
func dialAll(t *testing.T, ns *netlab.NS, dst netip.AddrPort, n int) []net.Conn {
	t.Helper()
	var conns []net.Conn
	for range n {
		c, err := ns.Dial("tcp", dst.String())
		if err != nil {
			t.Fatalf("dial %v: %v", dst, err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	return conns
}

func local(c net.Conn) netip.AddrPort {
	a := c.LocalAddr().(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// truth asks the backends which of them accepted each connection and
// counts the answers by backend address.
func truth(t *testing.T, cl *netlab.Cluster, clients []netip.AddrPort) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, c := range clients {
		got, ok := cl.AwaitAccepted(c)
		if !ok {
			t.Fatalf("no backend accepted the connection from %v", c)
		}
		out[got.String()]++
	}
	return out
}

func sources(conns []net.Conn) []netip.AddrPort {
	var out []netip.AddrPort
	for _, c := range conns {
		out = append(out, local(c))
	}
	return out
}

func equal(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// promtoolCheck runs promtool check metrics on an exposition. promtool is
// installed by .ci/run; without it the check fails rather than passing
// silently.
func promtoolCheck(t *testing.T, text string) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool is needed (apt-get install prometheus): %v", err)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// holdingListener listens on a loopback port and holds every connection it
// accepts until the test ends; it returns its address and the count of
// connections accepted.
func holdingListener(t *testing.T) (netip.AddrPort, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := new(atomic.Int32)
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
			accepted.Add(1)
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String()), accepted
}

// namedLate checks that three scrapes export no connection to dst while
// what names them is held back, then calls release and waits for the two
// connections' one series, which it returns.
func namedLate(t *testing.T, exp *exporter, dst netip.AddrPort, release func()) sample {
	t.Helper()
	match := map[string]string{"destination": dst.String()}
	for range 3 {
		if got := exp.scrape().samples("connection_active", match); len(got) != 0 {
			t.Fatalf("exported before their names were known: %v", got)
		}
	}
	release()
	waitFor(t, "the connections under their names", 15*time.Second, func() bool {
		return len(exp.scrapeQuiet().samples("connection_active", match)) > 0
	})
	s := exp.scrape()
	got := s.samples("connection_active", match)
	if len(got) != 1 || got[0].value != 2 {
		t.Fatalf("connections to %s: %v\n%s", dst, got, grep(s.text, "connection_active"))
	}
	return got[0]
}

// checkLabels fails the test for each label of want that s does not have.
func checkLabels(t *testing.T, s sample, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if s.labels[k] != v {
			t.Errorf("label %s = %q, want %q (labels %v)", k, s.labels[k], v, s.labels)
		}
	}
}
