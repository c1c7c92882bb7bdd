// Package collector owns every metric the exporter serves but the Go and
// process ones: the connection series (each scrape reads the connections
// that changed, has the new ones resolved and named, and keeps the
// per-label-set counters), this node's pod addresses, and the exporter's
// own health: the Docker and kubelet caches, conntrack lookups and the
// kernel program's cost, and each collector's scrape success and duration.
// One file per concern. It depends only on the small interfaces it defines
// and on the plain records of package record; the main package wires the
// concrete capture (bpf), resolution (resolve), naming and caches in.
package collector

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Namespace is the prefix of the exporter's own metrics.
const Namespace = "connection_exporter"

// ErrNoData is returned by a collector that has nothing to report on this
// host; it is logged at debug level and does not count as a failure.
var ErrNoData = errors.New("collector returned no data")

// Collector is one part of a scrape.
type Collector interface {
	// Update sends the collector's metrics to ch. It must return when ctx is
	// done, with what it has.
	Update(ctx context.Context, ch chan<- prometheus.Metric) error
}

var (
	scrapeDurationDesc = prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "scrape", "collector_duration_seconds"),
		"Duration of a collector scrape.",
		[]string{"collector"}, nil,
	)
	scrapeSuccessDesc = prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "scrape", "collector_success"),
		"Whether a collector succeeded.",
		[]string{"collector"}, nil,
	)
)

// Exporter runs named collectors and reports their success and duration.
// Its methods are safe for concurrent use.
type Exporter struct {
	collectors map[string]Collector
	logger     *slog.Logger
	// warned remembers collectors whose failure was logged at warn level,
	// so a lasting failure is not logged on every scrape.
	mu     sync.Mutex
	warned map[string]bool
}

// NewExporter returns an Exporter over the given collectors.
func NewExporter(collectors map[string]Collector, logger *slog.Logger) *Exporter {
	return &Exporter{collectors: collectors, logger: logger, warned: make(map[string]bool)}
}

// Scrape returns a prometheus.Collector that runs every collector with ctx:
// the deadline of one scrape.
func (e *Exporter) Scrape(ctx context.Context) prometheus.Collector {
	return scrape{e: e, ctx: ctx}
}

type scrape struct {
	e   *Exporter
	ctx context.Context
}

// Describe sends nothing: the exporter is an unchecked collector, because
// the set of series depends on the connections seen.
func (s scrape) Describe(chan<- *prometheus.Desc) {}

// Collect runs the collectors that change what others report first (the
// connections collector, whose naming may refresh the kubelet's and
// Docker's caches and whose resolution counts conntrack lookups), then
// the others in parallel, so that one scrape is consistent: a pod that
// names a connection is in the same scrape's connection_endpoint_info.
func (s scrape) Collect(ch chan<- prometheus.Metric) {
	for _, early := range []bool{true, false} {
		var wg sync.WaitGroup
		for name, c := range s.e.collectors {
			if _, ok := c.(runsFirst); ok != early {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.e.run(s.ctx, name, c, ch)
			}()
		}
		wg.Wait()
	}
}

// runsFirst is implemented by the collectors that run before the others.
type runsFirst interface{ runsFirst() }

func (e *Exporter) run(ctx context.Context, name string, c Collector, ch chan<- prometheus.Metric) {
	begin := time.Now()
	err := c.Update(ctx, ch)
	duration := time.Since(begin)
	success := 1.0
	if err != nil {
		if errors.Is(err, ErrNoData) {
			e.logger.Debug("collector returned no data", "name", name, "duration_seconds", duration.Seconds(), "err", err)
		} else {
			success = 0
			e.mu.Lock()
			first := !e.warned[name]
			e.warned[name] = true
			e.mu.Unlock()
			level := slog.LevelDebug
			if first {
				level = slog.LevelWarn
			}
			e.logger.Log(ctx, level, "collector failed", "name", name, "duration_seconds", duration.Seconds(), "err", err)
		}
	} else {
		e.mu.Lock()
		delete(e.warned, name)
		e.mu.Unlock()
	}
	ch <- prometheus.MustNewConstMetric(scrapeDurationDesc, prometheus.GaugeValue, duration.Seconds(), name)
	ch <- prometheus.MustNewConstMetric(scrapeSuccessDesc, prometheus.GaugeValue, success, name)
}
