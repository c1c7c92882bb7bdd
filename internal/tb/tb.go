// Package tb holds the part of testing.TB that the test labs use, so that
// commands such as the benchmark can build the same topologies.
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
