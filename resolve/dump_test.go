package resolve

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
	"github.com/connection-exporter/connection_exporter/record"
)

// attr encodes one netlink attribute; nested payloads are built by
// concatenating attrs.
func attr(typ uint16, payload ...[]byte) []byte {
	var p []byte
	for _, x := range payload {
		p = append(p, x...)
	}
	b := make([]byte, 4, 4+len(p)+3)
	binary.NativeEndian.PutUint16(b[0:], uint16(4+len(p)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, p...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

const nested = 0x8000

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// ctTuple encodes a CTA_TUPLE_* nest the way the kernel does.
func ctTuple(typ uint16, src, dst netip.AddrPort) []byte {
	srcT, dstT := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if src.Addr().Is6() {
		srcT, dstT = ctaIPv6Src, ctaIPv6Dst
	}
	return attr(typ|nested,
		attr(ctaTupleIP|nested, attr(srcT, src.Addr().AsSlice()), attr(dstT, dst.Addr().AsSlice())),
		attr(ctaTupleProto|nested, attr(ctaProtoNum, []byte{6}), attr(ctaProtoSrc, be16(src.Port())), attr(ctaProtoDst, be16(dst.Port()))),
	)
}

func TestParseEntry(t *testing.T) {
	for _, tc := range []struct{ client, vip, backend string }{
		{"10.77.1.2:40000", "10.77.0.10:80", "10.77.11.2:8080"},
		{"[fd77:1::2]:40000", "[fd77::10]:80", "[fd77:11::2]:8080"},
	} {
		client, vip, backend := netip.MustParseAddrPort(tc.client), netip.MustParseAddrPort(tc.vip), netip.MustParseAddrPort(tc.backend)
		msg := append(ctTuple(ctaTupleOrig, client, vip), ctTuple(ctaTupleReply, backend, client)...)
		msg = append(msg, attr(3, []byte{0, 0, 0, 8})...) // CTA_STATUS, ignored
		e, ok := parseEntry(msg)
		if !ok {
			t.Fatalf("%s: not parsed", tc.client)
		}
		if e.proto != 6 || e.orig != tupleOf(client, vip) || e.reply.source() != backend {
			t.Errorf("%s: parsed %+v", tc.client, e)
		}
		// Every truncation is refused, never misread.
		for n := 1; n < len(msg); n++ {
			if e, ok := parseEntry(msg[:n]); ok && e.reply.source() != backend {
				t.Errorf("truncated at %d parsed as %+v", n, e)
			}
		}
	}
	if _, ok := parseEntry(ctTuple(ctaTupleOrig, netip.MustParseAddrPort("1.2.3.4:5"), netip.MustParseAddrPort("5.6.7.8:9"))); ok {
		t.Error("entry without a reply tuple accepted")
	}
}

func FuzzParseEntry(f *testing.F) {
	a, b := netip.MustParseAddrPort("10.0.0.1:1000"), netip.MustParseAddrPort("10.0.0.2:80")
	f.Add(append(ctTuple(ctaTupleOrig, a, b), ctTuple(ctaTupleReply, b, a)...))
	f.Add([]byte{4, 0, 1, 0})
	f.Fuzz(func(t *testing.T, msg []byte) {
		if e, ok := parseEntry(msg); ok && (e.orig == tuple{} || e.reply == tuple{}) {
			t.Errorf("accepted entry with invalid addresses: %+v", e)
		}
	})
}

// BenchmarkParseEntry decodes one dumped conntrack entry: the per-entry
// cost of a dump beyond the kernel's.
func BenchmarkParseEntry(b *testing.B) {
	client, vip, backend := netip.MustParseAddrPort("10.77.1.2:40000"), netip.MustParseAddrPort("10.77.0.10:80"), netip.MustParseAddrPort("10.77.11.2:8080")
	msg := append(ctTuple(ctaTupleOrig, client, vip), ctTuple(ctaTupleReply, backend, client)...)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := parseEntry(msg); !ok {
			b.Fatal("not parsed")
		}
	}
}

// natTable returns n dumped entries of kube-proxy's shape (clients of one
// service address DNATed to three backends) and the queries for them.
func natTable(n int, v6 bool) (msgs [][]byte, qs []record.Query) {
	vip, backend, client := "10.77.0.10", "10.77.11.%d", "10.77.%d.%d"
	if v6 {
		vip, backend, client = "fd77::10", "fd77:11::%d", "fd77:%x::%x"
	}
	dst := netip.AddrPortFrom(netip.MustParseAddr(vip), 80)
	for i := range n {
		src := netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf(client, 1+i/60000, 2+i%250)), uint16(1024+i%60000))
		be := netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf(backend, 2+i%3)), 8080)
		msgs = append(msgs, append(ctTuple(ctaTupleOrig, src, dst), ctTuple(ctaTupleReply, be, src)...))
		qs = append(qs, record.Query{Src: src, Dst: dst})
	}
	return msgs, qs
}

// BenchmarkJoin collects the records of a dump of 50,000 entries, and
// joins them with a connection for each: the work of a cold scrape beyond
// the kernel's.
func BenchmarkJoin(b *testing.B) {
	msgs, qs := natTable(50000, false)
	idx := make([]int, len(qs))
	for i := range idx {
		idx[i] = i
	}
	out := make([]record.Destination, len(qs))
	b.Run("collect", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r := newRecords(len(msgs))
			for _, m := range msgs {
				r.add(m)
			}
		}
	})
	b.Run("join", func(b *testing.B) {
		r := newRecords(len(msgs))
		for _, m := range msgs {
			r.add(m)
		}
		b.ReportAllocs()
		for b.Loop() {
			x := newQueryIndex(qs, slices.Clone(idx), out, ResolverConntrack)
			r.join(x)
			if rest, missing := x.rest(); len(rest)+len(missing) != 0 {
				b.Fatalf("%d untranslated, %d missing", len(rest), len(missing))
			}
		}
	})
}

func TestJoinResolves(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		msgs, qs := natTable(1000, v6)
		r := newRecords(0)
		for _, m := range msgs[:900] {
			r.add(m)
		}
		// An untranslated entry: the reply comes from the dialled address.
		direct := record.Query{Src: qs[0].Src, Dst: netip.AddrPortFrom(qs[0].Dst.Addr(), 81)}
		r.add(append(ctTuple(ctaTupleOrig, direct.Src, direct.Dst), ctTuple(ctaTupleReply, direct.Dst, direct.Src)...))
		// The same tuple from another namespace: it shares the entry.
		twin := qs[5]
		twin.NetNS = 4026532000
		qs = append(qs, twin, direct)
		idx := make([]int, len(qs))
		for i := range idx {
			idx[i] = i
		}
		out := make([]record.Destination, len(qs))
		x := newQueryIndex(qs, idx, out, ResolverConntrack)
		r.join(x)
		rest, missing := x.rest()
		if len(rest) != 1 || rest[0] != len(qs)-1 {
			t.Errorf("v6=%v: untranslated %v, want only the direct connection", v6, rest)
		}
		if len(missing) != 100 || missing[0] != 900 {
			t.Errorf("v6=%v: %d missing starting at %v, want the 100 entries not added", v6, len(missing), missing[:1])
		}
		for i := range 900 {
			want, _ := parseEntry(msgs[i])
			if out[i].Actual != want.reply.source() || out[i].Via != want.reply.destination() || out[i].Resolver != ResolverConntrack {
				t.Fatalf("v6=%v: query %d resolved to %+v, want %v via %v", v6, i, out[i], want.reply.source(), want.reply.destination())
			}
		}
		if out[len(qs)-2] != out[5] {
			t.Errorf("v6=%v: the twin resolved to %+v, its tuple's connection to %+v", v6, out[len(qs)-2], out[5])
		}
	}
}

func TestDumpCheaper(t *testing.T) {
	for _, tc := range []struct {
		n       int
		entries uint32
		dump    bool
	}{
		{36, 1, false},        // a few connections in a small table: lookups
		{5000, 55000, false},  // churn: lookups
		{50000, 50000, true},  // cold: one dump
		{10000, 10000, true},  // cold, smaller
		{1000, 200000, false}, // few new connections in a large table
	} {
		if got := dumpCheaper(tc.n, tc.entries); got != tc.dump {
			t.Errorf("dumpCheaper(%d, %d) = %v", tc.n, tc.entries, got)
		}
	}
}

// openCTAt opens a conntrack socket in the namespace file at path, closed
// when the test ends.
func openCTAt(tb testing.TB, path string) *ctSocket {
	tb.Helper()
	ns, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer ns.Close()
	s, err := openCT(ns)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.close)
	return s
}

// fillTable inserts the conntrack entries of natTable(n) into the table of
// the namespace at path, as established TCP entries, the way
// `conntrack -I` does.
func fillTable(tb testing.TB, path string, n int) {
	tb.Helper()
	s := openCTAt(tb, path)
	const ipctnlMsgCTNew, ctaTimeout, ctaProtoinfo, ctaProtoinfoTCP, ctaProtoinfoTCPState = 0, 7, 4, 1, 1
	msgs, _ := natTable(n, false)
	for start := 0; start < len(msgs); start += getBatchSize {
		end := min(start+getBatchSize, len(msgs))
		var req []byte
		for i := start; i < end; i++ {
			body := append(slices.Clone(msgs[i]), attr(ctaTimeout, binary.BigEndian.AppendUint32(nil, 600))...)
			body = append(body, attr(ctaProtoinfo|nested, attr(ctaProtoinfoTCP|nested, attr(ctaProtoinfoTCPState, []byte{3})))...)
			m := make([]byte, nlmsgHdrLen+nfgenHdrLen, nlmsgHdrLen+nfgenHdrLen+len(body))
			m = append(m, body...)
			putHeader(m, len(m), ipctnlMsgCTNew, unix.NLM_F_REQUEST|unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK, uint32(i+1), unix.AF_INET)
			req = append(req, m...)
		}
		if err := s.send(req); err != nil {
			tb.Fatal(err)
		}
		for acked := start; acked < end; {
			var failed error
			if _, err := s.receive(func(_ uint32, typ uint16, p []byte) bool {
				if typ == unix.NLMSG_ERROR {
					acked++
					if err := errno(p); err != nil {
						failed = err
					}
				}
				return true
			}); err != nil {
				tb.Fatal(err)
			}
			if failed != nil {
				tb.Fatalf("insert conntrack entry: %v", failed)
			}
		}
	}
}

// BenchmarkDump reads a real table of 50,000 kube-proxy entries: raw is the
// kernel's share (what scripts/bench calls the raw dump), records what a
// cold scrape does with it.
func BenchmarkDump(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root for a network namespace")
	}
	ns := netlab.New(b).NetNS("dump")
	fillTable(b, ns.Path(), 50000)
	s := openCTAt(b, ns.Path())
	b.Run("raw", func(b *testing.B) {
		for b.Loop() {
			n := 0
			if err := s.dump(func([]byte) { n++ }); err != nil || n != 50000 {
				b.Fatalf("dumped %d entries: %v", n, err)
			}
		}
	})
	b.Run("records", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r := newRecords(50000)
			if err := s.dump(r.add); err != nil || len(r.v4) != 50000 {
				b.Fatalf("%d records: %v", len(r.v4), err)
			}
		}
	})
}
