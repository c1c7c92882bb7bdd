package main

import (
	"bytes"
	"log/slog"
	"runtime"
	"runtime/metrics"
	"strings"
	"testing"
)

func TestExcessFree(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		name                    string
		inUse, free, goal, want uint64
	}{
		{name: "nothing free", inUse: 10 * mib, goal: 20 * mib},
		{name: "all kept", inUse: 10 * mib, free: 12 * mib, goal: 20 * mib},
		{name: "a MiB over the tenth", inUse: 10 * mib, free: 13 * mib, goal: 20 * mib, want: mib},
		{name: "in use over the goal", inUse: 11 * mib, free: 11 * mib, goal: 13 * mib, want: 22*mib - 143*mib/10},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := excessFree(c.inUse, c.free, c.goal); got != c.want {
				t.Errorf("excessFree(%d, %d, %d) = %d, want %d", c.inUse, c.free, c.goal, got, c.want)
			}
		})
	}
}

func TestCollectStartGarbage(t *testing.T) {
	// 64 MiB of garbage, as a start-up among many connections leaves:
	// collected and returned, not kept for the scavenger to return later.
	garbage := make([][]byte, 1024)
	for i := range garbage {
		garbage[i] = make([]byte, 64<<10)
		garbage[i][0] = 1
	}
	runtime.KeepAlive(garbage)
	garbage = nil
	var log bytes.Buffer
	collectStartGarbage(slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug})))
	s := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	metrics.Read(s)
	if free := s[0].Value.Uint64(); free > releaseAbove {
		t.Errorf("%d bytes of free heap kept after start-up's collection, want at most %d", free, releaseAbove)
	}
	if !strings.Contains(log.String(), "returned start-up's garbage") {
		t.Errorf("no debug log of the memory returned; log:\n%s", log.String())
	}
}
