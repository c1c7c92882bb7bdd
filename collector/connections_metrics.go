package collector

// The connection metrics and the collector's own, and their emission.

import "github.com/prometheus/client_golang/prometheus"

// Label names of the connection metrics, in order.
var connLabels = []string{
	"container", "pod", "namespace", "workload", "process",
	"destination", "actual_destination", "destination_workload", "resolver",
}

// overflowValue fills every label of the series that aggregates connections
// beyond the series bound.
const overflowValue = "_other"

var (
	infoDesc = prometheus.NewDesc("connection_destination_info",
		"Where connections of a workload to a destination really go; one series per label set with an open connection or one seen since the previous scrape.",
		connLabels, nil)
	activeDesc = prometheus.NewDesc("connection_active",
		"Connections open now.", connLabels, nil)
	openedDesc = prometheus.NewDesc("connection_opened_total",
		"Connections established.", connLabels, nil)
	sentDesc = prometheus.NewDesc("connection_bytes_sent_total",
		"Bytes the connecting side sent that the peer acknowledged: the payload, and one byte for each FIN acknowledged.", connLabels, nil)
	receivedDesc = prometheus.NewDesc("connection_bytes_received_total",
		"Bytes the connecting side received: the payload, and one byte for each FIN received.", connLabels, nil)
	retransDesc = prometheus.NewDesc("connection_retransmits_total",
		"Segments the connecting side retransmitted.", connLabels, nil)
	rttDesc = prometheus.NewDesc("connection_rtt_seconds",
		"Mean smoothed round-trip time of the connections open at the scrape that have one; no sample while none has.", connLabels, nil)
	failedDesc = prometheus.NewDesc("connection_failed_total",
		"Connection attempts that never established.", connLabels, nil)

	resolveErrorsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "resolve_errors_total"),
		"Lookups of a connection's destination that failed, by the table that could not be read.",
		[]string{"resolver"}, nil)
	resolvedDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "resolved_connections_total"),
		"Connections whose destination was resolved, by the table that answered.",
		[]string{"resolver"}, nil)
	trackedDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "tracked_connections"),
		"Connections recorded in the kernel map at the scrape.", nil, nil)
	capacityDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "tracked_connections_capacity"),
		"Size of the kernel map of connections (--bpf.max-connections).", nil, nil)
	lostDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "map_full_total"),
		"Connections the kernel could not record because the map was full.", nil, nil)
	seriesDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "series"),
		"Label sets of the connection metrics held now.", nil, nil)
	seriesLimitDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "series_limit"),
		"Bound on the label sets of the connection metrics (--collector.max-series).", nil, nil)
	overflowDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "series_overflow_connections_total"),
		"Connections counted in the overflow label set because the series bound was reached.", nil, nil)
	namingWaitingDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "naming", "waiting_connections"),
		"Connections not exported yet because a cache that names them (reason) may not have caught up with them.",
		[]string{"reason"}, nil)
	namingTimeoutsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "naming", "timeouts_total"),
		"Connections exported with the best names known because a cache that names them (reason) did not catch up within --collector.name-timeout.",
		[]string{"reason"}, nil)
	namingDelayDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "naming", "delay_seconds"),
		"Time from the scrape that first saw a connection to its export, for connections that waited for their names.",
		nil, nil)
)

// namingDelayBuckets are the upper bounds of the naming delay histogram.
var namingDelayBuckets = []float64{0.1, 0.5, 1, 2, 5, 10, 15, 30, 60}

func (c *Connections) emit(ch chan<- prometheus.Metric) {
	send := func(s *series) {
		if s.active > 0 || s.touched {
			ch <- prometheus.MustNewConstMetric(infoDesc, prometheus.GaugeValue, 1, s.values...)
		}
		ch <- prometheus.MustNewConstMetric(activeDesc, prometheus.GaugeValue, float64(s.active), s.values...)
		ch <- prometheus.MustNewConstMetric(openedDesc, prometheus.CounterValue, s.opened, s.values...)
		ch <- prometheus.MustNewConstMetric(failedDesc, prometheus.CounterValue, s.failed, s.values...)
		if c.cfg.TCPStats {
			ch <- prometheus.MustNewConstMetric(sentDesc, prometheus.CounterValue, s.sent, s.values...)
			ch <- prometheus.MustNewConstMetric(receivedDesc, prometheus.CounterValue, s.received, s.values...)
			ch <- prometheus.MustNewConstMetric(retransDesc, prometheus.CounterValue, s.retrans, s.values...)
			if s.rttN > 0 {
				ch <- prometheus.MustNewConstMetric(rttDesc, prometheus.GaugeValue, s.rttSum.Seconds()/float64(s.rttN), s.values...)
			}
		}
	}
	for _, s := range c.series {
		send(s)
	}
	if c.overflow != nil {
		send(c.overflow)
	}
	for r, v := range c.errors {
		ch <- prometheus.MustNewConstMetric(resolveErrorsDesc, prometheus.CounterValue, v, r)
	}
	for r, v := range c.resolved {
		ch <- prometheus.MustNewConstMetric(resolvedDesc, prometheus.CounterValue, v, r)
	}
	ch <- prometheus.MustNewConstMetric(trackedDesc, prometheus.GaugeValue, float64(c.seen))
	ch <- prometheus.MustNewConstMetric(capacityDesc, prometheus.GaugeValue, float64(c.src.Capacity()))
	if lost, err := c.src.Lost(); err == nil {
		ch <- prometheus.MustNewConstMetric(lostDesc, prometheus.CounterValue, float64(lost))
	}
	ch <- prometheus.MustNewConstMetric(seriesDesc, prometheus.GaugeValue, float64(len(c.series)))
	ch <- prometheus.MustNewConstMetric(seriesLimitDesc, prometheus.GaugeValue, float64(c.cfg.MaxSeries))
	ch <- prometheus.MustNewConstMetric(overflowDesc, prometheus.CounterValue, c.overflowConns)
	var waiting [len(waitReasons)]float64
	for _, r := range c.attempts {
		for i := range waitReasons {
			if r.wait&(1<<i) != 0 {
				waiting[i]++
				break
			}
		}
	}
	for i, r := range waitReasons {
		ch <- prometheus.MustNewConstMetric(namingWaitingDesc, prometheus.GaugeValue, waiting[i], r)
		ch <- prometheus.MustNewConstMetric(namingTimeoutsDesc, prometheus.CounterValue, c.timeouts[r], r)
	}
	buckets := make(map[float64]uint64, len(namingDelayBuckets))
	for i, ub := range namingDelayBuckets {
		buckets[ub] = c.delayCounts[i]
	}
	ch <- prometheus.MustNewConstHistogram(namingDelayDesc, c.delayCount, c.delaySum, buckets)
}
