package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/connection-exporter/connection_exporter/internal/netns"

	"github.com/connection-exporter/connection_exporter/record"
)

// Kernel TCP states (include/net/tcp_states.h) that seeding cares about.
const (
	tcpEstablished = 1
	tcpSynSent     = 2
	tcpFinWait1    = 4
	tcpFinWait2    = 5
	tcpCloseWait   = 8
	tcpLastAck     = 9
	tcpListen      = 10
	tcpClosing     = 11
)

// listenKey identifies a listening port within a network namespace.
type listenKey struct {
	netns uint32
	port  uint16
}

// seedChunk is the number of records read from an iterator, or inserted
// into the map, at once.
const seedChunk = 4096

// seed finds the outbound connections that existed before the tracepoint
// was attached and inserts them into the connection map. The tracepoint is
// already attached, so every state change after the first listing is seen
// by it, except for sockets that close before their entry is inserted: a
// second listing finds those and marks them closed.
//
// Every socket of every namespace is listed, both ends of each connection
// on the host: the records are read in chunks and only connections are
// kept, so that memory follows the connections, not the sockets.
func (t *Tracker) seed(procfs string, dirs []string) (int, error) {
	namespaces := netns.Scan(procfs, dirs)
	listening := make(map[listenKey]bool)
	var conns sockList
	_, partial := iterate(namespaces, t.objs.DumpTcp, make([]trackerSockRec, seedChunk), func(recs []trackerSockRec) {
		for i := range recs {
			r := &recs[i]
			switch {
			case r.State == tcpListen:
				listening[listenKey{r.Netns, r.Sport}] = true
			case r.Cookie != 0 && openState(r.State) && !listening[listenKey{r.Netns, r.Sport}]:
				conns.add(r)
			}
		}
	})
	// The kernel lists a namespace's listening sockets before its
	// connections; accepted sockets slip through should it not.
	conns.keep(func(r *trackerSockRec) bool { return !listening[listenKey{r.Netns, r.Sport}] })
	if conns.n == 0 {
		return 0, partial
	}
	owners, err := t.findOwners(&conns)
	if err != nil {
		t.logger.Warn("cannot name the processes of existing connections", "err", err)
	}

	inserted := make(map[uint64]seeded, conns.n)
	chunk := min(seedChunk, int(t.ringSize))
	recs := make([]trackerConnRec, 0, chunk)
	for start := 0; start < conns.n; start += chunk {
		recs = recs[:0]
		for i := start; i < min(start+chunk, conns.n); i++ {
			r := conns.at(i)
			c := trackerConn{
				Sk:      r.Sk,
				Netns:   r.Netns,
				Family:  r.Family,
				State:   uint32(record.StateEstablished),
				Seeded:  1,
				Version: 1, // to be read like any changed entry
				Sport:   r.Sport,
				Dport:   r.Dport,
				Saddr:   r.Saddr,
				Daddr:   r.Daddr,
			}
			if r.State == tcpSynSent {
				c.State = uint32(record.StateConnecting)
			}
			if owners != nil {
				c.Pid, c.Comm = owners[i].pid, owners[i].comm
			}
			recs = append(recs, trackerConnRec{Cookie: r.Cookie, Conn: c})
		}
		if err := t.insertNew(recs, inserted); err != nil {
			return len(inserted), err
		}
	}

	// Sockets that closed between the first listing and their insertion.
	failed, err := iterate(namespaces, t.objs.DumpCookies, make([]uint64, seedChunk), func(cookies []uint64) {
		for _, c := range cookies {
			if s, ok := inserted[c]; ok {
				s.alive = true
				inserted[c] = s
			}
		}
	})
	for cookie, s := range inserted {
		// A connection of a namespace not listed again may be open.
		if s.alive || failed[s.netns] {
			continue
		}
		var c trackerConn
		if err := t.objs.Conns.Lookup(cookie, &c); err != nil || record.State(c.State) != s.state {
			continue
		}
		c.Version++
		c.State = uint32(record.StateClosed)
		if s.state == record.StateConnecting {
			c.State = uint32(record.StateFailed)
		}
		c.Sk = 0
		if err := t.objs.Conns.Update(cookie, &c, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return len(inserted), fmt.Errorf("mark closed connection: %w", err)
		}
	}
	return len(inserted), errors.Join(partial, err)
}

// seeded is a connection the seed inserted: its state and namespace, and
// whether the second listing found it.
type seeded struct {
	state record.State
	netns uint32
	alive bool
}

// insertNew inserts entries that are not in the map yet and notes them in
// inserted; entries the tracepoint inserted first are left as they are. The
// records are written into the changes ring and inserted by a program, in
// one system call: from user space, each insert is one.
func (t *Tracker) insertNew(recs []trackerConnRec, inserted map[uint64]seeded) error {
	if len(recs) > len(t.changes.elems) {
		return fmt.Errorf("%d existing connections at once, more than the ring's %d", len(recs), len(t.changes.elems))
	}
	copy(t.changes.elems, recs)
	packet := make([]byte, 64) // at least an Ethernet header, as XDP wants
	binary.NativeEndian.PutUint32(packet, uint32(len(recs)))
	if err := runXDP(t.objs.InsertSeeded, "connection inserter", packet, packet); err != nil {
		return err
	}
	run := *(*trackerInsertRun)(unsafe.Pointer(&packet[0]))
	if run.Err != 0 {
		return fmt.Errorf("insert existing connections: %w", unix.Errno(-run.Err))
	}
	// The program zeroed the cookies of the records it did not insert.
	for i := range recs {
		if r := &t.changes.elems[i]; r.Cookie != 0 {
			inserted[r.Cookie] = seeded{state: record.State(r.Conn.State), netns: r.Conn.Netns}
		}
	}
	return nil
}

// openState reports whether a socket in kernel TCP state st is a connection
// that some process holds open.
func openState(st uint8) bool {
	switch st {
	case tcpEstablished, tcpSynSent, tcpFinWait1, tcpFinWait2, tcpCloseWait, tcpLastAck, tcpClosing:
		return true
	}
	return false
}

// iterate runs an iterator program over TCP sockets in every namespace of
// namespaces (inode to namespace file), reading its records into buf and
// calling fn with each run of them read. It returns the namespaces that
// could not be listed, or not wholly. A socket iterator lists the
// sockets of the namespace its reader is in, so each is read on an OS
// thread moved into the namespace (netns.Do), and fn runs on it; the
// thread goes back afterwards, so that no thread of the exporter keeps a
// namespace alive. Moving a thread into another network namespace needs
// CAP_SYS_ADMIN: namespaces that cannot be entered are reported in the
// error, the others are still listed.
func iterate[T any](namespaces map[uint32]string, prog *ebpf.Program, buf []T, fn func([]T)) (failed map[uint32]bool, err error) {
	failed = make(map[uint32]bool)
	it, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		for ino := range namespaces {
			failed[ino] = true
		}
		return failed, fmt.Errorf("attach iterator %v: %w", prog, err)
	}
	defer it.Close()
	var errs []error
	for ino, path := range namespaces {
		if err := iterateIn(it, path, ino, buf, fn); err != nil {
			errs = append(errs, err)
			failed[ino] = true
		}
	}
	if len(errs) > 0 {
		return failed, fmt.Errorf("list sockets of %d of %d network namespaces: %w", len(errs), len(namespaces), errors.Join(errs...))
	}
	return failed, nil
}

// iterateIn reads the iterator in the namespace at path.
func iterateIn[T any](it *link.Iter, path string, ino uint32, buf []T, fn func([]T)) error {
	f, err := netns.Open(path, ino)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := netns.Do(f, func() error { return readIter(it, buf, fn) }); err != nil {
		return fmt.Errorf("netns %d: %w", ino, err)
	}
	return nil
}

// readIter opens an iterator and reads its records into buf, calling fn
// with each run of them read.
func readIter[T any](it *link.Iter, buf []T, fn func([]T)) error {
	rd, err := it.Open()
	if err != nil {
		return fmt.Errorf("open iterator: %w", err)
	}
	defer rd.Close()
	return readRecords(rd, buf, fn)
}

// readRecords reads records from rd into buf, as they are in memory, and
// calls fn with the records read each time buf is full or rd ends. Output
// that ends within a record is an error. T must have no pointers and no
// padding the writer does not fill: the kernel's records, in host byte
// order.
func readRecords[T any](rd io.Reader, buf []T, fn func([]T)) error {
	size := int(unsafe.Sizeof(buf[0]))
	raw := bytesOf(buf)
	for {
		n, err := io.ReadFull(rd, raw)
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			return fmt.Errorf("read iterator: %w", err)
		}
		if n%size != 0 {
			return fmt.Errorf("iterator output ends within a record: %d bytes, records of %d", n, size)
		}
		if n > 0 {
			fn(buf[:n/size])
		}
		if err != nil {
			return nil // the end of the output
		}
	}
}

// findOwners names the process holding each socket of conns, by inode,
// from a listing of every process's socket descriptors: the owner of
// conns.at(i) is at i, zero for sockets no process of the exporter's PID
// namespace holds.
func (t *Tracker) findOwners(conns *sockList) ([]owner, error) {
	want := make(map[uint64]int32, conns.n) // inode to index in conns
	for i := range conns.n {
		// A socket listed twice is inserted from its first record.
		if ino := conns.at(i).SockIno; ino != 0 {
			if _, dup := want[ino]; !dup {
				want[ino] = int32(i)
			}
		}
	}
	it, err := link.AttachIter(link.IterOptions{Program: t.objs.DumpFiles})
	if err != nil {
		return nil, fmt.Errorf("attach iter/task_file: %w", err)
	}
	defer it.Close()
	owners := make([]owner, conns.n)
	err = readIter(it, make([]trackerFileRec, seedChunk), func(recs []trackerFileRec) {
		for i := range recs {
			r := &recs[i]
			if j, ok := want[r.SockIno]; ok {
				owners[j] = owner{pid: r.Pid, comm: r.Comm}
				delete(want, r.SockIno) // the first process found keeps it
			}
		}
	})
	return owners, err
}

// owner is a process holding a socket.
type owner struct {
	pid  uint32
	comm [16]int8
}

// sockList is a list of socket records in chunks of seedChunk, which it
// never copies to grow: grown by append, a listing of 50,000 connections
// (4 MB) allocated 16 MB as it copied itself over, and raised start-up's
// peak resident set by 2 MiB.
type sockList struct {
	chunks [][]trackerSockRec
	n      int
}

// add appends a copy of r.
func (l *sockList) add(r *trackerSockRec) {
	if l.n == len(l.chunks)*seedChunk {
		l.chunks = append(l.chunks, make([]trackerSockRec, seedChunk))
	}
	*l.at(l.n) = *r
	l.n++
}

// at returns the i-th record, in place: keep moves records.
func (l *sockList) at(i int) *trackerSockRec { return &l.chunks[i/seedChunk][i%seedChunk] }

// keep keeps the records for which fn is true, in their order.
func (l *sockList) keep(fn func(*trackerSockRec) bool) {
	n := 0
	for i := range l.n {
		if r := l.at(i); fn(r) {
			*l.at(n) = *r
			n++
		}
	}
	l.n = n
	used := (n + seedChunk - 1) / seedChunk
	clear(l.chunks[used:])
	l.chunks = l.chunks[:used]
}
