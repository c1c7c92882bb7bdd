package collector

// Admitting a new connection: deciding whether it waits, and finding or
// making its label set.

import (
	"math"
	"slices"
	"strings"
	"time"

	"github.com/connection-exporter/connection_exporter/internal/labels"
	"github.com/connection-exporter/connection_exporter/record"
)

// admit returns the label set of a connection seen for the first time,
// whose destination is d, admitted at at, or nil when it is postponed:
// while a cache that names it may not have caught up with it and the
// naming timeout is not over, or while a table could not be read and
// attempts are left.
func (c *Connections) admit(k *record.Conn, d *record.Destination, at time.Time) *series {
	r, postponed := c.attempts[k.Cookie]
	if postponed {
		// The growth reported while it waited counts too.
		k.TCP.BytesSent += r.tcp.BytesSent
		k.TCP.BytesReceived += r.tcp.BytesReceived
		k.TCP.Retransmits += r.tcp.Retransmits
	}
	nk, keyed := c.nameKeyOf(k, d)
	if n, ok := c.named[nk]; keyed && ok && n.known && d.Err == nil {
		// Another new connection of this scrape had the same owner and
		// destinations, all named: nothing to ask again. Its names hold
		// for this one too: they depend on the process and the address,
		// not on the connection.
		c.track(k, d, nk, keyed)
		return n.s
	}
	seen := at
	if postponed && !r.seen.IsZero() {
		seen = r.seen
	}
	since := seen
	if k.Seeded {
		since = time.Time{} // older than anything the caches read
	}
	wait := c.owner(k, since).wait
	if d.Err == nil {
		_, w := c.destination(d.Actual, since)
		wait |= w
	}
	if wait != 0 {
		if c.mayWait(k) && at.Sub(seen) < c.cfg.NameTimeout {
			c.attempts[k.Cookie] = retry{n: r.n, read: c.gen, seen: seen, wait: wait, tcp: k.TCP}
			c.unnamed++
			return nil
		}
		c.timeouts[waitReason(wait)]++
		c.logger.Debug("naming timed out", "reason", waitReason(wait), "process", k.Command(), "destination", k.Dst)
	}
	if postponed && r.wait != 0 {
		c.observeDelay(at.Sub(seen))
	}
	if d.Err != nil {
		c.errors[d.ErrResolver]++
		if !c.warned[d.ErrResolver] {
			c.warned[d.ErrResolver] = true
			c.logger.Warn("cannot resolve connection", "resolver", d.ErrResolver, "err", d.Err)
		} else {
			c.logger.Debug("cannot resolve connection", "resolver", d.ErrResolver, "err", d.Err)
		}
		if k.State == record.StateEstablished && c.retry(k, seen) {
			return nil
		}
	}
	c.track(k, d, nk, keyed)
	if !keyed {
		return c.seriesByLabels(k, d, since)
	}
	return c.seriesFor(nk, k, d, since, wait == 0 && d.Err == nil)
}

// track notes that a connection is admitted, resolved by d; nk is its name
// key if keyed.
func (c *Connections) track(k *record.Conn, d *record.Destination, nk nameKey, keyed bool) {
	delete(c.attempts, k.Cookie)
	if keyed {
		c.resolvedN[nk.resolver]++
	} else {
		c.resolved[d.Resolver]++
	}
}

// retry counts an attempt to admit an open connection whose tables could
// not be read, first seen at seen, and reports whether attempts are left,
// so that the connection should wait for a later scrape.
func (c *Connections) retry(k *record.Conn, seen time.Time) bool {
	r := retry{n: c.attempts[k.Cookie].n + 1, read: c.gen, seen: seen, tcp: k.TCP}
	if r.n < c.cfg.ResolveAttempts {
		c.attempts[k.Cookie] = r
		return true
	}
	return false
}

// nameKeyOf returns the name key of a connection resolved by d, and false
// when its resolver's name cannot be given an index: the resolvers are a
// handful, but the key holds no more than 256.
func (c *Connections) nameKeyOf(k *record.Conn, d *record.Destination) (nameKey, bool) {
	r := slices.Index(c.resolverNames, d.Resolver)
	if r < 0 && len(c.resolverNames) <= math.MaxUint8 {
		r = len(c.resolverNames)
		c.resolverNames = append(c.resolverNames, d.Resolver)
		c.resolvedN = append(c.resolvedN, 0)
	}
	return nameKey{
		comm: k.Comm, pid: k.PID, netns: k.NetNS,
		dst: k.Dst.Addr().As16(), dport: k.Dst.Port(),
		actual: d.Actual.Addr().As16(), aport: d.Actual.Port(), resolver: uint8(r),
	}, r >= 0
}

// seriesFor returns the label set of a connection, whose name key is nk,
// creating it if the bound allows, else the overflow label set. known says
// whether its owner and destination were named and its table read.
func (c *Connections) seriesFor(nk nameKey, k *record.Conn, d *record.Destination, since time.Time, known bool) *series {
	if n, ok := c.named[nk]; ok {
		return n.s
	}
	s := c.seriesByLabels(k, d, since)
	if c.named != nil {
		c.named[nk] = named{s: s, known: known}
	}
	return s
}

// seriesByLabels names a connection and finds or creates its label set.
func (c *Connections) seriesByLabels(k *record.Conn, d *record.Destination, since time.Time) *series {
	o := c.owner(k, since).owner
	dw, _ := c.destination(d.Actual, since)
	values := []string{
		o.Container, o.Pod, o.Namespace, o.Workload, k.Command(),
		k.Dst.String(), d.Actual.String(), dw, d.Resolver,
	}
	for i, v := range values {
		values[i] = labels.Value(v)
	}
	key := strings.Join(values, "\x00")
	if s, ok := c.series[key]; ok {
		return s
	}
	if len(c.series) >= c.cfg.MaxSeries {
		c.overflowConns++
		if c.overflow == nil {
			v := make([]string, len(connLabels))
			for i := range v {
				v[i] = overflowValue
			}
			c.overflow = &series{values: v}
		}
		return c.overflow
	}
	s := &series{values: values}
	c.series[key] = s
	return s
}
