package bpf

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/iotest"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
	"github.com/connection-exporter/connection_exporter/record"
)

// testTypes is the kernel's type information, decoded once for the
// package's tests as the exporter decodes it once for its loads: each load
// relocates against types an earlier load (of either collection) decoded.
var testTypes = btf.NewCache()

// newTracker loads the real programs. It skips only when not root; every
// other failure, including a kernel that refuses the programs, fails.
func newTracker(t testing.TB, cfg Config) *Tracker {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loading BPF programs needs root")
	}
	if cfg.Types == nil {
		cfg.Types = testTypes
	}
	tr, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("load tracker: %v", err)
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("close tracker: %v", err)
		}
	})
	return tr
}

func listen(t testing.TB, network, address string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	netlab.Serve(ln)
	return ln
}

// find returns the entry whose local address is src, after a Read, which
// finds the ends of handshakes.
func find(t *testing.T, tr *Tracker, src netip.AddrPort) (record.Conn, bool) {
	t.Helper()
	if _, err := tr.Read(func(*record.Conn) {}); err != nil {
		t.Fatalf("read: %v", err)
	}
	conns, err := tr.snapshot(nil)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	for _, c := range conns {
		if c.Src == src {
			return c, true
		}
	}
	return record.Conn{}, false
}

func addrPort(a net.Addr) netip.AddrPort {
	return a.(*net.TCPAddr).AddrPort()
}

func TestTrackerRecordsLifecycle(t *testing.T) {
	tr := newTracker(t, Config{MaxConnections: 1024})
	for _, tc := range []struct{ name, network, addr string }{
		{"ipv4", "tcp4", "127.0.0.1:0"},
		{"ipv6", "tcp6", "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The namespace compared below is this thread's: a test that
			// ran a function in a lab namespace on the main thread leaves
			// that thread, which /proc/self names, behind in it.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			ln := listen(t, tc.network, tc.addr)
			c, err := net.Dial(tc.network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			src := addrPort(c.LocalAddr())
			got, ok := find(t, tr, src)
			if !ok {
				t.Fatalf("connection from %v not recorded", src)
			}
			if got.State != record.StateEstablished {
				t.Errorf("state = %v, want established", got.State)
			}
			if got.Dst != addrPort(ln.Addr()) {
				t.Errorf("dst = %v, want %v", got.Dst, ln.Addr())
			}
			if got.PID != uint32(os.Getpid()) {
				t.Errorf("pid = %d, want %d", got.PID, os.Getpid())
			}
			comm, _ := os.ReadFile("/proc/self/comm")
			if want := string(comm[:len(comm)-1]); got.Command() != want {
				t.Errorf("comm = %q, want %q", got.Command(), want)
			}
			self, err := os.Stat("/proc/thread-self/ns/net")
			if err != nil {
				t.Fatal(err)
			}
			if want := inode(self); got.NetNS != want {
				t.Errorf("netns = %d, want %d", got.NetNS, want)
			}

			c.Close()
			var closed record.Conn
			for range 100 {
				if closed, _ = find(t, tr, src); closed.State == record.StateClosed {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if closed.State != record.StateClosed {
				t.Fatalf("state after close = %v, want closed", closed.State)
			}
			if err := tr.Release([]uint64{closed.Cookie}); err != nil {
				t.Fatal(err)
			}
			if _, ok := find(t, tr, src); ok {
				t.Error("released connection still in the map")
			}
		})
	}
}

// refusing returns a loopback address whose port was just free: a
// connection to it is refused.
func refusing(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return addrPort(ln.Addr())
}

func TestTrackerRecordsRefusedAttempt(t *testing.T) {
	tr := newTracker(t, Config{MaxConnections: 1024})
	dst := refusing(t)
	if _, err := net.Dial("tcp4", dst.String()); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
	if _, err := tr.Read(func(*record.Conn) {}); err != nil { // drains the logs
		t.Fatal(err)
	}
	conns, err := tr.snapshot(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		if c.Dst == dst {
			if c.State != record.StateFailed {
				t.Errorf("state = %v, want failed", c.State)
			}
			// The kernel released the port before the attempt closed.
			if c.Src.Port() == 0 || c.Src.Addr() != dst.Addr() {
				t.Errorf("source %v, want 127.0.0.1 and the port the attempt had", c.Src)
			}
			return
		}
	}
	t.Fatalf("refused attempt to %v not recorded", dst)
}

func TestTrackerCountsLostWhenFull(t *testing.T) {
	tr := newTracker(t, Config{MaxConnections: 4})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	for range 10 {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	// The openings wait in the logs until a read drains them into the map.
	if _, err := tr.Read(func(*record.Conn) {}); err != nil {
		t.Fatal(err)
	}
	lost, err := tr.Lost()
	if err != nil {
		t.Fatal(err)
	}
	// Other processes may connect too, so at least 6 of ours were lost.
	if lost < 6 {
		t.Errorf("lost = %d, want at least 6", lost)
	}
	// Nothing is released here: the map took at most its capacity.
	if rec, err := tr.Recorded(); err != nil || rec < 10 || rec-lost > 4 {
		t.Errorf("recorded = %d (%d lost), %v; want at least the 10 dialled, all but at most the capacity of 4 lost", rec, lost, err)
	}
}

func TestTrackerCountsRecorded(t *testing.T) {
	ln := listen(t, "tcp4", "127.0.0.1:0")
	before, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	tr := newTracker(t, Config{MaxConnections: 1024})
	r0, err := tr.Recorded()
	if err != nil {
		t.Fatal(err)
	}
	if r0 < 1 {
		t.Errorf("recorded at start = %d, want the seeded connection counted", r0)
	}
	for range 5 {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	r1, err := tr.Recorded()
	if err != nil {
		t.Fatal(err)
	}
	if r1-r0 < 5 {
		t.Errorf("recorded %d connections after 5 dials, want at least 5", r1-r0)
	}
}

func TestTrackerSeedsExistingConnections(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading BPF programs needs root")
	}
	ln := listen(t, "tcp4", "127.0.0.1:0")
	before, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	closedBefore, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	closedSrc := addrPort(closedBefore.LocalAddr())
	closedBefore.Close()
	defer before.Close()

	tr := newTracker(t, Config{MaxConnections: 1024})
	got, ok := find(t, tr, addrPort(before.LocalAddr()))
	if !ok {
		t.Fatal("connection opened before start-up not seeded")
	}
	if got.State != record.StateEstablished || got.Dst != addrPort(ln.Addr()) || got.PID != uint32(os.Getpid()) {
		t.Errorf("seeded %+v, want established to %v by pid %d", got, ln.Addr(), os.Getpid())
	}
	// The accepted (inbound) side must not be taken for an outbound one.
	conns, err := tr.snapshot(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		if c.Src == addrPort(ln.Addr()) {
			t.Errorf("inbound side seeded as outbound: %+v", c)
		}
		if c.Src == closedSrc && c.State == record.StateEstablished {
			t.Errorf("connection closed before start-up seeded as open")
		}
	}
}

func TestSockList(t *testing.T) {
	// Past two chunks, then every third kept: the survivors in order,
	// across chunk boundaries, and no chunk left over.
	var l sockList
	n := 2*seedChunk + 5
	for i := range n {
		l.add(&trackerSockRec{Cookie: uint64(i)})
	}
	if l.n != n || len(l.chunks) != 3 {
		t.Fatalf("%d records in %d chunks, want %d in 3", l.n, len(l.chunks), n)
	}
	l.keep(func(r *trackerSockRec) bool { return r.Cookie%3 == 0 })
	if want := (n + 2) / 3; l.n != want || len(l.chunks) != 1 {
		t.Fatalf("kept %d records in %d chunks, want %d in 1", l.n, len(l.chunks), want)
	}
	for i := range l.n {
		if got := l.at(i).Cookie; got != uint64(3*i) {
			t.Fatalf("record %d has cookie %d, want %d", i, got, 3*i)
		}
	}
	l.keep(func(*trackerSockRec) bool { return false })
	if l.n != 0 || len(l.chunks) != 0 {
		t.Errorf("%d records in %d chunks left, want none", l.n, len(l.chunks))
	}
	l.add(&trackerSockRec{Cookie: 7})
	if l.n != 1 || l.at(0).Cookie != 7 {
		t.Errorf("add after emptying: %d records, first %+v", l.n, *l.at(0))
	}
}

func TestReadRecords(t *testing.T) {
	// Five records read through a buffer of two, one byte per read: runs
	// of 2, 2 and 1, each record whole.
	var raw []byte
	for i := range 5 {
		r := trackerSockRec{Cookie: uint64(i + 1), Family: 10, Sport: uint16(1000 + i)}
		raw = append(raw, bytesOf([]trackerSockRec{r})...)
	}
	var runs []int
	var got []trackerSockRec
	err := readRecords(iotest.OneByteReader(bytes.NewReader(raw)), make([]trackerSockRec, 2), func(recs []trackerSockRec) {
		runs = append(runs, len(recs))
		got = append(got, recs...)
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(runs, []int{2, 2, 1}) {
		t.Errorf("runs of %v records, want 2, 2, 1", runs)
	}
	for i, r := range got {
		if r.Cookie != uint64(i+1) || r.Family != 10 || r.Sport != uint16(1000+i) {
			t.Errorf("record %d = %+v", i, r)
		}
	}
	if err := readRecords(bytes.NewReader(raw[:len(raw)-1]), make([]trackerSockRec, 2), func([]trackerSockRec) {}); err == nil {
		t.Error("output ending within a record accepted")
	}
	failing := iotest.ErrReader(errors.New("broken"))
	if err := readRecords(failing, make([]uint64, 2), func([]uint64) {}); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Errorf("read error = %v, want it passed on", err)
	}
}

func inode(fi os.FileInfo) uint32 {
	return uint32(fi.Sys().(*syscall.Stat_t).Ino)
}

func FuzzReadRecords(f *testing.F) {
	size := int(unsafe.Sizeof(trackerSockRec{}))
	f.Add(make([]byte, 2*size))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, raw []byte) {
		n := 0
		err := readRecords(bytes.NewReader(raw), make([]trackerSockRec, 3), func(recs []trackerSockRec) { n += len(recs) })
		if (err == nil) != (len(raw)%size == 0) {
			t.Errorf("%d bytes: err = %v", len(raw), err)
		}
		if err == nil && n*size != len(raw) {
			t.Errorf("%d bytes read as %d records", len(raw), n)
		}
	})
}

func TestInsertNewKeepsExisting(t *testing.T) {
	tr := newTracker(t, Config{MaxConnections: 4, keepStartup: true})
	// Room for the test: the seed may have filled the map with the host's
	// connections.
	var key uint64
	var keys []uint64
	for it := tr.objs.Conns.Iterate(); it.Next(&key, new(trackerConn)); {
		keys = append(keys, key)
	}
	for _, k := range keys {
		tr.objs.Conns.Delete(k)
	}
	// Cookies far above any the kernel handed out in this test's life.
	const first = 1 << 62
	recorded := trackerConn{State: uint32(record.StateClosed), Version: 7, Pid: 42}
	if err := tr.objs.Conns.Update(uint64(first), &recorded, ebpf.UpdateNoExist); err != nil {
		t.Fatal(err)
	}
	recs := []trackerConnRec{
		{Cookie: first, Conn: trackerConn{State: uint32(record.StateEstablished), Version: 1}},
		{Cookie: first + 1, Conn: trackerConn{State: uint32(record.StateConnecting), Version: 1}},
	}
	inserted := make(map[uint64]seeded)
	if err := tr.insertNew(recs, inserted); err != nil {
		t.Fatal(err)
	}
	if len(inserted) != 1 || inserted[first+1] != (seeded{state: record.StateConnecting}) {
		t.Errorf("inserted %v, want only the new cookie, connecting", inserted)
	}
	var got trackerConn
	if err := tr.objs.Conns.Lookup(uint64(first), &got); err != nil || got != recorded {
		t.Errorf("existing entry = %+v, %v; want it as the tracepoint left it", got, err)
	}
	if err := tr.objs.Conns.Lookup(uint64(first+1), &got); err != nil || got.State != uint32(record.StateConnecting) {
		t.Errorf("new entry = %+v, %v", got, err)
	}
	// The map holds 4: inserting 3 more fails with the kernel's error.
	more := []trackerConnRec{{Cookie: first + 2}, {Cookie: first + 3}, {Cookie: first + 4}}
	if err := tr.insertNew(more, inserted); err == nil || !strings.Contains(err.Error(), "argument list too long") {
		t.Errorf("insert into a full map: err = %v, want E2BIG", err)
	}
}

func TestTrackerUnloadsStartupPrograms(t *testing.T) {
	tr := newTracker(t, Config{MaxConnections: 1024})
	for _, p := range tr.startupPrograms() {
		if p.FD() >= 0 {
			t.Errorf("program %v still loaded after start-up", p)
		}
	}
	if tr.objs.ReadChanges.FD() < 0 {
		t.Error("the reader was unloaded too")
	}
}

// TestTrackerDetach checks that a detached tracker records nothing, keeps
// what it recorded, and records again once attached.
func TestTrackerDetach(t *testing.T) {
	tr := newTracker(t, Config{MaxConnections: 1024})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	dial := func() netip.AddrPort {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return addrPort(c.LocalAddr())
	}
	before := dial()
	if err := tr.Detach(); err != nil {
		t.Fatalf("detach: %v", err)
	}
	if err := tr.Detach(); err != nil {
		t.Fatalf("detach again: %v", err)
	}
	unseen := dial()
	if err := tr.Attach(); err != nil {
		t.Fatalf("attach: %v", err)
	}
	if err := tr.Attach(); err != nil {
		t.Fatalf("attach again: %v", err)
	}
	after := dial()
	for _, c := range []struct {
		src  netip.AddrPort
		want bool
	}{{before, true}, {unseen, false}, {after, true}} {
		if _, ok := find(t, tr, c.src); ok != c.want {
			t.Errorf("connection from %v recorded = %v, want %v", c.src, ok, c.want)
		}
	}
	// An attached program runs once per attachment: a second Attach must
	// not have attached it twice, and one Detach leaves it detached, with
	// no attachment kept or leaked.
	if tr.attached == nil {
		t.Fatal("no attachment after attaching twice")
	}
	if err := tr.Detach(); err != nil {
		t.Fatalf("detach: %v", err)
	}
	if tr.attached != nil {
		t.Error("an attachment kept after Detach")
	}
	src := dial()
	if _, ok := find(t, tr, src); ok {
		t.Errorf("connection from %v recorded after one Detach: the second Attach attached again", src)
	}
}

// TestTrackerReconnect connects one socket twice: refused, then accepted.
// The second attempt finds the first one's entry under the same cookie; it
// is no lost connection, and the entry follows the new attempt.
func TestTrackerReconnect(t *testing.T) {
	tr := newTracker(t, Config{MaxConnections: 1024})
	refused := refusing(t)
	ln := listen(t, "tcp4", "127.0.0.1:0")
	open := addrPort(ln.Addr())

	fd := refusedOnce(t, refused)
	defer syscall.Close(fd)
	lost0, err := tr.Lost()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Connect(fd, sockaddr(open)); err != nil {
		t.Fatalf("second connect: %v", err)
	}
	if lost, err := tr.Lost(); err != nil || lost != lost0 {
		t.Errorf("lost = %d, %v after the second attempt; want %d", lost, err, lost0)
	}
	local, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	l4 := local.(*syscall.SockaddrInet4)
	src := netip.AddrPortFrom(netip.AddrFrom4(l4.Addr), uint16(l4.Port))
	c, ok := find(t, tr, src)
	if !ok {
		t.Fatalf("connection from %v not recorded", src)
	}
	if c.State != record.StateEstablished || c.Dst != open {
		t.Errorf("entry %v -> %v %v, want established to %v", c.Src, c.Dst, c.State, open)
	}
}

// TestTrackerCloseDuringRead closes the tracker while a Read is handing a
// connection to fn. Read reads the ring where the kernel wrote it, so Close
// must wait for it before unmapping the ring, and a Read after Close must
// fail with ErrClosed instead of touching memory that is gone (which would
// kill the process, not return an error).
func TestTrackerCloseDuringRead(t *testing.T) {
	tr := newTracker(t, Config{MaxConnections: 1024})
	conn := trackerConn{Pid: 1, Netns: 4026531840, Family: afInet, State: uint32(record.StateEstablished),
		Sport: 1, Dport: 80, Saddr: [16]uint8{10, 0, 0, 1}, Daddr: [16]uint8{10, 0, 0, 2}, Version: 1}
	if err := tr.objs.Conns.Put(uint64(1<<41), conn); err != nil {
		t.Fatal(err)
	}
	tr.walked = false // the kernel's counters do not see a change made here
	closeWaits(t, "a Read handing out connections", func(hold func()) error {
		_, err := tr.Read(func(*record.Conn) { hold() })
		return err
	}, tr.Close)
	if _, err := tr.Read(func(*record.Conn) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close: %v, want ErrClosed", err)
	}
}

// closeWaits runs call on a goroutine of its own until call's callback
// calls hold, which stops it there; it then calls closeFn and checks that
// closeFn does not return while call is held, and that both succeed once
// call is let go. what says what call is doing, for the messages.
func closeWaits(t *testing.T, what string, call func(hold func()) error, closeFn func() error) {
	t.Helper()
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hold := func() {
		once.Do(func() {
			close(held)
			<-release
		})
	}
	called := make(chan error, 1)
	go func() { called <- call(hold) }()
	<-held
	closed := make(chan error, 1)
	go func() { closed <- closeFn() }()
	select {
	case err := <-closed:
		close(release)
		t.Fatalf("Close returned (%v) during %s", err, what)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-called; err != nil {
		t.Errorf("%s: %v", what, err)
	}
	if err := <-closed; err != nil {
		t.Errorf("Close: %v", err)
	}
}
