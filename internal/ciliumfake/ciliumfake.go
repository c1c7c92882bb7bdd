// Package ciliumfake stands in for Cilium's agent in tests: it mounts a BPF
// filesystem, pins maps with Cilium's upstream names and layouts, and fills
// them as Cilium's datapath does for a service connection. The layouts are
// written here independently of the resolver's, from Cilium's
// bpf/lib/common.h and bpf/lib/lb.h.
package ciliumfake

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/connection-exporter/connection_exporter/internal/lab"
)

// TB is what the lab needs of a test.
type TB = lab.TB

// Tuple4 mirrors struct ipv4_ct_tuple (packed, 14 bytes), Cilium 1.12-1.19.
type Tuple4 struct {
	Daddr, Saddr   [4]byte
	Dport, Sport   [2]byte // network order
	Nexthdr, Flags uint8
}

// Tuple6 mirrors struct ipv6_ct_tuple (packed, 38 bytes), Cilium 1.12-1.19.
type Tuple6 struct {
	Daddr, Saddr   [16]byte
	Dport, Sport   [2]byte
	Nexthdr, Flags uint8
}

// CTEntry115 mirrors struct ct_entry of Cilium 1.15: backend_id shares its
// place with rx_bytes.
type CTEntry115 struct {
	RxPackets                  uint64
	BackendID                  uint64 // union { rx_bytes; backend_id }
	TxPackets, TxBytes         uint64
	Lifetime                   uint32
	Flags                      uint16
	RevNATIndex                uint16 // network order
	IfIndex                    uint16
	TxFlagsSeen, RxFlagsSeen   uint8
	SrcSecID                   uint32
	LastTxReport, LastRxReport uint32
}

// CTEntry116 mirrors struct ct_entry of Cilium 1.16: counters merged,
// backend_id in its own field after reserved0.
type CTEntry116 struct {
	Reserved0                  uint64
	BackendID                  uint64
	Packets, Bytes             uint64
	Lifetime                   uint32
	Flags                      uint16
	RevNATIndex                uint16
	IfIndex                    uint16
	TxFlagsSeen, RxFlagsSeen   uint8
	SrcSecID                   uint32
	LastTxReport, LastRxReport uint32
}

// LB4BackendV3 mirrors struct lb4_backend of cilium_lb4_backends_v3 (1.16).
type LB4BackendV3 struct {
	Address     [4]byte
	Port        [2]byte // network order
	Proto, Flag uint8
	ClusterID   uint16
	Zone, Pad   uint8
}

// LB6BackendV3 mirrors struct lb6_backend of cilium_lb6_backends_v3 (1.16).
type LB6BackendV3 struct {
	Address     [16]byte
	Port        [2]byte
	Proto, Flag uint8
	ClusterID   uint16
	Zone, Pad   uint8
}

// LB4BackendV2 mirrors struct lb4_backend of cilium_lb4_backends_v2 (1.12).
type LB4BackendV2 struct {
	Address     [4]byte
	Port        [2]byte
	Proto, Flag uint8
}

// Sizes of the mirrored structs, as the kernel maps declare them.
const (
	Tuple4Size  = 14
	Tuple6Size  = 38
	CTEntrySize = 56
)

// TupleFlagService is TUPLE_F_SERVICE.
const TupleFlagService = 4

// Port encodes a port in network order.
func Port(p uint16) [2]byte { return [2]byte{byte(p >> 8), byte(p)} }

// ServiceKey4 is the service entry's key that lb4_local writes at a
// connection's first SYN: the service as daddr, the client as saddr, and
// the ports crossed over.
func ServiceKey4(client, service netip.AddrPort) Tuple4 {
	return Tuple4{Daddr: service.Addr().As4(), Saddr: client.Addr().As4(),
		Dport: Port(client.Port()), Sport: Port(service.Port()), Nexthdr: 6, Flags: TupleFlagService}
}

// ServiceKey6 is ServiceKey4 for IPv6 (lb6_local).
func ServiceKey6(client, service netip.AddrPort) Tuple6 {
	return Tuple6{Daddr: service.Addr().As16(), Saddr: client.Addr().As16(),
		Dport: Port(client.Port()), Sport: Port(service.Port()), Nexthdr: 6, Flags: TupleFlagService}
}

// BPFFS is a BPF filesystem mounted for one test.
type BPFFS struct {
	t    TB
	Root string
}

// Mount mounts a BPF filesystem in a temporary directory, unmounted at
// cleanup. It skips when not root.
func Mount(t TB, dir string) *BPFFS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a BPF filesystem needs root")
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs: %v", err)
		}
	})
	if err := os.MkdirAll(filepath.Join(dir, "tc", "globals"), 0o755); err != nil {
		t.Fatalf("%v", err)
	}
	return &BPFFS{t: t, Root: dir}
}

// Pin creates a map as the agent does (CT maps are LRU hashes, backend
// maps hashes without preallocation) and pins it under tc/globals.
func (f *BPFFS) Pin(name string, typ ebpf.MapType, key, value uint32) *ebpf.Map {
	f.t.Helper()
	spec := &ebpf.MapSpec{Type: typ, KeySize: key, ValueSize: value, MaxEntries: 1024}
	if typ == ebpf.Hash {
		spec.Flags = unix.BPF_F_NO_PREALLOC
	}
	m, err := ebpf.NewMap(spec)
	if err != nil {
		f.t.Fatalf("create %s: %v", name, err)
	}
	f.t.Cleanup(func() { m.Close() })
	if err := m.Pin(filepath.Join(f.Root, "tc", "globals", name)); err != nil {
		f.t.Fatalf("pin %s: %v", name, err)
	}
	return m
}

// Put encodes key and value in host order (the structs above keep network
// order fields as bytes) and stores them.
func (f *BPFFS) Put(m *ebpf.Map, key, value any) {
	f.t.Helper()
	if err := m.Put(Encode(f.t, key), Encode(f.t, value)); err != nil {
		f.t.Fatalf("put: %v", err)
	}
}

// Encode lays a mirror struct out as the kernel sees it.
func Encode(t TB, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := binary.Write(&b, binary.NativeEndian, v); err != nil {
		t.Fatalf("encode %T: %v", v, err)
	}
	return b.Bytes()
}
