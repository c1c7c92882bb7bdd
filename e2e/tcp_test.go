package e2e

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
)

// replyBytes is what the byte-counting backends send on each connection
// they accept.
const replyBytes = 5000

// countingServer accepts on ln, answers each connection with replyBytes
// and counts, by the accepting address, the bytes each received and sent,
// and, by client address, which address accepted it.
type countingServer struct {
	mu       sync.Mutex
	received map[string]int64
	sent     map[string]int64
	conns    map[string]int
	accepted map[netip.AddrPort]string
}

func newCountingServer() *countingServer {
	return &countingServer{received: map[string]int64{}, sent: map[string]int64{}, conns: map[string]int{},
		accepted: map[netip.AddrPort]string{}}
}

func (s *countingServer) serve(ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			local := c.LocalAddr().String()
			peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
			s.mu.Lock()
			s.conns[local]++
			s.accepted[netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())] = local
			s.mu.Unlock()
			go func() {
				defer c.Close()
				n, _ := c.Write(make([]byte, replyBytes))
				s.mu.Lock()
				s.sent[local] += int64(n)
				s.mu.Unlock()
				buf := make([]byte, 32<<10)
				for {
					k, err := c.Read(buf)
					s.mu.Lock()
					s.received[local] += int64(k)
					s.mu.Unlock()
					if err != nil {
						return // the client closed
					}
				}
			}()
		}
	}()
}

// totals returns copies of the counts.
func (s *countingServer) totals() (received, sent map[string]float64, conns map[string]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	received, sent, conns = map[string]float64{}, map[string]float64{}, map[string]int{}
	for a, n := range s.received {
		received[a] = float64(n)
	}
	for a, n := range s.sent {
		sent[a] = float64(n)
	}
	for a, n := range s.conns {
		conns[a] = n
	}
	return received, sent, conns
}

// backendOf returns the address that accepted the connection from client.
func (s *countingServer) backendOf(client netip.AddrPort) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted[client]
}

// tcpLab is the kube-proxy cluster with byte-counting backends.
func tcpLab(t *testing.T) (*netlab.Cluster, *countingServer) {
	t.Helper()
	cl := netlab.New(t).KubeProxyTopology()
	srv := newCountingServer()
	for _, b := range cl.Backends {
		srv.serve(b.NS.Listen("tcp", fmt.Sprintf(":%d", cl.BackendPort)))
	}
	return cl, srv
}

// talk opens n connections from the client namespace to dst; the i-th
// sends 1000*(i+1) bytes and reads the backend's answer. They are held
// open and returned.
func talk(t *testing.T, cl *netlab.Cluster, dst netip.AddrPort, n int) []net.Conn {
	t.Helper()
	conns := dialAll(t, cl.Client, dst, n)
	for i, c := range conns {
		if _, err := c.Write(make([]byte, 1000*(i+1))); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, replyBytes)); err != nil {
			t.Fatal(err)
		}
	}
	return conns
}

// waitTotals waits until the backends have received want bytes in all.
func waitTotals(t *testing.T, srv *countingServer, want int64) (received, sent map[string]float64, conns map[string]int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d bytes at the backends", want), 20*time.Second, func() bool {
		received, sent, conns = srv.totals()
		total := 0.0
		for _, v := range received {
			total += v
		}
		return total >= float64(want)
	})
	return received, sent, conns
}

// plus adds k times each address's connections to m.
func plus(m map[string]float64, conns map[string]int, k int) map[string]float64 {
	out := map[string]float64{}
	for a, v := range m {
		out[a] = v + float64(k*conns[a])
	}
	return out
}

// TestTCPBytes: the bytes exported per actual destination are what each
// backend received and sent, payload only while the connections are open,
// and one more byte each way per connection once they closed (the FINs).
func TestTCPBytes(t *testing.T) {
	cl, srv := tcpLab(t)
	exp := startExporter(t, cl.Node)
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)
	const n = 9
	conns := talk(t, cl, dst, n)
	received, sent, perBackend := waitTotals(t, srv, 1000*n*(n+1)/2)
	match := map[string]string{"process": process(t), "destination": dst.String(), "resolver": "conntrack"}
	check := func(when string, wantSent, wantReceived map[string]float64) {
		t.Helper()
		var s scraped
		var gotSent, gotReceived map[string]float64
		for range 50 {
			s = exp.scrape()
			gotSent, gotReceived = s.byActual("connection_bytes_sent_total", match), s.byActual("connection_bytes_received_total", match)
			if equal(gotSent, wantSent) && equal(gotReceived, wantReceived) {
				promtoolCheck(t, s.text)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("%s: sent %v, received %v; the backends received %v and sent %v\n%s", when, gotSent, gotReceived,
			wantSent, wantReceived, grep(s.text, "connection_bytes"))
	}
	check("open", received, sent)

	closeAll(conns)
	// Each closed connection's FIN, acknowledged, and the backend's FIN,
	// received, count one byte each.
	check("closed", plus(received, perBackend, 1), plus(sent, perBackend, 1))
}

// ssInfo is what ss -ti says of one client socket: retransmits in all
// and the smoothed round-trip time.
type ssInfo struct {
	retrans int
	rtt     time.Duration
}

// ssSockets runs ss -tin in the client namespace and returns its sockets
// to dst by local address.
func ssSockets(t *testing.T, ns *netlab.NS, dst netip.AddrPort) map[netip.AddrPort]ssInfo {
	t.Helper()
	out := ns.Run("ss", "-tinH", "state", "established", "dst", dst.String())
	socks := map[netip.AddrPort]ssInfo{}
	var cur netip.AddrPort
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && !strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, " ") {
			// Recv-Q Send-Q Local Peer, in state established.
			if a, err := netip.ParseAddrPort(f[2]); err == nil {
				cur = a
				socks[cur] = ssInfo{}
			}
			continue
		}
		info := socks[cur]
		for _, w := range f {
			switch {
			case strings.HasPrefix(w, "rtt:"):
				ms, _ := strconv.ParseFloat(strings.SplitN(strings.TrimPrefix(w, "rtt:"), "/", 2)[0], 64)
				info.rtt = time.Duration(ms * float64(time.Millisecond))
			case strings.HasPrefix(w, "retrans:"):
				parts := strings.SplitN(strings.TrimPrefix(w, "retrans:"), "/", 2)
				info.retrans, _ = strconv.Atoi(parts[len(parts)-1])
			}
		}
		if cur.IsValid() {
			socks[cur] = info
		}
	}
	return socks
}

// TestTCPRetransmitsAndRTT: a third of the first backend's incoming
// packets is dropped; its edge's retransmits rise, every edge's count is
// what ss says of its sockets, and so is the mean round-trip time, within
// 20%.
func TestTCPRetransmitsAndRTT(t *testing.T) {
	cl, srv := tcpLab(t)
	exp := startExporter(t, cl.Node)
	lossy := cl.Backends[0]
	// Every third packet from the first on, rather than each at random:
	// the first SYN to reach the backend is dropped and sent again, so its
	// edge counts a retransmit whatever the balancing gives it. With 30% at
	// random, a backend given one or two short connections could drop
	// nothing that had to be sent again.
	lossy.NS.Run("iptables", "-w", "-A", "INPUT", "-p", "tcp", "--dport", fmt.Sprint(cl.BackendPort),
		"-m", "statistic", "--mode", "nth", "--every", "3", "--packet", "0", "-j", "DROP")
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)
	const n = 18 // balanced at random: the lossy backend gets none in one run of 1,500
	conns := talk(t, cl, dst, n)
	lossyAddr := netip.AddrPortFrom(lossy.Addr4, cl.BackendPort).String()
	waitTotals(t, srv, 1000*n*(n+1)/2)

	// The truth, by backend, from ss for the same sockets.
	wantRetrans, rttSum, rttN := map[string]float64{}, map[string]time.Duration{}, map[string]int{}
	for local, info := range ssSockets(t, cl.Client, dst) {
		backend := srv.backendOf(local)
		if backend == "" {
			continue
		}
		wantRetrans[backend] += float64(info.retrans)
		rttSum[backend] += info.rtt
		rttN[backend]++
	}
	if len(rttN) == 0 {
		t.Fatalf("ss listed no socket to %v", dst)
	}
	s := exp.scrape()
	match := map[string]string{"process": process(t), "destination": dst.String()}
	gotRetrans := s.byActual("connection_retransmits_total", match)
	if gotRetrans[lossyAddr] == 0 {
		t.Errorf("no retransmit counted towards %s, which drops a third of its packets: %v", lossyAddr, gotRetrans)
	}
	if !equal(gotRetrans, wantRetrans) {
		t.Errorf("retransmits %v, ss says %v", gotRetrans, wantRetrans)
	}
	t.Logf("retransmits by backend %v", gotRetrans)
	for _, smp := range s.samples("connection_rtt_seconds", match) {
		backend := smp.labels["actual_destination"]
		want := (rttSum[backend] / time.Duration(rttN[backend])).Seconds()
		if got := smp.value; got < 0.8*want || got > 1.2*want {
			t.Errorf("rtt towards %s: %v s, ss says %v s", backend, got, want)
		}
		t.Logf("rtt towards %s: %v s, ss says %v s", backend, smp.value, want)
	}
	if got := len(s.samples("connection_rtt_seconds", match)); got != len(rttN) {
		t.Errorf("%d rtt series, want %d (one per backend)", got, len(rttN))
	}
	closeAll(conns)
}

// TestTCPCountersNeverGoBack: across 20 scrapes while connections come
// and go, no byte or retransmit counter of any label set goes back.
func TestTCPCountersNeverGoBack(t *testing.T) {
	cl, _ := tcpLab(t)
	exp := startExporter(t, cl.Node)
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)
	last := map[string]float64{}
	for i := range 20 {
		conns := talk(t, cl, dst, 3)
		if i%2 == 1 {
			closeAll(conns)
		}
		s := exp.scrape()
		promtoolCheck(t, s.text)
		for _, name := range []string{"connection_bytes_sent_total", "connection_bytes_received_total", "connection_retransmits_total"} {
			for _, smp := range s.samples(name, nil) {
				key := name + fmt.Sprint(smp.labels)
				if smp.value < last[key] {
					t.Errorf("scrape %d: %s went back from %v to %v", i, key, last[key], smp.value)
				}
				last[key] = smp.value
			}
		}
	}
	if len(last) == 0 {
		t.Fatal("no byte counter exported")
	}
}
