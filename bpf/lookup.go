package bpf

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

// ErrNoKernelLookup is returned by LookupConntrack when the kernel cannot
// run the lookup program: it lacks the conntrack kfuncs (Linux 6.0 or later
// with conntrack built in or loaded), or refused the program.
var ErrNoKernelLookup = errors.New("conntrack lookups from BPF are not available on this kernel")

// Reply is a connection's conntrack entry as LookupConntrack found it. It
// holds no pointers and converts to nothing until it is used: every
// connection carries one through every read.
type Reply struct {
	// Run is the LookupConntrack run that looked the connection up; zero
	// when none has yet.
	Run uint32
	// Found reports that the table held an entry whose original tuple is
	// the connection's.
	Found bool
	// Src and Dst are the entry's reply tuple when Found, addresses in
	// 16-byte form (IPv4-mapped for IPv4): Src is who answers, Dst the
	// client as Src sees it.
	Src, Dst         [16]byte
	SrcPort, DstPort uint16
}

// LookupRun is what one LookupConntrack call did.
type LookupRun struct {
	// ID is the run's number, as Reply.Run holds it; runs count up from 1.
	ID uint32
	// Entries is the number of connections in the map; Looked how many of
	// them were looked up, and Found how many of those the table held.
	Entries, Looked, Found int
	// Complete is false when the run stopped before every connection that
	// needed it was looked up (the map kept growing under it).
	Complete bool
	// Took is how long the run took.
	Took time.Duration
}

// lookupBudget is the number of lookups one program run makes before it
// gives the CPU back: about 3 ms at 0.2 µs a lookup.
const lookupBudget = 16384

// lookupProgram is the loaded lookup_ct program; it shares the tracker's
// connection map.
type lookupProgram struct {
	lookupPrograms
	lookupVariables
}

// loadLookup loads lookup_ct onto the tracker's map, or returns why it
// cannot.
func (t *Tracker) loadLookup() error {
	spec, err := loadLookup()
	if err != nil {
		return err
	}
	spec.Maps["conns"].MaxEntries = t.max
	var p lookupProgram
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{"conns": t.objs.Conns}}
	if err := spec.LoadAndAssign(&p, opts); err != nil {
		return err
	}
	t.lookup = &p
	return nil
}

// CanLookUpConntrack reports whether the kernel accepted the lookup
// program, so that LookupConntrack can work.
func (t *Tracker) CanLookUpConntrack() bool { return t.lookup != nil }

// LookupConntrack looks every recorded connection that has a tuple and was
// not looked up before up in the conntrack table of the calling thread's
// network namespace, from inside the kernel, and leaves the answer in the
// connection's entry: the next Walk or Snapshot returns it as Conn.Reply.
// The caller locks its goroutine to an OS thread in the namespace whose
// table it wants. Connections recorded while it runs may not be looked up.
// Calls are serialised.
func (t *Tracker) LookupConntrack() (LookupRun, error) {
	if t.lookup == nil {
		return LookupRun{}, ErrNoKernelLookup
	}
	t.lookupMu.Lock()
	defer t.lookupMu.Unlock()
	p := t.lookup
	begin := time.Now()
	run := LookupRun{ID: t.lookupRuns + 1}
	if err := p.RunId.Set(run.ID); err != nil {
		return run, fmt.Errorf("set lookup run: %w", err)
	}
	budget := t.lookupBudget
	if budget == 0 {
		budget = lookupBudget
	}
	if err := p.Budget.Set(budget); err != nil {
		return run, fmt.Errorf("set lookup budget: %w", err)
	}
	t.lookupRuns = run.ID
	// One run per budget, until one walks to the end of the map; a map
	// that grows faster than it is looked up does not keep us here.
	data := make([]byte, 64) // XDP wants at least an Ethernet header
	for range t.max/budget + 2 {
		for _, v := range []*ebpf.Variable{p.Visited, p.Looked, p.Found} {
			if err := v.Set(uint32(0)); err != nil {
				return run, fmt.Errorf("reset lookup counters: %w", err)
			}
		}
		if _, err := p.LookupCt.Run(&ebpf.RunOptions{Data: data}); err != nil {
			return run, fmt.Errorf("run conntrack lookup: %w", err)
		}
		var visited, looked, found uint32
		var done uint8
		for _, g := range []struct {
			v   *ebpf.Variable
			dst any
		}{{p.Visited, &visited}, {p.Looked, &looked}, {p.Found, &found}, {p.Done, &done}} {
			if err := g.v.Get(g.dst); err != nil {
				return run, fmt.Errorf("read lookup counters: %w", err)
			}
		}
		run.Looked += int(looked)
		run.Found += int(found)
		run.Entries = int(visited)
		if done != 0 {
			run.Complete = true
			break
		}
	}
	run.Took = time.Since(begin)
	return run, nil
}

// reply converts the lookup program's answer in v.
func reply(v *trackerConn) Reply {
	r := Reply{Run: v.CtRun, Found: v.CtFound != 0}
	if r.Found {
		r.Src, r.Dst = addr16(v.Family, &v.CtSaddr), addr16(v.Family, &v.CtDaddr)
		r.SrcPort, r.DstPort = v.CtSport, v.CtDport
	}
	return r
}

// addr16 returns b in 16-byte form.
func addr16(family uint16, b *[16]uint8) [16]byte {
	if family != afInet {
		return *b
	}
	return [16]byte{10: 0xff, 11: 0xff, 12: b[0], 13: b[1], 14: b[2], 15: b[3]}
}
