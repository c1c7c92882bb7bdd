// Package docker owns knowing which Docker container a process or a network
// namespace belongs to, and which container or Swarm task stands behind an
// address: a cache of the Docker Engine's containers and networks, fed by
// its events stream with periodic full resyncs and refreshed on request,
// that lookups answer from without ever calling the daemon.
package docker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/connection-exporter/connection_exporter/internal/catchup"
	"github.com/connection-exporter/connection_exporter/internal/netns"
)

// Config configures a Client.
type Config struct {
	// Host is the Engine API address (unix:///var/run/docker.sock,
	// tcp://...); empty means DOCKER_HOST or the standard socket.
	Host string
	// ProcFS is the host's procfs, to find containers' network namespaces.
	ProcFS string
	// Resync is the period of full resyncs besides the events stream.
	Resync time.Duration
	// Timeout bounds one API call.
	Timeout time.Duration
	// MinInterval is the shortest time between the starts of two rounds
	// of refreshes that Request* ask for. Zero means one second.
	MinInterval time.Duration
}

// Container is what the cache knows of one running container.
type Container struct {
	ID, Name string
	PID      int
	// NetNS is the inode of the container's network namespace; 0 when it
	// shares the host's (network mode host).
	NetNS uint32
	// Addrs are the container's addresses on its networks.
	Addrs []netip.Addr
	// Swarm service, task and stack; Compose project and service.
	Service, Task, Stack           string
	ComposeProject, ComposeService string
	// Published are the container's TCP ports published on the host: the
	// host's side of each binding (an unspecified address for all of the
	// host's) and the container's port.
	Published []Published
}

// Published is one TCP port binding of a container.
type Published struct {
	Host netip.AddrPort
	Port uint16 // the container's
}

// Workload names what the container is an instance of: its Swarm service,
// else its Compose service, else its own name.
func (c *Container) Workload() string {
	switch {
	case c.Service != "":
		return c.Service
	case c.ComposeService != "":
		return c.ComposeService
	}
	return c.Name
}

// Labels Docker, Swarm and Compose set on containers.
const (
	labelService        = "com.docker.swarm.service.name"
	labelTask           = "com.docker.swarm.task.name"
	labelStack          = "com.docker.stack.namespace"
	labelComposeProject = "com.docker.compose.project"
	labelComposeService = "com.docker.compose.service"
)

// Client keeps the cache. Its lookups are safe for concurrent use and
// never wait on the daemon.
type Client struct {
	cfg    Config
	logger *slog.Logger
	api    *client.Client
	hostNS uint32
	asked  *catchup.Requests // Request*'s

	mu       sync.RWMutex
	byID     map[string]*Container
	byNetNS  map[uint32]*Container
	byIP     map[netip.Addr]string // address -> workload (containers and Swarm tasks)
	vips     map[netip.Addr]string // Swarm service VIP -> network id
	ingress  netip.Addr            // ingress_sbox's address on docker_gwbridge
	subnets  []subnet              // subnets of the engine's networks
	gateways map[netip.Addr]string // their gateways (not containers), by network driver
	// published maps the host's side of a TCP port binding to the
	// container behind it.
	published map[netip.AddrPort]publishedTarget
	up        bool
	synced    bool // ever synced: an engine exists on this host
	attempted bool // the first sync has finished, well or not
	errors    map[string]uint64
	warned    bool
	resynced  time.Time
	fresh     freshness
	wants     wants
}

// New creates the API client (with API version negotiation, so engines from
// API 1.40 on work). It does not contact the daemon: Run does.
func New(cfg Config, logger *slog.Logger) (*Client, error) {
	if cfg.ProcFS == "" {
		cfg.ProcFS = "/proc"
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 5 * time.Minute
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = time.Second
	}
	opts := []client.Opt{client.FromEnv} // the API version is negotiated by default
	if cfg.Host != "" {
		opts = append(opts, client.WithHost(cfg.Host))
	}
	api, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	c := &Client{cfg: cfg, logger: logger, api: api, errors: make(map[string]uint64), asked: catchup.New()}
	for _, r := range []string{"connect", "events", "inspect"} {
		c.errors[r] = 0
	}
	c.hostNS, _ = netns.Inode(filepath.Join(cfg.ProcFS, "self", "ns", "net"))
	c.reset()
	c.fresh.absent = make(map[string]time.Time)
	return c, nil
}

// publishedTarget is the container address behind a published port, and
// the container's id.
type publishedTarget struct {
	addr netip.AddrPort
	id   string
}

func (c *Client) reset() {
	c.published = make(map[netip.AddrPort]publishedTarget)
	c.gateways = make(map[netip.Addr]string)
	c.byID = make(map[string]*Container)
	c.byNetNS = make(map[uint32]*Container)
	c.byIP = make(map[netip.Addr]string)
	c.vips = make(map[netip.Addr]string)
}

// Run keeps the cache until ctx is done: a full sync, then the events
// stream, with a full resync every Resync and the refreshes that Request*
// ask for; when the daemon is away it retries with backoff, keeping what
// it knew.
func (c *Client) Run(ctx context.Context) {
	backoff := time.Second
	for ctx.Err() == nil {
		if c.absent(ctx) {
			return
		}
		synced, err := c.session(ctx)
		if ctx.Err() != nil {
			return
		}
		c.fail("events", err)
		if synced {
			backoff = time.Second // it was up: it is likely back soon
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Minute)
	}
}

// absentPoll is how often a socket that does not exist is looked for.
const absentPoll = 10 * time.Second

// absent waits while the engine's unix socket does not exist: a host with
// no Docker (a containerd node) is not an engine that fails. Naming by
// Docker is off meanwhile, said once at info, and nothing is counted as an
// error. It reports whether ctx ended.
func (c *Client) absent(ctx context.Context) bool {
	path, ok := strings.CutPrefix(c.api.DaemonHost(), "unix://")
	if !ok {
		return false
	}
	said := false
	for {
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			if said {
				c.logger.Info("Docker socket appeared: naming by Docker is on", "socket", path)
			}
			return false
		}
		if !said {
			c.logger.Info("no Docker engine on this host: naming by Docker is off until its socket appears", "socket", path)
			said = true
			c.mu.Lock()
			c.attempted = true // nothing to wait for
			c.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return true
		case <-time.After(absentPoll):
		}
	}
}

// session syncs and follows events until the stream breaks, and reports
// whether it got as far as a sync.
func (c *Client) session(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Subscribe first, so nothing between the sync and the stream is lost.
	ev := c.api.Events(ctx, client.EventsListOptions{
		Filters: make(client.Filters).Add("type", string(events.ContainerEventType), string(events.NetworkEventType), string(events.ServiceEventType)),
	})
	if err := c.Sync(ctx); err != nil {
		return false, err
	}
	resync := time.NewTicker(c.cfg.Resync)
	defer resync.Stop()
	// Requested refreshes run no sooner than MinInterval after the last
	// round started: later wake-ups come from deferred.
	deferred := time.NewTimer(0)
	<-deferred.C
	defer deferred.Stop()
	var last time.Time
	serve := func() {
		if d := time.Until(last.Add(c.cfg.MinInterval)); d > 0 {
			deferred.Reset(d)
			return
		}
		last = c.asked.Starting(time.Now())
		c.serveWants(ctx, last)
	}
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case err := <-ev.Err:
			c.setUp(false)
			return true, fmt.Errorf("events stream: %w", err)
		case <-resync.C:
			if err := c.Sync(ctx); err != nil {
				return true, err
			}
		case m := <-ev.Messages:
			c.handle(ctx, m)
		case <-c.asked.Kicked():
			serve()
		case <-deferred.C:
			serve()
		}
	}
}

// handle applies one event to the cache.
func (c *Client) handle(ctx context.Context, m events.Message) {
	switch m.Type {
	case events.ContainerEventType:
		switch m.Action {
		case events.ActionStart, events.ActionRename, events.ActionConnect, events.ActionDisconnect:
			c.refreshContainer(ctx, m.Actor.ID)
		case events.ActionDie, events.ActionDestroy:
			c.mu.Lock()
			c.removeLocked(m.Actor.ID)
			c.mu.Unlock()
		}
	case events.NetworkEventType:
		if m.Action == events.ActionConnect || m.Action == events.ActionDisconnect {
			if id := m.Actor.Attributes["container"]; id != "" {
				c.refreshContainer(ctx, id)
			}
		}
		c.refreshNetworks(ctx, time.Now())
	case events.ServiceEventType:
		c.refreshNetworks(ctx, time.Now())
	}
}

func (c *Client) fail(reason string, err error) {
	if err == nil {
		return
	}
	c.mu.Lock()
	c.errors[reason]++
	first := !c.warned
	c.warned = true
	c.mu.Unlock()
	level := slog.LevelDebug
	if first {
		level = slog.LevelWarn
	}
	c.logger.Log(context.Background(), level, "docker engine unavailable, names kept from the last sync", "reason", reason, "err", err)
}

func (c *Client) setUp(up bool) {
	c.mu.Lock()
	c.up = up
	if up {
		c.warned = false
	}
	c.mu.Unlock()
	if !up {
		// Nothing is served while the engine is away: whoever waits on
		// a request waits no more.
		c.asked.Drop()
	}
}

// Sync lists and inspects every running container and the engine's
// networks, replacing the cache.
func (c *Client) Sync(ctx context.Context) error {
	start := time.Now()
	tctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	list, err := c.api.ContainerList(tctx, client.ContainerListOptions{})
	cancel()
	if err != nil {
		c.mu.Lock()
		c.attempted = true
		c.mu.Unlock()
		c.setUp(false)
		c.fail("connect", err)
		return err
	}
	found := make([]*Container, 0, len(list.Items))
	for _, s := range list.Items {
		ct, err := c.inspect(ctx, s.ID)
		if err != nil {
			c.fail("inspect", err)
			continue
		}
		found = append(found, ct)
	}
	n, nerr := c.networks(ctx)
	c.mu.Lock()
	c.reset()
	for _, ct := range found {
		c.addLocked(ct)
	}
	c.setNetworksLocked(n)
	c.resynced = time.Now()
	c.synced, c.attempted = true, true
	c.fresh.containers = start
	if nerr == nil {
		c.fresh.networks = start
	}
	clear(c.fresh.absent)
	c.mu.Unlock()
	c.setUp(true)
	return nil
}

// inspect reads one container.
func (c *Client) inspect(ctx context.Context, id string) (*Container, error) {
	tctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	r, err := c.api.ContainerInspect(tctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return nil, fmt.Errorf("inspect container %.12s: %w", id, err)
	}
	in := r.Container
	ct := &Container{ID: in.ID, Name: strings.TrimPrefix(in.Name, "/")}
	if in.Config != nil {
		l := in.Config.Labels
		ct.Service, ct.Task, ct.Stack = l[labelService], l[labelTask], l[labelStack]
		ct.ComposeProject, ct.ComposeService = l[labelComposeProject], l[labelComposeService]
	}
	if in.State != nil {
		ct.PID = in.State.Pid
	}
	if ct.PID > 0 {
		ino, err := netns.Inode(filepath.Join(c.cfg.ProcFS, strconv.Itoa(ct.PID), "ns", "net"))
		if err == nil && ino != c.hostNS {
			ct.NetNS = ino
		}
	}
	if in.NetworkSettings != nil {
		for _, ep := range in.NetworkSettings.Networks {
			if ep != nil && ep.IPAddress.IsValid() {
				ct.Addrs = append(ct.Addrs, ep.IPAddress.Unmap())
			}
		}
		for port, bindings := range in.NetworkSettings.Ports {
			if port.Proto() != network.TCP {
				continue
			}
			for _, b := range bindings {
				hp, err := strconv.ParseUint(b.HostPort, 10, 16)
				if err != nil || hp == 0 {
					continue
				}
				host := b.HostIP.Unmap()
				if !host.IsValid() {
					host = netip.IPv4Unspecified() // the engine's "" for all addresses
				}
				ct.Published = append(ct.Published, Published{Host: netip.AddrPortFrom(host, uint16(hp)), Port: port.Num()})
			}
		}
	}
	return ct, nil
}

// refreshContainer inspects one container again and replaces what the
// cache knew of it.
func (c *Client) refreshContainer(ctx context.Context, id string) {
	ct, err := c.inspect(ctx, id)
	if err != nil {
		c.fail("inspect", err)
		return
	}
	c.mu.Lock()
	c.removeLocked(id)
	c.addLocked(ct)
	c.mu.Unlock()
}

func (c *Client) addLocked(ct *Container) {
	c.byID[ct.ID] = ct
	if ct.NetNS != 0 {
		c.byNetNS[ct.NetNS] = ct
	}
	for _, a := range ct.Addrs {
		c.byIP[a] = ct.Workload()
	}
	// Which network a binding forwards to is not in the inspect answer: a
	// container on several networks is left out rather than guessed.
	if len(ct.Addrs) == 1 {
		for _, p := range ct.Published {
			c.published[p.Host] = publishedTarget{netip.AddrPortFrom(ct.Addrs[0], p.Port), ct.ID}
		}
	}
}

func (c *Client) removeLocked(id string) {
	ct, ok := c.byID[id]
	if !ok {
		return
	}
	delete(c.byID, id)
	if c.byNetNS[ct.NetNS] == ct {
		delete(c.byNetNS, ct.NetNS)
	}
	for _, a := range ct.Addrs {
		if c.byIP[a] == ct.Workload() {
			delete(c.byIP, a)
		}
	}
	for _, p := range ct.Published {
		if c.published[p.Host].id == id {
			delete(c.published, p.Host)
		}
	}
}

// Health returns whether the cache follows a running engine now, how many
// containers it holds, and the failed calls to the engine since start, by
// reason (connect, events, inspect).
func (c *Client) Health() (up bool, containers int, errors map[string]uint64) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	errors = make(map[string]uint64, len(c.errors))
	for r, n := range c.errors {
		errors[r] = n
	}
	return c.up, len(c.byID), errors
}
