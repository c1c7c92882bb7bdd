package collector

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkWarmScrape accounts a scrape with 50,000 known connections of
// which none changed, and sends the metrics: the collector's share of a warm
// scrape. The fake source's check of each connection for a change (a Go
// map lookup) is in the figure; the kernel's walk is not.
func BenchmarkWarmScrape(b *testing.B) {
	src := &fakeSource{}
	for i := range 50000 {
		src.conns = append(src.conns, conn(uint64(i+1), "client",
			fmt.Sprintf("10.77.1.2:%d", 10000+i), "10.43.0.10:80", StateEstablished))
	}
	res := &fakeResolver{nat: map[netip.AddrPort]Destination{}}
	c, err := NewConnections(ConnectionsConfig{MaxSeries: 100, SeriesIdle: 1 << 40}, src, res, ProcessNamer{}, discardLogger())
	if err != nil {
		b.Fatal(err)
	}
	ch := make(chan prometheus.Metric, 1024)
	go func() {
		for range ch {
		}
	}()
	defer close(ch)
	c.Update(context.Background(), ch) // cold: every connection new
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Update(context.Background(), ch); err != nil {
			b.Fatal(err)
		}
	}
}
