package resolve

// Looking connections up in one table: from inside the kernel, in a dump
// of the whole table, or with one netlink request each, whichever costs
// least.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/connection-exporter/connection_exporter/internal/netns"
	"github.com/connection-exporter/connection_exporter/record"
)

// openFor opens namespace ino through the process of any of its queries.
func (c *Conntrack) openFor(f *nsFinder, ino uint32, qs []record.Query, idx []int) (*os.File, error) {
	var err error
	tried := make(map[uint32]bool)
	for _, i := range idx {
		pid := qs[i].PID
		if tried[pid] {
			continue
		}
		tried[pid] = true
		var fd *os.File
		if fd, err = f.open(ino, pid); err == nil {
			return fd, nil
		}
		if errors.Is(err, errNetNSGone) {
			break // a full scan found nothing: other pids will not help
		}
	}
	return nil, err
}

func fail(out []record.Destination, idx []int, resolver string, err error) {
	for _, i := range idx {
		out[i].Err, out[i].ErrResolver = err, resolver
	}
}

// Costs of the ways to read a table, measured with scripts/bench on the
// development machine, in tenths of a microsecond: a pipelined lookup costs
// about 3 µs; a dump costs about 1.4 µs per entry of the namespace plus a
// walk of the whole conntrack hash table, shared by every namespace, of
// about 10 ms. A namespace with a handful of entries is never dumped.
//
// A lookup from inside the kernel costs 0.2 to 1 µs.
const (
	getCost       = 30
	dumpPerEntry  = 14
	dumpFixedCost = 100000
)

// dumpCheaper reports whether one dump of a table of entries costs less
// than n lookups.
func dumpCheaper(n int, entries uint32) bool {
	return n*getCost > int(entries)*dumpPerEntry+dumpFixedCost
}

// lookup resolves the queries idx in the namespace open as fd and returns the
// ones it did not translate. counts keeps the table's entry count for the
// rest of the scrape, if not nil.
func (c *Conntrack) lookup(ctx context.Context, fd *os.File, ino uint32, counts *tableCounts, qs []record.Query, idx []int, out []record.Destination, resolver string) (rest []int) {
	if c.cfg.Kernel != nil {
		if rest, done := c.lookupKernel(fd, ino, counts, qs, idx, out, resolver); done {
			return rest
		}
	}
	sock, err := openCT(fd)
	if err != nil {
		fail(out, idx, resolver, err)
		return idx
	}
	defer sock.close()
	entries, err := counts.get(ino, sock.count)
	if err != nil {
		fail(out, idx, resolver, fmt.Errorf("conntrack stats in netns %d: %w", ino, err))
		return idx
	}
	if entries == 0 {
		// No entries: conntrack is not even enabled in many pod namespaces.
		return idx
	}
	begin := time.Now()
	if dumpCheaper(len(idx), entries) {
		// One pass over the table. The queries were read before it
		// started, so each one's entry is in it if it exists at all.
		x := newQueryIndex(qs, idx, out, resolver)
		err := sock.dump(func(b []byte) {
			if e, ok := parseEntry(b); ok && e.proto == unix.IPPROTO_TCP {
				x.probe(e.orig, e.reply)
			}
		})
		if err != nil {
			fail(out, idx, resolver, fmt.Errorf("dump conntrack in netns %d: %w", ino, err))
			return idx
		}
		rest, missing := x.rest()
		rest = append(rest, missing...)
		c.looked[methodDump].Add(uint64(len(idx)))
		c.logger.Debug("looked up conntrack", "netns", ino, "method", "dump", "entries", entries,
			"queries", len(idx), "seconds", time.Since(begin).Seconds())
		return rest
	}
	rest, err = sock.resolve(qs, idx, out, resolver)
	if err != nil {
		fail(out, idx, resolver, fmt.Errorf("get conntrack in netns %d: %w", ino, err))
		return idx
	}
	c.looked[methodGet].Add(uint64(len(idx)))
	c.logger.Debug("looked up conntrack", "netns", ino, "method", "get", "entries", entries,
		"queries", len(idx), "seconds", time.Since(begin).Seconds())
	return rest
}

// lookupKernel looks the queries idx up from inside the kernel, on one
// thread in the namespace open as fd that first counts the table's entries
// (an empty table is not looked at), and returns the ones it did not
// translate. done is false when the kernel's lookup failed and netlink
// should be tried instead.
func (c *Conntrack) lookupKernel(fd *os.File, ino uint32, counts *tableCounts, qs []record.Query, idx []int, out []record.Destination, resolver string) (rest []int, done bool) {
	translated := make([]bool, len(idx))
	orig := func(n int) record.Tuple {
		t := tupleOf(qs[idx[n]].Src, qs[idx[n]].Dst)
		return record.Tuple{Src: t.src, Dst: t.dst, SrcPort: t.sport, DstPort: t.dport}
	}
	found := func(n int, r record.Tuple) {
		i := idx[n]
		translated[n] = translate(&out[i], qs[i].Dst, tuple{r.Src, r.Dst, r.SrcPort, r.DstPort}, resolver)
	}
	// The table's errors fail the queries, as on the netlink path; a
	// failed kernel lookup leaves them to that path.
	var entries uint32
	var lookupErr error
	begin := time.Now()
	err := netns.Do(fd, func() error {
		var err error
		entries, err = counts.get(ino, func() (uint32, error) {
			sock, err := openCTHere()
			if err != nil {
				return 0, err
			}
			defer sock.close()
			return sock.count()
		})
		if err != nil {
			return fmt.Errorf("conntrack stats in netns %d: %w", ino, err)
		}
		if entries > 0 {
			lookupErr = c.cfg.Kernel.Lookup(len(idx), orig, found)
		}
		return nil
	})
	switch {
	case err != nil:
		fail(out, idx, resolver, err)
		return idx, true
	case entries == 0:
		// No entries: conntrack is not even enabled in many pod namespaces.
		return idx, true
	case lookupErr != nil:
		c.logger.Debug("cannot look conntrack up from the kernel", "netns", ino, "err", lookupErr)
		return nil, false
	}
	c.looked[methodKernel].Add(uint64(len(idx)))
	c.logger.Debug("looked up conntrack", "netns", ino, "method", "kernel", "entries", entries,
		"queries", len(idx), "seconds", time.Since(begin).Seconds())
	return keepUntranslated(idx, translated), true
}

// keepUntranslated returns the queries of idx whose position is not marked
// translated, in idx's own storage.
func keepUntranslated(idx []int, translated []bool) []int {
	rest := idx[:0] // written behind the reading
	for n, i := range idx {
		if !translated[n] {
			rest = append(rest, i)
		}
	}
	return rest
}

// resolve looks the queries idx up one by one and returns the ones it did
// not translate.
func (s *ctSocket) resolve(qs []record.Query, idx []int, out []record.Destination, resolver string) (rest []int, err error) {
	replies := make([]tuple, len(idx)) // zero where no entry
	if err := s.get(qs, idx, replies); err != nil {
		return idx, err
	}
	translated := make([]bool, len(idx))
	for n, i := range idx {
		if r := replies[n]; r != (tuple{}) {
			translated[n] = translate(&out[i], qs[i].Dst, r, resolver)
		}
	}
	return keepUntranslated(idx, translated), nil
}
