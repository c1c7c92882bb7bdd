package resolve

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/connection-exporter/connection_exporter/internal/netns"
	"github.com/connection-exporter/connection_exporter/record"
)

// Names of the tables that can answer, as exported in the resolver label.
const (
	ResolverNone           = "none"            // nothing rewrote the destination
	ResolverConntrack      = "conntrack"       // host namespace conntrack
	ResolverConntrackNetNS = "conntrack_netns" // the connection's own namespace
)

// KernelLookup looks tuples up in the conntrack table of the calling
// thread's network namespace from inside the kernel: cheaper than netlink
// requests, and unlike a dump its cost does not grow with the table.
type KernelLookup interface {
	// Lookup looks n tuples up: orig(i) is the i-th, and found(i, reply)
	// is called for each whose original tuple is that of an entry of the
	// table, with the entry's reply tuple.
	Lookup(n int, orig func(int) record.Tuple, found func(int, record.Tuple)) error
}

// ConntrackConfig configures a Conntrack resolver.
type ConntrackConfig struct {
	// ProcFS is the mount point of the host's procfs.
	ProcFS string
	// HostNetNS is the path of the host network namespace file, usually
	// HostNetNSPath.
	HostNetNS string
	// NetNSDirs are directories of bind-mounted namespace files (such as
	// /run/netns) searched when no process of a namespace can be found.
	NetNSDirs []string
	// Kernel, when set, looks connections up from inside the kernel
	// instead of through netlink requests or a dump.
	Kernel KernelLookup
}

// Conntrack resolves connections from the conntrack tables of their own and
// of the host network namespace. Each Resolve call opens one netlink socket
// per namespace it needs, inside that namespace, and closes it before it
// returns, so it never keeps a dead namespace alive. It is safe for
// concurrent use.
type Conntrack struct {
	cfg     ConntrackConfig
	logger  *slog.Logger
	hostIno uint32

	// looked counts connections looked up, by method.
	looked [methodGet + 1]atomic.Uint64
}

// tableCounts are the entry counts of the tables read during one scrape,
// by namespace inode: the scrape's batches share them, instead of each
// entering each namespace to ask the kernel again (300 µs a batch at
// 50,000 connections), and a table empty at the first batch is not looked
// at by the others, as if the batches had been one. The next scrape
// prepares its own. A nil *tableCounts keeps nothing.
type tableCounts struct {
	mu sync.Mutex
	m  map[uint32]uint32
}

func newTableCounts() *tableCounts { return &tableCounts{m: make(map[uint32]uint32)} }

// known returns the entry count of namespace ino's table if it was read.
func (k *tableCounts) known(ino uint32) (uint32, bool) {
	if k == nil {
		return 0, false
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	n, ok := k.m[ino]
	return n, ok
}

// get returns the entry count of namespace ino's table, read with count
// unless it is known. A failed read is not kept.
func (k *tableCounts) get(ino uint32, count func() (uint32, error)) (uint32, error) {
	if n, ok := k.known(ino); ok {
		return n, nil
	}
	n, err := count()
	if err != nil || k == nil {
		return n, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.m[ino] = n
	return n, nil
}

// How a conntrack table is read.
const (
	methodKernel = iota // lookups from inside the kernel
	methodDump          // a dump of the whole table
	methodGet           // one netlink request per connection
)

// Lookups returns how many connections were looked up in a conntrack
// table since start, by method: from inside the kernel, in a dump of the
// whole table, and with one netlink request each.
func (c *Conntrack) Lookups() (kernel, dump, get uint64) {
	return c.looked[methodKernel].Load(), c.looked[methodDump].Load(), c.looked[methodGet].Load()
}

// NewConntrack checks that the host namespace can be opened and its
// conntrack table queried (which needs CAP_NET_ADMIN).
func NewConntrack(cfg ConntrackConfig, logger *slog.Logger) (*Conntrack, error) {
	if cfg.ProcFS == "" {
		cfg.ProcFS = "/proc"
	}
	if cfg.HostNetNS == "" {
		cfg.HostNetNS = HostNetNSPath
	}
	ino, err := netns.Inode(cfg.HostNetNS)
	if err != nil {
		return nil, fmt.Errorf("host network namespace: %w", err)
	}
	c := &Conntrack{cfg: cfg, logger: logger, hostIno: ino}
	fd, err := netns.Open(cfg.HostNetNS, ino)
	if err != nil {
		return nil, fmt.Errorf("host network namespace: %w", err)
	}
	defer fd.Close()
	sock, err := openCT(fd)
	if err != nil {
		return nil, err
	}
	defer sock.close()
	if _, err := sock.count(); err != nil {
		return nil, fmt.Errorf("query conntrack in host netns: %w", err)
	}
	return c, nil
}

// HostNetNS returns the inode of the host network namespace.
func (c *Conntrack) HostNetNS() uint32 { return c.hostIno }

// Resolve fills out[i] with the destination of qs[i]; out must be at least
// as long as qs. It is Chain{c.OwnNamespace(), c.HostNamespace()}.Resolve.
func (c *Conntrack) Resolve(ctx context.Context, qs []record.Query, out []record.Destination) {
	Chain{c.OwnNamespace(), c.HostNamespace()}.Resolve(ctx, qs, out)
}

// OwnNamespace returns the step that looks each connection up in the
// conntrack table of its own network namespace, where a translated entry
// answers with ResolverConntrackNetNS (sidecar redirects). Connections of
// the host namespace are left to HostNamespace.
func (c *Conntrack) OwnNamespace() Step { return ownNamespace{c: c} }

// HostNamespace returns the step that looks connections up in the host
// namespace's conntrack table (kube-proxy, Docker DNAT).
func (c *Conntrack) HostNamespace() Step { return hostNamespace{c: c} }
