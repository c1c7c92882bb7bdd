// Package lab is the ground the test labs (netlab, dockerlab, kubelab,
// ciliumfake) share with commands that build the same topologies, such as
// the benchmark: the part of testing.TB a lab uses, so that a command can
// stand in for a test; a buffer for the output of the daemons a lab
// starts; the static builds of the programs its images hold; the scripts
// that install its tools; and the removal of the mounts and cgroups its
// container runtimes leave.
package lab

import "testing"

// TB is what a lab needs of a test: to skip, fail and clean up.
type TB interface {
	Helper()
	Cleanup(func())
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Skip(args ...any)
	Logf(format string, args ...any)
}

var _ TB = testing.TB(nil)
