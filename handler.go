package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/connection-exporter/connection_exporter/collector"
	"github.com/connection-exporter/connection_exporter/internal/compress"
)

// metricsHandler serves one scrape: the collectors run with a deadline taken
// from Prometheus' scrape timeout header, in parallel scrapes up to
// cfg.maxRequests, and the response is compressed for clients that accept
// gzip by writers kept from scrape to scrape.
func metricsHandler(exp *collector.Exporter, static prometheus.Gatherer, cfg config, logger *slog.Logger) http.Handler {
	// Two writers kept: one Prometheus, or a pair of them, scraping at once.
	writers := compress.NewWriters(2)
	var slots chan struct{}
	if cfg.maxRequests > 0 {
		slots = make(chan struct{}, cfg.maxRequests)
	}
	errorLog := slog.NewLogLogger(logger.Handler(), slog.LevelError)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slots != nil {
			select {
			case slots <- struct{}{}:
				defer func() { <-slots }()
			default:
				http.Error(w, "too many parallel scrapes", http.StatusServiceUnavailable)
				return
			}
		}
		ctx := r.Context()
		timeout, err := scrapeTimeout(r.Header.Get("X-Prometheus-Scrape-Timeout-Seconds"), cfg.timeoutOffset)
		if err != nil {
			logger.Debug("ignoring scrape timeout header", "err", err)
		}
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(exp.Scrape(ctx))
		compress.Handler(promhttp.HandlerFor(parallelGatherers{static, reg}, promhttp.HandlerOpts{
			ErrorLog:           errorLog,
			ErrorHandling:      promhttp.ContinueOnError,
			DisableCompression: true, // done by compressed, with writers kept
		}), writers).ServeHTTP(w, r)
	})
}

// parallelGatherers gathers from all its gatherers at once and merges what
// they return as prometheus.Gatherers does, which gathers from one after
// the other: the process and Go collectors (a millisecond or so of reading
// procfs) then no longer delay the connection collector's start.
type parallelGatherers []prometheus.Gatherer

// Gather implements prometheus.Gatherer.
func (gs parallelGatherers) Gather() ([]*dto.MetricFamily, error) {
	done := make(prometheus.Gatherers, len(gs))
	var wg sync.WaitGroup
	for i, g := range gs {
		wg.Go(func() {
			mfs, err := g.Gather()
			done[i] = prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return mfs, err })
		})
	}
	wg.Wait()
	return done.Gather()
}

// scrapeTimeout turns the X-Prometheus-Scrape-Timeout-Seconds header into the
// time a scrape may take: the timeout less offset. It returns zero (no
// deadline) for an empty header and an error for a malformed one.
func scrapeTimeout(header string, offset time.Duration) (time.Duration, error) {
	if header == "" {
		return 0, nil
	}
	secs, err := strconv.ParseFloat(header, 64)
	if err != nil {
		return 0, fmt.Errorf("parse scrape timeout %q: %w", header, err)
	}
	if secs <= 0 || secs > 24*3600 || secs != secs {
		return 0, fmt.Errorf("scrape timeout %q out of range", header)
	}
	d := time.Duration(secs*float64(time.Second)) - offset
	if d <= 0 {
		// The offset would eat the whole budget: use half of it instead.
		d = time.Duration(secs * float64(time.Second) / 2)
	}
	return d, nil
}
