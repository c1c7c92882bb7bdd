package bpf

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/connection-exporter/connection_exporter/record"
)

// readOne reads the tracker and returns the last report of the connection
// from src, if any.
func readOne(t *testing.T, tr *Tracker, src netip.AddrPort) (record.Conn, bool) {
	t.Helper()
	var got record.Conn
	found := false
	if _, err := tr.Read(func(c *record.Conn) {
		if c.Src == src {
			got, found = *c, true
		}
	}); err != nil {
		t.Fatal(err)
	}
	return got, found
}

// readUntilClosed reads, up to 100 times 10 ms apart, until a Read reports
// the connection from src closed, and returns what the last Read reported
// of it (the zero Conn if nothing).
func readUntilClosed(t *testing.T, tr *Tracker, src netip.AddrPort) record.Conn {
	t.Helper()
	var got record.Conn
	for range 100 {
		var ok bool
		if got, ok = readOne(t, tr, src); ok && got.State == record.StateClosed {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return got
}

// echoOnce accepts one connection on ln, reads want bytes, answers with
// reply bytes, then waits for the client's close and closes.
func echoOnce(t *testing.T, ln net.Listener, want, reply int) <-chan int {
	got := make(chan int, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		n, _ := io.ReadFull(c, make([]byte, want))
		c.Write(make([]byte, reply))
		rest, _ := io.Copy(io.Discard, c) // until the client closes
		got <- n + int(rest)
	}()
	return got
}

// TestTrackerCountsBytes: with TCPStats, Read reports the growth of an open
// connection's counts as they change, and their last growth once it closed:
// the reports add up to the kernel's counts. Without, no count is read.
func TestTrackerCountsBytes(t *testing.T) {
	for _, stats := range []bool{true, false} {
		tr := newTracker(t, Config{MaxConnections: 1024, TCPStats: stats})
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		atServer := echoOnce(t, ln, 30000, 7000)
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		src := addrPort(c.LocalAddr())
		if _, err := c.Write(make([]byte, 30000)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 7000)); err != nil {
			t.Fatal(err)
		}
		var open record.Conn
		var sent, received uint64
		for range 100 {
			got, ok := readOne(t, tr, src)
			if ok {
				open = got
				sent, received = sent+got.TCP.BytesSent, received+got.TCP.BytesReceived
			}
			if ok && (!stats || sent == 30000 && received == 7000) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if open.State != record.StateEstablished {
			t.Fatalf("stats %v: state %v, want established", stats, open.State)
		}
		if stats {
			if sent != 30000 || received != 7000 || open.TCP.SRTT <= 0 {
				t.Errorf("open: %d bytes sent, %d received, rtt %v; want 30000, 7000 and a round-trip time", sent, received, open.TCP.SRTT)
			}
			if got, ok := tr.getOne(t, open.Cookie); !ok || got.TCP.BytesSent != 0 || got.TCP.SRTT != open.TCP.SRTT {
				t.Errorf("Get: %+v, want no growth and the round-trip time", got.TCP)
			}
			if _, again := readOne(t, tr, src); again {
				t.Error("an open connection whose counts did not change reported again")
			}
		} else if open.TCP != (record.TCPStats{}) {
			t.Errorf("counts %+v read without TCPStats", open.TCP)
		}
		c.Close()
		if n := <-atServer; n != 30000 {
			t.Fatalf("server received %d bytes", n)
		}
		closed := readUntilClosed(t, tr, src)
		// The FINs each way count one byte each once acknowledged or
		// received.
		sent, received = sent+closed.TCP.BytesSent, received+closed.TCP.BytesReceived
		want := [2]uint64{30001, 7001}
		if !stats {
			want = [2]uint64{}
		}
		if closed.State != record.StateClosed || [2]uint64{sent, received} != want {
			t.Errorf("stats %v: closed %v with %d bytes sent and %d received in all, want %v", stats, closed.State, sent, received, want)
		}
	}
}

// TestTrackerFollowsGoneSocket: a connection whose close the tracepoint did
// not see (it was detached) is found closed by the next Read, through its
// socket, which is gone.
func TestTrackerFollowsGoneSocket(t *testing.T) {
	tr := newTracker(t, Config{MaxConnections: 1024, TCPStats: true})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	c, src, _ := dialRecorded(t, tr, ln)
	if err := tr.Detach(); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).SetLinger(0) // a reset: the socket is freed at once
	c.Close()
	// Sockets made now may take the freed one's memory.
	for range 50 {
		if d, err := net.Dial("tcp4", ln.Addr().String()); err == nil {
			defer d.Close()
		}
	}
	if got := readUntilClosed(t, tr, src); got.State != record.StateClosed {
		t.Errorf("state %v after the socket went unseen, want closed", got.State)
	}
}

// getOne returns the connection of cookie as Get reports it.
func (tr *Tracker) getOne(t *testing.T, cookie uint64) (record.Conn, bool) {
	t.Helper()
	var got record.Conn
	found := false
	if err := tr.Get([]uint64{cookie}, func(c *record.Conn) { got, found = *c, true }); err != nil {
		t.Fatal(err)
	}
	return got, found
}
