//go:build bench

package bpf

import "github.com/connection-exporter/connection_exporter/record"

// Snapshot appends every recorded connection to dst with a batch read of
// the map, marking nothing reported: the floor the benchmark measures warm
// scrapes against. It exists only in builds with the bench tag.
func (t *Tracker) Snapshot(dst []record.Conn) ([]record.Conn, error) { return t.snapshot(dst) }

// ReleaseClosed reads what changed and releases the connections that ended,
// as a scrape would: the benchmark's connect/close blocks use it. It exists
// only in builds with the bench tag.
func (t *Tracker) ReleaseClosed() error { return t.releaseClosed() }
