// Package tb holds what the test labs share with commands such as the
// benchmark, which build the same topologies: the part of testing.TB the
// labs use, and a buffer for the output of the daemons they start.
package tb

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
