package collector

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

// DockerCache is what the docker collector reads of Docker's cache
// (docker.Client).
type DockerCache interface {
	// Health returns whether the cache follows a running engine, how
	// many containers it holds, and the engine's failed calls by reason.
	Health() (up bool, containers int, errors map[string]uint64)
}

var (
	dockerUpDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "docker", "up"),
		"Whether the Docker Engine answered the last sync or stream.", nil, nil)
	dockerContainersDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "docker", "containers"),
		"Running containers in the cache.", nil, nil)
	dockerErrorsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "docker", "errors_total"),
		"Failed calls to the Docker Engine, by reason.", []string{"reason"}, nil)
)

// Docker is the collector of the Docker cache's health.
type Docker struct {
	cache DockerCache
}

// NewDocker returns the collector of cache's health.
func NewDocker(cache DockerCache) *Docker { return &Docker{cache: cache} }

// Update sends the cache's health; it never fails.
func (d *Docker) Update(_ context.Context, ch chan<- prometheus.Metric) error {
	up, containers, errors := d.cache.Health()
	ch <- prometheus.MustNewConstMetric(dockerUpDesc, prometheus.GaugeValue, boolValue(up))
	ch <- prometheus.MustNewConstMetric(dockerContainersDesc, prometheus.GaugeValue, float64(containers))
	for reason, n := range errors {
		ch <- prometheus.MustNewConstMetric(dockerErrorsDesc, prometheus.CounterValue, float64(n), reason)
	}
	return nil
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
