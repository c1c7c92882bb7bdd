package kube

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func registry(c *Client) *prometheus.Registry {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	return reg
}

// counter returns connection_exporter_kubelet_errors_total{reason}.
func counter(t *testing.T, c *Client, reason string) float64 {
	t.Helper()
	mfs, err := registry(c).Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "connection_exporter_kubelet_errors_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
