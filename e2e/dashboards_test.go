package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/connection-exporter/connection_exporter/dashboards"
	"github.com/connection-exporter/connection_exporter/internal/lab"
	"github.com/connection-exporter/connection_exporter/internal/netlab"
)

// TestDashboards runs every query of every bundled dashboard, with its
// template variables substituted as Grafana would, against a real
// Prometheus scraping the exporter while several workloads connect to a
// service address. Every query must be valid and return data, every metric
// must exist in the exporter's output, and every counter must be inside
// rate or increase.
func TestDashboards(t *testing.T) {
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus is needed (apt-get install prometheus): %v", err)
	}
	lab := netlab.New(t)
	cl := lab.KubeProxy()
	exp := startExporter(t, cl.Node)
	vip := netip.AddrPortFrom(cl.VIP4, cl.Port)

	// Two more workloads, named by their command: bash under other names,
	// holding connections opened with /dev/tcp.
	dir := t.TempDir()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal(err)
	}
	hold := func(name string, dsts ...netip.AddrPort) {
		link := filepath.Join(dir, name)
		if err := os.Symlink(bash, link); err != nil {
			t.Fatal(err)
		}
		var script strings.Builder
		for i, d := range dsts {
			fmt.Fprintf(&script, "exec %d<>/dev/tcp/%s/%d; ", i+3, d.Addr(), d.Port())
		}
		script.WriteString("read -r _")
		cmd := exec.Command("ip", "netns", "exec", cl.Client.Name, link, "-c", script.String())
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	}
	direct := netip.AddrPortFrom(cl.Backends[2].Addr4, cl.BackendPort)
	hold("frontend", vip, vip, vip, vip, vip, vip)
	hold("worker", vip, vip, vip, direct)
	// A steady trickle of short connections and one refused, so that rates
	// and failures have data.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if c, err := cl.Client.Dial("tcp4", vip.String()); err == nil {
				c.Close()
			}
			cl.Client.Dial("tcp4", netip.AddrPortFrom(cl.VIP4, cl.RefusedPort).String())
		}
	}()

	// Another node's exporter, as Prometheus sees it: the pod address its
	// kubelet lists, which is where this node's worker connects directly.
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "# TYPE connection_endpoint_info gauge\n"+
			"connection_endpoint_info{ip=%q,namespace=\"shop\",pod=\"nginx-0\",workload=\"nginx\"} 1\n",
			cl.Backends[2].Addr4)
	}))
	t.Cleanup(other.Close)
	prom := startPrometheus(t, promBin,
		strings.TrimPrefix(strings.TrimSuffix(exp.url, "/metrics"), "http://"),
		strings.TrimPrefix(other.URL, "http://"))
	// Wait for enough scrapes for rates over the window below.
	prom.waitFor(t, `count(connection_active{workload="frontend"}) > 0`, 30*time.Second)
	time.Sleep(6 * time.Second)

	s := exp.scrape()
	types := map[string]string{}
	for name, mf := range s.mfs {
		types[name] = strings.ToLower(mf.GetType().String())
	}
	types["connection_endpoint_info"] = "gauge"

	ds, err := dashboards.Load()
	if err != nil {
		t.Fatal(err)
	}
	edges := map[string]bool{}
	for _, vars := range []map[string]string{
		{"job": ".*", "instance": ".*", "workload": ".*", "destination": ".*", "__rate_interval": "5s"},
		{"job": "connection_exporter", "instance": ".*", "workload": "frontend|worker", "destination": ".*", "__rate_interval": "5s"},
	} {
		for _, d := range ds {
			for _, v := range d.Templating.List {
				q, ok := v.Query.(map[string]any)
				if !ok || v.Type != "query" {
					continue
				}
				prom.labelValues(t, d.File, v.Name, dashboards.Expand(q["query"].(string), vars))
			}
			for _, p := range d.Panels {
				for _, tg := range p.Targets {
					expr := dashboards.Expand(tg.Expr, vars)
					if strings.Contains(expr, "$") && !regexp.MustCompile(`"\$1"`).MatchString(expr) {
						t.Errorf("%s %q: unsubstituted variable in %s", d.File, p.Title, expr)
					}
					if p.Type == "nodeGraph" {
						for _, row := range checkFrame(t, prom, tg.RefID, expr) {
							if tg.RefID == "edges" {
								edges[row["id"]] = true
							}
						}
					}
					n := prom.query(t, expr)
					if n == 0 {
						t.Errorf("%s %q query %s returned nothing (vars %v):\n%s", d.File, p.Title, tg.RefID, vars, expr)
					}
					for _, sel := range dashboards.Selectors(tg.Expr) {
						typ, ok := types[sel.Metric]
						if !ok {
							t.Errorf("%s %q: metric %s is not in the exporter's output", d.File, p.Title, sel.Metric)
						}
						if typ == "counter" && !slices.Contains([]string{"rate", "increase", "irate"}, sel.Enclosing) {
							t.Errorf("%s %q: counter %s outside rate or increase", d.File, p.Title, sel.Metric)
						}
					}
				}
			}
		}
	}
	// The pod on the other node is named by its workload, through that
	// node's connection_endpoint_info, and never drawn as a bare address.
	if !edges["worker -> nginx"] {
		t.Errorf("no edge worker -> nginx named by another node's endpoint info; edges: %v", slices.Sorted(maps.Keys(edges)))
	}
	for id := range edges {
		if strings.Contains(id, cl.Backends[2].Addr4.String()+":") {
			t.Errorf("edge %q draws a pod address that another node names", id)
		}
	}
}

type prometheus struct {
	base string
}

// startPrometheus starts a Prometheus scraping targets (host:port) every
// second, all in the job connection_exporter.
func startPrometheus(t *testing.T, bin string, targets ...string) *prometheus {
	t.Helper()
	dir := t.TempDir()
	quoted := make([]string, len(targets))
	for i, target := range targets {
		quoted[i] = strconv.Quote(target)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: connection_exporter
    static_configs:
      - targets: [%s]
`, strings.Join(quoted, ", "))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	logs := &lab.Output{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", logs)
		}
	})
	p := &prometheus{base: "http://" + addr}
	for range 200 {
		if resp, err := http.Get(p.base + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("prometheus did not become ready:\n%s", logs)
	return nil
}

type apiResponse struct {
	Status string          `json:"status"`
	Error  string          `json:"error"`
	Data   json.RawMessage `json:"data"`
}

func (p *prometheus) get(t *testing.T, path string, params url.Values) apiResponse {
	t.Helper()
	resp, err := http.Get(p.base + path + "?" + params.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r apiResponse
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	return r
}

// query runs an instant query and returns the number of results; an
// invalid query fails the test.
func (p *prometheus) query(t *testing.T, expr string) int {
	t.Helper()
	r := p.get(t, "/api/v1/query", url.Values{"query": {expr}})
	if r.Status != "success" {
		t.Errorf("query failed: %s\n%s", r.Error, expr)
		return -1
	}
	var data struct {
		Result []json.RawMessage `json:"result"`
	}
	json.Unmarshal(r.Data, &data)
	return len(data.Result)
}

func (p *prometheus) waitFor(t *testing.T, expr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p.query(t, expr) > 0 {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("no data for %s within %v", expr, timeout)
}

// labelValuesRE parses Grafana's label_values(selector, label).
var labelValuesRE = regexp.MustCompile(`^label_values\((.*),\s*([a-zA-Z_]+)\)$`)

// labelValues resolves a template variable's query as Grafana does, through
// the label values API, and requires at least one value.
func (p *prometheus) labelValues(t *testing.T, file, name, q string) {
	t.Helper()
	m := labelValuesRE.FindStringSubmatch(q)
	if m == nil {
		t.Errorf("%s: variable %s has an unsupported query %q", file, name, q)
		return
	}
	r := p.get(t, "/api/v1/label/"+m[2]+"/values", url.Values{"match[]": {m[1]}})
	var values []string
	json.Unmarshal(r.Data, &values)
	if r.Status != "success" || len(values) == 0 {
		t.Errorf("%s: variable %s (%s) has no values: %s", file, name, q, r.Error)
	}
}

// checkFrame checks that a node graph query yields the fields Grafana's
// Node Graph reads: id, source and target for edges; id and title for
// nodes. It returns the rows' labels.
func checkFrame(t *testing.T, p *prometheus, frame, expr string) []map[string]string {
	t.Helper()
	r := p.get(t, "/api/v1/query", url.Values{"query": {expr}})
	var data struct {
		Result []struct {
			Metric map[string]string `json:"metric"`
		} `json:"result"`
	}
	json.Unmarshal(r.Data, &data)
	want := map[string][]string{"edges": {"id", "source", "target"}, "nodes": {"id", "title"}}[frame]
	var rows []map[string]string
	for _, res := range data.Result {
		rows = append(rows, res.Metric)
		for _, f := range want {
			if res.Metric[f] == "" {
				t.Errorf("%s frame row %v lacks field %s", frame, res.Metric, f)
			}
		}
		if strings.HasPrefix(res.Metric["target"], "127.") || strings.HasPrefix(res.Metric["id"], "127.") {
			t.Errorf("%s frame draws a loopback sidecar leg: %v", frame, res.Metric)
		}
	}
	return rows
}
