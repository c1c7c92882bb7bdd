package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
)

// counters scrapes once and returns every counter sample by series.
func counters(url string) (map[string]float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape: %v %s", err, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if m.Counter == nil {
				continue
			}
			var l []string
			for _, lp := range m.GetLabel() {
				l = append(l, lp.GetName()+"="+lp.GetValue())
			}
			sort.Strings(l)
			out[name+"{"+strings.Join(l, ",")+"}"] = m.GetCounter().GetValue()
		}
		if name == "connection_exporter_scrape_collector_success" {
			for _, m := range mf.GetMetric() {
				if m.GetGauge().GetValue() != 1 {
					return nil, fmt.Errorf("collector failed")
				}
			}
		}
	}
	return out, nil
}

// TestConcurrentScrapes: two scrapers at once while connections open and
// close; every scrape succeeds and no counter ever goes backwards.
func TestConcurrentScrapes(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	exp := startExporter(t, cl.Node)
	dst := netip.AddrPortFrom(cl.VIP4, cl.Port)
	stop := make(chan struct{})
	var churn sync.WaitGroup
	churn.Add(1)
	go func() {
		defer churn.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if c, err := cl.Client.Dial("tcp4", dst.String()); err == nil {
				c.Close()
			}
			cl.Client.Dial("tcp4", netip.AddrPortFrom(cl.VIP4, cl.RefusedPort).String())
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := map[string]float64{}
			for range 25 {
				got, err := counters(exp.url)
				if err != nil {
					errs <- err
					return
				}
				for k, v := range got {
					if v < last[k] {
						errs <- fmt.Errorf("%s went from %v to %v", k, last[k], v)
					}
					last[k] = v
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	churn.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestShutdownDuringScrapes: SIGTERM while scrapes run makes the exporter
// exit 0 within seconds, with its programs detached.
func TestShutdownDuringScrapes(t *testing.T) {
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	dialAll(t, cl.Client, netip.AddrPortFrom(cl.VIP4, cl.Port), 50)
	e := startExporter(t, cl.Node)
	pid := e.cmd.Process.Pid
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if resp, err := http.Get(e.url); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	e.cmd.Process.Signal(syscall.SIGTERM)
	for {
		if err := syscall.Kill(pid, 0); err != nil {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("exporter still running 5s after SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	out, err := exec.Command("bpftool", "prog", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool prog show (scripts/deps installs bpftool): %v\n%s", err, out)
	}
	if strings.Contains(string(out), fmt.Sprintf("(%d)", pid)) {
		t.Errorf("programs of pid %d still loaded:\n%s", pid, out)
	}
}
