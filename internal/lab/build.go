package lab

import (
	"os"
	"os/exec"
	"path/filepath"
)

// BuildStatic builds a Go package as a static binary (CGO_ENABLED=0) into
// dir, for images FROM scratch, and returns its path.
func BuildStatic(t TB, pkg, dir, name string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, b)
	}
	return out
}
