package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/connection-exporter/connection_exporter/record"
)

// ErrNoKernelLookup wraps the reason NewConntrackLookup fails: the kernel
// lacks the conntrack kfuncs (Linux 5.18 or later with conntrack built in or
// loaded) or refused the program.
var ErrNoKernelLookup = errors.New("conntrack lookups from BPF are not available on this kernel")

// ConntrackLookup looks tuples up in conntrack tables from inside the
// kernel, with an XDP program that never sees a packet, run through
// BPF_PROG_TEST_RUN: 0.2 to 1 µs a lookup whatever the table's size,
// against 3 µs for a netlink request. It is safe for concurrent use: up to
// one call per CPU and one more (at most maxLookupSlots) run at once, each
// in its own part of the program's array.
type ConntrackLookup struct {
	objs lookupObjects
	arr  *mapped[lookupCtLookup] // the lookups array, mapped
	run  int                     // lookups of one program run, and of one slot

	// slots hands out the parts of the array and their buffers; Close
	// takes them all back and closes it.
	slots   chan *lookupSlot
	closeMu sync.Mutex // serialises Close
}

// lookupSlot is one caller's part of the array, and a buffer the tuples
// are gathered in before they are copied there.
type lookupSlot struct {
	start int
	buf   []lookupCtLookup
}

// lookupRunSize is the number of lookups one program run makes (about
// 4 ms, after which the CPU is given back) and the size of a slot (320 kB).
const lookupRunSize = 4096

// maxLookupSlots bounds the calls that run at once.
const maxLookupSlots = 4

// lookupChunk is the number of tuples gathered before they are copied into
// the mapping at once. Written there one by one, each cache line of the
// array would first be read in (424-456 against 360-426 ns a lookup in
// BenchmarkLookupConntrack); one large copy writes whole lines. The
// answers are read in place.
const lookupChunk = 512

// NewConntrackLookup loads the lookup program, relocated with the kernel
// types of types (nil decodes them for this load alone). The error wraps
// ErrNoKernelLookup when the kernel refuses it.
func NewConntrackLookup(types *btf.Cache) (*ConntrackLookup, error) {
	// One slot more than CPUs: a batch waiting for a slot would leave a
	// CPU idle whenever another thread of the scrape (the map's walk, the
	// admission of a batch) stops running.
	return newConntrackLookup(lookupRunSize, min(runtime.NumCPU()+1, maxLookupSlots), types)
}

func newConntrackLookup(run, slots int, types *btf.Cache) (*ConntrackLookup, error) {
	spec, err := loadLookup()
	if err != nil {
		return nil, err
	}
	spec.Maps["lookups"].MaxEntries = uint32(run * slots)
	l := &ConntrackLookup{run: run, slots: make(chan *lookupSlot, slots)}
	if err := spec.LoadAndAssign(&l.objs, &ebpf.CollectionOptions{Cache: types}); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoKernelLookup, err)
	}
	if l.arr, err = mapArray[lookupCtLookup](l.objs.Lookups); err != nil {
		l.objs.Close()
		return nil, fmt.Errorf("%w: %w", ErrNoKernelLookup, err)
	}
	for i := range slots {
		l.slots <- &lookupSlot{start: i * run, buf: make([]lookupCtLookup, min(lookupChunk, run))}
	}
	return l, nil
}

// Close unloads the program.
// Lookups in progress, which use the mapped array, are waited for; a
// Lookup after Close returns ErrClosed.
func (l *ConntrackLookup) Close() error {
	l.closeMu.Lock()
	defer l.closeMu.Unlock()
	if l.arr == nil {
		return nil
	}
	for range cap(l.slots) {
		<-l.slots
	}
	close(l.slots)
	err := l.arr.close()
	l.arr = nil
	return errors.Join(err, l.objs.Close())
}

// Lookup looks n tuples up in the conntrack table of the calling thread's
// network namespace: orig(i) is the i-th, and found(i, reply) is called for
// each whose original tuple is that of an entry of the table, with the
// entry's reply tuple. The caller locks its goroutine to an OS thread in the
// namespace whose table it wants.
func (l *ConntrackLookup) Lookup(n int, orig func(int) record.Tuple, found func(int, record.Tuple)) error {
	s, ok := <-l.slots
	if !ok {
		return fmt.Errorf("conntrack lookup: %w", ErrClosed)
	}
	defer func() { l.slots <- s }()
	slot := l.arr.elems[s.start : s.start+l.run]
	// The run's packet, at least an Ethernet header long as XDP wants:
	// where the slot starts, then how many lookups to make.
	packet := make([]byte, 64)
	binary.NativeEndian.PutUint32(packet[0:], uint32(s.start))
	for start := 0; start < n; start += l.run {
		qs := slot[:min(l.run, n-start)]
		for off := 0; off < len(qs); off += len(s.buf) {
			chunk := s.buf[:min(len(s.buf), len(qs)-off)]
			for i := range chunk {
				o := orig(start + off + i)
				chunk[i] = lookupCtLookup{}
				chunk[i].Orig.Saddr, chunk[i].Orig.Daddr = o.Src, o.Dst
				chunk[i].Orig.Sport, chunk[i].Orig.Dport = o.SrcPort, o.DstPort
			}
			copy(qs[off:], chunk)
		}
		binary.NativeEndian.PutUint32(packet[4:], uint32(len(qs)))
		if err := runXDP(l.objs.LookupCt, "conntrack lookup", packet, nil); err != nil {
			return err
		}
		for i := range qs {
			if q := &qs[i]; q.Found != 0 {
				r := &q.Reply
				found(start+i, record.Tuple{Src: r.Saddr, Dst: r.Daddr, SrcPort: r.Sport, DstPort: r.Dport})
			}
		}
	}
	return nil
}

// xdpPass is XDP_PASS, what the XDP programs return when they ran.
const xdpPass = 2

// runXDP runs one of the XDP programs that never see a packet, with packet
// as its data and, when out is not nil, what the program left there copied
// into out. It fails unless the program returned XDP_PASS; what names it in
// errors.
func runXDP(prog *ebpf.Program, what string, packet, out []byte) error {
	ret, err := prog.Run(&ebpf.RunOptions{Data: packet, DataOut: out})
	if err != nil {
		return fmt.Errorf("run %s: %w", what, err)
	}
	if ret != xdpPass {
		return fmt.Errorf("%s returned %d", what, ret)
	}
	return nil
}
