package collector

// Accounting a scrape: reading what changed, settling the names that
// waited, and folding it all into the label sets.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/connection-exporter/connection_exporter/record"
)

// releaseKeep bounds the capacity of the release list kept between scrapes.
const releaseKeep = 4096

// account folds what changed since the last scrape into the label sets.
// Connections already known are accounted as they are read, with no copy;
// new ones are gathered in batches, each resolved on its own goroutine
// while the changes are still read, and admitted in order. A scrape with
// nothing new costs what the source's read costs and nothing per
// connection.
func (c *Connections) account(ctx context.Context) error {
	now := c.now()
	c.gen++
	for _, s := range c.series {
		s.touched = false
	}
	if c.overflow != nil {
		c.overflow.touched = false
	}
	c.fresh, c.unnamed = 0, 0

	begin := time.Now()
	st := c.newStream(ctx, now)
	postponedRead, err := c.read(st, now)
	read := time.Since(begin)
	st.finish()
	waited := st.waited
	if c.unnamed > 0 {
		if serr := c.settle(ctx, now); serr != nil {
			err = errors.Join(err, serr)
		}
	}
	// Admissions were counted by resolver index, not in the map by name
	// one connection at a time.
	for i, n := range c.resolvedN {
		if n > 0 {
			c.resolved[c.resolverNames[i]] += n
			c.resolvedN[i] = 0
		}
	}
	c.named, c.owners, c.dests = nil, nil, nil
	if c.fresh > 0 {
		c.logger.Debug("admitted new connections", "count", c.fresh, "batches", st.batches,
			"waiting_for_names", c.unnamed, "waited_seconds", waited.Seconds())
	}
	// Releases that fail are tried again at the next scrape: the source
	// does not report a connection again without a change.
	if rerr := c.src.Release(c.release); rerr != nil {
		err = errors.Join(err, fmt.Errorf("release connections: %w", rerr))
	} else {
		c.release = c.release[:0]
	}
	c.tidy(now, postponedRead)
	c.logger.Debug("accounted changes", "connections", c.seen, "read_seconds", read.Seconds(),
		"total_seconds", time.Since(begin).Seconds())
	return err
}

// read reads what changed: known connections are accounted, new ones handed
// to st. Postponed connections are read too, changed or not, for another
// attempt; postponedRead says whether that read succeeded. A failed read of
// the changes keeps going with what was read: counters stay where they
// were.
func (c *Connections) read(st *stream, now time.Time) (postponedRead bool, err error) {
	fn := func(k *record.Conn) {
		if k.State == record.StateConnecting {
			return
		}
		if !k.Reported {
			// New for sure: no need to look for it (on a cold scrape, a
			// miss in a large map for each connection).
			st.add(k)
			return
		}
		if t, ok := c.conns[k.Cookie]; ok {
			c.apply(t, k, now)
			return
		}
		if r, ok := c.attempts[k.Cookie]; ok {
			r.read = c.gen // read: not to be fetched below
			c.attempts[k.Cookie] = r
		}
		st.add(k)
	}
	if n, rerr := c.src.Read(fn); rerr != nil {
		err = fmt.Errorf("read connections: %w", rerr)
	} else {
		c.seen = n
	}
	c.again = c.again[:0]
	for cookie, r := range c.attempts {
		if r.read != c.gen {
			c.again = append(c.again, cookie)
		}
	}
	if gerr := c.src.Get(c.again, fn); gerr != nil {
		return false, errors.Join(err, fmt.Errorf("read postponed connections: %w", gerr))
	}
	return true, err
}

// settle waits, up to NameSettle and within ctx, for the refreshes that
// this scrape's answers of the Namer asked for, then reads the connections
// postponed for names in this scrape again and admits them anew: a
// connection is exported at the first scrape that can name it.
func (c *Connections) settle(ctx context.Context, now time.Time) error {
	s, ok := c.namer.(Settler)
	if !ok || c.cfg.NameSettle <= 0 {
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, c.cfg.NameSettle)
	s.Settle(sctx)
	cancel()
	if ctx.Err() != nil {
		return nil
	}
	c.again = c.again[:0]
	for cookie, r := range c.attempts {
		if r.read == c.gen && r.wait != 0 {
			c.again = append(c.again, cookie)
		}
	}
	if len(c.again) == 0 {
		return nil
	}
	// The answers of the first pass are not asked again from memory.
	c.named, c.owners, c.dests = nil, nil, nil
	c.unnamed = 0
	st := &stream{c: c, ctx: ctx, r: c.resolver, now: now, limit: batchSize}
	err := c.src.Get(c.again, func(k *record.Conn) {
		if k.State != record.StateConnecting {
			st.add(k)
		}
	})
	st.finish()
	if err != nil {
		return fmt.Errorf("read connections waiting for names: %w", err)
	}
	return nil
}

// tidy forgets postponed connections that left the map (when postponedRead
// says they were looked for) and drops idle label sets.
func (c *Connections) tidy(now time.Time, postponedRead bool) {
	if len(c.release) == 0 && cap(c.release) > releaseKeep {
		c.release = nil
	}
	// A postponed connection not read again (neither changed nor found)
	// has left the map.
	if postponedRead {
		for cookie, r := range c.attempts {
			if r.read != c.gen {
				delete(c.attempts, cookie)
			}
		}
	}
	for key, s := range c.series {
		if s.active > 0 {
			s.lastSeen = now
		} else if now.Sub(s.lastSeen) > c.cfg.SeriesIdle {
			delete(c.series, key)
		}
	}
	if o := c.overflow; o != nil {
		if o.active > 0 {
			o.lastSeen = now
		} else if now.Sub(o.lastSeen) > c.cfg.SeriesIdle {
			c.overflow = nil
		}
	}
}

// expected returns how many new connections the coming read holds at
// most: those recorded since the last scrape and those waiting for another
// attempt. It is 0 when the source cannot tell.
func (c *Connections) expected() int {
	rec, err := c.src.Recorded()
	if err != nil || rec < c.recorded {
		return 0
	}
	n := rec - c.recorded
	c.recorded = rec
	return int(min(n, uint64(c.src.Capacity()))) + len(c.attempts)
}

// apply accounts for the state of an admitted connection, whose record
// was t, and keeps its record while it is open. Applying the same state
// twice changes nothing.
func (c *Connections) apply(t tracked, k *record.Conn, now time.Time) {
	s := t.s
	switch k.State {
	case record.StateEstablished:
		if t.open && t.counted && !c.cfg.TCPStats {
			s.lastSeen, s.touched = now, true
			return
		}
		if !t.open {
			s.active++
			t.open = true
		}
		if !t.counted {
			s.opened++
			t.counted = true
		}
		s.lastSeen, s.touched = now, true
		if c.cfg.TCPStats {
			s.countTCP(&t.srtt, &k.TCP, true)
		}
		c.conns[k.Cookie] = t
		return
	case record.StateClosed:
		if !t.counted {
			s.opened++ // opened and closed between two scrapes
		}
	case record.StateFailed:
		s.failed++
	default:
		return
	}
	if c.cfg.TCPStats {
		s.countTCP(&t.srtt, &k.TCP, false)
	}
	s.lastSeen, s.touched = now, true
	if t.open { // only open connections have a record
		s.active--
		delete(c.conns, k.Cookie)
	}
	c.release = append(c.release, k.Cookie)
}

// countTCP adds to the series the growth of a connection's kernel counts,
// and follows its round-trip time, counted in srtt, while it is open. The
// series' counters never go back.
func (s *series) countTCP(srtt *uint32, now *record.TCPStats, open bool) {
	s.sent += float64(now.BytesSent)
	s.received += float64(now.BytesReceived)
	s.retrans += float64(now.Retransmits)
	if *srtt > 0 {
		s.rttSum -= time.Duration(*srtt) * time.Microsecond
		s.rttN--
		*srtt = 0
	}
	if open && now.SRTT > 0 {
		*srtt = uint32(now.SRTT / time.Microsecond)
		s.rttSum += time.Duration(*srtt) * time.Microsecond
		s.rttN++
	}
}
