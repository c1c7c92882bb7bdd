package collector

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/connection-exporter/connection_exporter/record"
)

// TestConnectionsTCPStats: a label set's byte and retransmit counters add
// up the growth its connections reported, open or closing; the round-trip
// time is the mean of the open connections that have one.
func TestConnectionsTCPStats(t *testing.T) {
	a := conn(1, "app", "10.0.0.5:40001", vip.String(), record.StateEstablished)
	a.TCP = record.TCPStats{BytesSent: 100, BytesReceived: 1000, Retransmits: 1, SRTT: 2 * time.Millisecond}
	b := conn(2, "app", "10.0.0.5:40002", vip.String(), record.StateEstablished)
	b.TCP = record.TCPStats{BytesSent: 10, SRTT: 4 * time.Millisecond}
	src := &fakeSource{conns: []record.Conn{a, b}}
	c := newTestCollector(t, ConnectionsConfig{TCPStats: true}, src, &fakeResolver{})
	check := func(step string, sent, received, retrans, rtt float64) {
		t.Helper()
		reg := collect(t, c)
		for _, m := range []struct {
			name string
			want float64
		}{
			{"connection_bytes_sent_total", sent},
			{"connection_bytes_received_total", received},
			{"connection_retransmits_total", retrans},
		} {
			if got := value(t, reg, m.name, "process", "app"); got != m.want {
				t.Errorf("%s: %s = %v, want %v", step, m.name, got, m.want)
			}
		}
		n, _ := testutil.GatherAndCount(reg, "connection_rtt_seconds")
		switch {
		case rtt == 0 && n != 0:
			t.Errorf("%s: a round-trip time with no connection open", step)
		case rtt != 0 && value(t, reg, "connection_rtt_seconds", "process", "app") != rtt:
			t.Errorf("%s: rtt = %v, want %v", step, value(t, reg, "connection_rtt_seconds", "process", "app"), rtt)
		}
		if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
			t.Errorf("%s: lint %v %v", step, problems, err)
		}
	}
	check("admitted", 110, 1000, 1, 0.003)
	// set changes connection cookie as the kernel would, reported again.
	set := func(cookie uint64, st record.State, tcp record.TCPStats) {
		for i := range src.conns {
			if src.conns[i].Cookie == cookie {
				src.conns[i].State, src.conns[i].TCP = st, tcp
				src.reported[cookie] = 0 // a change the source reports
				return
			}
		}
		t.Fatalf("no connection %d", cookie)
	}

	set(1, record.StateEstablished, record.TCPStats{BytesSent: 150, SRTT: 4 * time.Millisecond})
	check("grown", 260, 1000, 1, 0.004)

	set(1, record.StateClosed, record.TCPStats{BytesSent: 51, BytesReceived: 1, Retransmits: 1})
	check("closed", 311, 1001, 2, 0.004)

	set(2, record.StateEstablished, record.TCPStats{BytesSent: 5, SRTT: time.Millisecond})
	check("grown again", 316, 1001, 2, 0.001)

	set(2, record.StateClosed, record.TCPStats{Retransmits: 3})
	check("all closed", 316, 1001, 5, 0)
}

// Without TCPStats, none of the four series is exported.
func TestConnectionsNoTCPStats(t *testing.T) {
	a := conn(1, "app", "10.0.0.5:40001", vip.String(), record.StateEstablished)
	a.TCP = record.TCPStats{BytesSent: 100, SRTT: time.Millisecond}
	c := newTestCollector(t, ConnectionsConfig{}, &fakeSource{conns: []record.Conn{a}}, &fakeResolver{})
	reg := collect(t, c)
	for _, name := range []string{"connection_bytes_sent_total", "connection_bytes_received_total", "connection_retransmits_total", "connection_rtt_seconds"} {
		if n, _ := testutil.GatherAndCount(reg, name); n != 0 {
			t.Errorf("%s exported without TCPStats", name)
		}
	}
}

// The growth reported while a connection waited for its names counts once
// it is admitted, though the read that admits it reports none.
func TestConnectionsTCPStatsOfPostponed(t *testing.T) {
	a := conn(1, "nginx", "10.0.0.5:40001", "10.0.0.1:80", record.StateEstablished)
	a.TCP = record.TCPStats{BytesSent: 100, BytesReceived: 20, SRTT: time.Millisecond}
	src := &fakeSource{conns: []record.Conn{a}}
	clock := newFakeClock()
	n := &cacheNamer{started: clock.now()}
	c := newNamingCollector(t, ConnectionsConfig{TCPStats: true}, src, n, clock)
	clock.advance(time.Second)
	collect(t, c)
	n.fetch()
	clock.advance(time.Second)
	reg := collect(t, c)
	if got := value(t, reg, "connection_bytes_sent_total", "container", "web-1"); got != 100 {
		t.Errorf("bytes sent %v, want 100", got)
	}
	if got := value(t, reg, "connection_rtt_seconds", "container", "web-1"); got != 0.001 {
		t.Errorf("rtt %v, want 0.001", got)
	}
}
