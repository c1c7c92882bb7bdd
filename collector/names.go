package collector

// Naming a connection: what a Namer answers, and how the collector asks it
// once per owner and per address in a pass of a scrape.

import (
	"context"
	"net/netip"
	"time"

	"github.com/connection-exporter/connection_exporter/record"
)

// waitReasons are the reason label values of the naming metrics, by the
// bit of record.Wait.
var waitReasons = [...]string{"kubelet", "docker"}

// waitReason returns the reason label value of the first cache w waits for.
func waitReason(w record.Wait) string {
	for i, r := range waitReasons {
		if w&(1<<i) != 0 {
			return r
		}
	}
	return "none"
}

// Namer names the owner of a connection and the workload behind an address.
// It must answer from memory: it is called within a scrape. since is the
// moment the connection was first seen (zero for one that existed before
// the exporter started): an answer is final once every cache that could
// change it has caught up with that moment; until then the Namer says what
// it waits for, asks the caches to catch up, and gives the best name it
// has.
type Namer interface {
	// Owner names who opened c.
	Owner(c *record.Conn, since time.Time) (record.Owner, record.Wait)
	// DestinationWorkload names the workload at addr.
	DestinationWorkload(addr netip.AddrPort, since time.Time) (string, record.Wait)
}

// Settler is a Namer whose caches can be waited for: Settle returns once
// the refreshes its answers asked for are done, or ctx is done. A scrape
// waits for them (up to ConnectionsConfig.NameSettle) and names the
// connections that waited at once, rather than at the next scrape.
type Settler interface {
	Settle(ctx context.Context)
}

// ProcessNamer names every connection by its process: the Namer for hosts
// without a container runtime.
type ProcessNamer struct{}

// Owner returns the process name as the workload.
func (ProcessNamer) Owner(c *record.Conn, _ time.Time) (record.Owner, record.Wait) {
	return record.Owner{Workload: c.Command()}, 0
}

// DestinationWorkload knows no destinations.
func (ProcessNamer) DestinationWorkload(netip.AddrPort, time.Time) (string, record.Wait) {
	return "", 0
}

// mayWait reports whether a connection may wait for its names: an open one
// always, a closed or failed one while the source is less than half full
// (it holds the connection until it is counted). The first attempts of a
// new pod fail more often than not (its dependencies are not up yet), and
// are the ones worth naming. A socket that connects again after a failure
// has the source follow the new attempt in the same entry: a failure not
// yet counted then is lost, whether it waited or not.
func (c *Connections) mayWait(k *record.Conn) bool {
	switch k.State {
	case record.StateEstablished:
		return true
	case record.StateClosed, record.StateFailed:
		return c.seen < int(c.src.Capacity()/2)
	}
	return false
}

// observeDelay adds a naming delay to the histogram.
func (c *Connections) observeDelay(d time.Duration) {
	v := d.Seconds()
	for i, ub := range namingDelayBuckets {
		if v <= ub {
			c.delayCounts[i]++
		}
	}
	c.delayCount++
	c.delaySum += v
}

// destination names the workload behind an actual destination, once per
// address in a pass of a scrape: an answer holds for every connection to
// the address, however long ago each was first seen.
func (c *Connections) destination(a netip.AddrPort, since time.Time) (string, record.Wait) {
	if d, ok := c.dests[a]; ok {
		return d.name, d.wait
	}
	name, wait := c.namer.DestinationWorkload(a, since)
	if c.dests != nil {
		c.dests[a] = dest{name, wait}
	}
	return name, wait
}

// owner names a connection's owner, once per owner in a pass of a scrape:
// an answer holds for every connection of the process.
func (c *Connections) owner(k *record.Conn, since time.Time) owned {
	ok := ownerKey{comm: k.Comm, pid: k.PID, netns: k.NetNS}
	if o, found := c.owners[ok]; found {
		return o
	}
	var o owned
	o.owner, o.wait = c.namer.Owner(k, since)
	if c.owners != nil {
		c.owners[ok] = o
	}
	return o
}
