package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"unicode/utf8"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
)

// TestHostileNames: command names are whatever bytes a file is named with.
// A process whose name holds a quote, a backslash, a newline and invalid
// UTF-8 connects; the exposition must stay valid for client_golang's parser
// and promtool, with the name kept as far as it is representable.
func TestHostileNames(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	exp := startExporter(t, cl.Node)
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal(err)
	}
	name := "a\"b\\c\nd\xff\xfe"
	link := filepath.Join(t.TempDir(), name)
	if err := os.Symlink(bash, link); err != nil {
		t.Fatal(err)
	}
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)
	cmd := exec.Command("ip", "netns", "exec", cl.Client.Name, link, "-c",
		fmt.Sprintf("exec 3<>/dev/tcp/%s/%d && echo ready && read -r _", dst.Addr(), dst.Port()))
	waitReady(t, cmd, "hostile process")

	s := exp.scrape() // parses with client_golang's text parser, or fails
	promtoolCheck(t, s.text)
	got := s.samples("connection_active", map[string]string{"destination": dst.String(), "process": "a\"b\\c\nd\uFFFD"})
	if len(got) != 1 || got[0].value != 1 {
		t.Errorf("hostile process's connection: %v\n%s", got, grep(s.text, "connection_active"))
	}
	for _, smp := range s.samples("connection_active", nil) {
		for k, v := range smp.labels {
			if !utf8.ValidString(v) {
				t.Errorf("label %s is not UTF-8: %q", k, v)
			}
		}
	}
}
