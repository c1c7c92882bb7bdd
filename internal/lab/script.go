package lab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Script runs the repository's scripts/<name>, found from the working
// folder up, and returns the last line it printed: the scripts that
// install a tool print where it is.
func Script(name string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "scripts", name)); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no scripts/%s above the working folder", name)
		}
		dir = parent
	}
	cmd := exec.Command(filepath.Join(dir, "scripts", name))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("scripts/%s: %v\n%s", name, err, stderr.Bytes())
	}
	lines := strings.Fields(string(out))
	if len(lines) == 0 {
		return "", fmt.Errorf("scripts/%s printed nothing", name)
	}
	return lines[len(lines)-1], nil
}
