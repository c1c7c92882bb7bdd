package resolve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/connection-exporter/connection_exporter/internal/netns"
)

// Names of the tables that can answer, as exported in the resolver label.
const (
	ResolverNone           = "none"            // nothing rewrote the destination
	ResolverConntrack      = "conntrack"       // host namespace conntrack
	ResolverConntrackNetNS = "conntrack_netns" // the connection's own namespace
)

// Query is one connection to resolve.
type Query struct {
	// NetNS is the inode of the connection's network namespace.
	NetNS uint32
	// PID is the process that opened the connection (0 if unknown); its
	// namespace file is the cheapest way into NetNS.
	PID uint32
	// Src and Dst are the connection's local address and the address the
	// application dialled.
	Src, Dst netip.AddrPort
}

// Result is where a connection really goes.
type Result struct {
	// Actual is the address that answers; Dst when nothing rewrote it.
	Actual netip.AddrPort
	// Resolver names the table that answered (one of the Resolver* names).
	Resolver string
	// Err is set when a table could not be read; ErrResolver names it. The
	// result is still the best known, but a later attempt may do better.
	Err         error
	ErrResolver string

	// via is the reply destination of the translating entry: the client as
	// the next hop sees it, for a second translation (Swarm's ingress).
	via netip.AddrPort
}

// ConntrackConfig configures a Conntrack resolver.
type ConntrackConfig struct {
	// ProcFS is the mount point of the host's procfs.
	ProcFS string
	// HostNetNS is the path of the host network namespace file, usually
	// HostNetNSPath(ProcFS).
	HostNetNS string
	// NetNSDirs are directories of bind-mounted namespace files (such as
	// /run/netns) searched when no process of a namespace can be found.
	NetNSDirs []string
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
}

// NewConntrack checks that the host namespace can be opened and its
// conntrack table queried (which needs CAP_NET_ADMIN).
func NewConntrack(cfg ConntrackConfig, logger *slog.Logger) (*Conntrack, error) {
	if cfg.ProcFS == "" {
		cfg.ProcFS = "/proc"
	}
	if cfg.HostNetNS == "" {
		cfg.HostNetNS = HostNetNSPath(cfg.ProcFS)
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
func (c *Conntrack) Resolve(ctx context.Context, qs []Query, out []Result) {
	Chain{c.OwnNamespace(), c.HostNamespace()}.Resolve(ctx, qs, out)
}

// OwnNamespace returns the step that looks each connection up in the
// conntrack table of its own network namespace, where a translated entry
// answers with ResolverConntrackNetNS (sidecar redirects). Connections of
// the host namespace are left to HostNamespace.
func (c *Conntrack) OwnNamespace() Step { return ownNamespace{c} }

// HostNamespace returns the step that looks connections up in the host
// namespace's conntrack table (kube-proxy, Docker DNAT).
func (c *Conntrack) HostNamespace() Step { return hostNamespace{c} }

type ownNamespace struct{ c *Conntrack }

func (s ownNamespace) Resolve(ctx context.Context, qs []Query, idx []int, out []Result) (rest []int) {
	c := s.c
	finder := nsFinder{procfs: c.cfg.ProcFS, extra: c.cfg.NetNSDirs}
	byNS := make(map[uint32][]int)
	for _, i := range idx {
		if q := qs[i]; q.NetNS == c.hostIno || q.NetNS == 0 {
			rest = append(rest, i)
		} else {
			byNS[q.NetNS] = append(byNS[q.NetNS], i)
		}
	}
	for ino, idx := range byNS {
		if err := ctx.Err(); err != nil {
			fail(out, idx, ResolverConntrackNetNS, err)
			rest = append(rest, idx...)
			continue
		}
		fd, err := c.openFor(&finder, ino, qs, idx)
		if err != nil {
			fail(out, idx, ResolverConntrackNetNS, err)
			rest = append(rest, idx...)
			continue
		}
		rest = append(rest, c.lookup(ctx, fd, ino, qs, idx, out, ResolverConntrackNetNS)...)
		fd.Close()
	}
	return rest
}

type hostNamespace struct{ c *Conntrack }

func (s hostNamespace) Resolve(ctx context.Context, qs []Query, idx []int, out []Result) []int {
	c := s.c
	if err := ctx.Err(); err != nil {
		fail(out, idx, ResolverConntrack, err)
		return idx
	}
	fd, err := netns.Open(c.cfg.HostNetNS, c.hostIno)
	if err != nil {
		fail(out, idx, ResolverConntrack, err)
		return idx
	}
	defer fd.Close()
	return c.lookup(ctx, fd, c.hostIno, qs, idx, out, ResolverConntrack)
}

// openFor opens namespace ino through the process of any of its queries.
func (c *Conntrack) openFor(f *nsFinder, ino uint32, qs []Query, idx []int) (*os.File, error) {
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

func fail(out []Result, idx []int, resolver string, err error) {
	for _, i := range idx {
		out[i].Err, out[i].ErrResolver = err, resolver
	}
}

// Costs of the two ways to read a table, measured with scripts/bench on the
// development machine, in tenths of a microsecond: a pipelined lookup costs
// about 3 µs; a dump costs about 1.4 µs per entry of the namespace plus a
// walk of the whole conntrack hash table, shared by every namespace, of
// about 10 ms. A namespace with a handful of entries is never dumped.
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
// ones it did not translate.
func (c *Conntrack) lookup(ctx context.Context, fd *os.File, ino uint32, qs []Query, idx []int, out []Result, resolver string) (rest []int) {
	sock, err := openCT(fd)
	if err != nil {
		fail(out, idx, resolver, err)
		return idx
	}
	defer sock.close()
	entries, err := sock.count()
	if err != nil {
		fail(out, idx, resolver, fmt.Errorf("conntrack stats in netns %d: %w", ino, err))
		return idx
	}
	if entries == 0 {
		// No entries: conntrack is not even enabled in many pod namespaces.
		return idx
	}
	replies := make([]tuple, len(idx)) // zero where no entry
	begin := time.Now()
	method := "get"
	if dumpCheaper(len(idx), entries) {
		// One pass over the table, keeping only the entries asked for.
		method = "dump"
		want := make(map[tupleKey]int, len(idx))
		for n, i := range idx {
			want[keyOf(qs[i].Src, qs[i].Dst)] = n
		}
		err = sock.dump(func(b []byte) {
			e, ok := parseEntry(b)
			if !ok || e.proto != unix.IPPROTO_TCP {
				return
			}
			if n, ok := want[keyOf(e.orig.src, e.orig.dst)]; ok {
				replies[n] = e.reply
			}
		})
	} else {
		err = sock.get(qs, idx, replies)
	}
	if err != nil {
		fail(out, idx, resolver, fmt.Errorf("%s conntrack in netns %d: %w", method, ino, err))
		return idx
	}
	c.logger.Debug("looked up conntrack", "netns", ino, "method", method, "entries", entries,
		"queries", len(idx), "seconds", time.Since(begin).Seconds())
	for n, i := range idx {
		if r := replies[n]; r.src.IsValid() && r.src != qs[i].Dst {
			out[i].Actual, out[i].Resolver, out[i].via = r.src, resolver, r.dst
			continue
		}
		rest = append(rest, i)
	}
	return rest
}

// tuple is a connection's original direction.
type tuple struct{ src, dst netip.AddrPort }

// tupleKey is a tuple without pointers, the key of a dump's index: a large
// map of them costs the garbage collector nothing to scan.
type tupleKey struct {
	src, dst     [16]byte
	sport, dport uint16
}

func keyOf(src, dst netip.AddrPort) tupleKey {
	return tupleKey{src.Addr().As16(), dst.Addr().As16(), src.Port(), dst.Port()}
}
