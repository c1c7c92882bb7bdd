package bpf

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
)

// newTracker loads the real programs. It skips only when not root; every
// other failure, including a kernel that refuses the programs, fails.
func newTracker(t testing.TB, cfg Config) *Tracker {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loading BPF programs needs root")
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

// find returns the snapshot entry whose local address is src.
func find(t *testing.T, tr *Tracker, src netip.AddrPort) (Conn, bool) {
	t.Helper()
	conns, err := tr.Snapshot(nil)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	for _, c := range conns {
		if c.Src == src {
			return c, true
		}
	}
	return Conn{}, false
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
			if got.State != StateEstablished {
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
			if got.CgroupID == 0 {
				t.Error("cgroup id is 0")
			}

			c.Close()
			var closed Conn
			for range 100 {
				if closed, _ = find(t, tr, src); closed.State == StateClosed {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if closed.State != StateClosed {
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

func TestTrackerRecordsRefusedAttempt(t *testing.T) {
	tr := newTracker(t, Config{MaxConnections: 1024})
	// A port that was just free on loopback refuses the connection.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dst := addrPort(ln.Addr())
	ln.Close()
	if _, err := net.Dial("tcp4", dst.String()); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
	conns, err := tr.Snapshot(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		if c.Dst == dst {
			if c.State != StateFailed {
				t.Errorf("state = %v, want failed", c.State)
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
	lost, err := tr.Lost()
	if err != nil {
		t.Fatal(err)
	}
	// Other processes may connect too, so at least 6 of ours were lost.
	if lost < 6 {
		t.Errorf("lost = %d, want at least 6", lost)
	}
	// Nothing is released here: the map took at most its capacity.
	if rec, err := tr.Recorded(); err != nil || rec > 4 {
		t.Errorf("recorded = %d, %v; want at most the capacity of 4", rec, err)
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
	if got.State != StateEstablished || got.Dst != addrPort(ln.Addr()) || got.PID != uint32(os.Getpid()) {
		t.Errorf("seeded %+v, want established to %v by pid %d", got, ln.Addr(), os.Getpid())
	}
	// The accepted (inbound) side must not be taken for an outbound one.
	conns, err := tr.Snapshot(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		if c.Src == addrPort(ln.Addr()) {
			t.Errorf("inbound side seeded as outbound: %+v", c)
		}
		if c.Src == closedSrc && c.State == StateEstablished {
			t.Errorf("connection closed before start-up seeded as open")
		}
	}
}

func TestDecodeSockRecs(t *testing.T) {
	if _, err := decodeSockRecs(make([]byte, sockRecSize+1)); err == nil {
		t.Error("truncated record accepted")
	}
	raw := make([]byte, 2*sockRecSize)
	raw[0] = 7                 // cookie
	raw[sockRecSize+28] = 0x50 // second record's family, at offset 28
	recs, err := decodeSockRecs(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Cookie != 7 || recs[1].Family != 0x50 {
		t.Errorf("decoded %+v", recs)
	}
}

func TestSocketInode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		ino  uint64
		isOK bool
	}{
		{"socket:[12345]", 12345, true},
		{"socket:[]", 0, false},
		{"socket:[12", 0, false},
		{"pipe:[12]", 0, false},
		{"/dev/null", 0, false},
	} {
		ino, ok := socketInode(tc.in)
		if ino != tc.ino || ok != tc.isOK {
			t.Errorf("socketInode(%q) = %d, %v; want %d, %v", tc.in, ino, ok, tc.ino, tc.isOK)
		}
	}
}

func inode(fi os.FileInfo) uint32 {
	return uint32(fi.Sys().(*syscall.Stat_t).Ino)
}

func FuzzDecodeSockRecs(f *testing.F) {
	f.Add(make([]byte, 2*sockRecSize))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, raw []byte) {
		recs, err := decodeSockRecs(raw)
		if err == nil && len(recs)*sockRecSize != len(raw) {
			t.Errorf("%d bytes decoded into %d records", len(raw), len(recs))
		}
	})
}

func FuzzSocketInode(f *testing.F) {
	f.Add("socket:[12345]")
	f.Add("anon_inode:[eventpoll]")
	f.Fuzz(func(t *testing.T, s string) {
		if ino, ok := socketInode(s); ok && !strings.HasPrefix(s, "socket:[") {
			t.Errorf("socketInode(%q) = %d", s, ino)
		}
	})
}
