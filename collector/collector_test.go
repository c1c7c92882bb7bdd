package collector

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// refresher stands for the connections collector: its scrape refreshes a
// cache (here, sets done) that other collectors report.
type refresher struct{ done *atomic.Bool }

func (refresher) runsFirst() {}

func (r refresher) Update(context.Context, chan<- prometheus.Metric) error {
	time.Sleep(20 * time.Millisecond) // a kubelet fetch the naming waits for
	r.done.Store(true)
	return nil
}

// reporter stands for the kubelet collector, reporting the cache.
type reporter struct{ done *atomic.Bool }

var refreshedDesc = prometheus.NewDesc("refreshed", "Whether the cache was refreshed.", nil, nil)

func (r reporter) Update(_ context.Context, ch chan<- prometheus.Metric) error {
	v := 0.0
	if r.done.Load() {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(refreshedDesc, prometheus.GaugeValue, v)
	return nil
}

// TestCachesReportedAfterConnections checks that a scrape reports the
// caches as the connections collector left them in the same scrape: a
// pod that names a connection is in that scrape's endpoint info.
func TestCachesReportedAfterConnections(t *testing.T) {
	var _ runsFirst = (*Connections)(nil)
	for range 5 {
		done := new(atomic.Bool)
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(NewExporter(map[string]Collector{"connections": refresher{done}, "kubelet": reporter{done}},
			discardLogger()).Scrape(context.Background()))
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, mf := range mfs {
			if mf.GetName() == "refreshed" {
				found = true
				if mf.GetMetric()[0].GetGauge().GetValue() != 1 {
					t.Fatal("the kubelet collector reported the cache before the connections collector refreshed it")
				}
			}
		}
		if !found {
			t.Fatal("the kubelet collector reported nothing")
		}
	}
}
