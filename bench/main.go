//go:build bench

// Command bench measures what a scrape costs at 1k, 10k and 50k connections
// against the machine's own floors, and what the kernel programs cost a
// connecting application. Run it as root: `scripts/bench`.
//
// For each size it builds the kube-proxy shape of the end-to-end tests (a
// service address DNATed in a node namespace to three backends), opens N
// long-lived connections from helper processes in the client namespace, runs
// the exporter binary, and measures the cold scrape (every connection new;
// the median of several freshly started exporters, each against a raw dump
// of the table taken next to it, with the page faults it took), warm
// scrapes (nothing new), scrapes after 10% of the connections were replaced
// (the median of three), memory (with the peak that start-up reached),
// start-up time, and allocations per warm scrape. On the same data it
// measures the other floors: one batch read of a BPF map holding the same
// connections and client_golang rendering the same number of series. It
// then measures loopback connect/close throughput with the programs
// detached and attached in turns, for a client of plain system calls and a
// Go client, and prints one table (-kernel measures only that).
//
// With -compare it instead measures two builds of the exporter in turns on
// the same connections, which shows differences smaller than this machine's
// variation from one run to the next.
//
// The floors read the kernel map and the conntrack table through entry
// points that only builds with the bench tag have: go build -tags bench
// ./bench (scripts/bench does).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"

	"github.com/connection-exporter/connection_exporter/bpf"
	"github.com/connection-exporter/connection_exporter/internal/netlab"
	"github.com/connection-exporter/connection_exporter/record"
	"github.com/connection-exporter/connection_exporter/resolve"
)

// exporterEnv is added to the environment of the exporters started (-env).
var exporterEnv []string

// perClient bounds the connections of one helper process: the open file
// limit here is 20000 and cannot be raised.
const perClient = 9000

func main() {
	helper := flag.String("helper", "", "internal: run as a helper (server or client)")
	listen := flag.String("listen", "", "internal: server address")
	dst := flag.String("dst", "", "internal: client destination")
	n := flag.Int("n", 0, "internal: client connections")
	sizes := flag.String("conns", "1000,10000,50000", "connection counts to measure")
	soak := flag.Duration("soak", 0, "instead of the benchmark, churn connections at full speed across namespaces for this long, scraping every second, and print the exporter's resources over time")
	warm := flag.Int("warm", 20, "warm scrapes per size")
	compare := flag.String("compare", "", "instead of the table, compare the exporter with this other build at the first -conns size, taking turns for -rounds rounds")
	rounds := flag.Int("rounds", 9, "rounds of -compare")
	flag.Func("env", "`KEY=VALUE` added to the exporter's environment, such as GODEBUG=gctrace=1 (repeatable)", func(v string) error {
		if !strings.Contains(v, "=") {
			return fmt.Errorf("want KEY=VALUE, got %q", v)
		}
		exporterEnv = append(exporterEnv, v)
		return nil
	})
	colds := flag.Int("cold", 5, "cold scrapes per size, each by a freshly started exporter; the median is reported")
	kernelOnly := flag.Bool("kernel", false, "measure only the kernel side: connect/close with and without the programs")
	cycles := flag.Int("cycles", 2000, "connect/close cycles per block of the throughput measurement")
	exporter := flag.String("exporter", "", "exporter binary (default: build it)")
	logs := flag.Bool("logs", false, "print the debug log of each exporter started")
	profiles := flag.String("profiles", "", "directory to write CPU and allocation profiles of the cold, warm and churn scrapes to (2 seconds each: raise -warm to fill the warm ones)")
	flag.IntVar(&tableExtra, "table", 0, "also fill the node's conntrack table with this many entries of other traffic, as on a busy node, so that the table is larger than the connections; with the connections and what earlier runs left (TIME_WAIT entries live 2 minutes) they must fit in net.netfilter.nf_conntrack_max, shared by all namespaces, or connections time out")
	flag.Parse()

	switch *helper {
	case "server":
		os.Exit(server(*listen))
	case "client":
		os.Exit(client(*dst, *n))
	case "cycler":
		os.Exit(cycler(*dst))
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: run as root")
		os.Exit(1)
	}
	var counts []int
	for _, s := range strings.Split(*sizes, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || v <= 0 {
			fmt.Fprintf(os.Stderr, "bench: bad -conns value %q\n", s)
			os.Exit(2)
		}
		counts = append(counts, v)
	}
	r := &runner{}
	code := r.run(func() {
		bin := *exporter
		if bin == "" {
			bin = r.build()
		}
		if *soak > 0 {
			r.soak(bin, *soak)
			return
		}
		if *compare != "" {
			r.compare([]string{bin, *compare}, counts[0], *rounds)
			return
		}
		if *profiles != "" {
			if err := os.MkdirAll(*profiles, 0o755); err != nil {
				r.Fatalf("profiles: %v", err)
			}
		}
		var rows []row
		if !*kernelOnly {
			for _, c := range counts {
				rows = append(rows, r.measure(bin, c, *colds, *warm, *logs, *profiles)...)
			}
		}
		rows = append(rows, r.throughput(*cycles)...)
		printTable(rows)
	})
	os.Exit(code)
}

// runner implements netlab.TB for a command: cleanups run in reverse order
// when the work ends or fails.
type runner struct {
	mu       sync.Mutex // guards cleanups: a signal runs them from its own goroutine
	cleanups []func()
	failed   bool
}

type fatal struct{}

func (r *runner) Helper() {}
func (r *runner) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}
func (r *runner) Skip(args ...any)        { r.Fatalf("%s", fmt.Sprint(args...)) }
func (r *runner) Logf(f string, a ...any) { fmt.Fprintf(os.Stderr, "bench: "+f+"\n", a...) }
func (r *runner) Errorf(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+f+"\n", a...)
	r.failed = true
}
func (r *runner) Fatalf(f string, a ...any) {
	r.Errorf(f, a...)
	panic(fatal{})
}

// cleanup runs and forgets the registered cleanups.
func (r *runner) cleanup() { r.cleanupTo(0) }

// cleanupTo runs and forgets the cleanups registered after the first mark.
func (r *runner) cleanupTo(mark int) {
	for {
		// Each is taken off before it runs, so that none runs twice.
		r.mu.Lock()
		n := len(r.cleanups)
		if n <= mark {
			r.mu.Unlock()
			return
		}
		f := r.cleanups[n-1]
		r.cleanups = r.cleanups[:n-1]
		r.mu.Unlock()
		f()
	}
}

// mark returns the number of cleanups registered so far, for cleanupTo.
func (r *runner) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.cleanups)
}

func (r *runner) run(work func()) (code int) {
	// Interrupted, the run still removes what it made (namespaces, rules,
	// processes): left behind, they break the next run.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "bench: %v: cleaning up\n", s)
		r.cleanup()
		os.Exit(1)
	}()
	defer func() {
		if p := recover(); p != nil {
			if _, ok := p.(fatal); !ok {
				r.cleanup()
				panic(p)
			}
		}
		r.cleanup()
		if r.failed {
			code = 1
		}
	}()
	work()
	return 0
}

func (r *runner) build() string {
	dir, err := os.MkdirTemp("", "connection_exporter-bench")
	if err != nil {
		r.Fatalf("%v", err)
	}
	r.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "connection_exporter")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		r.Fatalf("build exporter: %v", err)
	}
	return bin
}

// row is one line of the result table.
type row struct {
	n      int
	figure string
	value  float64
	unit   string
	floor  float64 // 0 when the figure has no floor
	target string
}

// measure runs the scrape benchmark for n connections. Everything it
// creates is removed before it returns.
func (r *runner) measure(bin string, n, colds, warm int, logs bool, profiles string) []row {
	defer r.cleanupTo(r.mark())
	cl, clients := r.kubeProxyLab(n)

	// The cold scrape is the one figure a run measures only once per
	// exporter: start several and take the median. Each is paired with a
	// raw dump of the table, its floor, taken next to it (before it and
	// after it in turns): the VM's speed drifts between seconds by more
	// than the target's margin, and a pair drifts little.
	dump := func() float64 {
		start := time.Now()
		entries, err := resolve.CountConntrack(cl.Node.Path())
		if err != nil {
			r.Fatalf("raw conntrack dump: %v", err)
		}
		if entries < n {
			r.Errorf("conntrack holds %d entries, want at least %d", entries, n)
		}
		return time.Since(start).Seconds()
	}
	var exp *exporterProc
	var coldTimes, dumps, ratios, faults, startups []float64
	var body []byte
	for i := range max(colds, 1) {
		if exp != nil {
			exp.stop(r)
			if logs {
				fmt.Fprintf(os.Stderr, "bench: log of the exporter of cold scrape %d (%s):\n%s", i-1, format(coldTimes[i-1], "s"), exp.logs.Bytes())
			}
		}
		exp = r.startExporter(bin, cl.Node)
		startups = append(startups, exp.startup.Seconds())
		var floor float64
		if i%2 == 0 {
			floor = dump()
		}
		stopProfile := exp.profile(r, profiles, fmt.Sprintf("cold-%d-%d", n, i))
		var d float64
		f0 := exp.faults(r)
		d, body = exp.scrape(r)
		faults = append(faults, exp.faults(r)-f0)
		stopProfile()
		if i%2 == 1 {
			floor = dump()
		}
		coldTimes, dumps, ratios = append(coldTimes, d), append(dumps, floor), append(ratios, d/floor)
	}
	cold, coldFaults := median(coldTimes), median(faults)
	fmt.Fprintf(os.Stderr, "bench: %d cold scrapes %s, each against a raw dump %s: %.2f\n",
		n, formatAll(coldTimes), formatAll(dumps), ratios)
	series := countSeries(body)
	// Memory statistics are read while the collectors run, so a scrape's
	// body counts the allocations of the scrape before it: count from the
	// first warm scrape's body to the last's.
	var times, mallocs []float64
	stopProfile := exp.profile(r, profiles, fmt.Sprintf("warm-%d", n))
	for range max(warm, 2) {
		d, b := exp.scrape(r)
		times = append(times, d)
		mallocs = append(mallocs, metric(b, "go_memstats_mallocs_total"))
		body = b
	}
	stopProfile()
	allocs := (mallocs[len(mallocs)-1] - mallocs[0]) / float64(len(mallocs)-1)
	heap := metric(body, "go_memstats_heap_alloc_bytes")
	rss, peak := exp.rss(r), exp.peakRSS(r)
	// Replace 10% of the connections, a few times: one scrape after each.
	var churns []float64
	for i := range churnRounds {
		churnAll(r, clients)
		stopProfile := func() {}
		if i == 0 {
			stopProfile = exp.profile(r, profiles, fmt.Sprintf("churn-%d", n))
		}
		d, body := exp.scrape(r)
		stopProfile()
		churns = append(churns, d)
		if got := metric(body, "connection_exporter_tracked_connections"); got < float64(n) {
			r.Errorf("exporter tracks %v connections, want at least %d", got, n)
		}
	}
	churn := median(churns)
	fmt.Fprintf(os.Stderr, "bench: %d churn scrapes %s\n", n, formatAll(churns))
	exp.stop(r)
	if logs {
		fmt.Fprintf(os.Stderr, "bench: log of the exporter of the last cold scrape, then the warm and churn scrapes:\n%s", exp.logs.Bytes())
	}

	// The other floors, on the same data.
	batch, counts := r.mapFloors()
	diag := sockDiagFloor(r, cl.Client)
	render := renderFloor(series)
	floor := median(dumps)
	read := min(counts, diag) // the fastest read of the sockets' counts

	p50, p95 := median(times), percentile(times, 95)
	return []row{
		{n, "cold scrape", cold, "s", floor, ""},
		{n, "cold scrape / raw dump, median of pairs", median(ratios), "", 0, "≤ 1.5"},
		{n, "warm scrape p50", p50, "s", read + render, "≤ 2x counts read + render"},
		{n, "warm scrape p95", p95, "s", read + render, ""},
		{n, "10% churn scrape", churn, "s", cold, "≤ 0.5x cold scrape"},
		{n, "page faults in the cold scrape", coldFaults, "", 0, ""},
		{n, "RSS", rss, "MiB", 0, "≤ 40 MiB at 50k"},
		{n, "peak RSS (start-up included)", peak, "MiB", 0, ""},
		{n, "start-up, existing connections listed", median(startups), "s", 0, ""},
		{n, "Go heap", heap / (1 << 20), "MiB", 0, ""},
		{n, "allocations per warm scrape", allocs, "", 0, ""},
		{n, "floor: BPF batch read", batch, "s", 0, ""},
		{n, "floor: counts read, the map's walk", counts, "s", 0, ""},
		{n, "floor: counts read, sock_diag dump", diag, "s", 0, ""},
		{n, "floor: raw conntrack dump", floor, "s", 0, ""},
		{n, fmt.Sprintf("floor: render %d series", series), render, "s", 0, ""},
	}
}

// tableExtra is the number of entries of other traffic (-table).
var tableExtra int

// fillTable inserts n established TCP entries of other clients and
// services into the conntrack table of ns.
func fillTable(ns *netlab.NS, n int) {
	entries := make([]netlab.NATEntry, n)
	for i := range entries {
		// Clients in 100.64.0.0/10, services in 10.112.0.0/16: no address
		// of the lab.
		entries[i] = netlab.NATEntry{
			Client:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, byte(64 + i>>16&63), byte(i >> 8), byte(i)}), uint16(1024+i%60000)),
			Service: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 112, byte(i >> 8), byte(i)}), 80),
			Backend: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 113, byte(i >> 8), byte(i)}), 8080),
		}
	}
	ns.InsertConntrack(entries)
	fmt.Fprintf(os.Stderr, "bench: %d entries of other traffic in the node's table\n", n)
}

// churnRounds is how many times the churn scrape is measured.
const churnRounds = 3

// churnAll has every client replace 10% of its connections.
func churnAll(r *runner, clients []*helperProc) {
	for _, c := range clients {
		c.send(r, fmt.Sprintf("churn %d\n", c.n/10))
	}
	for _, c := range clients {
		c.wait(r)
	}
}

// kubeProxyLab builds the kube-proxy shape with n connections from the
// client namespace open through the service address.
func (r *runner) kubeProxyLab(n int) (*netlab.Cluster, []*helperProc) {
	self, err := os.Executable()
	if err != nil {
		r.Fatalf("%v", err)
	}
	lab := netlab.New(r)
	cl := lab.KubeProxyTopology()
	if tableExtra > 0 {
		fillTable(cl.Node, tableExtra)
	}
	cl.Client.Run("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535")
	// Churned ports wait in TIME_WAIT; repeated churn needs them back.
	cl.Client.Run("sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
	for _, b := range cl.Backends {
		r.helper(b.NS, self, "-helper=server", "-listen", fmt.Sprintf(":%d", cl.BackendPort))
	}
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)
	var clients []*helperProc
	for left := n; left > 0; left -= perClient {
		k := min(left, perClient)
		clients = append(clients, r.helper(cl.Client, self, "-helper=client", "-dst", dst.String(), "-n", strconv.Itoa(k)))
	}
	for _, c := range clients {
		c.wait(r)
	}
	fmt.Fprintf(os.Stderr, "bench: %d connections open\n", n)
	return cl, clients
}

// compare measures two exporter builds on the same connections, taking
// turns so that both see the same state of the machine: per round each
// one starts, takes a cold scrape, warm scrapes, and a scrape after 10% of
// the connections were replaced, then its resident set and the peak of it
// are read. Which one goes first alternates between rounds. It prints the
// medians of each build.
func (r *runner) compare(bins []string, n, rounds int) {
	defer r.cleanupTo(r.mark())
	cl, clients := r.kubeProxyLab(n)
	type figures struct{ startup, cold, coldCPU, warm, churn, rss, peak []float64 }
	got := make([]figures, len(bins))
	for round := range rounds {
		// Which build goes first alternates: whatever the first of a round
		// pays for (the previous exporter's exit, the churn before it)
		// favours neither.
		for i := range bins {
			b := (i + round) % len(bins)
			bin := bins[b]
			exp := r.startExporter(bin, cl.Node)
			cpu0 := exp.cpu(r)
			cold, _ := exp.scrape(r)
			got[b].coldCPU = append(got[b].coldCPU, exp.cpu(r)-cpu0)
			warm := median(repeat(5, func() float64 { d, _ := exp.scrape(r); return d }))
			churnAll(r, clients)
			churn, _ := exp.scrape(r)
			got[b].rss = append(got[b].rss, exp.rss(r))
			got[b].peak = append(got[b].peak, exp.peakRSS(r))
			got[b].startup = append(got[b].startup, exp.startup.Seconds())
			exp.stop(r)
			got[b].cold = append(got[b].cold, cold)
			got[b].warm = append(got[b].warm, warm)
			got[b].churn = append(got[b].churn, churn)
		}
	}
	fmt.Println("| build | start-up p50 | cold p50 | cold CPU p50 | warm p50 | churn p50 | churn / cold | RSS p50 | peak RSS p50 |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for b, bin := range bins {
		f := got[b]
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %.2fx | %.1f MiB | %.1f MiB |\n", bin, format(median(f.startup), "s"),
			format(median(f.cold), "s"), format(median(f.coldCPU), "s"), format(median(f.warm), "s"), format(median(f.churn), "s"),
			median(f.churn)/median(f.cold), median(f.rss), median(f.peak))
	}
}

// mapFloors loads the programs in this process (seeding the map with the
// same connections) and times one batch read of the map, and a read of
// every open connection's counts that finds none changed: the map's walk
// as a scrape runs it, with nothing to copy out.
func (r *runner) mapFloors() (batch, counts float64) {
	tr, err := bpf.New(bpf.Config{TCPStats: true}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		r.Fatalf("load programs: %v", err)
	}
	defer tr.Close()
	var buf []record.Conn
	batch = median(repeat(7, func() float64 {
		start := time.Now()
		buf, err = tr.Snapshot(buf[:0])
		if err != nil {
			r.Fatalf("snapshot: %v", err)
		}
		return time.Since(start).Seconds()
	}))
	read := func() float64 {
		start := time.Now()
		if _, err := tr.Read(func(*record.Conn) {}); err != nil {
			r.Fatalf("read: %v", err)
		}
		return time.Since(start).Seconds()
	}
	read() // every connection is new to the first
	return batch, median(repeat(7, read))
}

// sockDiagFloor times a sock_diag dump of the TCP sockets established in
// ns, with their tcp_info: how ss -ti reads the same counts.
func sockDiagFloor(r *runner, ns *netlab.NS) float64 {
	var fd int
	if err := ns.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		return err
	}); err != nil {
		r.Fatalf("sock_diag socket: %v", err)
	}
	defer unix.Close(fd)
	// struct nlmsghdr, then struct inet_diag_req_v2 (56 bytes).
	req := make([]byte, 16+56)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	req[16] = unix.AF_INET
	req[17] = unix.IPPROTO_TCP
	req[18] = 1 << (2 - 1) // INET_DIAG_INFO: struct tcp_info
	ne.PutUint32(req[20:], 1<<1)
	buf := make([]byte, 1<<20)
	dump := func() float64 {
		start := time.Now()
		if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			r.Fatalf("sock_diag request: %v", err)
		}
		sockets := 0
		for done := false; !done; {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				r.Fatalf("sock_diag dump: %v", err)
			}
			for b := buf[:n]; len(b) >= 16; {
				l := int(ne.Uint32(b))
				if l < 16 || l > len(b) {
					break
				}
				if t := ne.Uint16(b[4:]); t == unix.NLMSG_DONE || t == unix.NLMSG_ERROR {
					done = true
					break
				}
				sockets++
				b = b[(l+3)&^3:]
			}
		}
		_ = sockets
		return time.Since(start).Seconds()
	}
	return median(repeat(7, dump))
}

// renderFloor times client_golang encoding n constant series with the
// connection metrics' nine labels.
func renderFloor(n int) float64 {
	labels := []string{"container", "pod", "namespace", "workload", "process", "destination", "actual_destination", "destination_workload", "resolver"}
	desc := prometheus.NewDesc("connection_active", "Connections open now.", labels, nil)
	reg := prometheus.NewRegistry()
	reg.MustRegister(constCollector{desc: desc, n: n})
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	return median(repeat(20, func() float64 {
		w := &discardWriter{header: http.Header{}}
		req, _ := http.NewRequest("GET", "/metrics", nil)
		start := time.Now()
		h.ServeHTTP(w, req)
		return time.Since(start).Seconds()
	}))
}

type constCollector struct {
	desc *prometheus.Desc
	n    int
}

func (c constCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c constCollector) Collect(ch chan<- prometheus.Metric) {
	for i := range c.n {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, 1,
			"", "", "", "client", "client", "10.77.0.10:80", fmt.Sprintf("10.77.%d.2:8080", i), "", "conntrack")
	}
}

type discardWriter struct{ header http.Header }

func (w *discardWriter) Header() http.Header         { return w.header }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(int)             {}

// throughputPairs is the number of paired blocks of throughput.
const throughputPairs = 100

// runTimeBlocks is the number of blocks of each client whose programs' run
// time the kernel-side figures take the median of, for the tracker and
// for the empty programs each.
const runTimeBlocks = 15

// throughput measures loopback connect/close cycles per second in a
// throwaway namespace, in blocks without and with the programs attached.
func (r *runner) throughput(cycles int) []row {
	defer r.cleanupTo(r.mark())
	lab := netlab.New(r)
	ns := lab.NetNS("loop")
	// The server accepts with plain blocking system calls on a thread of
	// its own, and closes a connection once the client has reset it, so
	// that every cycle makes the same six transitions whichever the
	// client. Closing at once raced the client's reset: where the server's
	// FIN won, as in most cycles of the Go client, the sockets made up to
	// two transitions more (through FIN_WAIT1 and CLOSE_WAIT), 7.6 runs a
	// cycle against 6.0, which the empty programs ran for as well. A read
	// that waits a second with no reset (a client that holds its end
	// open) gives up, so that the server always ends.
	var ln int
	var addr unix.Sockaddr
	if err := ns.Do(func() (err error) {
		if ln, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err = unix.Bind(ln, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return err
		}
		// Reads time out, and accepts with them; accepted sockets inherit it.
		if err = unix.SetsockoptTimeval(ln, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1}); err != nil {
			return err
		}
		if err = unix.Listen(ln, 4096); err != nil {
			return err
		}
		addr, err = unix.Getsockname(ln)
		return err
	}); err != nil {
		r.Fatalf("listen: %v", err)
	}
	accepting := make(chan struct{})
	go func() {
		defer close(accepting)
		runtime.LockOSThread()
		for {
			c, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
			if err == unix.EINTR || err == unix.ECONNABORTED || err == unix.EAGAIN { // EAGAIN: a second without a connection
				continue
			}
			if err != nil {
				return // shut down
			}
			// The read ends with the client's reset, with the socket's
			// close if the client dies, or after a second.
			var b [1]byte
			for {
				if n, err := unix.Read(c, b[:]); n <= 0 && err != unix.EINTR {
					break
				}
			}
			unix.Close(c)
		}
	}()
	defer func() {
		unix.Shutdown(ln, unix.SHUT_RDWR) // wakes the blocked accept
		<-accepting
		unix.Close(ln)
	}()
	// The clients run in a helper process that lives in the namespace, so
	// that the Go client's goroutines move between threads as in any Go
	// program (a goroutine locked to a thread in the namespace would hand
	// its thread over at every wait).
	self, err := os.Executable()
	if err != nil {
		r.Fatalf("%v", err)
	}
	in4 := addr.(*unix.SockaddrInet4)
	cyc := r.helper(ns, self, "-helper=cycler", "-dst", netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)).String())
	clients := []struct{ name, kind string }{{"system calls", "raw"}, {"Go net", "go"}}
	per := max(cycles, 1) // cycles per block
	block := func(kind string, n int) time.Duration {
		cyc.send(r, fmt.Sprintf("%s %d\n", kind, n))
		line, err := cyc.out.ReadString('\n')
		nanos, perr := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
		if err != nil || perr != nil {
			r.Fatalf("connect/close: %q, %v", line, err)
		}
		return time.Duration(nanos)
	}
	tr, err := bpf.New(bpf.Config{TCPStats: true}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		r.Fatalf("load programs: %v", err)
	}
	defer tr.Close()
	toggle := func(f func() error) {
		if err := f(); err != nil {
			r.Fatalf("%v", err)
		}
	}
	// The baseline is the same hook with a program that does nothing:
	// what the tracepoint costs whatever a program does is not the
	// programs' to cut.
	empty := newEmptyProgram(r)
	defer empty.close()
	// Released as a scrape would release them, so that the map stays the
	// size it has on a scraped host.
	release := func() {
		if err := tr.ReleaseClosed(); err != nil {
			r.Fatalf("release connections: %v", err)
		}
	}
	// tracked runs a block of n cycles with the programs attached and
	// returns their run time and runs over it, as the kernel counts them
	// while statistics are on, and the block's length; the connections are
	// released after.
	tracked := func(kind string, n int) (run time.Duration, runs uint64, d time.Duration) {
		run0, runs0, _, err := tr.ProgramStats()
		if err != nil {
			r.Fatalf("%v", err)
		}
		d = block(kind, n)
		run1, runs1, _, err := tr.ProgramStats()
		if err != nil {
			r.Fatalf("%v", err)
		}
		release()
		return run1 - run0, runs1 - runs0, d
	}
	// The first cycles after loading are the programs' first writes to
	// the logs: what a newly started exporter costs a connection (see
	// Tracker.prefault).
	var rows []row
	firstStats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		r.Fatalf("enable BPF statistics: %v", err)
	}
	for _, cl := range clients {
		run, _, _ := tracked(cl.kind, per)
		rows = append(rows, row{0, "programs' run time per connect/close cycle, first block after loading, " + cl.name,
			run.Seconds() / float64(per), "ns", 0, ""})
	}
	firstStats.Close()
	for _, cl := range clients {
		// The machine's speed drifts between seconds by more than the
		// programs cost, so the programs are detached and attached in
		// turns, each block short, and each block compared with its
		// neighbour: what drifts slower than a pair cancels out. Which
		// block of a pair goes first alternates, so that a drift within
		// pairs favours neither side. A first pair warms caches and the
		// port range up and is not counted.
		var without, with time.Duration
		var ratios []float64
		for i := range throughputPairs + 1 {
			var wo, w time.Duration
			for j := range 2 {
				if (i+j)%2 == 0 {
					toggle(tr.Detach)
					toggle(empty.attach)
					wo = block(cl.kind, per)
				} else {
					toggle(empty.detach)
					toggle(tr.Attach)
					w = block(cl.kind, per)
					release()
				}
			}
			if i > 0 {
				without, with = without+wo, with+w
				ratios = append(ratios, wo.Seconds()/w.Seconds())
			}
		}
		n := float64(per * throughputPairs)
		slices.Sort(ratios)
		fmt.Fprintf(os.Stderr, "bench: connect/close, %s: ratio of %d paired blocks of %d cycles: quartiles %.3f %.3f %.3f, range %.3f-%.3f\n",
			cl.name, len(ratios), per, percentile(ratios, 25), median(ratios), percentile(ratios, 75), ratios[0], ratios[len(ratios)-1])
		wo := n / without.Seconds()
		rows = append(rows,
			row{0, "connect/close with empty programs, " + cl.name, wo, "/s", 0, ""},
			row{0, "connect/close with the programs, " + cl.name, n / with.Seconds(), "/s", wo, "≥ 0.99x empty programs"},
			row{0, "connect/close ratio to empty programs, median of paired blocks, " + cl.name, median(ratios), "", 0, "≥ 0.99"})
	}

	// The kernel counts the programs' own run time exactly while
	// statistics are on (which slows every program a little): that per
	// cycle, against the cycle, is the programs' share. Which CPU the
	// client, the server and the softirq work land on moves a block's
	// figure by a fifth, so the figure is the median of short blocks,
	// the empty programs' and the tracker's in turns.
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		r.Fatalf("enable BPF statistics: %v", err)
	}
	defer stats.Close()
	type sample struct{ ns, runs, cycle []float64 }
	emptyRuns := make([]sample, len(clients))
	progRuns := make([]sample, len(clients))
	add := func(s *sample, run time.Duration, runs uint64, d time.Duration, k int) {
		s.ns = append(s.ns, float64(run.Nanoseconds())/float64(k))
		s.runs = append(s.runs, float64(runs)/float64(k))
		s.cycle = append(s.cycle, float64(d.Nanoseconds())/float64(k))
	}
	for range runTimeBlocks {
		toggle(tr.Detach)
		toggle(empty.attach)
		for i, cl := range clients {
			run0, n0 := empty.stats(r)
			d := block(cl.kind, per)
			run1, n1 := empty.stats(r)
			add(&emptyRuns[i], run1-run0, n1-n0, d, per)
		}
		toggle(empty.detach)
		toggle(tr.Attach)
		for i, cl := range clients {
			run, runs, d := tracked(cl.kind, per)
			add(&progRuns[i], run, runs, d, per)
		}
	}
	for i, cl := range clients {
		e, p := emptyRuns[i], progRuns[i]
		slices.Sort(p.ns)
		fmt.Fprintf(os.Stderr, "bench: connect/close, %s: empty programs ran %.1f times per cycle, %.0f ns per cycle (median of %d blocks of %d cycles)\n",
			cl.name, median(e.runs), median(e.ns), runTimeBlocks, per)
		fmt.Fprintf(os.Stderr, "bench: connect/close, %s: programs ran %.1f times per cycle, %.0f ns per cycle: quartiles %.0f %.0f %.0f, range %.0f-%.0f\n",
			cl.name, median(p.runs), median(p.ns), percentile(p.ns, 25), median(p.ns), percentile(p.ns, 75), p.ns[0], p.ns[len(p.ns)-1])
		rows = append(rows,
			row{0, "empty programs' run time per connect/close cycle, " + cl.name, median(e.ns) * 1e-9, "ns", 0, ""},
			row{0, "programs' run time per connect/close cycle, median of blocks, " + cl.name, median(p.ns) * 1e-9, "ns", median(p.cycle) * 1e-9, "≤ 600 ns"})
	}
	return rows
}

// helperProc is a helper process (server or client) in a namespace.
type helperProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	n     int
}

func (r *runner) helper(ns *netlab.NS, self string, args ...string) *helperProc {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, self}, args...)...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		r.Fatalf("%v", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		r.Fatalf("%v", err)
	}
	if err := cmd.Start(); err != nil {
		r.Fatalf("start helper: %v", err)
	}
	h := &helperProc{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	for i, a := range args {
		if a == "-n" {
			h.n, _ = strconv.Atoi(args[i+1])
		}
	}
	r.Cleanup(func() {
		stdin.Close()
		waitOrKill(cmd)
	})
	if args[0] == "-helper=server" {
		h.wait(r)
	}
	return h
}

// stopGrace is how long a helper or the exporter has to exit once told to.
const stopGrace = 10 * time.Second

// waitOrKill waits for cmd to exit, killing it if it has not within
// stopGrace: a process that hangs must not hold the run, whose cleanups
// (namespaces, rules) wait for it.
func waitOrKill(cmd *exec.Cmd) (killed bool, err error) {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return false, err
	case <-time.After(stopGrace):
		cmd.Process.Kill()
		return true, <-done
	}
}

func (h *helperProc) wait(r *runner) {
	line, err := h.out.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		r.Fatalf("helper %v: %q, %v", h.cmd.Args, line, err)
	}
}

func (h *helperProc) send(r *runner, s string) {
	if _, err := io.WriteString(h.stdin, s); err != nil {
		r.Fatalf("helper: %v", err)
	}
}

// server accepts and holds connections until stdin closes.
//
// The helpers' connections send no keepalive probes. Go's default sends one
// every 15 seconds from each end, and connections opened together probe
// together: at 50,000 connections, bursts of 100,000 probes and as many
// answers through netfilter every 15 seconds, lasting most of them, about
// 3% of both CPUs in softirq work that fell on whatever was being measured.
func server(addr string) int {
	raiseNoFile()
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		return 1
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// client opens n connections, says ready, and on "churn k" replaces k of
// them; it exits when stdin closes.
func client(dst string, n int) int {
	raiseNoFile()
	conns := make([]net.Conn, 0, n)
	d := net.Dialer{KeepAlive: -1}
	open := func(k int) error {
		for range k {
			c, err := d.Dial("tcp", dst)
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	}
	if err := open(n); err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		k, ok := strings.CutPrefix(sc.Text(), "churn ")
		if !ok {
			continue
		}
		m, _ := strconv.Atoi(k)
		for _, c := range conns[:m] {
			// A reset leaves no TIME_WAIT behind: repeated churn would
			// otherwise run out of source ports.
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
		conns = slices.Delete(conns, 0, m)
		if err := open(m); err != nil {
			fmt.Fprintln(os.Stderr, "client:", err)
			return 1
		}
		time.Sleep(100 * time.Millisecond) // let the closes reach the kernel map
		fmt.Println("ready")
	}
	return 0
}

// cycler answers each line "raw N" or "go N" from stdin with the
// nanoseconds that N connect/close cycles to dst took: with plain blocking
// system calls, or with Go's net package. Both close with a reset, which
// leaves no TIME_WAIT to exhaust ports.
func cycler(dst string) int {
	ap, err := netip.ParseAddrPort(dst)
	if err != nil || !ap.Addr().Is4() {
		fmt.Fprintln(os.Stderr, "cycler: want an IPv4 address and port, got", dst)
		return 2
	}
	sa := &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	reset := &unix.Linger{Onoff: 1}
	raw := func() error {
		c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err = unix.Connect(c, sa); err == nil {
			err = unix.SetsockoptLinger(c, unix.SOL_SOCKET, unix.SO_LINGER, reset)
		}
		unix.Close(c)
		return err
	}
	goNet := func() error {
		c, err := net.Dial("tcp4", dst)
		if err != nil {
			return err
		}
		c.(*net.TCPConn).SetLinger(0)
		return c.Close()
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		kind, count, _ := strings.Cut(sc.Text(), " ")
		n, err := strconv.Atoi(count)
		cycle := map[string]func() error{"raw": raw, "go": goNet}[kind]
		if err != nil || cycle == nil {
			fmt.Fprintln(os.Stderr, "cycler: bad request", sc.Text())
			return 2
		}
		if kind == "raw" {
			// As a C program would: one thread, blocking calls.
			runtime.LockOSThread()
		}
		start := time.Now()
		for range n {
			if err := cycle(); err != nil {
				fmt.Fprintln(os.Stderr, "cycler:", err)
				return 1
			}
		}
		d := time.Since(start)
		runtime.UnlockOSThread()
		fmt.Println(d.Nanoseconds())
	}
	return 0
}

func raiseNoFile() {
	var l unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &l) == nil {
		l.Cur = l.Max
		unix.Setrlimit(unix.RLIMIT_NOFILE, &l)
	}
}

// exporterProc is the exporter binary under measurement.
type exporterProc struct {
	cmd     *exec.Cmd
	url     string
	logs    bytes.Buffer
	cgroup  string        // a cgroup v2 directory of its own, or ""
	startup time.Duration // from start to answering HTTP, within 10 ms
}

// ownCgroup moves the exporter into a cgroup v2 group of its own, whose
// cpu.stat counts the CPU time of all its threads, those that ended
// included, to the microsecond. It returns "" where there is no cgroup v2
// hierarchy or the group cannot be made; cpu then falls back to the
// threads' scheduler statistics.
func ownCgroup(pid int) string {
	root, err := netlab.CgroupRoot()
	if err != nil {
		return ""
	}
	dir := filepath.Join(root, fmt.Sprintf("cx-bench-%d", pid))
	if os.Mkdir(dir, 0o755) != nil {
		return ""
	}
	if os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0) != nil {
		os.Remove(dir)
		return ""
	}
	return dir
}

func (r *runner) startExporter(bin string, node *netlab.NS) *exporterProc {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.Fatalf("%v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	e := &exporterProc{url: "http://" + addr + "/metrics"}
	e.cmd = exec.Command(bin, "--web.listen-address="+addr, "--path.host-netns="+node.Path(), "--log.level=debug", "--debug.pprof")
	e.cmd.Env = append(os.Environ(), exporterEnv...)
	e.cmd.Stdout, e.cmd.Stderr = &e.logs, &e.logs
	e.cmd.WaitDelay = time.Second // a child it left holding the log pipe does not hold Wait
	start := time.Now()
	if err := e.cmd.Start(); err != nil {
		r.Fatalf("start exporter: %v", err)
	}
	e.cgroup = ownCgroup(e.cmd.Process.Pid)
	r.Cleanup(func() { e.stop(r) })
	for range 1000 {
		if resp, err := http.Get("http://" + addr + "/"); err == nil {
			resp.Body.Close()
			e.startup = time.Since(start)
			return e
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.Fatalf("exporter did not start:\n%s", e.logs.String())
	return nil
}

func (e *exporterProc) stop(r *runner) {
	if e.cmd.ProcessState != nil {
		return
	}
	e.cmd.Process.Signal(syscall.SIGTERM)
	killed, err := waitOrKill(e.cmd)
	if killed {
		r.Errorf("exporter did not exit within %v of SIGTERM, killed:\n%s", stopGrace, e.logs.String())
	} else if err != nil {
		r.Errorf("exporter exited with %v:\n%s", err, e.logs.String())
	}
	if e.cgroup == "" {
		return
	}
	if killed {
		// What it started (a wrapper's child) goes too.
		os.WriteFile(filepath.Join(e.cgroup, "cgroup.kill"), []byte("1"), 0)
	}
	// Empty once the exporter is gone; killed processes take a moment.
	for range 100 {
		if err := os.Remove(e.cgroup); err == nil || !errors.Is(err, unix.EBUSY) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// profile starts 2-second CPU and allocation profiles of the exporter,
// written to dir/name.cpu.prof and dir/name.allocs.prof, and returns a
// function that waits for them. It does nothing when dir is empty.
func (e *exporterProc) profile(r *runner, dir, name string) func() {
	if dir == "" {
		return func() {}
	}
	base := strings.TrimSuffix(e.url, "/metrics") + "/debug/pprof/"
	var wg sync.WaitGroup
	for file, path := range map[string]string{"cpu": "profile?seconds=2", "allocs": "allocs?seconds=2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(base + path)
			if err != nil {
				r.Errorf("profile: %v", err)
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if err := os.WriteFile(filepath.Join(dir, name+"."+file+".prof"), b, 0o644); err != nil {
				r.Errorf("profile: %v", err)
			}
		}()
	}
	time.Sleep(100 * time.Millisecond) // let the profiles start first
	return wg.Wait
}

// scrape times one scrape, from request to the last byte.
func (e *exporterProc) scrape(r *runner) (float64, []byte) {
	start := time.Now()
	resp, err := http.Get(e.url)
	if err != nil {
		r.Fatalf("scrape: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	d := time.Since(start).Seconds()
	if err != nil || resp.StatusCode != http.StatusOK {
		r.Fatalf("scrape: %v %s", err, resp.Status)
	}
	return d, body
}

// cpu returns the CPU time the exporter has used, in seconds: from its
// cgroup's cpu.stat, or else the sum of its threads' scheduler run times;
// stat counts whole clock ticks (10 ms, a sixth of a cold scrape). The
// fallback misses threads that ended: builds that end a thread after each
// namespace visit then read low.
func (e *exporterProc) cpu(r *runner) float64 {
	if e.cgroup != "" {
		if b, err := os.ReadFile(filepath.Join(e.cgroup, "cpu.stat")); err == nil {
			for line := range strings.Lines(string(b)) {
				if v, ok := strings.CutPrefix(strings.TrimSpace(line), "usage_usec "); ok {
					us, _ := strconv.ParseFloat(v, 64)
					return us / 1e6
				}
			}
		}
	}
	dir := fmt.Sprintf("/proc/%d/task", e.cmd.Process.Pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		r.Fatalf("%v", err)
	}
	var ns float64
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, task.Name(), "schedstat"))
		if err != nil {
			continue // ended meanwhile
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			v, _ := strconv.ParseFloat(f[0], 64) // time on a CPU, ns
			ns += v
		}
	}
	return ns / 1e9
}

// stat returns the fields of the exporter's /proc/<pid>/stat after the
// command name, the first being the state (field 3).
func (e *exporterProc) stat(r *runner) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", e.cmd.Process.Pid))
	if err != nil {
		r.Fatalf("%v", err)
	}
	// The command name ends with the last ')'.
	return strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
}

// faults returns the exporter's minor page faults so far.
func (e *exporterProc) faults(r *runner) float64 {
	v, _ := strconv.ParseFloat(e.stat(r)[7], 64) // minflt is field 10 of stat
	return v
}

// rss returns the exporter's resident set now, in MiB.
func (e *exporterProc) rss(r *runner) float64 { return e.status(r, "VmRSS") }

// peakRSS returns the exporter's largest resident set since it started,
// in MiB: what start-up took at most.
func (e *exporterProc) peakRSS(r *runner) float64 { return e.status(r, "VmHWM") }

// status returns a memory figure of /proc/<pid>/status, in MiB.
func (e *exporterProc) status(r *runner, field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.cmd.Process.Pid))
	if err != nil {
		r.Fatalf("%v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.Fields(v)[0], 64)
			return kb / 1024
		}
	}
	r.Fatalf("no %s", field)
	return 0
}

// metric returns the sum of a metric's samples in an exposition.
func metric(body []byte, name string) float64 {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return math.NaN()
	}
	var sum float64
	for _, m := range mfs[name].GetMetric() {
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum
}

// countSeries counts the samples in an exposition.
func countSeries(body []byte) int {
	n := 0
	for _, line := range bytes.Split(body, []byte("\n")) {
		if len(line) > 0 && line[0] != '#' {
			n++
		}
	}
	return n
}

func repeat(k int, f func() float64) []float64 {
	out := make([]float64, k)
	for i := range out {
		out[i] = f()
	}
	return out
}

func median(v []float64) float64 { return percentile(v, 50) }

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func printTable(rows []row) {
	fmt.Println("| connections | figure | value | floor | ratio | target |")
	fmt.Println("| ---: | --- | ---: | ---: | ---: | --- |")
	for _, r := range rows {
		n := "—"
		if r.n > 0 {
			n = strconv.Itoa(r.n)
		}
		value, floor, ratio := format(r.value, r.unit), "", ""
		if r.floor > 0 {
			floor, ratio = format(r.floor, r.unit), fmt.Sprintf("%.2fx", r.value/r.floor)
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %s |\n", n, r.figure, value, floor, ratio, r.target)
	}
}

func format(v float64, unit string) string {
	switch unit {
	case "s":
		return fmt.Sprintf("%.1f ms", v*1000)
	case "MiB":
		return fmt.Sprintf("%.1f MiB", v)
	case "/s":
		return fmt.Sprintf("%.0f/s", v)
	case "ns":
		return fmt.Sprintf("%.0f ns", v*1e9)
	}
	if v < 10 {
		return fmt.Sprintf("%.3f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

// formatAll formats durations in seconds as milliseconds.
func formatAll(v []float64) string {
	s := make([]string, len(v))
	for i, d := range v {
		s[i] = format(d, "s")
	}
	return "[" + strings.Join(s, " ") + "]"
}

// emptyProgram is a program that does nothing, on the recording program's
// hook (tp_btf/inet_sock_set_state): the baseline of the kernel-side cost.
type emptyProgram struct {
	prog *ebpf.Program
	link link.Link
}

func newEmptyProgram(r *runner) *emptyProgram {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "empty", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: "inet_sock_set_state",
		License: "GPL", Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		r.Fatalf("load the empty program: %v", err)
	}
	return &emptyProgram{prog: prog}
}

func (e *emptyProgram) attach() error {
	if e.link != nil {
		return nil
	}
	l, err := link.AttachTracing(link.TracingOptions{Program: e.prog})
	e.link = l
	return err
}

func (e *emptyProgram) detach() error {
	if e.link == nil {
		return nil
	}
	err := e.link.Close()
	e.link = nil
	return err
}

func (e *emptyProgram) stats(r *runner) (time.Duration, uint64) {
	st, err := e.prog.Stats()
	if err != nil {
		r.Fatalf("empty program statistics: %v", err)
	}
	return st.Runtime, st.RunCount
}

func (e *emptyProgram) close() {
	e.detach()
	e.prog.Close()
}
