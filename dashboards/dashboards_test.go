package dashboards

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func load(t *testing.T) []Dashboard {
	t.Helper()
	ds, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) < 3 {
		t.Fatalf("%d dashboards, want service map, destinations and exporter health", len(ds))
	}
	return ds
}

var rateWindow = regexp.MustCompile(`\[([^\]]*)\]`)

func TestStructure(t *testing.T) {
	uids := map[string]string{}
	for _, d := range load(t) {
		t.Run(d.File, func(t *testing.T) {
			if d.UID == "" || d.Title == "" {
				t.Error("missing uid or title")
			}
			if other, ok := uids[d.UID]; ok {
				t.Errorf("uid %q also used by %s", d.UID, other)
			}
			uids[d.UID] = d.File
			if d.Inputs != nil {
				t.Error("__inputs present: file provisioning cannot resolve them")
			}
			var dsVars []string
			for _, v := range d.Templating.List {
				if v.Type == "datasource" {
					dsVars = append(dsVars, v.Name)
					if v.Query != "prometheus" {
						t.Errorf("datasource variable %q queries %v, want prometheus", v.Name, v.Query)
					}
				}
			}
			if !slices.Equal(dsVars, []string{"datasource"}) {
				t.Errorf("datasource variables %v, want exactly [datasource]", dsVars)
			}
			want := Datasource{Type: "prometheus", UID: "${datasource}"}
			ids := map[int]bool{}
			for _, p := range d.Panels {
				if ids[p.ID] {
					t.Errorf("panel id %d used twice", p.ID)
				}
				ids[p.ID] = true
				if p.Datasource != want {
					t.Errorf("panel %q datasource %+v, want %+v", p.Title, p.Datasource, want)
				}
				if p.Description == "" || p.FieldConfig.Defaults.Unit == "" {
					t.Errorf("panel %q lacks a description or unit", p.Title)
				}
				if len(p.Targets) == 0 {
					t.Errorf("panel %q has no query", p.Title)
				}
				for _, tg := range p.Targets {
					if tg.Datasource != want {
						t.Errorf("panel %q query %s datasource %+v", p.Title, tg.RefID, tg.Datasource)
					}
					for _, m := range rateWindow.FindAllStringSubmatch(maskStrings(tg.Expr), -1) {
						if m[1] != "$__rate_interval" {
							t.Errorf("panel %q query %s uses window [%s], want [$__rate_interval]", p.Title, tg.RefID, m[1])
						}
					}
					for _, s := range Selectors(tg.Expr) {
						if isCounterName(s.Metric) && !slices.Contains([]string{"rate", "increase", "irate"}, s.Enclosing) {
							t.Errorf("panel %q: counter %s used in %q, not in rate or increase", p.Title, s.Metric, s.Enclosing)
						}
					}
				}
				if p.Type == "nodeGraph" {
					var refs []string
					for _, tg := range p.Targets {
						refs = append(refs, tg.RefID)
						if !tg.Instant || tg.Format != "table" {
							t.Errorf("node graph query %s must be an instant table query", tg.RefID)
						}
					}
					slices.Sort(refs)
					if !slices.Equal(refs, []string{"edges", "nodes"}) {
						t.Errorf("node graph frames %v, want edges and nodes", refs)
					}
				}
			}
		})
	}
}

// isCounterName recognises counters by the naming convention; the
// end-to-end test checks the same against the exporter's real TYPE lines.
func isCounterName(m string) bool { return strings.HasSuffix(m, "_total") }

func TestSelectors(t *testing.T) {
	got := Selectors(`sum by (a) (rate(x_total{l=~"a(b{c"}[$__rate_interval])) / on (a) group_left sum(label_replace(g{j="1"}, "t", "$1", "s", "(.*)"))`)
	want := []Selector{{"x_total", "rate"}, {"g", "label_replace"}}
	if !slices.Equal(got, want) {
		t.Errorf("Selectors = %v, want %v", got, want)
	}
}

// TestFilesAreEmbedded guards against a dashboard added to the directory
// but not to the checks.
func TestFilesAreEmbedded(t *testing.T) {
	files, _ := filepath.Glob("*.json")
	ds := load(t)
	if len(files) != len(ds) {
		t.Errorf("%d JSON files, %d loaded", len(files), len(ds))
	}
}

// TestProvisioningExample checks the Prometheus configuration of the
// documented Compose example with promtool (installed by scripts/deps).
func TestProvisioningExample(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool is needed (apt-get install prometheus): %v", err)
	}
	out, err := exec.Command(promtool, "check", "config", "../deploy/compose/prometheus.yml").CombinedOutput()
	if err != nil {
		t.Errorf("promtool check config: %v\n%s", err, out)
	}
}
