package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
)

// ErrNoKernelLookup is returned by LookupConntrack when the kernel cannot
// run the lookup program: it lacks the conntrack kfuncs (Linux 5.18 or later
// with conntrack built in or loaded), or refused the program.
var ErrNoKernelLookup = errors.New("conntrack lookups from BPF are not available on this kernel")

// Tuple is one direction of a conntrack entry: addresses in 16-byte form
// (IPv4-mapped for IPv4), no pointers.
type Tuple struct {
	Src, Dst         [16]byte
	SrcPort, DstPort uint16
}

// LookupRun is what one LookupConntrack call did.
type LookupRun struct {
	// Walked is the number of connections in the map; Looked how many of
	// them were looked up.
	Walked, Looked int
	// Complete is false when the call stopped before every connection that
	// needed it was looked up (the map kept growing under it).
	Complete bool
	// Took is how long the call took.
	Took time.Duration
}

// lookupBudget is the number of lookups one program run makes before it
// gives the CPU back (about 15 ms at 1 µs a lookup), and the number of
// results it holds (1.2 MB).
const lookupBudget = 16384

// lookupProgram is the loaded lookup_ct program; it shares the tracker's
// connection map.
type lookupProgram struct {
	lookupObjects
	results *ebpf.Memory

	budget int              // results of one run
	mu     sync.Mutex       // serialises runs, which share the results
	buf    []lookupCtResult // a chunk of results copied out of the mapping
}

// lookupChunk is the number of results copied out of the mapping at once.
const lookupChunk = 1024

// Close closes the program, its results and its handle of the shared map.
func (p *lookupProgram) Close() error { return p.lookupObjects.Close() }

// loadLookup loads lookup_ct onto the tracker's map, or returns why it
// cannot.
func (t *Tracker) loadLookup(budget uint32) error {
	spec, err := loadLookup()
	if err != nil {
		return err
	}
	spec.Maps["conns"].MaxEntries = t.max
	spec.Maps["results"].MaxEntries = budget
	if err := spec.Variables["budget"].Set(budget); err != nil {
		return err
	}
	p := &lookupProgram{budget: int(budget)}
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{"conns": t.objs.Conns}}
	if err := spec.LoadAndAssign(&p.lookupObjects, opts); err != nil {
		return err
	}
	if p.results, err = p.Results.Memory(); err != nil {
		p.Close()
		return fmt.Errorf("map lookup results: %w", err)
	}
	t.lookup = p
	return nil
}

// CanLookUpConntrack reports whether the kernel accepted the lookup
// program, so that LookupConntrack can work.
func (t *Tracker) CanLookUpConntrack() bool { return t.lookup != nil }

// LookupConntrack looks every recorded connection that has a tuple and was
// not looked up before up in the conntrack table of the calling thread's
// network namespace, from inside the kernel, and calls add with each
// connection's own tuple and the reply tuple of its entry. A connection
// that the table does not hold gets the mirror of its own tuple, as an
// entry that translates nothing would have. The caller locks its goroutine
// to an OS thread in the namespace whose table it wants. Connections
// recorded while it runs may not be looked up. Calls are serialised.
func (t *Tracker) LookupConntrack(add func(orig, reply Tuple)) (LookupRun, error) {
	var run LookupRun
	p := t.lookup
	if p == nil {
		return run, ErrNoKernelLookup
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.buf == nil {
		p.buf = make([]lookupCtResult, min(lookupChunk, p.budget))
	}
	begin := time.Now()
	size := int(unsafe.Sizeof(p.buf[0]))
	// The results are copied out of the mapping into buf, seen as bytes.
	raw := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(p.buf))), len(p.buf)*size)
	// The run's packet: at least an Ethernet header long, as XDP wants.
	in, out := make([]byte, 64), make([]byte, 64)
	// One run per budget, until one walks to the end of the map; a map
	// that grows faster than it is looked up does not keep us here.
	for range int(t.max)/p.budget + 2 {
		ret, err := p.LookupCt.Run(&ebpf.RunOptions{Data: in, DataOut: out})
		if err != nil {
			return run, fmt.Errorf("run conntrack lookup: %w", err)
		}
		if ret != xdpPass {
			return run, fmt.Errorf("conntrack lookup returned %d", ret)
		}
		var r lookupRun
		if _, err := binary.Decode(out, binary.NativeEndian, &r); err != nil {
			return run, fmt.Errorf("conntrack lookup result: %w", err)
		}
		n := min(int(r.Looked), p.budget)
		for off := 0; off < n; off += len(p.buf) {
			chunk := p.buf[:min(len(p.buf), n-off)]
			if _, err := p.results.ReadAt(raw[:len(chunk)*size], int64(off*size)); err != nil {
				return run, fmt.Errorf("read lookup results: %w", err)
			}
			for i := range chunk {
				o, r := &chunk[i].Orig, &chunk[i].Reply
				add(Tuple{o.Saddr, o.Daddr, o.Sport, o.Dport}, Tuple{r.Saddr, r.Daddr, r.Sport, r.Dport})
			}
		}
		run.Looked += n
		run.Walked = int(r.Visited)
		if r.Done != 0 {
			run.Complete = true
			break
		}
	}
	run.Took = time.Since(begin)
	return run, nil
}

// xdpPass is XDP_PASS, what lookup_ct returns when it ran.
const xdpPass = 2
