package e2e

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
)

// leastPrivilege is the capability set README documents.
var leastPrivilege = []string{"sys_admin", "net_admin", "sys_ptrace"}

// setpriv returns a wrapper that runs a command with only caps in its
// bounding set (and so in its effective set, since it runs as root).
func setpriv(t *testing.T, caps []string) []string {
	t.Helper()
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatalf("setpriv (util-linux) is needed: %v", err)
	}
	set := "-all"
	for _, c := range caps {
		set += ",+" + c
	}
	return []string{"setpriv", "--inh-caps=-all", "--bounding-set", set, "--"}
}

// TestLeastPrivilege: with exactly the documented capabilities the exporter
// resolves connections in other namespaces.
func TestLeastPrivilege(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)
	early := dialAll(t, cl.Client, dst, 3)
	exp := startWrapped(t, cl.Node, setpriv(t, leastPrivilege))
	later := dialAll(t, cl.Client, dst, 3)
	want := truth(t, cl, sources(append(early, later...)))
	s := exp.scrape()
	match := map[string]string{"process": process(t), "destination": dst.String(), "resolver": "conntrack"}
	if got := s.byActual("connection_active", match); !equal(got, want) {
		t.Errorf("connection_active = %v, backends saw %v", got, want)
	}
	if strings.Contains(exp.logs.String(), "level=WARN") {
		t.Errorf("warnings with the documented capabilities:\n%s", exp.logs)
	}
}

// TestOwnersOfOtherUsers: connections that predate the exporter, held by a
// process of another user, are named after that process with the
// documented capabilities, which do not let the exporter list that
// process's descriptors in procfs.
func TestOwnersOfOtherUsers(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)
	srcs := holdAs(t, cl.Client, netlab.SidecarUID, dst, 3)
	exp := startWrapped(t, cl.Node, setpriv(t, leastPrivilege))
	want := truth(t, cl, srcs)
	s := exp.scrape()
	match := map[string]string{"process": "holder", "destination": dst.String(), "resolver": "conntrack"}
	if got := s.byActual("connection_active", match); !equal(got, want) {
		t.Errorf("connection_active of process holder = %v, backends saw %v\n%s", got, want, s.text)
	}
}

// holdAs runs this test binary, named holder, as uid in ns: it opens n
// connections to dst and holds them until cleanup. It returns their
// source addresses.
func holdAs(t *testing.T, ns *netlab.NS, uid int, dst netip.AddrPort, n int) []netip.AddrPort {
	t.Helper()
	_, out := startHelperAs(t, ns, uid, "holder", "hold", "E2E_HOLD_DST="+dst.String(), fmt.Sprintf("E2E_HOLD_N=%d", n))
	var srcs []netip.AddrPort
	for range n {
		line, err := out.ReadString('\n')
		if err != nil {
			t.Fatalf("holder: %v", err)
		}
		srcs = append(srcs, netip.MustParseAddrPort(strings.TrimSpace(line)))
	}
	return srcs
}

// holdHelper is the body of the holder process (E2E_HELPER=hold): it
// dials E2E_HOLD_DST E2E_HOLD_N times, says ready, prints each source
// address, and holds the connections until its input closes.
func holdHelper() int {
	n, err := strconv.Atoi(os.Getenv("E2E_HOLD_N"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "holder:", err)
		return 1
	}
	var conns []net.Conn
	for range n {
		c, err := net.Dial("tcp4", os.Getenv("E2E_HOLD_DST"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "holder:", err)
			return 1
		}
		conns = append(conns, c)
	}
	fmt.Println("ready")
	for _, c := range conns {
		fmt.Println(c.LocalAddr())
	}
	io.Copy(io.Discard, os.Stdin) // until the test closes stdin
	return 0
}

// TestMissingPrivilege: without any one of the capabilities, or as an
// unprivileged user, the exporter refuses to start and names what is
// missing.
func TestMissingPrivilege(t *testing.T) {
	netlab.New(t) // skips when not root
	for i, drop := range leastPrivilege {
		t.Run("without "+drop, func(t *testing.T) {
			caps := append(append([]string{}, leastPrivilege[:i]...), leastPrivilege[i+1:]...)
			argv := append(setpriv(t, caps), binary, "--web.listen-address=127.0.0.1:0")
			out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
			if err == nil {
				t.Fatalf("exporter without %s exited 0:\n%s", drop, out)
			}
			if want := "CAP_" + strings.ToUpper(drop); !strings.Contains(string(out), want) {
				t.Errorf("exporter without %s did not name it:\n%s", drop, out)
			}
		})
	}
	t.Run("unprivileged user", func(t *testing.T) {
		cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
			binary, "--web.listen-address=127.0.0.1:0")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "missing privileges") {
			t.Errorf("unprivileged exporter: %v\n%s", err, out)
		}
	})
}
