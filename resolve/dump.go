package resolve

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/connection-exporter/connection_exporter/internal/netns"
	"github.com/connection-exporter/connection_exporter/record"
)

// A lean reader of whole conntrack tables. Decoding every attribute of every
// entry into a general-purpose structure (as a netlink library does) costs
// more than the kernel's walk of the table; a dump only needs the original
// tuple and the reply source of TCP entries, read in place from the receive
// buffer.

// Netfilter netlink constants (include/uapi/linux/netfilter/nfnetlink*.h).
const (
	nfnlSubsysCTNetlink   = 1
	ipctnlMsgCTGet        = 1
	ipctnlMsgCTGetStats   = 5
	ctaStatsGlobalEntries = 1

	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaTupleIP    = 1
	ctaTupleProto = 2
	ctaIPv4Src    = 1
	ctaIPv4Dst    = 2
	ctaIPv6Src    = 3
	ctaIPv6Dst    = 4
	ctaProtoNum   = 1
	ctaProtoSrc   = 2
	ctaProtoDst   = 3

	nlaTypeMask = 0x3fff // without NLA_F_NESTED and NLA_F_NET_BYTEORDER

	nlmsgHdrLen = 16
	nfgenHdrLen = 4
)

// datagramSize is the receive buffer: the kernel fills a dump datagram up
// to the largest buffer a socket has read with, but never beyond 32 KiB.
const datagramSize = 64 << 10

// ctEntry is what a dump keeps of one conntrack entry.
type ctEntry struct {
	proto uint8
	orig  tuple
	// reply is the reply direction: its source is where the connection
	// really goes, its destination where the connection appears to come
	// from past the translation (the next hop's view of the client).
	reply tuple
}

// ctSocket is a netfilter netlink socket inside one namespace, with its
// receive buffer. It is not safe for concurrent use.
type ctSocket struct {
	fd  int
	buf []byte
}

// openCT opens a conntrack socket in the namespace ns.
func openCT(ns *os.File) (s *ctSocket, err error) {
	err = netns.Do(ns, func() (err error) {
		s, err = openCTHere()
		return err
	})
	return s, err
}

// openCTHere opens a conntrack socket in the calling thread's namespace: a
// socket belongs to the namespace of the thread that creates it.
func openCTHere() (*ctSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind netlink socket: %w", err)
	}
	return &ctSocket{fd: fd, buf: *buffers.Get().(*[]byte)}, nil
}

// buffers holds receive buffers for reuse: a scrape may open a socket per
// namespace for each batch of new connections, and memory the process
// has not touched yet costs a page fault per 4 kB.
var buffers = sync.Pool{New: func() any {
	b := make([]byte, datagramSize)
	return &b
}}

func (s *ctSocket) close() {
	unix.Close(s.fd)
	if b := s.buf; b != nil {
		s.buf = nil
		buffers.Put(&b)
	}
}

// putHeader writes a netlink and netfilter header for a conntrack message
// of length l at the start of b.
func putHeader(b []byte, l int, msg, flags uint16, seq uint32, family uint8) {
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(l))
	ne.PutUint16(b[4:], nfnlSubsysCTNetlink<<8|msg)
	ne.PutUint16(b[6:], flags)
	ne.PutUint32(b[8:], seq)
	ne.PutUint32(b[12:], 0)
	b[16], b[17], b[18], b[19] = family, 0, 0, 0 // nfgenmsg: family, version, res_id
}

func (s *ctSocket) send(b []byte) error {
	for {
		err := unix.Sendto(s.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// recv reads one datagram into b. A read rather than recvfrom: the
// sender is always the kernel, and recvfrom allocates its address.
func (s *ctSocket) recv(b []byte) (int, error) {
	for {
		n, err := unix.Read(s.fd, b)
		if !errors.Is(err, unix.EINTR) {
			return n, err
		}
	}
}

// receive reads one datagram and calls fn for each netlink message in it
// with its sequence number, type, and payload after the netlink header. fn
// returns false to stop; receive reports whether it was stopped.
func (s *ctSocket) receive(fn func(seq uint32, typ uint16, payload []byte) bool) (bool, error) {
	n, err := s.recv(s.buf)
	if err != nil {
		return false, err
	}
	return messages(s.buf[:n], fn)
}

// messages calls fn for each netlink message in datagram b, as receive
// does.
func messages(b []byte, fn func(seq uint32, typ uint16, payload []byte) bool) (bool, error) {
	ne := binary.NativeEndian
	for len(b) >= nlmsgHdrLen {
		l := int(ne.Uint32(b[0:]))
		if l < nlmsgHdrLen || l > len(b) {
			return false, fmt.Errorf("malformed netlink message of length %d in %d bytes", l, len(b))
		}
		if !fn(ne.Uint32(b[8:]), ne.Uint16(b[4:]), b[nlmsgHdrLen:l]) {
			return true, nil
		}
		b = b[min(align4(l), len(b)):]
	}
	return false, nil
}

// errno decodes the error code of an NLMSG_ERROR payload (nil for an ack).
func errno(payload []byte) error {
	if len(payload) < 4 {
		return fmt.Errorf("truncated netlink error message")
	}
	if code := int32(binary.NativeEndian.Uint32(payload)); code != 0 {
		return syscall.Errno(-code)
	}
	return nil
}

// count returns the number of entries in the namespace's conntrack table
// (IPCTNL_MSG_CT_GET_STATS): a table with none is not worth a lookup.
func (s *ctSocket) count() (uint32, error) {
	var req [nlmsgHdrLen + nfgenHdrLen]byte
	putHeader(req[:], len(req), ipctnlMsgCTGetStats, unix.NLM_F_REQUEST|unix.NLM_F_ACK, 1, unix.AF_UNSPEC)
	if err := s.send(req[:]); err != nil {
		return 0, fmt.Errorf("send conntrack stats request: %w", err)
	}
	var entries uint32
	var found bool
	var failed error
	for {
		done, err := s.receive(func(_ uint32, typ uint16, p []byte) bool {
			if typ == unix.NLMSG_ERROR {
				failed = errno(p) // nil: the ack that ends the answer
				return false
			}
			if len(p) >= nfgenHdrLen {
				attrs(p[nfgenHdrLen:], func(t uint16, a []byte) {
					if t == ctaStatsGlobalEntries && len(a) == 4 {
						entries, found = binary.BigEndian.Uint32(a), true
					}
				})
			}
			return true
		})
		if err != nil {
			return 0, fmt.Errorf("receive conntrack stats: %w", err)
		}
		if done {
			if failed == nil && !found {
				failed = fmt.Errorf("conntrack stats without an entry count")
			}
			return entries, failed
		}
	}
}

// dump streams the whole conntrack table and calls fn with each entry
// message's attributes (after the netfilter header). The slice is only
// valid during the call.
func (s *ctSocket) dump(fn func(attrs []byte)) error {
	if err := s.requestDump(); err != nil {
		return err
	}
	for {
		n, err := s.recv(s.buf)
		if err != nil {
			return fmt.Errorf("receive conntrack dump: %w", err)
		}
		if done, err := dumpDatagram(s.buf[:n], fn); done {
			return err
		}
	}
}

func (s *ctSocket) requestDump() error {
	var req [nlmsgHdrLen + nfgenHdrLen]byte
	putHeader(req[:], len(req), ipctnlMsgCTGet, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, 1, unix.AF_UNSPEC)
	if err := s.send(req[:]); err != nil {
		return fmt.Errorf("send conntrack dump request: %w", err)
	}
	return nil
}

// dumpDatagram calls fn (unless nil) with the attributes of each entry in
// one datagram of a dump and reports whether the dump ended in it, with the
// error it ended with.
func dumpDatagram(b []byte, fn func(attrs []byte)) (done bool, err error) {
	stopped, merr := messages(b, func(_ uint32, typ uint16, p []byte) bool {
		switch typ {
		case unix.NLMSG_DONE:
			return false
		case unix.NLMSG_ERROR:
			err = errno(p)
			return false
		}
		if fn != nil && len(p) >= nfgenHdrLen {
			fn(p[nfgenHdrLen:])
		}
		return true
	})
	if merr != nil {
		return true, fmt.Errorf("receive conntrack dump: %w", merr)
	}
	return stopped, err
}

// getBatchSize is how many lookups are sent in one datagram: the kernel
// answers each in turn, and their answers fit the receive buffer.
const getBatchSize = 128

// get looks up the original tuples of qs[idx[n]] and sets replies[n] to the
// reply tuple of its entry, leaving it zero where there is none.
// Requests are pipelined: a batch goes out in one system call and the
// answers come back in order, so a lookup costs the kernel's hash lookup
// rather than a round trip.
func (s *ctSocket) get(qs []record.Query, idx []int, replies []tuple) error {
	req := make([]byte, 0, getBatchSize*128)
	for start := 0; start < len(idx); start += getBatchSize {
		end := min(start+getBatchSize, len(idx))
		req = req[:0]
		for n := start; n < end; n++ {
			req = appendGet(req, uint32(n+1), qs[idx[n]])
		}
		if err := s.send(req); err != nil {
			return fmt.Errorf("send conntrack lookups: %w", err)
		}
		answered := start
		var failed error
		for answered < end && failed == nil {
			_, err := s.receive(func(seq uint32, typ uint16, p []byte) bool {
				n := int(seq) - 1
				if n < start || n >= end {
					return true // not an answer to this batch
				}
				answered++
				if typ == unix.NLMSG_ERROR {
					if err := errno(p); err != nil && !errors.Is(err, unix.ENOENT) {
						failed = err
						return false
					}
					return true
				}
				if len(p) >= nfgenHdrLen {
					if e, ok := parseEntry(p[nfgenHdrLen:]); ok {
						replies[n] = e.reply
					}
				}
				return true
			})
			if err != nil {
				return fmt.Errorf("receive conntrack lookups: %w", err)
			}
		}
		if failed != nil {
			return failed
		}
	}
	return nil
}

// appendGet appends a conntrack GET request for q's original tuple.
func appendGet(b []byte, seq uint32, q record.Query) []byte {
	start := len(b)
	family, srcT, dstT := uint8(unix.AF_INET), uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	src, dst := q.Src.Addr().AsSlice(), q.Dst.Addr().AsSlice()
	if q.Dst.Addr().Is6() {
		family, srcT, dstT = unix.AF_INET6, ctaIPv6Src, ctaIPv6Dst
		s16, d16 := q.Src.Addr().As16(), q.Dst.Addr().As16()
		src, dst = s16[:], d16[:]
	}
	b = append(b, make([]byte, nlmsgHdrLen+nfgenHdrLen)...)
	orig := len(b)
	b = appendAttr(b, ctaTupleOrig|unix.NLA_F_NESTED, nil)
	ip := len(b)
	b = appendAttr(b, ctaTupleIP|unix.NLA_F_NESTED, nil)
	b = appendAttr(b, srcT, src)
	b = appendAttr(b, dstT, dst)
	endAttr(b, ip)
	proto := len(b)
	b = appendAttr(b, ctaTupleProto|unix.NLA_F_NESTED, nil)
	b = appendAttr(b, ctaProtoNum, []byte{unix.IPPROTO_TCP})
	b = appendAttr(b, ctaProtoSrc, binary.BigEndian.AppendUint16(nil, q.Src.Port()))
	b = appendAttr(b, ctaProtoDst, binary.BigEndian.AppendUint16(nil, q.Dst.Port()))
	endAttr(b, proto)
	endAttr(b, orig)
	putHeader(b[start:], len(b)-start, ipctnlMsgCTGet, unix.NLM_F_REQUEST, seq, family)
	return b
}

// appendAttr appends an attribute header and payload, padded to 4 bytes.
func appendAttr(b []byte, typ uint16, payload []byte) []byte {
	ne := binary.NativeEndian
	b = ne.AppendUint16(b, uint16(4+len(payload)))
	b = ne.AppendUint16(b, typ)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// endAttr sets the length of the nested attribute starting at off.
func endAttr(b []byte, off int) {
	binary.NativeEndian.PutUint16(b[off:], uint16(len(b)-off))
}

func align4(n int) int { return (n + 3) &^ 3 }

// attrs iterates over the netlink attributes in b, calling fn with each
// attribute's type (without flags) and payload. It stops at the first
// malformed attribute and reports whether b was well formed.
func attrs(b []byte, fn func(typ uint16, payload []byte)) bool {
	ne := binary.NativeEndian
	for len(b) >= 4 {
		l := int(ne.Uint16(b[0:]))
		if l < 4 || l > len(b) {
			return false
		}
		fn(ne.Uint16(b[2:])&nlaTypeMask, b[4:l])
		if a := align4(l); a < len(b) {
			b = b[a:]
		} else {
			b = nil
		}
	}
	return len(b) == 0
}

// nextAttr splits the first netlink attribute off b: its type (without
// flags), its payload, and what follows it. ok is false when b is empty or
// the attribute is malformed.
func nextAttr(b []byte) (typ uint16, payload, rest []byte, ok bool) {
	if len(b) < 4 {
		return 0, nil, nil, false
	}
	l := int(binary.NativeEndian.Uint16(b))
	if l < 4 || l > len(b) {
		return 0, nil, nil, false
	}
	return binary.NativeEndian.Uint16(b[2:]) & nlaTypeMask, b[4:l], b[min(align4(l), len(b)):], true
}

// parseEntry decodes what a dump needs of one conntrack entry message. It
// runs once per entry of a dump, so it walks the attributes without
// callbacks.
func parseEntry(b []byte) (e ctEntry, ok bool) {
	var origOK, replyOK bool
	for len(b) > 0 {
		typ, p, rest, ok := nextAttr(b)
		if !ok {
			return e, false
		}
		switch typ {
		case ctaTupleOrig:
			origOK = parseTuple(p, &e.orig, &e.proto)
		case ctaTupleReply:
			var proto uint8
			replyOK = parseTuple(p, &e.reply, &proto)
		}
		b = rest
	}
	return e, origOK && replyOK
}

// parseTuple decodes a CTA_TUPLE_* nest into t and proto and reports
// whether it was well formed with both addresses. IPv4-mapped IPv6
// addresses come out as the IPv4 addresses they are, as netip's Unmap makes
// them.
func parseTuple(b []byte, t *tuple, proto *uint8) bool {
	var srcOK, dstOK bool
	for len(b) > 0 {
		typ, p, rest, ok := nextAttr(b)
		if !ok {
			return false
		}
		b = rest
		for len(p) > 0 && (typ == ctaTupleIP || typ == ctaTupleProto) {
			inner, a, more, ok := nextAttr(p)
			if !ok {
				return false
			}
			p = more
			if typ == ctaTupleIP {
				switch {
				case (inner == ctaIPv4Src && len(a) == 4) || (inner == ctaIPv6Src && len(a) == 16):
					setAddr(&t.src, a)
					srcOK = true
				case (inner == ctaIPv4Dst && len(a) == 4) || (inner == ctaIPv6Dst && len(a) == 16):
					setAddr(&t.dst, a)
					dstOK = true
				}
				continue
			}
			switch {
			case inner == ctaProtoNum && len(a) >= 1:
				*proto = a[0]
			case inner == ctaProtoSrc && len(a) == 2:
				t.sport = binary.BigEndian.Uint16(a)
			case inner == ctaProtoDst && len(a) == 2:
				t.dport = binary.BigEndian.Uint16(a)
			}
		}
	}
	return srcOK && dstOK
}

// setAddr stores a 4- or 16-byte address in 16 bytes, IPv4 as IPv4-mapped.
func setAddr(dst *[16]byte, a []byte) {
	if len(a) == 4 {
		*dst = [16]byte{10: 0xff, 11: 0xff, 12: a[0], 13: a[1], 14: a[2], 15: a[3]}
		return
	}
	*dst = [16]byte(a)
}
