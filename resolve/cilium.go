package resolve

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/connection-exporter/connection_exporter/record"
)

// ResolverCilium names Cilium's eBPF connection tracking in the resolver
// label.
const ResolverCilium = "cilium"

// Layouts of Cilium's pinned maps, mirrored from bpf/lib/common.h and
// bpf/lib/lb.h of Cilium 1.14 to 1.19 (see ../shared/CILIUM.md for the
// offsets, checked at each tag). Multi-byte counters and ids are host
// order; addresses and ports network order.
const (
	// struct ipv4_ct_tuple (packed): daddr @0, saddr @4, dport @8,
	// sport @10, nexthdr @12, flags @13.
	ct4KeySize = 14
	// struct ipv6_ct_tuple (packed): daddr @0, saddr @16, dport @32,
	// sport @34, nexthdr @36, flags @37.
	ct6KeySize = 38
	// struct ct_entry: 56 bytes in every version; backend_id is the u64 at
	// @8 both in 1.14-1.15 (a union with rx_bytes) and in 1.16+ (after
	// reserved0).
	ctValueSize     = 56
	ctBackendOffset = 8
	// Backend map key: u32 backend id.
	backendKeySize = 4
	// struct lb4_backend: address @0, port @4, proto @6, flags @7, then
	// cluster_id @8 and zone @10 (1.16+) in _v3 (1.13+): 12 bytes; _v2
	// (up to 1.12) ends after flags: 8 bytes.
	lb4V3Size = 12
	lb4V2Size = 8
	// struct lb6_backend: address @0, port @16, then as lb4: 24 bytes in
	// _v3, 20 in _v2.
	lb6V3Size = 24
	lb6V2Size = 20

	tupleFlagService = 4 // TUPLE_F_SERVICE
)

// CiliumConfig configures the Cilium step.
type CiliumConfig struct {
	// BPFFS is the mount point of the host's BPF filesystem; Cilium pins
	// its maps under <BPFFS>/tc/globals.
	BPFFS string
}

// Cilium resolves connections to service addresses from Cilium's own
// connection tracking, for clusters where Cilium replaces kube-proxy and
// conntrack holds nothing. The maps are opened for each Resolve call, so a
// restarted agent's new maps are picked up and nothing is held open. It is
// safe for concurrent use.
type Cilium struct {
	dir    string
	logger *slog.Logger
}

// NewCilium returns the Cilium step. Hosts without Cilium cost one failed
// open per scrape with new connections.
func NewCilium(cfg CiliumConfig, logger *slog.Logger) *Cilium {
	if cfg.BPFFS == "" {
		cfg.BPFFS = "/sys/fs/bpf"
	}
	return &Cilium{dir: filepath.Join(cfg.BPFFS, "tc", "globals"), logger: logger}
}

// errNoCilium means Cilium's maps are not pinned: nothing to look up.
var errNoCilium = errors.New("no cilium maps")

// ciliumFamily is one address family's pair of maps.
type ciliumFamily struct {
	ct, backends *ebpf.Map
	backendSize  int
}

func (f *ciliumFamily) close() {
	if f.ct != nil {
		f.ct.Close()
	}
	if f.backends != nil {
		f.backends.Close()
	}
}

// open opens the CT and backend maps of one family and checks their
// layouts. It returns errNoCilium when the CT map is not pinned.
func (c *Cilium) open(ct string, keySize int, backends string, v3, v2 int) (*ciliumFamily, error) {
	f := &ciliumFamily{}
	var err error
	f.ct, err = ebpf.LoadPinnedMap(filepath.Join(c.dir, ct), &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, os.ErrNotExist) {
		return nil, errNoCilium
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", ct, err)
	}
	if k, v := f.ct.KeySize(), f.ct.ValueSize(); k != uint32(keySize) || v != ctValueSize {
		f.close()
		return nil, fmt.Errorf("%s has key size %d and value size %d, want %d and %d: unknown Cilium version", ct, k, v, keySize, ctValueSize)
	}
	for _, b := range []struct {
		suffix string
		size   int
	}{{"_v3", v3}, {"_v2", v2}} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(c.dir, backends+b.suffix), &ebpf.LoadPinOptions{ReadOnly: true})
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			f.close()
			return nil, fmt.Errorf("open %s%s: %w", backends, b.suffix, err)
		}
		if m.KeySize() != backendKeySize || m.ValueSize() != uint32(b.size) {
			m.Close()
			f.close()
			return nil, fmt.Errorf("%s%s has key size %d and value size %d, want %d and %d: unknown Cilium version",
				backends, b.suffix, m.KeySize(), m.ValueSize(), backendKeySize, b.size)
		}
		f.backends, f.backendSize = m, b.size
		return f, nil
	}
	f.close()
	return nil, fmt.Errorf("%s is pinned but neither %s_v3 nor %s_v2 is", ct, backends, backends)
}

// Resolve looks each connection's service entry up in Cilium's CT map and
// its backend in the backend map.
func (c *Cilium) Resolve(ctx context.Context, qs []record.Query, idx []int, out []record.Destination) (rest []int) {
	if len(idx) == 0 {
		return idx
	}
	var fams [2]*ciliumFamily // IPv4, IPv6
	var errs [2]error
	fams[0], errs[0] = c.open("cilium_ct4_global", ct4KeySize, "cilium_lb4_backends", lb4V3Size, lb4V2Size)
	fams[1], errs[1] = c.open("cilium_ct6_global", ct6KeySize, "cilium_lb6_backends", lb6V3Size, lb6V2Size)
	defer func() {
		for _, f := range fams {
			if f != nil {
				f.close()
			}
		}
	}()
	if errors.Is(errs[0], errNoCilium) && errors.Is(errs[1], errNoCilium) {
		return idx // no Cilium on this node
	}
	rest = idx[:0] // written behind the reading
	for n, i := range idx {
		if n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				fail(out, idx[n:], ResolverCilium, err)
				return append(rest, idx[n:]...)
			}
		}
		q := qs[i]
		v6 := 0
		if q.Dst.Addr().Is6() {
			v6 = 1
		}
		if errs[v6] != nil {
			if !errors.Is(errs[v6], errNoCilium) {
				out[i].Err, out[i].ErrResolver = errs[v6], ResolverCilium
			}
			rest = append(rest, i)
			continue
		}
		actual, ok, err := fams[v6].lookup(q)
		if err != nil {
			out[i].Err, out[i].ErrResolver = err, ResolverCilium
		}
		if ok {
			out[i].Actual, out[i].Resolver = actual, ResolverCilium
			continue
		}
		rest = append(rest, i)
	}
	return rest
}

// serviceKey builds the key of the service entry that Cilium's lb4_local /
// lb6_local write at a connection's first SYN: daddr the service, saddr the
// client, and the ports crossed over (dport the client's, sport the
// service's), TCP, flags SERVICE.
func serviceKey(q record.Query) []byte {
	src, dst := q.Src.Addr().Unmap(), q.Dst.Addr().Unmap()
	if dst.Is4() {
		k := make([]byte, ct4KeySize)
		d, s := dst.As4(), src.As4()
		copy(k[0:], d[:])
		copy(k[4:], s[:])
		binary.BigEndian.PutUint16(k[8:], q.Src.Port())
		binary.BigEndian.PutUint16(k[10:], q.Dst.Port())
		k[12], k[13] = 6, tupleFlagService
		return k
	}
	k := make([]byte, ct6KeySize)
	d, s := dst.As16(), src.As16()
	copy(k[0:], d[:])
	copy(k[16:], s[:])
	binary.BigEndian.PutUint16(k[32:], q.Src.Port())
	binary.BigEndian.PutUint16(k[34:], q.Dst.Port())
	k[36], k[37] = 6, tupleFlagService
	return k
}

// lookup returns the backend of q's service entry, if there is one.
func (f *ciliumFamily) lookup(q record.Query) (netip.AddrPort, bool, error) {
	val := make([]byte, ctValueSize)
	if err := f.ct.Lookup(serviceKey(q), val); errors.Is(err, ebpf.ErrKeyNotExist) {
		return netip.AddrPort{}, false, nil
	} else if err != nil {
		return netip.AddrPort{}, false, fmt.Errorf("look up cilium service entry: %w", err)
	}
	id := uint32(binary.NativeEndian.Uint64(val[ctBackendOffset:]))
	if id == 0 {
		return netip.AddrPort{}, false, nil // no backend selected
	}
	b := make([]byte, f.backendSize)
	if err := f.backends.Lookup(id, b); errors.Is(err, ebpf.ErrKeyNotExist) {
		return netip.AddrPort{}, false, nil // backend removed since
	} else if err != nil {
		return netip.AddrPort{}, false, fmt.Errorf("look up cilium backend %d: %w", id, err)
	}
	return decodeBackend(b)
}

// decodeBackend reads a struct lb4_backend or lb6_backend (either version).
func decodeBackend(b []byte) (netip.AddrPort, bool, error) {
	switch len(b) {
	case lb4V3Size, lb4V2Size:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[0:4])), binary.BigEndian.Uint16(b[4:])), true, nil
	case lb6V3Size, lb6V2Size:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[0:16])).Unmap(), binary.BigEndian.Uint16(b[16:])), true, nil
	}
	return netip.AddrPort{}, false, fmt.Errorf("cilium backend of %d bytes", len(b))
}
