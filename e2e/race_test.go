//go:build race

package e2e

// race is set when the tests are built with the race detector: the
// exporter binary they run is then built with it too.
const race = true
