package bpf

import (
	"net/netip"
	"runtime"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

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

// socket4 returns a blocking IPv4 TCP socket, closed at the test's end.
func socket4(t *testing.T) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	return fd
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
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Connect(fd, sockaddr(addrPort(ln.Addr()))); err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	src := localAddr(t, fd)
	onCPU(t, 0)
	// A reset: the close runs in this system call, on this CPU.
	lerr := syscall.SetsockoptLinger(fd, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1})
	syscall.Close(fd)
	if lerr != nil {
		t.Fatal(lerr)
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
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
		if err := syscall.Connect(fd, sockaddr(dst)); err != nil {
			t.Fatal(err)
		}
		srcs[i] = localAddr(t, fd)
	}
	// Resets: each close runs in its system call, on this CPU.
	for i := n - closing; i < n; i++ {
		if err := syscall.SetsockoptLinger(fds[i], syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1}); err != nil {
			t.Fatal(err)
		}
		syscall.Close(fds[i])
		fds[i] = -1
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
}
