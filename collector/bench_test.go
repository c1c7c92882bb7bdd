package collector

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/connection-exporter/connection_exporter/record"
)

// BenchmarkWarmScrape accounts a scrape with 50,000 known connections of
// which none changed, and sends the metrics: the collector's share of a warm
// scrape. The fake source's check of each connection for a change (a Go
// map lookup) is in the figure; the kernel's walk is not.
func BenchmarkWarmScrape(b *testing.B) {
	src := &fakeSource{}
	for i := range 50000 {
		src.conns = append(src.conns, conn(uint64(i+1), "client",
			fmt.Sprintf("10.77.1.2:%d", 10000+i), "10.43.0.10:80", record.StateEstablished))
	}
	res := &fakeResolver{nat: map[netip.AddrPort]record.Destination{}}
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

// newSource is a Source whose connections are all new at every read: the
// cold path, with nothing of the source's own but a loop.
type newSource struct{ conns []record.Conn }

func (s *newSource) Read(fn func(*record.Conn)) (int, error) {
	var c record.Conn
	for i := range s.conns {
		c = s.conns[i]
		fn(&c)
	}
	return len(s.conns), nil
}
func (s *newSource) Get([]uint64, func(*record.Conn)) error { return nil }
func (s *newSource) Release([]uint64) error                 { return nil }
func (s *newSource) Lost() (uint64, error)                  { return 0, nil }
func (s *newSource) Capacity() uint32                       { return 1 << 18 }
func (s *newSource) Recorded() (uint64, error)              { return uint64(len(s.conns)), nil }

// backendResolver sends each connection to one of three backends by its
// port, with no table to look up.
type backendResolver struct{}

func (backendResolver) Resolve(_ context.Context, in []record.Query, out []record.Destination) {
	for i, l := range in {
		a := netip.AddrFrom4([4]byte{10, 1, 0, byte(1 + l.Src.Port()%3)})
		out[i] = record.Destination{Actual: netip.AddrPortFrom(a, 8080), Resolver: "conntrack"}
	}
}

// BenchmarkColdScrape accounts a first scrape of 50,000 new connections to a
// service of three backends, and sends the metrics: the collector's share of
// a cold scrape, without the kernel's walk and lookups.
func BenchmarkColdScrape(b *testing.B) {
	src := &newSource{}
	for i := range 50000 {
		src.conns = append(src.conns, conn(uint64(i+1), "client",
			fmt.Sprintf("10.77.1.2:%d", 10000+i), "10.43.0.10:80", record.StateEstablished))
	}
	ch := make(chan prometheus.Metric, 1024)
	go func() {
		for range ch {
		}
	}()
	defer close(ch)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		c, err := NewConnections(ConnectionsConfig{MaxSeries: 100, SeriesIdle: 1 << 40}, src, backendResolver{}, ProcessNamer{}, discardLogger())
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := c.Update(context.Background(), ch); err != nil {
			b.Fatal(err)
		}
	}
}
