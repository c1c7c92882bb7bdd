package bpf

import (
	"encoding/binary"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cilium/ebpf"

	"github.com/connection-exporter/connection_exporter/record"
)

// onCPU runs the rest of the calling test on its own thread, bound to cpu,
// so that the tracepoint logs what the thread's system calls do on that
// CPU's part of the logs. The thread stays locked: it ends with the test,
// rather than going back to the runtime bound. It skips when the machine
// lacks cpu.
func onCPU(t *testing.T, cpu int) {
	t.Helper()
	if runtime.NumCPU() <= cpu {
		t.Skipf("needs %d CPUs to log on two, the machine has %d", cpu+1, runtime.NumCPU())
	}
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		t.Fatalf("bind to CPU %d: %v", cpu, err)
	}
}

// newSocket4 returns a blocking IPv4 TCP socket; the caller closes it.
func newSocket4(t *testing.T) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// socket4 returns a blocking IPv4 TCP socket, closed at the test's end.
func socket4(t *testing.T) int {
	t.Helper()
	fd := newSocket4(t)
	t.Cleanup(func() { syscall.Close(fd) })
	return fd
}

// resetClose closes fd with a reset: the close runs in this system call,
// on this CPU, and leaves no TIME_WAIT behind.
func resetClose(fd int) error {
	err := syscall.SetsockoptLinger(fd, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1})
	syscall.Close(fd)
	return err
}

// refusedOnce returns a blocking IPv4 TCP socket whose first attempt, to
// refused, where nothing listens, failed. The caller closes it.
func refusedOnce(t *testing.T, refused netip.AddrPort) int {
	t.Helper()
	fd := newSocket4(t)
	if err := syscall.Connect(fd, sockaddr(refused)); err != syscall.ECONNREFUSED {
		syscall.Close(fd)
		t.Fatalf("first connect: %v, want connection refused", err)
	}
	return fd
}

// dialRecorded dials ln and reads until the connection is recorded,
// established. The connection closes at the test's end.
func dialRecorded(t *testing.T, tr *Tracker, ln net.Listener) (c net.Conn, src, dst netip.AddrPort) {
	t.Helper()
	dst = addrPort(ln.Addr())
	c, err := net.Dial("tcp4", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	src = addrPort(c.LocalAddr())
	if got, ok := readOne(t, tr, src); !ok || got.State != record.StateEstablished {
		t.Fatalf("open connection: %+v, %v", got, ok)
	}
	return c, src, dst
}

func sockaddr(a netip.AddrPort) *syscall.SockaddrInet4 {
	return &syscall.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
}

func localAddr(t *testing.T, fd int) netip.AddrPort {
	t.Helper()
	local, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	l4 := local.(*syscall.SockaddrInet4)
	return netip.AddrPortFrom(netip.AddrFrom4(l4.Addr), uint16(l4.Port))
}

// TestLogCloseOnAnotherCPU opens a connection on one CPU and closes it on
// another, whose part of the log the drain reads first: the close must
// still find the entry its opening makes, and end it.
func TestLogCloseOnAnotherCPU(t *testing.T) {
	onCPU(t, 1)
	tr := newTracker(t, Config{MaxConnections: 1024})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	fd := newSocket4(t)
	if err := syscall.Connect(fd, sockaddr(addrPort(ln.Addr()))); err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	src := localAddr(t, fd)
	onCPU(t, 0)
	if err := resetClose(fd); err != nil {
		t.Fatal(err)
	}
	c, ok := readOne(t, tr, src)
	if !ok || c.State != record.StateClosed || c.Dst != addrPort(ln.Addr()) {
		t.Errorf("connection from %v: %+v, found %v; want closed to %v", src, c, ok, ln.Addr())
	}
}

// TestLogReconnectOnAnotherCPU: a socket whose first attempt is refused on
// one CPU connects again on another. The drain meets the second opening
// before the first one and the first attempt's close after both: the entry
// must follow the second attempt, established.
func TestLogReconnectOnAnotherCPU(t *testing.T) {
	onCPU(t, 1)
	tr := newTracker(t, Config{MaxConnections: 1024})
	refused := refusing(t)
	ln := listen(t, "tcp4", "127.0.0.1:0")
	open := addrPort(ln.Addr())
	fd := socket4(t)
	if err := syscall.Connect(fd, sockaddr(refused)); err != syscall.ECONNREFUSED {
		t.Fatalf("first connect: %v, want connection refused", err)
	}
	onCPU(t, 0)
	if err := syscall.Connect(fd, sockaddr(open)); err != nil {
		t.Fatalf("second connect: %v", err)
	}
	src := localAddr(t, fd)
	c, ok := readOne(t, tr, src)
	if !ok || c.State != record.StateEstablished || c.Dst != open {
		t.Errorf("connection from %v: %+v, found %v; want established to %v", src, c, ok, open)
	}
}

// TestLogFull fills one CPU's parts of the logs: the openings and closes
// that find no room go into the map at once, and a read finds every
// connection as if all had been logged.
func TestLogFull(t *testing.T) {
	onCPU(t, 0)
	tr := newTracker(t, Config{MaxConnections: 1024, logSlots: 4})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	dst := addrPort(ln.Addr())
	lost0, err := tr.Lost()
	if err != nil {
		t.Fatal(err)
	}
	// 20 openings: 4 logged (fewer if another process on this CPU takes
	// slots), the others into the map. Then the last 10 dialled close: 4
	// closes are logged, the others go into the entries the tracepoint
	// made itself.
	const n, closing = 20, 10
	fds := make([]int, 0, n)
	t.Cleanup(func() {
		for _, fd := range fds {
			if fd >= 0 {
				syscall.Close(fd)
			}
		}
	})
	srcs := make([]netip.AddrPort, n)
	for i := range n {
		fd := newSocket4(t)
		fds = append(fds, fd)
		if err := syscall.Connect(fd, sockaddr(dst)); err != nil {
			t.Fatal(err)
		}
		srcs[i] = localAddr(t, fd)
	}
	for i := n - closing; i < n; i++ {
		err := resetClose(fds[i])
		fds[i] = -1
		if err != nil {
			t.Fatal(err)
		}
	}
	got := make(map[netip.AddrPort]record.State)
	if _, err := tr.Read(func(c *record.Conn) {
		if c.Dst == dst {
			got[c.Src] = c.State
		}
	}); err != nil {
		t.Fatal(err)
	}
	for i, src := range srcs {
		want := record.StateEstablished
		if i >= n-closing {
			want = record.StateClosed
		}
		if got[src] != want {
			t.Errorf("connection %d from %v: %v, want %v", i, src, got[src], want)
		}
	}
	if lost, err := tr.Lost(); err != nil || lost != lost0 {
		t.Errorf("lost = %d, %v; want %d", lost, err, lost0)
	}
	// The tracepoint wrote at least 16 openings and 6 closes into the map.
	if rec, err := tr.counter(counterRecorded); err != nil || rec < n-4 {
		t.Errorf("openings written into the map: %d, %v; want at least %d", rec, err, n-4)
	}
	if ch, err := tr.counter(counterChanged); err != nil || ch < closing-4 {
		t.Errorf("closes written into the map: %d, %v; want at least %d", ch, err, closing-4)
	}
}

// lookupConn returns the map's entry of the connection from src to dst
// (reads every entry: a test's map is small).
func lookupConn(t *testing.T, tr *Tracker, src, dst netip.AddrPort) (uint64, trackerConn, bool) {
	t.Helper()
	var key uint64
	var v trackerConn
	for it := tr.objs.Conns.Iterate(); it.Next(&key, &v); {
		var c record.Conn
		convert(&c, key, &v, false)
		if c.Src == src && c.Dst == dst {
			return key, v, true
		}
	}
	return 0, v, false
}

// walkOnly runs the reader as a read's later run does: it walks without
// draining the logs. What it copies out is not taken.
func walkOnly(t *testing.T, tr *Tracker) {
	t.Helper()
	var run trackerReadRun
	packet := make([]byte, 64)
	binary.NativeEndian.PutUint32(packet[unsafe.Offsetof(run.Start):], 1)
	binary.NativeEndian.PutUint32(packet[unsafe.Offsetof(run.Size):], tr.ringSize)
	binary.NativeEndian.PutUint32(packet[unsafe.Offsetof(run.Flags):], tr.flags)
	atomic.StoreUint32(&tr.progress.Written, 1)
	atomic.StoreUint32(&tr.progress.Read, 1)
	if err := runXDP(tr.objs.ReadChanges, "connection reader", packet, packet); err != nil {
		t.Fatal(err)
	}
}

// TestWalkWithoutDrainWaits: a connection whose close waits in a log is
// found gone by every walk until a drain takes the close. Walks that do not
// drain (a read's later runs, when the ring fills) must not end it, as last
// seen, before the close is drained: the scrape would release it, and the
// close, with its final counts, would find no entry.
func TestWalkWithoutDrainWaits(t *testing.T) {
	tr := newTracker(t, Config{MaxConnections: 1024, TCPStats: true})
	c, src, dst := dialRecorded(t, tr, listen(t, "tcp4", "127.0.0.1:0"))
	c.(*net.TCPConn).SetLinger(0)
	c.Close() // the close is logged, not drained
	walkOnly(t, tr)
	walkOnly(t, tr)
	if _, v, ok := lookupConn(t, tr, src, dst); !ok || v.State != uint32(record.StateEstablished) {
		t.Errorf("after walks without a drain: entry %+v, found %v; want it established still", v, ok)
	}
	if got, ok := readOne(t, tr, src); !ok || got.State != record.StateClosed {
		t.Errorf("after a read: %+v, found %v; want closed", got, ok)
	}
}

// TestWalkClearsGone: an entry found gone by one walk (its socket seen
// closed just before the kernel stored SYN_SENT) and alive at the next is
// not ended early when it closes later.
func TestWalkClearsGone(t *testing.T) {
	tr := newTracker(t, Config{MaxConnections: 1024, TCPStats: true})
	_, src, dst := dialRecorded(t, tr, listen(t, "tcp4", "127.0.0.1:0"))
	key, v, ok := lookupConn(t, tr, src, dst)
	if !ok {
		t.Fatal("no entry")
	}
	v.Gone = 1
	if err := tr.objs.Conns.Put(key, v); err != nil {
		t.Fatal(err)
	}
	readOne(t, tr, src)
	if _, v, _ := lookupConn(t, tr, src, dst); v.Gone != 0 {
		t.Errorf("gone = %d after a walk found the socket open, want 0", v.Gone)
	}
}

// TestLogFullReconnect: a socket whose first attempt failed (and was
// drained) connects again and closes while its second opening waits in the
// log and its CPU's log of closes is full, so the tracepoint writes the
// close into the entry itself. The drain must then not take the older
// opening as a new attempt: the entry stays closed, with the second
// attempt's tuple.
func TestLogFullReconnect(t *testing.T) {
	onCPU(t, 0)
	tr := newTracker(t, Config{MaxConnections: 1024, logSlots: 4})
	refused := refusing(t)
	ln := listen(t, "tcp4", "127.0.0.1:0")
	open := addrPort(ln.Addr())
	fd := refusedOnce(t, refused)
	closed := false
	defer func() {
		if !closed {
			syscall.Close(fd)
		}
	}()
	if _, err := tr.Read(func(*record.Conn) {}); err != nil { // drains the failure
		t.Fatal(err)
	}
	if err := syscall.Connect(fd, sockaddr(open)); err != nil {
		t.Fatalf("second connect: %v", err)
	}
	src := localAddr(t, fd)
	// Four closes fill this CPU's log of closes.
	for range 4 {
		c, err := net.Dial("tcp4", open.String())
		if err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	changed0, err := tr.counter(counterChanged)
	if err != nil {
		t.Fatal(err)
	}
	closed = true
	if err := resetClose(fd); err != nil {
		t.Fatal(err)
	}
	if changed, err := tr.counter(counterChanged); err != nil || changed == changed0 {
		t.Fatalf("the close did not go into the map (%d, %v): the log was not full", changed, err)
	}
	if _, err := tr.Read(func(*record.Conn) {}); err != nil {
		t.Fatal(err)
	}
	if _, v, ok := lookupConn(t, tr, src, open); !ok || v.State != uint32(record.StateClosed) {
		t.Errorf("connection from %v: %+v, found %v; want closed", src, v, ok)
	}
}

// TestPrefault checks that the load-time write covers every element of the
// arrays with the zero value: elements written before it, the first and
// the last, read back as zeroes. A batch of the wrong value size, or a
// chunk that skips a range, fails here rather than leaving the logs'
// first pass slow unnoticed.
func TestPrefault(t *testing.T) {
	tr := newTracker(t, Config{MaxConnections: 4096, logSlots: 1024, changes: 3000})
	check := func(name string, m *ebpf.Map, prefaultIt func(*ebpf.Map) error) {
		last := m.MaxEntries() - 1
		junk := make([]byte, m.ValueSize())
		for i := range junk {
			junk[i] = 0xa5
		}
		for _, k := range []uint32{0, last / 2, last} {
			if err := m.Update(k, junk, ebpf.UpdateExist); err != nil {
				t.Fatalf("%s: write %d: %v", name, k, err)
			}
		}
		if err := prefaultIt(m); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := make([]byte, m.ValueSize())
		for _, k := range []uint32{0, last / 2, last} {
			if err := m.Lookup(k, &got); err != nil {
				t.Fatalf("%s: read %d: %v", name, k, err)
			}
			for _, b := range got {
				if b != 0 {
					t.Fatalf("%s: element %d of %d not zeroed: %x", name, k, last+1, got)
				}
			}
		}
	}
	check("opens", tr.objs.Opens, prefault[trackerOpenRec])
	check("closes", tr.objs.Closes, prefault[trackerCloseRec])
	check("changes", tr.objs.Changes, prefault[trackerConnRec])
}
