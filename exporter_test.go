package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/connection-exporter/connection_exporter/bpf"
	"github.com/connection-exporter/connection_exporter/collector"
)

func TestScrapeTimeout(t *testing.T) {
	for _, tc := range []struct {
		header string
		offset time.Duration
		want   time.Duration
		bad    bool
	}{
		{"", time.Second, 0, false},
		{"10", 500 * time.Millisecond, 9500 * time.Millisecond, false},
		{"1.5", 500 * time.Millisecond, time.Second, false},
		{"0.4", 500 * time.Millisecond, 200 * time.Millisecond, false},
		{"abc", 0, 0, true},
		{"-1", 0, 0, true},
		{"0", 0, 0, true},
		{"NaN", 0, 0, true},
		{"1e30", 0, 0, true},
	} {
		got, err := scrapeTimeout(tc.header, tc.offset)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("scrapeTimeout(%q, %v) = %v, %v; want %v, error %v", tc.header, tc.offset, got, err, tc.want, tc.bad)
		}
	}
}

func FuzzScrapeTimeout(f *testing.F) {
	for _, s := range []string{"10", "0.5", "", "-3", "NaN", "Inf", "1e400"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		d, err := scrapeTimeout(h, 500*time.Millisecond)
		if err == nil && (d < 0 || d > 24*time.Hour) {
			t.Errorf("scrapeTimeout(%q) = %v", h, d)
		}
	})
}

func TestMissingCapabilities(t *testing.T) {
	all := uint64(1)<<capNetAdmin | 1<<capSysPtrace | 1<<capSysAdmin
	for _, tc := range []struct {
		name string
		eff  uint64
		want []string
	}{
		{"root", ^uint64(0), nil},
		{"exact set", all, nil},
		{"none", 0, []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_PTRACE"}},
		{"no ptrace", all &^ (1 << capSysPtrace), []string{"CAP_SYS_PTRACE"}},
		{"bpf and perfmon instead of sys_admin", all&^(1<<capSysAdmin) | 1<<39 | 1<<38, []string{"CAP_SYS_ADMIN"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := missingFrom(tc.eff); !slices.Equal(got, tc.want) {
				t.Errorf("missingFrom(%#x) = %v, want %v", tc.eff, got, tc.want)
			}
		})
	}
}

func TestEffectiveCapabilities(t *testing.T) {
	if _, err := effectiveCapabilities("/proc/self/status"); err != nil {
		t.Fatal(err)
	}
	if _, err := effectiveCapabilities("/nonexistent"); err == nil {
		t.Error("missing file accepted")
	}
}

// blockingCollector records the deadline of its scrape context and blocks
// until released or the context is done.
type blockingCollector struct {
	deadline chan time.Duration
	release  chan struct{}
}

func (b *blockingCollector) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	if d, ok := ctx.Deadline(); ok {
		b.deadline <- time.Until(d)
	} else {
		b.deadline <- 0
	}
	select {
	case <-b.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

func testHandler(t *testing.T, c collector.Collector, maxRequests int) http.Handler {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	exp := collector.NewExporter(map[string]collector.Collector{"test": c}, logger)
	return metricsHandler(exp, prometheus.NewRegistry(), config{maxRequests: maxRequests, timeoutOffset: 500 * time.Millisecond}, logger)
}

// TestScrapeDeadline: the scrape context ends at Prometheus' timeout less
// the offset, and the scrape answers then with the collector marked failed.
func TestScrapeDeadline(t *testing.T) {
	b := &blockingCollector{deadline: make(chan time.Duration, 1), release: make(chan struct{})}
	srv := httptest.NewServer(testHandler(t, b, 0))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL, nil)
	req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", "1")
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if d := <-b.deadline; d <= 0 || d > 500*time.Millisecond {
		t.Errorf("scrape deadline in %v, want 500ms (1s less the offset)", d)
	}
	if took := time.Since(start); took > 900*time.Millisecond {
		t.Errorf("scrape took %v past its deadline", took)
	}
	if !strings.Contains(string(body), `connection_exporter_scrape_collector_success{collector="test"} 0`) {
		t.Errorf("timed out collector not reported as failed:\n%s", body)
	}
}

// TestMaxRequests: parallel scrapes beyond --web.max-requests get 503.
func TestMaxRequests(t *testing.T) {
	b := &blockingCollector{deadline: make(chan time.Duration, 2), release: make(chan struct{})}
	srv := httptest.NewServer(testHandler(t, b, 1))
	defer srv.Close()
	first := make(chan int, 1)
	go func() {
		resp, err := http.Get(srv.URL)
		if err != nil {
			first <- 0
			return
		}
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	<-b.deadline // the first scrape is in its collector
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("second parallel scrape: %d, want 503", resp.StatusCode)
	}
	close(b.release)
	if code := <-first; code != http.StatusOK {
		t.Errorf("first scrape: %d", code)
	}
}

// adaptConn must carry every field of a recorded connection: a field it
// drops silently changes what the collector does (Reported, once dropped,
// made every closing connection look new and left it counted open).
func TestAdaptConnCarriesEveryField(t *testing.T) {
	var in bpf.Conn
	v := reflect.ValueOf(&in).Elem()
	for i := range v.NumField() {
		fillNonZero(t, v.Field(i), v.Type().Field(i).Name)
	}
	var out collector.Conn
	adaptConn(func(k *collector.Conn) { out = *k })(&in)
	got := reflect.ValueOf(out)
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		f := got.FieldByName(name)
		if !f.IsValid() {
			t.Errorf("collector.Conn has no field %s", name)
			continue
		}
		want := v.Field(i)
		if f.Type() != want.Type() {
			f = f.Convert(want.Type()) // State: the same values in both packages
		}
		if !reflect.DeepEqual(f.Interface(), want.Interface()) {
			t.Errorf("%s: got %v, want %v", name, f.Interface(), want.Interface())
		}
	}
}

// fillNonZero sets f to a value other than its zero value.
func fillNonZero(t *testing.T, f reflect.Value, name string) {
	t.Helper()
	switch f.Kind() {
	case reflect.Bool:
		f.SetBool(true)
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		f.SetUint(3)
	case reflect.Array:
		for j := range f.Len() {
			f.Index(j).SetUint(uint64('a' + j))
		}
	case reflect.Struct: // netip.AddrPort
		f.Set(reflect.ValueOf(netip.MustParseAddrPort("10.1.2.3:4567")))
	default:
		t.Fatalf("field %s of kind %v: teach the test to fill it", name, f.Kind())
	}
}

// TestParallelGatherers: the gatherers run at once (each here waits for
// the other to start), and what they return is merged as
// prometheus.Gatherers merges it, errors included.
func TestParallelGatherers(t *testing.T) {
	started := [2]chan struct{}{make(chan struct{}), make(chan struct{})}
	gatherer := func(i int, name string, err error) prometheus.Gatherer {
		return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
			close(started[i])
			select {
			case <-started[1-i]:
			case <-time.After(10 * time.Second):
				return nil, fmt.Errorf("gatherer %d ran alone", i)
			}
			g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: "h"})
			reg := prometheus.NewRegistry()
			reg.MustRegister(g)
			mfs, _ := reg.Gather()
			return mfs, err
		})
	}
	failed := errors.New("part failed")
	mfs, err := parallelGatherers{gatherer(0, "b_metric", nil), gatherer(1, "a_metric", failed)}.Gather()
	if !errors.Is(err, failed) {
		t.Errorf("error %v, want one wrapping %v", err, failed)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	if !slices.Equal(names, []string{"a_metric", "b_metric"}) {
		t.Errorf("families %v, want a_metric and b_metric, sorted", names)
	}
}
