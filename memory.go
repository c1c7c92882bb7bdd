package main

import (
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// releaseAbove is how much more free heap than the runtime would keep
// makes start-up return it to the OS at once: returning it costs the next
// scrapes page faults as the heap grows back, about a millisecond on the
// development VM, worth it only for megabytes.
const releaseAbove = 4 << 20

// collectStartGarbage collects the garbage start-up left behind, from the
// listing of existing connections above all, so that the first scrape
// (every connection new, the heaviest) does not pay for a collection, and
// the heap's next goal follows what start-up keeps. When the memory freed
// is megabytes more than the runtime would keep for the heap to grow into,
// it is returned to the OS at once (FreeOSMemory collects once more, about
// a millisecond here, and returns every free page). The runtime's
// scavenger returns it too, but slowly: the resident set of an exporter
// started among 50,000 connections took tens of seconds to shed 10 MiB.
func collectStartGarbage(logger *slog.Logger) {
	runtime.GC()
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/gc/heap/goal:bytes"},
	}
	metrics.Read(s)
	inUse, free, goal := s[0].Value.Uint64()+s[1].Value.Uint64(), s[2].Value.Uint64(), s[3].Value.Uint64()
	if excess := excessFree(inUse, free, goal); excess > releaseAbove {
		debug.FreeOSMemory()
		logger.Debug("returned start-up's garbage to the OS", "free_bytes", free, "beyond_kept_bytes", excess)
	}
}

// excessFree returns how much of a heap's free, unreleased memory is more
// than a tenth over the heap's goal. That approximates, from above, what the
// runtime's scavenger keeps and does not return to the OS: a tenth
// (retainExtraPercent in the runtime's mgcscavenge.go) over the heap in use
// at the last collection, scaled by how the goal moved since the one
// before, so that an excess found here is returned by the scavenger too,
// only later.
func excessFree(inUse, free, goal uint64) uint64 {
	keep := goal + goal/10
	if inUse+free <= keep {
		return 0
	}
	return inUse + free - keep
}
