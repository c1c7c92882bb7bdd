// Package record owns the plain records that describe a connection on its
// way from the kernel to the exposition: the connection as the capture
// recorded it (Conn, State), the question resolution answers (Query) and
// its answer (Destination), and one direction of a conntrack entry (Tuple).
// The capture (bpf), the resolution (resolve), the naming and the collector
// all speak these; none of them holds pointers, so that they can be kept by
// the thousand in slices and maps without work for the garbage collector.
package record

import (
	"context"
	"fmt"
	"net/netip"
	"time"
)

// State is where a recorded connection is in its life.
type State uint8

// Connection states, as the kernel side (bpf/tracker.c, enum conn_state)
// numbers them. Closed and Failed are final: the collector releases such
// connections once it has counted them.
const (
	StateConnecting  State = 1 // connect() called, handshake not finished
	StateEstablished State = 2 // open, tuple valid
	StateClosed      State = 3 // was established, now closed
	StateFailed      State = 4 // closed without ever being established
)

// String returns the state's name.
func (s State) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateEstablished:
		return "established"
	case StateClosed:
		return "closed"
	case StateFailed:
		return "failed"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Conn is one actively opened TCP connection as the kernel recorded it.
type Conn struct {
	// Cookie is the socket cookie: unique for the lifetime of the kernel.
	Cookie uint64
	// PID is the thread group id of the process that called connect(), or
	// 0 when a connection found at start-up has no owner that could be
	// found.
	PID uint32
	// Comm is the NUL-padded command name of the process, as the kernel
	// keeps it.
	Comm [16]byte
	// NetNS is the inode of the socket's network namespace.
	NetNS uint32
	// Src and Dst are the local address and the address the application
	// dialled. They are invalid while State is StateConnecting, and Src is
	// zero for a failure that happened before a source port was chosen.
	// IPv4-mapped IPv6 addresses are unmapped.
	Src, Dst netip.AddrPort
	// State is the connection's state when it was read.
	State State
	// Reported says whether the capture reported the connection before:
	// one it reports for the first time is new to its reader.
	Reported bool
	// Seeded says that the connection was found at start-up: it existed
	// before the capture started, and before anything started after it.
	Seeded bool
	// TCP is what the kernel counted of the connection since the capture
	// last reported it (zero if the capture does not read the counts):
	// the growth of its byte and retransmit counts, and its round-trip
	// time now.
	TCP TCPStats
}

// TCPStats is what the kernel counts of a connection (struct tcp_sock), or
// their growth.
type TCPStats struct {
	// BytesSent are the bytes the connecting side sent that the peer
	// acknowledged: the payload, and the FIN once acknowledged (one byte
	// of sequence space; the SYN's is left out).
	BytesSent uint64
	// BytesReceived are the bytes the connecting side received: the
	// payload, and the peer's FIN once received (one byte).
	BytesReceived uint64
	// Retransmits are the segments the connecting side retransmitted.
	Retransmits uint32
	// SRTT is the smoothed round-trip time; zero before the first sample.
	SRTT time.Duration
}

// Command returns the connecting process's command name.
func (c *Conn) Command() string {
	n := 0
	for n < len(c.Comm) && c.Comm[n] != 0 {
		n++
	}
	return string(c.Comm[:n])
}

// Tuple is one direction of a conntrack entry: addresses in 16-byte form
// (IPv4-mapped for IPv4), ports in host order.
type Tuple struct {
	Src, Dst         [16]byte
	SrcPort, DstPort uint16
}

// Query is one connection to resolve.
type Query struct {
	// NetNS is the inode of the connection's network namespace.
	NetNS uint32
	// PID is the process that opened the connection (0 if unknown); its
	// namespace file is the cheapest way into NetNS.
	PID uint32
	// Src and Dst are the connection's local address and the address the
	// application dialled.
	Src, Dst netip.AddrPort
}

// Destination is where a connection really goes.
type Destination struct {
	// Actual is the address that answers; the dialled address when nothing
	// rewrote it.
	Actual netip.AddrPort
	// Resolver names the table that answered, as exported in the resolver
	// label ("none" when nothing did).
	Resolver string
	// Err is set when a table could not be read; ErrResolver names it. The
	// destination is still the best known, but a later attempt may do
	// better.
	Err         error
	ErrResolver string
	// Via is the reply destination of the entry that translated the
	// connection: the client as the next hop saw it, for a resolver that
	// follows the connection one hop further (Swarm's routing mesh).
	Via netip.AddrPort
}

// Resolver finds where connections really go.
type Resolver interface {
	// Resolve fills out[i] for qs[i]; out is at least as long as qs. It
	// returns when ctx is done, marking what it did not resolve with
	// ctx's error. It may be called from several goroutines at once.
	Resolve(ctx context.Context, qs []Query, out []Destination)
}

// Owner is who opened a connection, as the naming found it: the container,
// pod and namespace (empty where none), and the workload it is an instance
// of (its process name where nothing else names it).
type Owner struct {
	Container, Pod, Namespace, Workload string
}

// Wait says which caches a name waits for, because they may not have
// caught up yet with the moment the connection was first seen; zero means
// that the name is final.
type Wait uint8

// The caches a name can wait for.
const (
	// WaitKubelet waits for a pod list fetched after the moment.
	WaitKubelet Wait = 1 << iota
	// WaitDocker waits for the Docker cache to have listed or inspected
	// the containers, or read the networks, after the moment (or for the
	// engine to come back).
	WaitDocker
)
