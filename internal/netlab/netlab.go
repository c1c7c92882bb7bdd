// Package netlab builds throwaway network topologies for privileged tests:
// named network namespaces joined by veth pairs, iptables rules inside them,
// and sockets opened from inside a namespace without moving the test's own
// threads. Everything it creates is removed by t.Cleanup, even when the test
// fails. It touches the namespace the test runs in only to link one of its
// own to it (HostLink). It also finds the cgroup v2 hierarchy for tests
// that put processes in groups of their own.
package netlab

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/connection-exporter/connection_exporter/internal/lab"
	"github.com/connection-exporter/connection_exporter/internal/netns"
)

// TB is what the lab needs of a test.
type TB = lab.TB

// Lab creates namespaces whose names share a random prefix.
type Lab struct {
	t      TB
	prefix string
}

// New returns a Lab. It skips the test when not root and fails it when the
// tools it needs (ip, iptables) are missing.
func New(t TB) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	for _, tool := range []string{"ip", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed: %v", tool, err)
		}
	}
	b := make([]byte, 3)
	rand.Read(b)
	return &Lab{t: t, prefix: "cx" + hex.EncodeToString(b)}
}

// NS is a network namespace created by a Lab.
type NS struct {
	lab     *Lab
	Name    string // name under /run/netns
	deleted bool
}

// Delete removes the namespace now (its cleanup then does nothing): what a
// pod's end looks like to the exporter.
func (n *NS) Delete() {
	n.lab.t.Helper()
	n.lab.Cmd("ip", "netns", "delete", n.Name)
	n.deleted = true
}

// Path returns the namespace's bind mount.
func (n *NS) Path() string { return filepath.Join("/run/netns", n.Name) }

// Inode returns the namespace's inode, as the kernel reports it in sockets.
func (n *NS) Inode() uint32 {
	var st unix.Stat_t
	if err := unix.Stat(n.Path(), &st); err != nil {
		n.lab.t.Fatalf("stat %s: %v", n.Path(), err)
	}
	return uint32(st.Ino)
}

// NetNS creates a namespace with its loopback up.
func (l *Lab) NetNS(name string) *NS {
	l.t.Helper()
	n := &NS{lab: l, Name: l.prefix + "-" + name}
	l.Cmd("ip", "netns", "add", n.Name)
	l.t.Cleanup(func() {
		if n.deleted {
			return
		}
		if out, err := exec.Command("ip", "netns", "delete", n.Name).CombinedOutput(); err != nil {
			l.t.Errorf("delete netns %s: %v: %s", n.Name, err, out)
		}
	})
	n.Run("ip", "link", "set", "lo", "up")
	// Without this, IPv6 addresses wait for duplicate address detection.
	n.Run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	return n
}

// Cmd runs a command in the test's namespace and fails the test on error.
func (l *Lab) Cmd(name string, args ...string) string {
	l.t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Run runs a command inside the namespace and fails the test on error.
func (n *NS) Run(name string, args ...string) string {
	n.lab.t.Helper()
	return n.lab.Cmd("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// NATEntry is a conntrack entry of an established TCP connection from
// Client to Service that a DNAT sent to Backend.
type NATEntry struct {
	Client, Service, Backend netip.AddrPort
}

// InsertConntrack inserts the entries into the namespace's conntrack table
// in one `conntrack -R` batch (thousands per second, where one
// `conntrack -I` each would take minutes), with an hour to live.
func (n *NS) InsertConntrack(entries []NATEntry) {
	n.lab.t.Helper()
	f, err := os.CreateTemp("", "netlab-conntrack-*")
	if err != nil {
		n.lab.t.Fatalf("conntrack batch: %v", err)
	}
	defer os.Remove(f.Name())
	w := bufio.NewWriter(f)
	for _, e := range entries {
		c, s, b := e.Client, e.Service, e.Backend
		fmt.Fprintf(w, "-I -p tcp -s %s -d %s --sport %d --dport %d --reply-src %s --reply-dst %[1]s --reply-port-src %[6]d --reply-port-dst %[3]d --state ESTABLISHED -t 3600 -u ASSURED\n",
			c.Addr(), s.Addr(), c.Port(), s.Port(), b.Addr(), b.Port())
	}
	if err := errors.Join(w.Flush(), f.Close()); err != nil {
		n.lab.t.Fatalf("conntrack batch: %v", err)
	}
	n.Run("conntrack", "-R", f.Name())
}

// Link joins a and b with a veth pair and assigns each side its addresses
// (CIDR notation). Deleting either namespace removes the pair.
func (l *Lab) Link(a *NS, aAddrs []string, b *NS, bAddrs []string) (aIf, bIf string) {
	l.t.Helper()
	b2 := make([]byte, 3)
	rand.Read(b2)
	aIf, bIf = "va"+hex.EncodeToString(b2), "vb"+hex.EncodeToString(b2)
	l.Cmd("ip", "link", "add", aIf, "netns", a.Name, "type", "veth", "peer", "name", bIf, "netns", b.Name)
	for _, side := range []struct {
		ns    *NS
		ifc   string
		addrs []string
	}{{a, aIf, aAddrs}, {b, bIf, bAddrs}} {
		for _, addr := range side.addrs {
			side.ns.Run("ip", "addr", "add", addr, "dev", side.ifc, "nodad")
		}
		side.ns.Run("ip", "link", "set", side.ifc, "up")
	}
	return aIf, bIf
}

// HostLink joins ns to the test's own namespace with a veth pair: hostAddr
// (CIDR notation) on the test's side, nsAddr in ns, with ns's default route
// through the test's side. It is the one thing the lab puts in the test's
// namespace; the pair goes at cleanup, or with ns.
func (l *Lab) HostLink(ns *NS, hostAddr, nsAddr string) {
	l.t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	hostIf, nsIf := "vh"+hex.EncodeToString(b), "vn"+hex.EncodeToString(b)
	l.Cmd("ip", "link", "add", hostIf, "type", "veth", "peer", "name", nsIf, "netns", ns.Name)
	l.t.Cleanup(func() { exec.Command("ip", "link", "del", hostIf).Run() })
	l.Cmd("ip", "addr", "add", hostAddr, "dev", hostIf)
	l.Cmd("ip", "link", "set", hostIf, "up")
	ns.Run("ip", "addr", "add", nsAddr, "dev", nsIf)
	ns.Run("ip", "link", "set", nsIf, "up")
	gw, _, _ := strings.Cut(hostAddr, "/")
	ns.Run("ip", "route", "add", "default", "via", gw)
}

// Do runs fn on an OS thread that has entered the namespace. Sockets created
// by fn belong to the namespace and may be used from any goroutine after fn
// returns. The thread goes back to the test's own namespace afterwards
// (netns.Do): one left behind would keep the namespace alive after Delete.
func (n *NS) Do(fn func() error) error {
	f, err := os.Open(n.Path())
	if err != nil {
		return err
	}
	defer f.Close()
	return netns.Do(f, fn)
}

// DoAs is Do with the thread's filesystem uid set to uid while fn runs, so
// sockets fn creates are owned by uid (for iptables' owner match).
func (n *NS) DoAs(uid int, fn func() error) error {
	return n.Do(func() error {
		runtime.LockOSThread() // the fsuid is the thread's
		defer runtime.UnlockOSThread()
		prev, err := unix.SetfsuidRetUid(uid)
		if err != nil {
			return fmt.Errorf("setfsuid %d: %w", uid, err)
		}
		defer unix.SetfsuidRetUid(prev)
		return fn()
	})
}

// Listen opens a TCP listener inside the namespace.
func (n *NS) Listen(network, addr string) net.Listener {
	n.lab.t.Helper()
	var ln net.Listener
	if err := n.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	}); err != nil {
		n.lab.t.Fatalf("listen in %s: %v", n.Name, err)
	}
	n.lab.t.Cleanup(func() { ln.Close() })
	return ln
}

// Dial opens a TCP connection from inside the namespace.
func (n *NS) Dial(network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		c, err = net.Dial(network, addr)
		return err
	})
	return c, err
}

// OriginalDst returns the destination a REDIRECTed or DNATed connection was
// sent to before translation (getsockopt SO_ORIGINAL_DST), IPv4 only.
func OriginalDst(c net.Conn) (string, error) {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return "", err
	}
	var addr string
	var serr error
	err = raw.Control(func(fd uintptr) {
		var sa [16]byte
		l := uint32(len(sa))
		const soOriginalDst = 80
		_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.SOL_IP, soOriginalDst,
			uintptr(unsafe.Pointer(&sa[0])), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			serr = e
			return
		}
		port := int(sa[2])<<8 | int(sa[3])
		addr = net.JoinHostPort(net.IP(sa[4:8]).String(), fmt.Sprint(port))
	})
	if err != nil {
		return "", err
	}
	return addr, serr
}
