package procmetrics

import (
	"bytes"
	"encoding/binary"
	"io"
	"math"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"
)

func newTestProcess(t *testing.T) *Process {
	t.Helper()
	p, err := New("/proc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

// gatherFamilies gathers c alone, by family name.
func gatherFamilies(t *testing.T, c prometheus.Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]*dto.MetricFamily)
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func sample(t *testing.T, mfs map[string]*dto.MetricFamily, name string) float64 {
	t.Helper()
	mf, ok := mfs[name]
	if !ok || len(mf.GetMetric()) != 1 {
		t.Fatalf("no single sample of %s", name)
	}
	if m := mf.GetMetric()[0]; m.Counter != nil {
		return m.GetCounter().GetValue()
	} else {
		return m.GetGauge().GetValue()
	}
}

// TestProcessMatchesClientGolang checks each figure against client_golang's
// process collector, read just before and just after.
func TestProcessMatchesClientGolang(t *testing.T) {
	p := newTestProcess(t)
	theirs := collectors.NewProcessCollector(collectors.ProcessCollectorOpts{ReportErrors: true})
	before := gatherFamilies(t, theirs)
	// Counted here while no other descriptor opens: ReadDir's own
	// descriptor is among the entries, and so is Process's, all along.
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	ours := gatherFamilies(t, p)
	after := gatherFamilies(t, theirs)

	if len(ours) != len(before) {
		t.Errorf("%d families, client_golang has %d", len(ours), len(before))
	}
	for name, mf := range before {
		got, ok := ours[name]
		if !ok {
			t.Errorf("no %s", name)
			continue
		}
		if got.GetHelp() != mf.GetHelp() || got.GetType() != mf.GetType() {
			t.Errorf("%s: help %q, type %v; client_golang: %q, %v", name, got.GetHelp(), got.GetType(), mf.GetHelp(), mf.GetType())
		}
	}
	for _, name := range []string{"process_start_time_seconds", "process_max_fds", "process_virtual_memory_max_bytes"} {
		if got, want := sample(t, ours, name), sample(t, before, name); got != want {
			t.Errorf("%s = %v, client_golang: %v", name, got, want)
		}
	}
	// Counters: between the two readings of client_golang.
	for _, name := range []string{"process_cpu_seconds_total", "process_network_receive_bytes_total", "process_network_transmit_bytes_total"} {
		got, lo, hi := sample(t, ours, name), sample(t, before, name), sample(t, after, name)
		if got < lo || got > hi {
			t.Errorf("%s = %v, client_golang read %v before and %v after", name, got, lo, hi)
		}
	}
	// Gauges that move with the heap: close to client_golang's.
	for _, name := range []string{"process_virtual_memory_bytes", "process_resident_memory_bytes"} {
		got, want := sample(t, ours, name), sample(t, before, name)
		if math.Abs(got-want) > 0.25*want {
			t.Errorf("%s = %v, client_golang: %v", name, got, want)
		}
	}
	if got, want := sample(t, ours, "process_open_fds"), float64(len(entries)-1); got != want {
		t.Errorf("process_open_fds = %v, want %v", got, want)
	}
}

// TestProcessRereads checks that the files opened once give new figures at
// each scrape.
func TestProcessRereads(t *testing.T) {
	p := newTestProcess(t)
	first := gatherFamilies(t, p)

	// Burn 200 ms of CPU time.
	var ru0, ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru0); err != nil {
		t.Fatal(err)
	}
	cpu := func(r *unix.Rusage) time.Duration {
		return time.Duration(r.Utime.Nano() + r.Stime.Nano())
	}
	for x := 0; ; x++ {
		if x%1_000_000 == 0 {
			if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
				t.Fatal(err)
			}
			if cpu(&ru)-cpu(&ru0) > 200*time.Millisecond {
				break
			}
		}
	}
	// Send 1 MB through loopback: it counts as received and as sent.
	const size = 1 << 20
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, err = io.Copy(io.Discard, c)
			c.Close()
		}
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Write(make([]byte, size))
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	second := gatherFamilies(t, p)
	// Ten more descriptors, and nothing else that could open one.
	for range 10 {
		f, err := os.Open("/dev/null")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
	}
	third := gatherFamilies(t, p)

	if d := sample(t, second, "process_cpu_seconds_total") - sample(t, first, "process_cpu_seconds_total"); d < 0.15 {
		t.Errorf("CPU time grew by %v s after 200 ms of work", d)
	}
	for _, name := range []string{"process_network_receive_bytes_total", "process_network_transmit_bytes_total"} {
		if d := sample(t, second, name) - sample(t, first, name); d < size {
			t.Errorf("%s grew by %v after %d bytes through loopback", name, d, size)
		}
	}
	if d := sample(t, third, "process_open_fds") - sample(t, second, "process_open_fds"); d != 10 {
		t.Errorf("process_open_fds grew by %v after 10 files were opened", d)
	}
	if got, want := sample(t, third, "process_start_time_seconds"), sample(t, first, "process_start_time_seconds"); got != want {
		t.Errorf("start time moved from %v to %v", want, got)
	}
}

func TestProcessClosed(t *testing.T) {
	p, err := New("/proc")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	mfs := gatherFamilies(t, p)
	if len(mfs) != 1 || sample(t, mfs, "process_start_time_seconds") != p.start {
		t.Errorf("after Close: %d families, want the start time alone", len(mfs))
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestProcessLint(t *testing.T) {
	problems, err := testutil.CollectAndLint(newTestProcess(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

func TestProcessBadProcfs(t *testing.T) {
	if _, err := New(t.TempDir()); err == nil || !strings.Contains(err.Error(), "stat") {
		t.Errorf("NewProcess of an empty directory: %v, want an error naming the stat file", err)
	}
}

func TestParseStat(t *testing.T) {
	// Fields 3 to 24 of proc(5), with utime 11, stime 22, starttime 33,
	// vsize 44 and rss 55.
	const tail = ") S 1 2 3 4 5 6 7 8 9 10 11 22 0 0 20 0 3 0 33 44 55 18446744073709551615 1 1 0 0 0\n"
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"plain", "42 (exporter" + tail, true},
		{"spaces and parentheses in the name", "42 (a) (b c" + tail, true},
		{"no name", "42 exporter S 1", false},
		{"short", "42 (exporter) S 1 2 3", false},
		{"not a number", "42 (exporter" + strings.Replace(tail, " 11 ", " x ", 1), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := parseStat([]byte(tc.in))
			if !tc.ok {
				if err == nil {
					t.Errorf("no error, got %+v", s)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := (procStat{utime: 11, stime: 22, start: 33, vsize: 44, rss: 55}); s != want {
				t.Errorf("got %+v, want %+v", s, want)
			}
		})
	}
}

func TestParseIPOctets(t *testing.T) {
	const tcp = "TcpExt: SyncookiesSent EmbryonicRsts\nTcpExt: 0 0\n"
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"kernel order", tcp + "IpExt: InNoRoutes InOctets OutOctets InMcastOctets\nIpExt: 0 1234 5678 9\n", true},
		{"other order", "IpExt: OutOctets InOctets\nIpExt: 5678 1234\n" + tcp, true},
		{"no IpExt", tcp, false},
		{"names only", "IpExt: InOctets OutOctets\n", false},
		{"values missing", "IpExt: InOctets OutOctets\nIpExt: 1234\n", false},
		{"no OutOctets", "IpExt: InOctets InNoRoutes\nIpExt: 1234 0\n", false},
		{"not a number", "IpExt: InOctets OutOctets\nIpExt: 1234 -1\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, out, err := parseIPOctets([]byte(tc.in))
			if !tc.ok {
				if err == nil {
					t.Errorf("no error, got %d, %d", in, out)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if in != 1234 || out != 5678 {
				t.Errorf("got %d, %d, want 1234, 5678", in, out)
			}
		})
	}
}

func TestCountDirents(t *testing.T) {
	entry := func(name string, reclen int) []byte {
		b := make([]byte, reclen)
		binary.NativeEndian.PutUint16(b[16:], uint16(reclen))
		copy(b[19:], name)
		return b
	}
	good := bytes.Join([][]byte{entry(".", 24), entry("..", 24), entry("0", 24), entry("117", 24)}, nil)
	if n, err := countDirents(good); err != nil || n != 2 {
		t.Errorf("countDirents = %d, %v, want 2", n, err)
	}
	for name, b := range map[string][]byte{
		"short":           good[:10],
		"length too long": entry("0", 24)[:20],
		"length too short": func() []byte {
			b := entry("0", 24)
			binary.NativeEndian.PutUint16(b[16:], 8)
			return b
		}(),
	} {
		if _, err := countDirents(b); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// BenchmarkProcess collects the process metrics with Process and with
// client_golang's collector.
func BenchmarkProcess(b *testing.B) {
	p, err := New("/proc")
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	for name, c := range map[string]prometheus.Collector{
		"Process":       p,
		"client_golang": collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		b.Run(name, func(b *testing.B) {
			ch := make(chan prometheus.Metric, 16)
			done := make(chan struct{})
			go func() {
				for range ch {
				}
				close(done)
			}()
			b.ReportAllocs()
			for b.Loop() {
				c.Collect(ch)
			}
			close(ch)
			<-done
		})
	}
}
