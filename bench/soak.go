//go:build bench

package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
	"github.com/connection-exporter/connection_exporter/internal/netns"
)

// soak churns connections at full speed from two client namespaces (one
// behind the service address, one behind an Istio-style sidecar), scrapes
// every second, and prints the exporter's RSS, Go heap, open files,
// goroutines, netlink sockets, connections in the kernel map and connections
// counted open every 30 seconds: they must stay flat.
func (r *runner) soak(bin string, d time.Duration) {
	defer r.cleanupTo(r.mark())
	lab := netlab.New(r)
	cl := lab.KubeProxy()
	second := lab.NetNS("client2")
	// A second client pod behind a sidecar, on its own subnet.
	lab.Link(second, []string{"10.77.2.2/24"}, cl.Node, []string{"10.77.2.1/24"})
	second.Run("ip", "route", "add", "default", "via", "10.77.2.1")
	second.Sidecar(15001)
	exp := r.startExporter(bin, cl.Node)
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port).String()
	refused := netip.AddrPortFrom(cl.VIP4, cl.RefusedPort).String()

	var conns, scrapes, failures atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, ns := range []*netlab.NS{cl.Client, cl.Client, second} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ns.Do(func() error {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return nil
					default:
					}
					target := dst
					if i%50 == 49 {
						target = refused
					}
					c, err := net.Dial("tcp4", target)
					if err == nil {
						c.(*net.TCPConn).SetLinger(0)
						c.Close()
					}
					conns.Add(1)
				}
			})
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			resp, err := http.Get(exp.url)
			if err != nil || resp.StatusCode != http.StatusOK {
				failures.Add(1)
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			scrapes.Add(1)
		}
	}()

	pid := exp.cmd.Process.Pid
	fmt.Println("| elapsed | connections | scrapes (failed) | RSS | Go heap | open fds | goroutines | netlink sockets | tracked | active |")
	fmt.Println("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	start := time.Now()
	for {
		elapsed := time.Since(start)
		_, body := exp.scrape(r)
		fmt.Printf("| %s | %d | %d (%d) | %.1f MiB | %.1f MiB | %d | %.0f | %d | %.0f | %.0f |\n", elapsed.Round(time.Second), conns.Load(), scrapes.Load(),
			failures.Load(), exp.rss(r), metric(body, "go_memstats_heap_inuse_bytes")/(1<<20), countFDs(pid),
			metric(body, "go_goroutines"), netlinkSockets(pid),
			metric(body, "connection_exporter_tracked_connections"), metric(body, "connection_active"))
		if elapsed >= d {
			break
		}
		time.Sleep(min(30*time.Second, d-elapsed))
	}
	close(stop)
	wg.Wait()
	exp.stop(r)
}

func countFDs(pid int) int {
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(fds)
}

// netlinkSockets counts the process's file descriptors that are netlink
// sockets, by matching socket inodes against /proc/<pid>/net/netlink.
func netlinkSockets(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/netlink", pid))
	inodes := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		if f := strings.Fields(line); len(f) >= 10 {
			inodes[f[9]] = true
		}
	}
	n := 0
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, _ := os.ReadDir(dir)
	for _, fd := range fds {
		target, err := os.Readlink(dir + "/" + fd.Name())
		if err != nil {
			continue
		}
		if ino, ok := netns.LinkInode(target, "socket"); ok && inodes[strconv.FormatUint(ino, 10)] {
			n++
		}
	}
	return n
}
