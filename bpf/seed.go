package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/connection-exporter/connection_exporter/internal/netns"
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

// sockRecSize is sizeof(struct sock_rec) in tracker.c.
var sockRecSize = binary.Size(trackerSockRec{})

// listenKey identifies a listening port within a network namespace.
type listenKey struct {
	netns uint32
	port  uint16
}

// seed finds the outbound connections that existed before the tracepoint
// was attached and inserts them into the connection map. The tracepoint is
// already attached, so every state change after the first iteration is seen
// by it, except for sockets that close before their entry is inserted: a
// second iteration finds those and marks them closed.
func (t *Tracker) seed(procfs string, dirs []string) (int, error) {
	namespaces := netns.Scan(procfs, dirs)
	recs, partial := t.iterate(namespaces)
	if recs == nil && partial != nil {
		return 0, partial
	}
	listening := make(map[listenKey]bool)
	for i := range recs {
		if recs[i].State == tcpListen {
			listening[listenKey{recs[i].Netns, recs[i].Sport}] = true
		}
	}
	candidates := make(map[uint64]*trackerSockRec) // by socket inode
	for i := range recs {
		r := &recs[i]
		if r.Cookie == 0 || !openState(r.State) || listening[listenKey{r.Netns, r.Sport}] {
			continue
		}
		candidates[r.SockIno] = r
	}
	if len(candidates) == 0 {
		return 0, partial
	}
	owners := findOwners(procfs, candidates)

	inserted := make(map[uint64]State)
	for ino, r := range candidates {
		c := trackerConn{
			CgroupId: r.CgroupId,
			SockIno:  ino,
			Netns:    r.Netns,
			Family:   r.Family,
			State:    uint8(StateEstablished),
			Seeded:   1,
			Version:  1, // to be read like any changed entry
			Sport:    r.Sport,
			Dport:    r.Dport,
			Saddr:    r.Saddr,
			Daddr:    r.Daddr,
		}
		if r.State == tcpSynSent {
			c.State = uint8(StateConnecting)
		}
		if o, ok := owners[ino]; ok {
			c.Pid = o.pid
			for i := range min(len(o.comm), len(c.Comm)-1) {
				c.Comm[i] = int8(o.comm[i])
			}
		}
		err := t.objs.Conns.Update(r.Cookie, &c, ebpf.UpdateNoExist)
		if errors.Is(err, ebpf.ErrKeyExist) {
			continue // the tracepoint saw it first
		}
		if err != nil {
			return len(inserted), fmt.Errorf("insert existing connection: %w", err)
		}
		inserted[r.Cookie] = State(c.State)
	}

	// Sockets that closed between the first iteration and their insertion.
	again, err := t.iterate(namespaces)
	if again == nil && err != nil {
		return len(inserted), err
	}
	alive := make(map[uint64]bool, len(again))
	for i := range again {
		if again[i].Cookie != 0 {
			alive[again[i].Cookie] = true
		}
	}
	for cookie, st := range inserted {
		if alive[cookie] {
			continue
		}
		var c trackerConn
		if err := t.objs.Conns.Lookup(cookie, &c); err != nil || State(c.State) != st {
			continue
		}
		c.Version++
		c.State = uint8(StateClosed)
		if st == StateConnecting {
			c.State = uint8(StateFailed)
		}
		if err := t.objs.Conns.Update(cookie, &c, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return len(inserted), fmt.Errorf("mark closed connection: %w", err)
		}
	}
	return len(inserted), partial
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

// iterate runs the TCP socket iterator in every namespace of namespaces
// (inode to namespace file) and decodes the records. A socket iterator lists
// the sockets of the namespace its creator is in, so each is created on a
// dedicated OS thread moved into the namespace; that thread is never reused
// (the goroutine exits locked). Moving a thread into another network
// namespace needs CAP_SYS_ADMIN: namespaces that cannot be entered are
// reported in the error, the others are still listed.
func (t *Tracker) iterate(namespaces map[uint32]string) ([]trackerSockRec, error) {
	it, err := link.AttachIter(link.IterOptions{Program: t.objs.DumpTcp})
	if err != nil {
		return nil, fmt.Errorf("attach iter/tcp: %w", err)
	}
	defer it.Close()

	type result struct {
		raw  []byte
		errs []error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		var r result
		for ino, path := range namespaces {
			raw, err := iterateIn(it, path, ino)
			if err != nil {
				r.errs = append(r.errs, err)
				continue
			}
			r.raw = append(r.raw, raw...)
		}
		done <- r
	}()
	r := <-done
	recs, err := decodeSockRecs(r.raw)
	if err != nil {
		return nil, err
	}
	if len(r.errs) > 0 {
		return recs, fmt.Errorf("list sockets of %d of %d network namespaces: %w", len(r.errs), len(namespaces), errors.Join(r.errs...))
	}
	return recs, nil
}

// iterateIn moves the calling (locked) thread into the namespace and reads
// the iterator there.
func iterateIn(it *link.Iter, path string, ino uint32) ([]byte, error) {
	f, err := netns.Open(path, ino)
	if err != nil {
		return nil, err
	}
	err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("enter netns %d: %w", ino, err)
	}
	rd, err := it.Open()
	if err != nil {
		return nil, fmt.Errorf("open tcp iterator in netns %d: %w", ino, err)
	}
	defer rd.Close()
	raw, err := io.ReadAll(rd)
	if err != nil {
		return nil, fmt.Errorf("read tcp iterator in netns %d: %w", ino, err)
	}
	return raw, nil
}

// decodeSockRecs decodes the iterator's output: a sequence of struct sock_rec
// in host (little-endian) byte order.
func decodeSockRecs(raw []byte) ([]trackerSockRec, error) {
	if len(raw)%sockRecSize != 0 {
		return nil, fmt.Errorf("tcp iterator returned %d bytes, not a multiple of %d", len(raw), sockRecSize)
	}
	recs := make([]trackerSockRec, len(raw)/sockRecSize)
	if err := binary.Read(bytes.NewReader(raw), binary.LittleEndian, recs); err != nil {
		return nil, fmt.Errorf("decode tcp iterator records: %w", err)
	}
	return recs, nil
}

type owner struct {
	pid  uint32
	comm string
}

// findOwners maps socket inodes to the process holding them, by reading the
// file descriptors of every process. Processes that exit meanwhile or whose
// files cannot be read are skipped: their connections get no owner.
func findOwners(procfs string, want map[uint64]*trackerSockRec) map[uint64]owner {
	found := make(map[uint64]owner)
	dirs, err := os.ReadDir(procfs)
	if err != nil {
		return found
	}
	for _, d := range dirs {
		pid, err := strconv.ParseUint(d.Name(), 10, 32)
		if err != nil {
			continue
		}
		fdDir := filepath.Join(procfs, d.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		var comm string
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err != nil {
				continue
			}
			ino, ok := socketInode(target)
			if !ok {
				continue
			}
			if _, ok := want[ino]; !ok {
				continue
			}
			if _, ok := found[ino]; ok {
				continue
			}
			if comm == "" {
				b, _ := os.ReadFile(filepath.Join(procfs, d.Name(), "comm"))
				comm = strings.TrimSpace(string(b))
			}
			found[ino] = owner{pid: uint32(pid), comm: comm}
		}
	}
	return found
}

// socketInode parses a /proc/<pid>/fd link target of the form "socket:[123]".
func socketInode(target string) (uint64, bool) { return netns.LinkInode(target, "socket") }
