package netns_test

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
	"github.com/connection-exporter/connection_exporter/internal/netns"
)

// TestDoReturnsThreads runs functions in another namespace and checks that
// each ran there, that the thread it ran on is back in the process's own
// namespace when Do returns (a thread that ended locked instead would be
// on its way out, or, the main thread, wedged there for good), that
// threads were reused rather than made for each call, and that no thread
// was left in that namespace.
func TestDoReturnsThreads(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("entering namespaces needs root")
	}
	lab := netlab.New(t)
	other := lab.NetNS("other")
	fd, err := os.Open(other.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	own := ownInode(t)

	tids := make(map[int]bool)
	const calls = 20
	for range calls {
		var tid int
		err := netns.Do(fd, func() error {
			tid = unix.Gettid()
			got, err := netns.Inode("/proc/thread-self/ns/net")
			if err == nil && got != other.Inode() {
				err = fmt.Errorf("ran in netns %d, want %d", got, other.Inode())
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		tids[tid] = true
		task := filepath.Join("/proc/self/task", fmt.Sprint(tid), "ns/net")
		if got, err := netns.Inode(task); err != nil || got != own {
			t.Fatalf("after Do, thread %d is in netns %d (%v), want the process's own %d", tid, got, err, own)
		}
	}
	if len(tids) == calls {
		t.Errorf("%d calls ran on %d threads: none was reused", calls, len(tids))
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		// Threads of other tests may be elsewhere; none may be left in
		// the namespace only this test entered.
		if ino, err := netns.Inode(filepath.Join("/proc/self/task", task.Name(), "ns/net")); err == nil && ino == other.Inode() {
			t.Errorf("thread %s is still in netns %d, want the process's own %d", task.Name(), ino, own)
		}
	}
}

// ownInode returns the inode of the namespace of the test's threads.
func ownInode(t *testing.T) uint32 {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ino, err := netns.Inode("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return ino
}

// A function for the process's own namespace runs on the calling goroutine,
// with no thread of its own.
func TestDoOwnRunsHere(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	own, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	if !netns.IsOwn(own) {
		t.Fatalf("IsOwn(%s) is false", own.Name())
	}
	here := unix.Gettid()
	var ran int
	if err := netns.Do(own, func() error { ran = unix.Gettid(); return nil }); err != nil {
		t.Fatal(err)
	}
	if ran != here {
		t.Errorf("ran on thread %d, want the caller's %d", ran, here)
	}
}
