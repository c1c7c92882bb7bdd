package docker

import (
	"context"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/client"
)

// freshness says how recent the cache is, for callers that must know
// whether it can have heard of something that happened at a given moment.
type freshness struct {
	// containers is when the last complete listing of the running
	// containers started; networks when the last read of the networks
	// started.
	containers, networks time.Time
	// absent holds the ids that an inspect found to be no container of
	// this engine: an id in a process's cgroup path that the engine does
	// not know belongs to another runtime, for good.
	absent map[string]time.Time
}

// maxAbsent bounds the ids remembered as absent; the set is emptied when
// it is full, and at every full sync.
const maxAbsent = 4096

// wants are the refreshes asked for and not made yet.
type wants struct {
	containers, networks bool
	ids                  map[string]struct{}
}

// RequestContainers asks for a listing of the running containers soon,
// with an inspect of those the cache lacks: for a connection from a
// network namespace, or to an address of a container network, that the
// cache does not know yet. It never blocks; it does nothing while the
// engine is away, whose return brings a full sync anyway.
func (c *Client) RequestContainers() { c.want(func(w *wants) { w.containers = true }) }

// RequestNetworks asks for a read of the networks soon (subnets, Swarm
// services' VIPs and tasks): for an address of an overlay network that the
// cache does not know yet. It never blocks.
func (c *Client) RequestNetworks() { c.want(func(w *wants) { w.networks = true }) }

// RequestID asks for an inspect of container id soon: for a process whose
// cgroup names a container the cache does not know. It never blocks.
func (c *Client) RequestID(id string) {
	c.want(func(w *wants) {
		if w.ids == nil {
			w.ids = make(map[string]struct{})
		}
		w.ids[id] = struct{}{}
	})
}

func (c *Client) want(add func(*wants)) {
	c.mu.Lock()
	up := c.up
	if up {
		add(&c.wants)
	}
	c.mu.Unlock()
	if up {
		c.asked.Ask()
	}
}

// Settle waits until the refreshes asked for so far have been made, or
// the engine went away, or ctx is done.
func (c *Client) Settle(ctx context.Context) { c.asked.Wait(ctx) }

// ContainersFresh reports whether the running containers were listed, and
// those the cache lacked inspected, by a listing that started after t.
func (c *Client) ContainersFresh(t time.Time) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.fresh.containers.After(t)
}

// NetworksFresh reports whether the networks were read by a read that
// started after t.
func (c *Client) NetworksFresh(t time.Time) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.fresh.networks.After(t)
}

// Absent reports whether an inspect found that id is not a container of
// this engine.
func (c *Client) Absent(id string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, ok := c.fresh.absent[id]
	return ok
}

// serveWants makes the refreshes asked for, in a round that starts at
// start, and releases whoever waited for them.
func (c *Client) serveWants(ctx context.Context, start time.Time) {
	defer c.asked.Served(start)
	c.mu.Lock()
	w := c.wants
	c.wants = wants{}
	c.mu.Unlock()
	for id := range w.ids {
		if _, ok := c.ByID(id); ok {
			continue
		}
		ct, err := c.inspect(ctx, id)
		c.mu.Lock()
		switch {
		case err == nil:
			c.removeLocked(id)
			c.addLocked(ct)
		case errdefs.IsNotFound(err):
			if len(c.fresh.absent) >= maxAbsent {
				clear(c.fresh.absent)
			}
			c.fresh.absent[id] = start
		}
		c.mu.Unlock()
		if err != nil && !errdefs.IsNotFound(err) {
			c.fail("inspect", err)
		}
	}
	if w.containers {
		c.refreshContainers(ctx, start)
	}
	if w.networks {
		c.refreshNetworks(ctx, start)
	}
}

// refreshContainers lists the running containers, in a listing that
// starts at start, inspects those the cache lacks and forgets those that
// are no longer running.
func (c *Client) refreshContainers(ctx context.Context, start time.Time) {
	tctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	list, err := c.api.ContainerList(tctx, client.ContainerListOptions{})
	cancel()
	if err != nil {
		c.fail("connect", err)
		return
	}
	running := make(map[string]bool, len(list.Items))
	var missing []string
	c.mu.RLock()
	for _, s := range list.Items {
		running[s.ID] = true
		if _, ok := c.byID[s.ID]; !ok {
			missing = append(missing, s.ID)
		}
	}
	c.mu.RUnlock()
	found := make([]*Container, 0, len(missing))
	for _, id := range missing {
		ct, err := c.inspect(ctx, id)
		if err != nil {
			c.fail("inspect", err)
			continue
		}
		found = append(found, ct)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.byID {
		if !running[id] {
			c.removeLocked(id)
		}
	}
	for _, ct := range found {
		c.removeLocked(ct.ID)
		c.addLocked(ct)
	}
	c.fresh.containers = start
}
