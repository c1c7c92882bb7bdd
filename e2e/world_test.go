package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/connection-exporter/connection_exporter/internal/netlab"
)

// The exporter runs first and the world changes around it: the tests of
// this file start the exporter, then deploy what it must name and resolve,
// and are scraped meanwhile as Prometheus would, every second and, in a
// second run, every 15 seconds (the kubelet's and Prometheus' default
// intervals meet there).
var scrapeIntervals = []time.Duration{time.Second, 15 * time.Second}

// fetchClient gives up on an exporter that does not answer, so that a
// hung exporter fails the test that scrapes it rather than hanging it.
var fetchClient = &http.Client{Timeout: 30 * time.Second}

// fetch scrapes the exporter once, reporting failures instead of failing
// the test, for scrapes from goroutines of their own.
func (e *exporter) fetch() (scraped, error) {
	resp, err := fetchClient.Get(e.url)
	if err != nil {
		return scraped{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return scraped{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return scraped{}, fmt.Errorf("scrape: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return scraped{}, fmt.Errorf("parse exposition: %w", err)
	}
	return scraped{t: e.t, mfs: mfs, text: string(body)}, nil
}

// timedScrape is one scrape of a scrapeLog and when it started.
type timedScrape struct {
	start time.Time
	scraped
}

// scrapeLog scrapes an exporter at a fixed interval in the background and
// keeps every scrape, for checks on all of them ("never named by its
// process") and on the first after a moment.
type scrapeLog struct {
	t       *testing.T
	every   time.Duration
	mu      sync.Mutex
	scrapes []timedScrape
	err     error
}

// scrapeEvery starts scraping exp every interval until the test ends.
func scrapeEvery(t *testing.T, exp *exporter, every time.Duration) *scrapeLog {
	t.Helper()
	l := &scrapeLog{t: t, every: every}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			start := time.Now()
			s, err := exp.fetch()
			l.mu.Lock()
			if err != nil {
				if l.err == nil {
					l.err = err
				}
			} else {
				l.scrapes = append(l.scrapes, timedScrape{start, s})
			}
			l.mu.Unlock()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		if l.err != nil {
			t.Errorf("a scrape failed: %v", l.err)
		}
	})
	return l
}

// all returns the scrapes so far.
func (l *scrapeLog) all() []timedScrape {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]timedScrape(nil), l.scrapes...)
}

// after waits for the n-th scrape (from 1) that starts after moment and
// returns it; it fails the test after a few intervals.
func (l *scrapeLog) after(moment time.Time, n int) timedScrape {
	l.t.Helper()
	deadline := time.Now().Add(time.Duration(n+2)*l.every + 30*time.Second)
	for time.Now().Before(deadline) {
		seen := 0
		for _, s := range l.all() {
			if s.start.After(moment) {
				if seen++; seen == n {
					return s
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	l.t.Fatalf("no scrape %d after %v", n, moment.Format(time.TimeOnly))
	return timedScrape{}
}

// until waits, for a few intervals, for the first scrape after moment for
// which cond holds, and returns it with its rank after moment (from 1).
func (l *scrapeLog) until(moment time.Time, what string, cond func(scraped) bool) (timedScrape, int) {
	l.t.Helper()
	for n := 1; ; n++ {
		s := l.after(moment, n)
		if cond(s.scraped) {
			return s, n
		}
		if n >= 4 && time.Since(moment) > 3*l.every+30*time.Second {
			l.t.Fatalf("%s: not in %d scrapes after %v; last:\n%s", what, n, moment.Format(time.TimeOnly), grep(s.text, "connection_active"))
		}
	}
}

// never fails the test for every scrape so far that has a sample of name
// matching match.
func (l *scrapeLog) never(name string, match map[string]string, why string) {
	l.t.Helper()
	for _, s := range l.all() {
		if got := s.samples(name, match); len(got) > 0 {
			l.t.Errorf("%s: the scrape of %v has %v", why, s.start.Format(time.TimeOnly), got)
			return
		}
	}
}

// nonzero drops the zero values of m: label sets of connections closed.
func nonzero(m map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

// lateServicesProxy serves the Docker API of a daemon on a socket of its
// own. While held, its answers to verbose network inspects lack the
// network's services, as the engine's do before it has recorded a new
// service's load balancer: the exporter then cannot learn the service's
// VIP from them.
type lateServicesProxy struct {
	path string
	held atomic.Bool
}

func newLateServicesProxy(t *testing.T, daemon string) *lateServicesProxy {
	t.Helper()
	p := &lateServicesProxy{path: filepath.Join(t.TempDir(), "proxy.sock")}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme, r.Out.URL.Host = "http", "docker"
		},
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", strings.TrimPrefix(daemon, "unix://"))
		}},
		FlushInterval: -1, // the events stream
		ModifyResponse: func(resp *http.Response) error {
			r := resp.Request
			if !p.held.Load() || !strings.Contains(r.URL.Path, "/networks/") || r.URL.Query().Get("verbose") != "true" {
				return nil
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return err
			}
			var n map[string]any
			if err := json.Unmarshal(body, &n); err == nil {
				delete(n, "Services")
				body, _ = json.Marshal(n)
			}
			resp.Body = io.NopCloser(bytes.NewReader(body))
			resp.ContentLength = int64(len(body))
			resp.Header.Set("Content-Length", fmt.Sprint(len(body)))
			return nil
		},
	}
	ln, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: rp}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return p
}

// TestSwarmAfterExporter: a Swarm, its overlay network and services are
// created while the exporter runs; a client service dials a VIP, then its
// tasks are replaced (same VIP, new tasks), then a second service is
// created and dialled. Every client connection resolves, from the first
// or second scrape after it opened, to the task that accepted it. The
// engine's record of the first service's VIP comes late: the resolution
// does not wait for it.
func TestSwarmAfterExporter(t *testing.T) {
	for _, every := range scrapeIntervals {
		t.Run(every.String(), func(t *testing.T) {
			d := dockerLab(t)
			proxy := newLateServicesProxy(t, d.Host)
			proxy.held.Store(true)
			exp := startExporter(t, nil, "--docker.host=unix://"+proxy.path, "--path.docker-netns="+d.ExecRoot+"/netns")
			log := scrapeEvery(t, exp, every)

			s := newSwarmDemo(t, d)
			vip := netip.AddrPortFrom(s.vip, 8080).String()
			clientNamed := map[string]string{"workload": "demo_client", "destination": vip,
				"resolver": "swarm_lb", "destination_workload": "demo_nginx"}
			// check waits for n connections accepted by the tasks of
			// service, then checks that the first or second scrape after
			// has them all, by the task that accepted each.
			check := func(what, service string, n int, match map[string]string) {
				t.Helper()
				var want map[string]float64
				waitFor(t, fmt.Sprintf("%d connections accepted by %s", n, service), 90*time.Second, func() bool {
					want = s.acceptedBy(service, false)
					total := 0.0
					for _, v := range want {
						total += v
					}
					return total >= float64(n)
				})
				accepted := time.Now()
				sc, rank := log.until(accepted, what, func(sc scraped) bool {
					return equal(nonzero(sc.byActual("connection_active", match)), want)
				})
				t.Logf("%s: exported at scrape %d after they were accepted: %v", what, rank, want)
				if rank > 2 {
					t.Errorf("%s exported at scrape %d after they were accepted, want the first or second", what, rank)
				}
				promtoolCheck(t, sc.text)
			}

			d.Docker("service", "create", "-d", "--name", "demo_client", "--network", "demo_net", "--no-resolve-image",
				"peer", "connect", "demo_nginx:8080", "12")
			check("the client's connections", "demo_nginx", 12, clientNamed)
			proxy.held.Store(false)

			// New tasks behind the same VIP, and a new client task.
			d.Docker("service", "update", "-d", "--force", "demo_nginx")
			waitFor(t, "demo_nginx's tasks replaced", 90*time.Second, func() bool {
				ids := s.runningTasks("demo_nginx")
				if len(ids) != 3 {
					return false
				}
				for _, id := range ids {
					if _, old := s.tasks[id]; old {
						return false
					}
				}
				return true
			})
			s.balance(t, "demo_nginx", 3)
			clientContainer := func() string {
				out, _ := d.TryDocker("ps", "--filter", "label=com.docker.swarm.service.name=demo_client", "--format", "{{.Names}}")
				return out
			}
			oldClient := clientContainer()
			d.Docker("service", "update", "-d", "--force", "demo_client")
			var newName string
			waitFor(t, "a new client task", 60*time.Second, func() bool {
				newName = clientContainer()
				return newName != "" && newName != oldClient && !strings.Contains(newName, "\n")
			})
			// The old client's connections linger, half closed, towards
			// tasks that are gone: the new client's are told by their
			// container.
			newClient := map[string]string{"container": newName}
			for k, v := range clientNamed {
				newClient[k] = v
			}
			check("the new client's connections to the new tasks", "demo_nginx", 12, newClient)

			// A second service, created and dialled while the exporter runs.
			s.serve(t, "demo_api", 2)
			api := netip.AddrPortFrom(s.services["demo_api"].vip, 8080).String()
			d.Docker("service", "create", "-d", "--name", "demo_apiclient", "--network", "demo_net", "--no-resolve-image",
				"peer", "connect", "demo_api:8080", "6")
			check("the second service's connections", "demo_api", 6,
				map[string]string{"workload": "demo_apiclient", "destination": api, "resolver": "swarm_lb", "destination_workload": "demo_api"})

			for _, dst := range []string{vip, api} {
				log.never("connection_active", map[string]string{"destination": dst, "resolver": "none"},
					"a connection to a VIP exported unresolved")
				log.never("connection_active", map[string]string{"destination": dst, "destination_workload": ""},
					"a connection to a VIP exported without its service")
			}
		})
	}
}

// TestDockerPublishedAfterExporter: a container publishing a port starts
// after the exporter; a host process in a network namespace of its own
// (no container) dials the port. Its connections are exported at the
// first or second scrape after it dialled, named by the process and
// resolved in the host's conntrack to the container.
func TestDockerPublishedAfterExporter(t *testing.T) {
	for i, every := range scrapeIntervals {
		t.Run(every.String(), func(t *testing.T) {
			d := dockerLab(t)
			exp := startExporter(t, nil, "--docker.host="+d.Host, "--path.docker-netns="+d.ExecRoot+"/netns")
			log := scrapeEvery(t, exp, every)

			lab := netlab.New(t)
			ns := lab.NetNS("plain")
			host := fmt.Sprintf("10.254.%d.1", 77+i)
			lab.HostLink(ns, host+"/30", fmt.Sprintf("10.254.%d.2/30", 77+i))
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port := ln.Addr().(*net.TCPAddr).Port
			ln.Close()
			d.Docker("run", "-d", "--name", "pub", "-p", fmt.Sprintf("%d:8080", port), "peer", "serve", ":8080")
			pub := containerIP(d, "pub") + ":8080"
			dst := netip.MustParseAddrPort(fmt.Sprintf("%s:%d", host, port))

			dialed := time.Now()
			dialAll(t, ns, dst, 5)
			waitFor(t, "pub to accept 5 connections", 20*time.Second, func() bool { return acceptedBy(d, "pub") >= 5 })
			match := map[string]string{"process": process(t), "workload": process(t), "container": "", "destination": dst.String()}
			s, n := log.until(dialed, "the plain process's connections", func(sc scraped) bool {
				return len(sc.samples("connection_active", match)) > 0
			})
			if n > 2 {
				t.Errorf("exported at scrape %d after the dial, want the first or second", n)
			}
			got := s.samples("connection_active", match)
			if len(got) != 1 || got[0].value != 5 {
				t.Fatalf("connections to %v: %v\n%s", dst, got, grep(s.text, "connection_active"))
			}
			checkLabels(t, got[0], map[string]string{"actual_destination": pub, "resolver": "conntrack", "destination_workload": "pub"})
		})
	}
}

// TestKubeletPodListedLate: a pod's container starts and connects before
// the kubelet lists the pod (a list fetched after the exporter's last
// one, which refreshes every 15 s by default). Its connections are named
// by the pod at the first scrape after the kubelet lists it, and in no
// scrape by the process.
func TestKubeletPodListedLate(t *testing.T) {
	for _, every := range scrapeIntervals {
		t.Run(every.String(), func(t *testing.T) {
			k := newKubeCluster(t)
			var listed atomic.Bool
			pods := k.pods
			url, ca, token := fakeKubeletOf(t, func() []kubePod {
				if listed.Load() {
					return pods
				}
				return pods[1:] // the backends only
			})
			exp := startExporter(t, k.Node, "--kubelet.url="+url, "--kubelet.ca-file="+ca, "--kubelet.token-file="+token)
			waitFor(t, "the first pod list", 15*time.Second, func() bool {
				p := exp.scrapeQuiet().samples("connection_exporter_kubelet_pods", nil)
				return len(p) == 1 && p[0].value >= 3
			})
			log := scrapeEvery(t, exp, every)

			dst := netip.AddrPortFrom(k.VIP4, k.Port)
			k.app(t, 6, dst)
			want := awaitAccepted(t, k, 6)
			time.Sleep(2 * time.Second) // scrapes go by while the pod is not listed
			listedAt := time.Now()
			listed.Store(true)

			match := map[string]string{"namespace": "shop", "pod": k.client.name, "container": "app", "workload": "client",
				"process": "app", "destination": dst.String(), "resolver": "conntrack", "destination_workload": "nginx"}
			s := log.after(listedAt, 1)
			if got := s.byActual("connection_active", match); !equal(got, want) {
				t.Errorf("first scrape after the pod was listed: %v, backends saw %v\n%s", got, want, grep(s.text, "connection_active"))
			}
			log.never("connection_active", map[string]string{"process": "app", "pod": ""}, "the pod's connections named by their process")
		})
	}
}

// TestKubeletPlainHTTP: a kubelet URL over plain http (the read-only port,
// a local proxy) needs no other kubelet flag, even where the service
// account's files do not exist, and names pods.
func TestKubeletPlainHTTP(t *testing.T) {
	k := newKubeCluster(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/pods" {
			http.NotFound(w, r)
			return
		}
		body, err := podListJSON(k.pods)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	exp := startExporter(t, k.Node, "--kubelet.url="+srv.URL)
	dst := netip.AddrPortFrom(k.VIP4, k.Port)
	k.app(t, 3, dst)
	want := awaitAccepted(t, k, 3)
	match := map[string]string{"namespace": "shop", "pod": k.client.name, "container": "app", "workload": "client",
		"destination": dst.String(), "resolver": "conntrack", "destination_workload": "nginx"}
	var got map[string]float64
	waitFor(t, "the connections named by pod", 20*time.Second, func() bool {
		got = exp.scrapeQuiet().byActual("connection_active", match)
		return equal(got, want)
	})
}
