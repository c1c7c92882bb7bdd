//go:build bench

package resolve

import "os"

// CountConntrack reads the whole conntrack table of the namespace file at
// path without decoding it and returns the number of entries: the floor
// the benchmark measures cold scrapes against. It exists only in builds
// with the bench tag.
func CountConntrack(path string) (int, error) {
	ns, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer ns.Close()
	s, err := openCT(ns)
	if err != nil {
		return 0, err
	}
	defer s.close()
	n := 0
	err = s.dump(func([]byte) { n++ })
	return n, err
}
