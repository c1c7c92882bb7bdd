// Package bpf owns the kernel side of connection_exporter: the eBPF programs
// that record every actively opened TCP connection of every process in every
// network namespace, their loading and attachment, the seeding of connections
// that predate the exporter, reads of the recorded connections that changed
// since the last read (a program walks the map in the kernel while the read
// takes its findings out of a ring) as plain Go values, and a program that
// looks connections up in a conntrack table from inside the kernel.
//
// The programs need a kernel with BTF (/sys/kernel/btf/vmlinux) and the
// bpf_rdonly_cast kfunc (Linux 6.2 or later); they rely on a BTF tracepoint
// program never running nested on one CPU (6.1), which keeps each CPU's
// part of a log to one writer, and use bpf_loop (5.17),
// bpf_for_each_map_elem (5.13) and bpf_get_socket_cookie in tracing
// programs (5.12); seeding uses a TCP socket iterator (5.9). Neither
// kprobes, fentry nor a tracefs mount are needed. The conntrack lookups need
// the conntrack kfuncs (Linux 5.18 or later); without them the rest works.
package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/connection-exporter/connection_exporter/record"
)

// Config configures a Tracker.
type Config struct {
	// MaxConnections bounds the kernel map of recorded connections: open
	// ones plus those closed since the last snapshot. Attempts that do not fit
	// are counted in Stats.Lost. Zero means DefaultMaxConnections.
	MaxConnections uint32
	// ProcFS is the mount point of the host's procfs, used at start-up to
	// find network namespaces.
	// Empty means /proc.
	ProcFS string
	// NetNSDirs are directories of bind-mounted network namespaces whose
	// existing connections are seeded too.
	NetNSDirs []string
	// Types holds the kernel's type information, decoded once for every
	// load that shares it: a program load that decodes it on its own
	// takes about 25 ms and 4 MB more. Nil makes one for this load.
	Types *btf.Cache
	// TCPStats has the programs read the kernel's counts of connections
	// (record.TCPStats): at the close, and at every Read, which then walks
	// the map, reads each open connection's socket, and reports those
	// whose counts changed.
	TCPStats bool

	// changes overrides changesSize: tests make the reader's ring short.
	changes uint32
	// logSlots overrides logSlots' size of each CPU's part of a log (a
	// power of two): tests make it short, to fill it.
	logSlots uint32
	// keepStartup keeps the start-up programs loaded, for tests that run
	// them again.
	keepStartup bool
}

// DefaultMaxConnections is the default size of the connection map. Its
// entries are preallocated (about 170 bytes each: 11 MiB of kernel memory,
// charged to the exporter's memory cgroup), and the logs hold about as many
// records (8.9 MiB more; see logSlots).
const DefaultMaxConnections = 65536

// Tracker loads and attaches the kernel programs and reads what they record.
// Its methods are safe for concurrent use.
type Tracker struct {
	logger *slog.Logger
	objs   trackerObjects
	max    uint32
	seeded uint64 // connections inserted at start-up

	attachMu sync.Mutex
	attached link.Link // the recording program's attachment; nil when detached

	changes  *mapped[trackerConnRec] // the changes ring
	ringSize uint32                  // its length
	heads    *mapped[trackerLogHead] // how far each CPU's logs are written
	// progress is the reader's progress, read and written atomically
	// while the reader runs; progressMap is its mapping.
	progress    *trackerReadProgress
	progressMap *mapped[trackerReadProgress]

	// mu serialises reads, which share the changes ring and the scratch
	// buffers below, and guards what the last walk left.
	mu     sync.Mutex
	keys   []uint64
	values []trackerConn
	poll   *time.Timer // paces a Read waiting for the reader
	walked bool        // a Read walked the map
	walks  int         // for tests
	runs   int         // for tests: runs of the reader in the last walk
	last   [2]uint64   // closes and openings logged or counted before that walk
	// logTotal is what the CPUs' 32-bit log counts add up to, closes then
	// openings, as logged last read them into lastHeads; a count wraps.
	logTotal  [2]uint64
	lastHeads [][2]uint32
	total     int // entries the walk found, less those released since
	// connecting is how many entries the last walk left connecting: the
	// next Read walks to find how their handshakes ended.
	connecting uint32
	flags      uint32 // the reader's flags
}

// changesSize is the length of the ring the reader copies changed entries
// into (3 MB of 144-byte records). Read takes them out as the walk goes on;
// the walk stops early, to be run again, only when the ring is full of
// entries Read has not taken yet.
const changesSize = 3 << 20 / int(unsafe.Sizeof(trackerConnRec{}))

// changesChunk is the number of changed entries Read hands on before it
// tells the reader their places in the ring are free again.
const changesChunk = 512

// Bounds of the pause of a Read that finds nothing new in the ring while
// the reader runs: it doubles while nothing comes, up to the longest. The
// end of the run wakes Read at once, whatever the pause.
const (
	minPoll = 50 * time.Microsecond
	maxPoll = time.Millisecond
)

// batchSize is the number of entries read per BatchLookup call. It must
// exceed the largest hash bucket, which a few thousand always does.
const batchSize = 4096

// New loads the programs with the configured map size, attaches the state
// tracepoint, and seeds the map with connections that already exist. It
// fails when the kernel refuses the programs (missing privileges or BTF).
func New(cfg Config, logger *slog.Logger) (*Tracker, error) {
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.ProcFS == "" {
		cfg.ProcFS = "/proc"
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		logger.Debug("cannot raise memlock limit", "err", err)
	}
	spec, err := loadTracker()
	if err != nil {
		return nil, err
	}
	spec.Maps[trackerMapConns].MaxEntries = cfg.MaxConnections
	if cfg.changes == 0 {
		cfg.changes = uint32(changesSize)
	}
	ringSize := min(cfg.MaxConnections, cfg.changes)
	spec.Maps[trackerMapChanges].MaxEntries = ringSize

	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count possible CPUs: %w", err)
	}
	slots := cfg.logSlots
	if slots == 0 {
		slots = logSlots(cfg.MaxConnections, cpus)
	}
	spec.Maps[trackerMapOpens].MaxEntries = uint32(cpus) * slots
	spec.Maps[trackerMapCloses].MaxEntries = uint32(cpus) * slots
	spec.Maps[trackerMapHeads].MaxEntries = uint32(cpus)
	vars := map[string]uint32{"log_cpus": uint32(cpus), "log_slots": slots}
	if storesInOrder() {
		vars["stores_in_order"] = 1
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}

	t := &Tracker{logger: logger, max: cfg.MaxConnections, ringSize: ringSize, lastHeads: make([][2]uint32, cpus)}
	if cfg.TCPStats {
		t.flags |= readCounts
		if err := spec.Variables["tcp_counts_on"].Set(uint32(1)); err != nil {
			return nil, fmt.Errorf("set tcp_counts_on: %w", err)
		}
	}
	if err := spec.LoadAndAssign(&t.objs, &ebpf.CollectionOptions{Cache: cfg.Types}); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			logger.Debug("verifier log", "log", fmt.Sprintf("%+v", verr))
		}
		return nil, fmt.Errorf("load bpf objects: %w", err)
	}
	t.prefault()
	if err := t.Attach(); err != nil {
		t.Close()
		return nil, err
	}
	if t.changes, err = mapArray[trackerConnRec](t.objs.Changes); err != nil {
		t.Close()
		return nil, fmt.Errorf("map the changes ring: %w", err)
	}
	if t.heads, err = mapArray[trackerLogHead](t.objs.Heads); err != nil {
		t.Close()
		return nil, fmt.Errorf("map the logs' heads: %w", err)
	}
	if t.progressMap, err = mapArray[trackerReadProgress](t.objs.Progress); err != nil {
		t.Close()
		return nil, fmt.Errorf("map the reader's progress: %w", err)
	}
	t.progress = &t.progressMap.elems[0]
	t.poll = time.NewTimer(time.Hour)
	t.poll.Stop()
	// The first run of any program makes the library probe for
	// BPF_PROG_TEST_RUN by loading one: better now than in a scrape. A
	// packet too short for read_changes's result makes it return at once.
	if _, err := t.objs.ReadChanges.Run(&ebpf.RunOptions{Data: make([]byte, 14)}); err != nil {
		t.Close()
		return nil, fmt.Errorf("run connection reader: %w", err)
	}
	start := time.Now()
	seeded, err := t.seed(cfg.ProcFS, cfg.NetNSDirs)
	if err != nil {
		// Connections opened from now on are still recorded.
		logger.Warn("cannot seed all existing connections", "err", err)
	}
	t.seeded = uint64(seeded)
	// The programs that only start-up runs are unloaded: their file
	// descriptors and the kernel's copies of them are not kept for the
	// exporter's life. (Closing is idempotent: Close closes all again.)
	if !cfg.keepStartup {
		for _, p := range t.startupPrograms() {
			p.Close()
		}
	}
	logger.Info("found existing outbound connections", "count", seeded, "seconds", time.Since(start).Seconds())
	return t, nil
}

// prefault writes zeroes over the arrays the programs write as they run
// (the logs, at every connection, and the changes ring, at every scrape),
// through the kernel's own mapping of them, before anything is attached.
// The kernel zeroed their pages through another mapping, and a page's first
// write through this one is slow: on the development VM, the first pass of
// the recording program over the logs cost about 250 ns more a
// connect/close cycle, which lasted until it had written every slot once,
// hours on a quiet host. Here it costs about 10 ms, once. A failure
// only leaves that cost where it was.
func (t *Tracker) prefault() {
	err := errors.Join(
		prefault[trackerOpenRec](t.objs.Opens),
		prefault[trackerCloseRec](t.objs.Closes),
		prefault[trackerConnRec](t.objs.Changes))
	if err != nil {
		t.logger.Debug("cannot prefault the logs", "err", err)
	}
}

// prefault writes the zero value of T over every element of array m, a
// chunk of elements at a time.
func prefault[T any](m *ebpf.Map) error {
	const chunk = 256
	n := m.MaxEntries()
	keys := make([]uint32, min(n, chunk))
	vals := make([]T, len(keys))
	for first := uint32(0); first < n; {
		k := keys[:min(uint32(len(keys)), n-first)]
		for i := range k {
			k[i] = first + uint32(i)
		}
		if _, err := m.BatchUpdate(k, vals[:len(k)], nil); err != nil {
			return fmt.Errorf("write map %v: %w", m, err)
		}
		first += uint32(len(k))
	}
	return nil
}

// startupPrograms returns the programs that only New runs.
func (t *Tracker) startupPrograms() []*ebpf.Program {
	return []*ebpf.Program{t.objs.DumpTcp, t.objs.DumpCookies, t.objs.DumpFiles, t.objs.InsertSeeded}
}

// Attach attaches the program that records connections, after New or
// Detach; an attached program is left as it is.
func (t *Tracker) Attach() error {
	t.attachMu.Lock()
	defer t.attachMu.Unlock()
	if t.attached != nil {
		return nil
	}
	l, err := link.AttachTracing(link.TracingOptions{Program: t.objs.OnState})
	if err != nil {
		return fmt.Errorf("attach tp_btf/inet_sock_set_state: %w", err)
	}
	t.attached = l
	return nil
}

// Detach detaches the program that records connections and keeps the
// maps: connections that change while it is detached are not recorded, or
// not followed. The benchmark detaches and attaches it in turns to measure
// what it costs a connection.
func (t *Tracker) Detach() error {
	t.attachMu.Lock()
	defer t.attachMu.Unlock()
	if t.attached == nil {
		return nil
	}
	err := t.attached.Close()
	t.attached = nil
	return err
}

// Close detaches the recording program and frees the programs and maps.
// A Read in progress, which reads the mapped arrays, is waited for; a
// Read after Close returns ErrClosed.
func (t *Tracker) Close() error {
	errs := []error{t.Detach()}
	t.mu.Lock()
	errs = append(errs, t.changes.close(), t.progressMap.close(), t.heads.close())
	t.changes, t.progressMap, t.progress, t.heads = nil, nil, nil, nil
	t.mu.Unlock()
	return errors.Join(append(errs, t.objs.Close())...)
}

// ErrClosed is returned by reads and lookups after Close.
var ErrClosed = errors.New("closed")

// Capacity returns the size of the connection map.
func (t *Tracker) Capacity() uint32 { return t.max }

// snapshot appends every connection in the map to dst and returns it, with
// a batch read of the map that marks nothing reported (the tests use it;
// scrapes use Read). Openings and closes still in the logs are not in the
// map until a Read drains them. The order is unspecified. Entries updated while the
// snapshot is taken may show either their old or new state.
func (t *Tracker) snapshot(dst []record.Conn) ([]record.Conn, error) {
	err := t.walk(func(c *record.Conn) { dst = append(dst, *c) })
	return dst, err
}

// Read calls fn for every recorded connection whose state changed since
// a Read reported it; the Conn is only valid during the call. It returns how
// many connections are recorded in all. A connection is first reported when
// it is established or fails (a Read finds the end of the handshake), and
// again when it closes, and, with Config.TCPStats, whenever its counts
// changed; connections found at start-up are reported by the first Read.
// Calls are serialised: fn must not call the Tracker's read methods.
//
// The kernel walks the map on another thread and copies out only the
// changed entries into a ring, which Read empties into fn as the walk goes
// on: fn gets the first changes after a short part of the walk. A Read
// costs a walk of the map, which visits every bucket of its hash table
// (3.4 ms with 50,000 entries at the default capacity, 1.5 ms at a
// capacity of 65,536), plus what changed, plus, with Config.TCPStats, a
// read of every open connection's socket. When the kernel counted no change
// and no new entry since the last walk, which left no handshake going on,
// and counts are not followed, Read does not walk at all.
// Changes the walk copied out count as reported even if the Read then
// fails: they are handed to fn all the same.
func (t *Tracker) Read(fn func(*record.Conn)) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.changes == nil {
		return 0, fmt.Errorf("read connections: %w", ErrClosed)
	}
	// The logs and counters are read before the walk: a change logged or
	// counted after this point is either seen by the walk or makes the
	// next Read walk.
	now, err := t.logged()
	if err != nil {
		return 0, err
	}
	if t.walked && now == t.last && t.connecting == 0 && t.flags&readCounts == 0 {
		return t.total, nil
	}
	p := t.progress
	atomic.StoreUint32(&p.Written, 0)
	atomic.StoreUint32(&p.Read, 0)
	var c record.Conn
	var taken uint32 // entries handed to fn, counted as progress counts
	// take hands the entries up to count to fn, read in place, and frees
	// their places in the ring a chunk at a time.
	take := func(count uint32) error {
		for taken != count {
			i := taken % t.ringSize
			chunk := t.changes.elems[i : i+min(count-taken, t.ringSize-i, changesChunk)]
			for k := range chunk {
				convert(&c, chunk[k].Cookie, &chunk[k].Conn, true)
				fn(&c)
			}
			// Converted: the reader may write over them.
			taken += uint32(len(chunk))
			atomic.StoreUint32(&p.Read, taken)
		}
		return nil
	}
	t.runs = 0
	var start uint32
	for {
		run, err := t.runReader(start, take)
		t.runs++
		if err != nil {
			// What the reader published is marked reported: hand it on.
			return 0, errors.Join(err, take(atomic.LoadUint32(&p.Written)))
		}
		if err := take(run.Count); err != nil {
			return 0, err
		}
		if run.More == 0 {
			t.walked, t.walks, t.last, t.total, t.connecting = true, t.walks+1, now, int(run.Total), run.Connecting
			t.logger.Debug("walked the map", "changed", run.Count, "entries", run.Total, "runs", t.runs)
			return t.total, nil
		}
		start = run.Count // the ring was full: walk on with what is left
	}
}

// runReader runs the reader once on another goroutine, the walk going on
// from start entries copied (all of them taken already), and meanwhile
// hands what it publishes to take. It returns the run's result.
func (t *Tracker) runReader(start uint32, take func(uint32) error) (trackerReadRun, error) {
	var run trackerReadRun
	// The run's packet, at least an Ethernet header long as XDP wants;
	// the program leaves its result there.
	packet := make([]byte, 64)
	binary.NativeEndian.PutUint32(packet[unsafe.Offsetof(run.Start):], start)
	binary.NativeEndian.PutUint32(packet[unsafe.Offsetof(run.Size):], t.ringSize)
	binary.NativeEndian.PutUint32(packet[unsafe.Offsetof(run.Flags):], t.flags)
	done := make(chan error, 1)
	go func() { done <- runXDP(t.objs.ReadChanges, "connection reader", packet, packet) }()
	pause := minPoll
	seen := start // the progress last handed to take
	for {
		if n := atomic.LoadUint32(&t.progress.Written); n != seen {
			if err := take(n); err != nil {
				<-done
				return run, err
			}
			seen, pause = n, minPoll
			continue
		}
		t.poll.Reset(pause)
		select {
		case err := <-done:
			t.poll.Stop()
			if err != nil {
				return run, err
			}
			return *(*trackerReadRun)(unsafe.Pointer(&packet[0])), nil
		case <-t.poll.C:
			pause = min(2*pause, maxPoll)
		}
	}
}

// bytesOf views s's memory as bytes.
func bytesOf[T any](s []T) []byte {
	var zero T
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), len(s)*int(unsafe.Sizeof(zero)))
}

// Get calls fn for each of cookies that is still recorded, whether or not
// its state changed; the Conn is only valid during the call. Its counts
// are zero but for the round-trip time: their growth is Read's to report.
// It costs a system call per cookie.
func (t *Tracker) Get(cookies []uint64, fn func(*record.Conn)) error {
	var v trackerConn
	var c record.Conn
	for _, cookie := range cookies {
		err := t.objs.Conns.Lookup(cookie, &v)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("look up connection: %w", err)
		}
		convert(&c, cookie, &v, false)
		fn(&c)
	}
	return nil
}

// walk calls fn for every recorded connection, reading the map in batches;
// the Conn is only valid during the call. Calls are serialised: fn must not
// call the Tracker's read methods.
func (t *Tracker) walk(fn func(*record.Conn)) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.keys == nil {
		t.keys = make([]uint64, batchSize)
		t.values = make([]trackerConn, batchSize)
	}
	var cursor ebpf.MapBatchCursor
	var c record.Conn
	for {
		n, err := t.objs.Conns.BatchLookup(&cursor, t.keys, t.values, nil)
		for i := range n {
			convert(&c, t.keys[i], &t.values[i], false)
			fn(&c)
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read connection map: %w", err)
		}
	}
}

// convert fills c from the entry of cookie. The counts are their growth
// since the entry was last copied out (Acct) if grown, else zero but for
// the round-trip time.
func convert(c *record.Conn, cookie uint64, v *trackerConn, grown bool) {
	*c = record.Conn{
		Cookie:   cookie,
		PID:      v.Pid,
		NetNS:    v.Netns,
		State:    record.State(v.State),
		Reported: v.Reported != 0,
		Seeded:   v.Seeded != 0,
	}
	counts := &v.Live
	if c.State == record.StateClosed || c.State == record.StateFailed {
		counts = &v.Final
	}
	c.TCP.SRTT = time.Duration(counts.SrttUs>>3) * time.Microsecond
	if grown {
		// The SYN's byte of sequence space is left out: it is in the first
		// growth of bytes acknowledged.
		c.TCP.BytesSent = growth(bytesSent(v.Acct.BytesAcked), bytesSent(counts.BytesAcked))
		c.TCP.BytesReceived = growth(v.Acct.BytesReceived, counts.BytesReceived)
		c.TCP.Retransmits = uint32(growth(uint64(v.Acct.Retrans), uint64(counts.Retrans)))
	}
	for i, b := range v.Comm {
		c.Comm[i] = byte(b)
	}
	if c.State != record.StateConnecting {
		c.Src = netip.AddrPortFrom(addr(v.Family, &v.Saddr), v.Sport)
		c.Dst = netip.AddrPortFrom(addr(v.Family, &v.Daddr), v.Dport)
	}
}

// bytesSent is the payload acknowledged of bytes of sequence space
// acknowledged: all but the SYN's.
func bytesSent(acked uint64) uint64 { return acked - min(acked, 1) }

// growth is how much a count grew from old to now: all of now if it went
// back (a socket that connects again after a failed attempt starts over).
func growth(old, now uint64) uint64 {
	if now >= old {
		return now - old
	}
	return now
}

const (
	afInet  = 2
	afInet6 = 10
)

func addr(family uint16, b *[16]uint8) netip.Addr {
	if family == afInet {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(*b).Unmap()
}

// releaseClosed reads what changed and releases the connections that
// ended, as a scrape does once it has counted them: the tests and the
// benchmark use it to keep the map and the logs from filling.
func (t *Tracker) releaseClosed() error {
	var closed []uint64
	if _, err := t.Read(func(c *record.Conn) {
		if c.State == record.StateClosed || c.State == record.StateFailed {
			closed = append(closed, c.Cookie)
		}
	}); err != nil {
		return err
	}
	return t.Release(closed)
}

// Release deletes connections that the caller has accounted for. Only
// connections in a final state should be released; a cookie that is already
// gone is ignored.
func (t *Tracker) Release(cookies []uint64) error {
	if len(cookies) == 0 {
		return nil
	}
	n, err := t.objs.Conns.BatchDelete(cookies, nil)
	t.released(n)
	if err == nil || !errors.Is(err, ebpf.ErrKeyNotExist) {
		if err != nil {
			return fmt.Errorf("delete released connections: %w", err)
		}
		return nil
	}
	// A batch delete stops at the first missing key: delete the rest one
	// by one.
	var errs []error
	for _, c := range cookies[n:] {
		err := t.objs.Conns.Delete(c)
		if err == nil {
			t.released(1)
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("delete released connections: %w", errors.Join(errs...))
	}
	return nil
}

// released takes n deleted entries off the total that Read reports without
// walking.
func (t *Tracker) released(n int) {
	t.mu.Lock()
	t.total -= n
	t.mu.Unlock()
}

// ProgramStats returns how long the recording program has run in all and
// how many times, as the kernel counts while BPF statistics are enabled
// (sysctl kernel.bpf_stats_enabled=1, or ebpf.EnableStats; both stay zero
// otherwise), and how many runs the kernel skipped because the program was
// already running on that CPU, interrupted: the state changes those runs
// would have seen are not recorded.
func (t *Tracker) ProgramStats() (runTime time.Duration, runs, missed uint64, err error) {
	st, err := t.objs.OnState.Stats()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("program statistics: %w", err)
	}
	return st.Runtime, st.RunCount, st.RecursionMisses, nil
}

// readCounts is READ_COUNTS of tracker.c: the reader follows open
// connections' counts.
const readCounts = 1

// Counter indexes, as in tracker.c.
const (
	counterConnsFull = 0
	counterRecorded  = 1
	counterChanged   = 2
	counterCloseLost = 3
)

// LostCloses returns how many closes the recording program could not
// record since the programs were loaded: its CPU's log was full and the
// connection's opening was still in a log. A Read ends such a connection
// later, as last seen.
func (t *Tracker) LostCloses() (uint64, error) { return t.counter(counterCloseLost) }

// logged returns how many closes and how many openings the programs logged
// or wrote into the map since they were loaded. t.mu must be held.
func (t *Tracker) logged() ([2]uint64, error) {
	var now [2]uint64
	for i, idx := range []uint32{counterChanged, counterRecorded} {
		n, err := t.counter(idx)
		if err != nil {
			return now, err
		}
		now[i] = n
	}
	for i := range t.heads.elems {
		h := &t.heads.elems[i]
		cur := [2]uint32{atomic.LoadUint32(&h.Closes), atomic.LoadUint32(&h.Opens)}
		for k := range cur {
			t.logTotal[k] += uint64(cur[k] - t.lastHeads[i][k])
		}
		t.lastHeads[i] = cur
	}
	return [2]uint64{now[0] + t.logTotal[0], now[1] + t.logTotal[1]}, nil
}

// storesInOrder reports whether the kernel runs on x86, whose CPUs make
// stores visible to each other in the order they are made (the programs
// then publish log records with plain stores). It asks the kernel, not the
// Go toolchain: the programs run on the kernel's CPU.
func storesInOrder() bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	switch unix.ByteSliceToString(u.Machine[:]) {
	case "x86_64", "i386", "i486", "i586", "i686":
		return true
	}
	return false
}

// logSlots is how many records each CPU's part of a log holds: together
// about as many as the connection map, a power of two from 256 to 32,768.
// Openings and closes wait there, at 56 and 80 bytes, until a Read drains
// them into the map; a CPU whose part is full writes into the map itself,
// as the log saves it from doing.
func logSlots(maxConns uint32, cpus int) uint32 {
	n := uint32(256)
	for n < 32768 && uint64(n)*2*uint64(cpus) <= uint64(maxConns) {
		n *= 2
	}
	return n
}

// Lost returns how many connection attempts the kernel could not record
// because the connection map was full, since the programs were loaded.
func (t *Tracker) Lost() (uint64, error) { return t.counter(counterConnsFull) }

// Recorded returns how many connections were recorded since the programs
// were loaded, including those found at start-up. The difference between
// two calls is how many new connections the next snapshot holds at most,
// known before reading it.
func (t *Tracker) Recorded() (uint64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.heads == nil {
		return 0, fmt.Errorf("read connections: %w", ErrClosed)
	}
	n, err := t.logged()
	return n[1] + t.seeded, err
}

func (t *Tracker) counter(idx uint32) (uint64, error) {
	var perCPU []uint64
	if err := t.objs.Counters.Lookup(idx, &perCPU); err != nil {
		return 0, fmt.Errorf("read counters: %w", err)
	}
	var sum uint64
	for _, v := range perCPU {
		sum += v
	}
	return sum, nil
}
