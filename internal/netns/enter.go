package netns

import (
	"fmt"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// Do runs fn on an OS thread moved into the network namespace ns; the
// calling goroutine's thread is never touched. Sockets fn creates belong
// to ns and may be used from any goroutine afterwards.
//
// The thread then goes back to the process's own namespace and serves
// other goroutines: a scrape may enter namespaces for every batch of new
// connections, and creating a thread and ending it cost more than two
// setns calls. Going back also matters for the process's main thread:
// the Go runtime never ends it, so a goroutine that ran there and ended
// locked would leave it in ns for good, keeping the namespace alive after
// its last process and bind mount are gone, and /proc/<pid>/ns/net would
// name it. If the thread cannot go back, it ends with the goroutine.
//
// fn must leave the thread's other state (its fsuid, say) as it found
// it. For the process's own namespace fn runs on the calling goroutine, which
// must then not be locked into another namespace itself.
func Do(ns *os.File, fn func() error) error {
	if IsOwn(ns) {
		// Every thread not locked elsewhere is in it already: the
		// exporter usually runs in the host's namespace.
		return fn()
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("enter netns: %w", err)
			return
		}
		err := fn()
		if own, _ := ownNS(); own != nil && unix.Setns(int(own.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- err
	}()
	return <-done
}

// ownNS returns the network namespace the process's threads are in, and
// its identity, opened at the first call: every thread not locked in
// another namespace is in it, and Do moves its threads back (or lets them
// end), so the first caller's thread is. The file is nil if it cannot be
// opened, and then threads that left never come back; the zero identity
// matches no namespace.
var ownNS = sync.OnceValues(func() (*os.File, unix.Stat_t) {
	f, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, unix.Stat_t{}
	}
	return f, statOf(f)
})

func statOf(f *os.File) (st unix.Stat_t) {
	if f != nil {
		unix.Fstat(int(f.Fd()), &st)
	}
	return st
}

// IsOwn reports whether ns is the process's own network namespace, the one
// its threads were in when it started.
func IsOwn(ns *os.File) bool {
	st := statOf(ns)
	_, own := ownNS()
	return st.Ino != 0 && st.Dev == own.Dev && st.Ino == own.Ino
}
