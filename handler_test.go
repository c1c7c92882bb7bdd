package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

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
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if d := <-b.deadline; d <= 0 || d > 500*time.Millisecond {
		t.Errorf("scrape deadline in %v, want 500ms (1s less the offset)", d)
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
