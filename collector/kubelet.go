package collector

import (
	"context"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/connection-exporter/connection_exporter/internal/labels"
)

// PodCache is what the kubelet collector reads of the kubelet's pod cache
// (kube.Client).
type PodCache interface {
	// Health returns the pods of the last list, when it arrived, and the
	// failed fetches by reason.
	Health() (pods int, lastSuccess time.Time, errors map[string]uint64)
	// Endpoints calls fn for each pod address of this node.
	Endpoints(fn func(ip netip.Addr, namespace, pod, workload string))
}

var (
	endpointDesc = prometheus.NewDesc("connection_endpoint_info",
		"A pod address of this node, to name destinations by joining on the address.",
		[]string{"ip", "namespace", "pod", "workload"}, nil)
	kubeletErrorsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "kubelet", "errors_total"),
		"Failed pod list fetches from the kubelet, by reason.", []string{"reason"}, nil)
	kubeletPodsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "kubelet", "pods"),
		"Pods in the last pod list fetched from the kubelet.", nil, nil)
	kubeletLastSuccessDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "kubelet", "last_success_timestamp_seconds"),
		"When the pod list was last fetched successfully.", nil, nil)
)

// Kubelet is the collector of this node's pod addresses
// (connection_endpoint_info, which names destinations on other nodes by a
// join on the address) and of the pod cache's health.
type Kubelet struct {
	cache PodCache
}

// NewKubelet returns the collector of cache.
func NewKubelet(cache PodCache) *Kubelet { return &Kubelet{cache: cache} }

// Update sends the pod addresses and the cache's health; it never fails.
func (k *Kubelet) Update(_ context.Context, ch chan<- prometheus.Metric) error {
	k.cache.Endpoints(func(ip netip.Addr, namespace, pod, workload string) {
		ch <- prometheus.MustNewConstMetric(endpointDesc, prometheus.GaugeValue, 1,
			ip.String(), labels.Value(namespace), labels.Value(pod), labels.Value(workload))
	})
	pods, last, errors := k.cache.Health()
	for reason, n := range errors {
		ch <- prometheus.MustNewConstMetric(kubeletErrorsDesc, prometheus.CounterValue, float64(n), reason)
	}
	ch <- prometheus.MustNewConstMetric(kubeletPodsDesc, prometheus.GaugeValue, float64(pods))
	if !last.IsZero() {
		ch <- prometheus.MustNewConstMetric(kubeletLastSuccessDesc, prometheus.GaugeValue, float64(last.UnixNano())/1e9)
	}
	return nil
}
