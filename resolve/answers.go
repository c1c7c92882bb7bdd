package resolve

// Matching conntrack entries to the connections asked about: tuples,
// the index of the queries by original tuple, and the answers.

import (
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/connection-exporter/connection_exporter/record"
)

// records are the TCP entries of a dump in the order it gave them: cheaper
// to collect than a table while the dump runs, and joined with the
// connections once both are known.
type records struct {
	v4 []pair4
	v6 []pair
}

type pair4 struct{ orig, reply tuple4 }

type pair struct{ orig, reply tuple }

func newRecords(entries int) *records {
	return &records{v4: make([]pair4, 0, entries)}
}

// add adds a dumped entry's attributes if it is TCP.
func (r *records) add(b []byte) {
	e, ok := parseEntry(b)
	if !ok || e.proto != unix.IPPROTO_TCP {
		return
	}
	if e.orig.is4() && e.reply.is4() {
		r.v4 = append(r.v4, pair4{e.orig.short(), e.reply.short()})
	} else {
		r.v6 = append(r.v6, pair{e.orig, e.reply})
	}
}

// join answers each indexed connection from the reply of its entry.
func (r *records) join(x *queryIndex) {
	for _, p := range r.v4 {
		if n, ok := x.v4[p.orig]; ok {
			x.answer(n, p.reply.long())
		}
	}
	for _, p := range r.v6 {
		x.probe(p.orig, p.reply)
	}
}

// queryIndex finds connections by their original tuple and answers them in
// place. Connections of different namespaces can share a tuple
// (overlapping private networks): those are chained through next.
type queryIndex struct {
	qs       []record.Query
	idx      []int
	out      []record.Destination
	resolver string

	v4    map[tuple4]int32 // last position in idx with the tuple
	v6    map[tuple]int32
	next  []int32 // previous position with the same tuple, or -1
	found []uint8 // per position: notFound, untranslated or translated
}

const (
	notFound = iota
	untranslated
	translated
)

func newQueryIndex(qs []record.Query, idx []int, out []record.Destination, resolver string) *queryIndex {
	x := &queryIndex{qs: qs, idx: idx, out: out, resolver: resolver,
		v4: make(map[tuple4]int32, len(idx)), v6: make(map[tuple]int32),
		next: make([]int32, len(idx)), found: make([]uint8, len(idx))}
	for n, i := range idx {
		x.next[n] = -1
		if t := tupleOf(qs[i].Src, qs[i].Dst); t.is4() {
			k := t.short()
			if prev, ok := x.v4[k]; ok {
				x.next[n] = prev
			}
			x.v4[k] = int32(n)
		} else {
			if prev, ok := x.v6[t]; ok {
				x.next[n] = prev
			}
			x.v6[t] = int32(n)
		}
	}
	return x
}

// answer answers the connections at position n and those chained to it
// from reply, the reply tuple of their entry.
func (x *queryIndex) answer(n int32, reply tuple) {
	for ; n >= 0; n = x.next[n] {
		i := x.idx[n]
		x.found[n] = untranslated
		if translate(&x.out[i], x.qs[i].Dst, reply, x.resolver) {
			x.found[n] = translated
		}
	}
}

// translate sets out from reply, the reply tuple of the entry of a
// connection dialled to dst, when the entry rewrote the destination, and
// reports whether it did.
func translate(out *record.Destination, dst netip.AddrPort, reply tuple, resolver string) bool {
	src := reply.source()
	if src == dst {
		return false
	}
	out.Actual, out.Resolver, out.Via = src, resolver, reply.destination()
	return true
}

// probe answers the indexed connections whose original tuple is orig, if
// there are any.
func (x *queryIndex) probe(orig, reply tuple) {
	var n int32
	var ok bool
	if orig.is4() {
		n, ok = x.v4[orig.short()]
	} else {
		n, ok = x.v6[orig]
	}
	if ok {
		x.answer(n, reply)
	}
}

// rest returns the connections found untranslated, written over idx, and
// apart from them those not found at all.
func (x *queryIndex) rest() (rest, missing []int) {
	rest = x.idx[:0] // written behind the reading
	for n, i := range x.idx {
		switch x.found[n] {
		case notFound:
			missing = append(missing, i)
		case untranslated:
			rest = append(rest, i)
		}
	}
	return rest, missing
}

// tuple is one direction of a conntrack entry, kept without pointers so
// that a large table of them costs the garbage collector nothing to scan.
// IPv4 addresses are held in their IPv4-mapped form, as netip.Addr.As16
// gives them; the zero tuple is no tuple.
type tuple struct {
	src, dst     [16]byte
	sport, dport uint16
}

func tupleOf(src, dst netip.AddrPort) tuple {
	return tuple{src.Addr().As16(), dst.Addr().As16(), src.Port(), dst.Port()}
}

func (t tuple) source() netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(t.src).Unmap(), t.sport)
}

func (t tuple) destination() netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(t.dst).Unmap(), t.dport)
}

// v4prefix is the start of an IPv4-mapped IPv6 address.
var v4prefix = [12]byte{10: 0xff, 11: 0xff}

func (t tuple) is4() bool {
	return [12]byte(t.src[:12]) == v4prefix && [12]byte(t.dst[:12]) == v4prefix
}

// tuple4 is an IPv4 tuple in a third of the space: most tables hold only
// those, and a smaller table is a faster one.
type tuple4 struct {
	src, dst     [4]byte
	sport, dport uint16
}

func (t tuple) short() tuple4 {
	return tuple4{[4]byte(t.src[12:]), [4]byte(t.dst[12:]), t.sport, t.dport}
}

func (t tuple4) long() tuple {
	l := tuple{sport: t.sport, dport: t.dport}
	copy(l.src[:], v4prefix[:])
	copy(l.src[12:], t.src[:])
	copy(l.dst[:], v4prefix[:])
	copy(l.dst[12:], t.dst[:])
	return l
}
