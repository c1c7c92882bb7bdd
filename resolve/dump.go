package resolve

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// A lean reader of whole conntrack tables. Decoding every attribute of every
// entry into a general-purpose structure (as a netlink library does) costs
// more than the kernel's walk of the table; a dump only needs the original
// tuple and the reply source of TCP entries, read in place from the receive
// buffer.

// Netfilter netlink constants (include/uapi/linux/netfilter/nfnetlink*.h).
const (
	nfnlSubsysCTNetlink = 1
	ipctnlMsgCTGet      = 1

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

// dumpBufSize is the receive buffer: the kernel sizes each dump message
// batch by the largest buffer seen, so a large one means fewer system calls.
const dumpBufSize = 256 << 10

// ctEntry is what a dump keeps of one conntrack entry.
type ctEntry struct {
	proto    uint8
	orig     tuple
	replySrc netip.AddrPort
}

// netlinkSocketIn opens a NETLINK_NETFILTER socket inside the namespace ns.
// A socket belongs to the namespace of the thread that creates it, so it is
// created on a throwaway OS thread moved into ns; the calling goroutine's
// thread is never touched.
func netlinkSocketIn(ns *os.File) (int, error) {
	type result struct {
		fd  int
		err error
	}
	done := make(chan result, 1)
	go func() {
		// Never unlocked: the thread exits with this goroutine rather than
		// return to the pool in another namespace.
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- result{-1, fmt.Errorf("enter netns: %w", err)}
			return
		}
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		done <- result{fd, err}
	}()
	r := <-done
	return r.fd, r.err
}

// dumpRaw streams the whole conntrack table of namespace ns and calls fn
// with each entry message's attributes (after the netfilter header). The
// slice is only valid during the call.
func dumpRaw(ns *os.File, fn func(attrs []byte)) error {
	fd, err := netlinkSocketIn(ns)
	if err != nil {
		return fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("bind netlink socket: %w", err)
	}

	var req [nlmsgHdrLen + nfgenHdrLen]byte
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], nfnlSubsysCTNetlink<<8|ipctnlMsgCTGet)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1) // sequence
	req[16] = unix.AF_UNSPEC // both IPv4 and IPv6
	if err := unix.Sendto(fd, req[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send conntrack dump request: %w", err)
	}

	buf := make([]byte, dumpBufSize)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("receive conntrack dump: %w", err)
		}
		b := buf[:n]
		for len(b) >= nlmsgHdrLen {
			l := int(ne.Uint32(b[0:]))
			typ := ne.Uint16(b[4:])
			if l < nlmsgHdrLen || l > len(b) {
				return fmt.Errorf("malformed netlink message of length %d in %d bytes", l, len(b))
			}
			switch typ {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if l >= nlmsgHdrLen+4 {
					if code := int32(ne.Uint32(b[nlmsgHdrLen:])); code != 0 {
						return fmt.Errorf("conntrack dump: %w", syscall.Errno(-code))
					}
				}
				return nil
			default:
				if l >= nlmsgHdrLen+nfgenHdrLen {
					fn(b[nlmsgHdrLen+nfgenHdrLen : l])
				}
			}
			b = b[align4(l):]
		}
	}
}

// CountConntrack reads the whole conntrack table of the namespace file at
// path without decoding it and returns the number of entries: the floor
// against which the cost of a dump is measured.
func CountConntrack(path string) (int, error) {
	ns, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer ns.Close()
	n := 0
	err = dumpRaw(ns, func([]byte) { n++ })
	return n, err
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

// parseEntry decodes what a dump needs of one conntrack entry message.
func parseEntry(b []byte) (ctEntry, bool) {
	var e ctEntry
	var origOK, replyOK bool
	ok := attrs(b, func(typ uint16, p []byte) {
		switch typ {
		case ctaTupleOrig:
			var src, dst netip.AddrPort
			src, dst, e.proto, origOK = parseTuple(p)
			e.orig = tuple{src, dst}
		case ctaTupleReply:
			e.replySrc, _, _, replyOK = parseTuple(p)
		}
	})
	return e, ok && origOK && replyOK
}

// parseTuple decodes a CTA_TUPLE_* nest into source and destination.
func parseTuple(b []byte) (src, dst netip.AddrPort, proto uint8, ok bool) {
	var sa, da netip.Addr
	var sp, dp uint16
	ok = attrs(b, func(typ uint16, p []byte) {
		switch typ {
		case ctaTupleIP:
			attrs(p, func(t uint16, a []byte) {
				switch {
				case t == ctaIPv4Src && len(a) == 4:
					sa = netip.AddrFrom4([4]byte(a))
				case t == ctaIPv4Dst && len(a) == 4:
					da = netip.AddrFrom4([4]byte(a))
				case t == ctaIPv6Src && len(a) == 16:
					sa = netip.AddrFrom16([16]byte(a)).Unmap()
				case t == ctaIPv6Dst && len(a) == 16:
					da = netip.AddrFrom16([16]byte(a)).Unmap()
				}
			})
		case ctaTupleProto:
			attrs(p, func(t uint16, a []byte) {
				switch {
				case t == ctaProtoNum && len(a) >= 1:
					proto = a[0]
				case t == ctaProtoSrc && len(a) == 2:
					sp = binary.BigEndian.Uint16(a)
				case t == ctaProtoDst && len(a) == 2:
					dp = binary.BigEndian.Uint16(a)
				}
			})
		}
	})
	if !ok || !sa.IsValid() || !da.IsValid() {
		return src, dst, proto, false
	}
	return netip.AddrPortFrom(sa, sp), netip.AddrPortFrom(da, dp), proto, true
}
