package resolve

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckHostNetNS: the namespace taken as the host's is compared with
// pid 1's, which may be unreadable (no warning) or another (a warning that
// says what to do).
func TestCheckHostNetNS(t *testing.T) {
	dir := t.TempDir()
	file := func(name string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	own := file("self/ns/net")
	procfs := filepath.Join(dir, "proc")
	if w := CheckHostNetNS(own, procfs); w != "" {
		t.Errorf("pid 1's namespace unreadable: warning %q", w)
	}
	if err := os.MkdirAll(filepath.Join(procfs, "1", "ns"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(own, filepath.Join(procfs, "1", "ns", "net")); err != nil {
		t.Fatal(err)
	}
	if w := CheckHostNetNS(own, procfs); w != "" {
		t.Errorf("the same namespace as pid 1's: warning %q", w)
	}
	other := file("other/ns/net")
	if w := CheckHostNetNS(other, procfs); !strings.Contains(w, "--path.host-netns") || !strings.Contains(w, "hostNetwork") {
		t.Errorf("another namespace than pid 1's: warning %q", w)
	}
}
