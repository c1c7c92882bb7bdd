package collector

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeDocker is a Docker cache's health.
type fakeDocker struct{}

func (fakeDocker) Health() (bool, int, map[string]uint64) {
	return true, 3, map[string]uint64{"connect": 2, "events": 0, "inspect": 1}
}

// fakePods is a pod cache with one pod of hostile names, as a broken or
// malicious API server could send them.
type fakePods struct{ last time.Time }

var hostile = "a\"b\\c\nd" + strings.Repeat("w", 100000)

func (p fakePods) Health() (int, time.Time, map[string]uint64) {
	return 1, p.last, map[string]uint64{"connect": 0, "http_401": 4}
}

func (fakePods) Endpoints(fn func(ip netip.Addr, namespace, pod, workload string)) {
	fn(netip.MustParseAddr("10.42.9.9"), "\ufffdx", hostile, hostile)
	fn(netip.MustParseAddr("fd00:42::9"), "shop", "web-0", "web")
}

// fakeKernel counts lookups and program runs.
type fakeKernel struct{ err error }

func (fakeKernel) Lookups() (uint64, uint64, uint64) { return 10, 20, 30 }
func (k fakeKernel) ProgramStats() (time.Duration, uint64, uint64, error) {
	return 1500 * time.Millisecond, 7, 2, k.err
}
func (k fakeKernel) LostCloses() (uint64, error) { return 4, k.err }

// gatherOne runs one collector through an Exporter, as a scrape does.
func gatherOne(t *testing.T, name string, c Collector) prometheus.Gatherer {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewExporter(map[string]Collector{name: c}, discardLogger()).Scrape(context.Background()))
	return reg
}

func TestDockerCollector(t *testing.T) {
	reg := gatherOne(t, "docker", NewDocker(fakeDocker{}))
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"connection_exporter_docker_up", nil, 1},
		{"connection_exporter_docker_containers", nil, 3},
		{"connection_exporter_docker_errors_total", []string{"reason", "connect"}, 2},
		{"connection_exporter_docker_errors_total", []string{"reason", "events"}, 0},
		{"connection_exporter_scrape_collector_success", []string{"collector", "docker"}, 1},
	} {
		if got := value(t, reg, tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}

// TestKubeletCollector: every pod address is an endpoint series, hostile
// names included, which stay valid label values of at most 256 bytes; the
// last success is left out before the first list.
func TestKubeletCollector(t *testing.T) {
	last := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	reg := gatherOne(t, "kubelet", NewKubelet(fakePods{last: last}))
	if n, err := testutil.GatherAndCount(reg, "connection_endpoint_info"); err != nil || n != 2 {
		t.Errorf("connection_endpoint_info: %d series, %v; want 2", n, err)
	}
	if got := value(t, reg, "connection_exporter_kubelet_last_success_timestamp_seconds"); got != float64(last.Unix()) {
		t.Errorf("last success %v, want %v", got, last.Unix())
	}
	if got := value(t, reg, "connection_exporter_kubelet_errors_total", "reason", "http_401"); got != 4 {
		t.Errorf("http_401 errors %v, want 4", got)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s %s", p.Metric, p.Text)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if len(l.GetValue()) > 256 {
					t.Errorf("%s: label %s of %d bytes", mf.GetName(), l.GetName(), len(l.GetValue()))
				}
			}
		}
	}
	if n, _ := testutil.GatherAndCount(gatherOne(t, "kubelet", NewKubelet(fakePods{})), "connection_exporter_kubelet_last_success_timestamp_seconds"); n != 0 {
		t.Error("a last success before the first list")
	}
}

// TestKernelCollector: lookups by method and the program's run time; a
// failure to read the program's statistics fails the collector, the
// lookups are still sent.
func TestKernelCollector(t *testing.T) {
	reg := gatherOne(t, "kernel", NewKernel(fakeKernel{}, fakeKernel{}))
	if got := value(t, reg, "connection_exporter_conntrack_lookups_total", "method", "dump"); got != 20 {
		t.Errorf("dump lookups %v, want 20", got)
	}
	if got := value(t, reg, "connection_exporter_bpf_program_run_seconds_total"); got != 1.5 {
		t.Errorf("program run time %v, want 1.5", got)
	}
	if got := value(t, reg, "connection_exporter_bpf_program_missed_runs_total"); got != 2 {
		t.Errorf("program missed runs %v, want 2", got)
	}
	if got := value(t, reg, "connection_exporter_bpf_lost_closes_total"); got != 4 {
		t.Errorf("lost closes %v, want 4", got)
	}
	failing := fakeKernel{err: context.DeadlineExceeded}
	reg = gatherOne(t, "kernel", NewKernel(failing, failing))
	if got := value(t, reg, "connection_exporter_scrape_collector_success", "collector", "kernel"); got != 0 {
		t.Errorf("success %v with unreadable statistics, want 0", got)
	}
	if got := value(t, reg, "connection_exporter_conntrack_lookups_total", "method", "get"); got != 30 {
		t.Errorf("get lookups %v, want 30", got)
	}
}
