package bpf

import (
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// mapped is a BPF array created with BPF_F_MMAPABLE, mapped into the
// process: user space reads and writes its elements in place, where going
// through ebpf.Memory copies every element once more on each side. The
// memory is outside the Go heap, so T must hold no pointers.
type mapped[T any] struct {
	mem   []byte
	elems []T
}

// mapArray maps the array m, whose values are T: the kernel lays the
// elements out every Sizeof(T) bytes, the value size rounded up to 8, so T
// must be exactly that long. Every page is touched once here: the array's
// memory exists already, but the mapping is filled in page by page, and a
// scrape that took those faults would pay 14 µs for each 4 kB on the
// development VM.
func mapArray[T any](m *ebpf.Map) (*mapped[T], error) {
	var zero T
	size := int(unsafe.Sizeof(zero))
	if m.Type() != ebpf.Array || m.Flags()&unix.BPF_F_MMAPABLE == 0 {
		return nil, fmt.Errorf("map %v: not a mappable array", m)
	}
	if want := (int(m.ValueSize()) + 7) &^ 7; size != want {
		return nil, fmt.Errorf("map %v: elements of %d bytes, want %d", m, size, want)
	}
	n := int(m.MaxEntries())
	mem, err := unix.Mmap(m.FD(), 0, n*size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map %v into memory: %w", m, err)
	}
	var sum byte
	for off := 0; off < len(mem); off += os.Getpagesize() {
		sum += mem[off]
	}
	touched.Add(uint32(sum))
	return &mapped[T]{mem: mem, elems: unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(mem))), n)}, nil
}

// touched sums a byte of each page mapArray touches, so that the compiler
// keeps the loads; atomic, as arrays may be mapped from several goroutines.
var touched atomic.Uint32

// close unmaps the array. The elements must not be used after.
func (m *mapped[T]) close() error {
	if m == nil || m.mem == nil {
		return nil
	}
	err := unix.Munmap(m.mem)
	m.mem, m.elems = nil, nil
	return err
}
