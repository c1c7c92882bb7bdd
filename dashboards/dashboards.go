// Package dashboards holds the bundled Grafana dashboards and reads them:
// their panels, template variables and PromQL queries, so that tests can
// check their structure and run every query against a real Prometheus.
package dashboards

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"regexp"
	"strings"
)

//go:embed *.json
var files embed.FS

// Dashboard is what the checks need of one dashboard file.
type Dashboard struct {
	File       string
	UID        string                    `json:"uid"`
	Title      string                    `json:"title"`
	Inputs     []any                     `json:"__inputs"`
	Panels     []Panel                   `json:"panels"`
	Templating struct{ List []Variable } `json:"templating"`
}

// Panel is one panel of a dashboard.
type Panel struct {
	ID          int        `json:"id"`
	Type        string     `json:"type"`
	Title       string     `json:"title"`
	Description string     `json:"description"`
	Datasource  Datasource `json:"datasource"`
	Targets     []Target   `json:"targets"`
	FieldConfig struct {
		Defaults struct {
			Unit string `json:"unit"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
}

// Target is one query of a panel.
type Target struct {
	RefID      string     `json:"refId"`
	Expr       string     `json:"expr"`
	Instant    bool       `json:"instant"`
	Format     string     `json:"format"`
	Datasource Datasource `json:"datasource"`
}

// Datasource is a panel's or target's data source reference.
type Datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// Variable is a template variable.
type Variable struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Query any    `json:"query"`
}

// Load parses every bundled dashboard.
func Load() ([]Dashboard, error) {
	names, err := fs.Glob(files, "*.json")
	if err != nil {
		return nil, err
	}
	var out []Dashboard
	for _, name := range names {
		b, err := files.ReadFile(name)
		if err != nil {
			return nil, err
		}
		var d Dashboard
		dec := json.NewDecoder(strings.NewReader(string(b)))
		if err := dec.Decode(&d); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		d.File = name
		out = append(out, d)
	}
	return out, nil
}

// selectorRE finds metric selectors: every query names its metrics with a
// label matcher, so a name is an identifier directly followed by "{".
var selectorRE = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\{`)

// Selector is a metric selector in a query, with the function that directly
// encloses it ("" at the top level or inside an aggregation's parentheses
// without a function).
type Selector struct {
	Metric    string
	Enclosing string
}

// Selectors returns the metric selectors of a PromQL expression. Label
// values in quotes are skipped.
func Selectors(expr string) []Selector {
	var out []Selector
	masked := maskStrings(expr)
	for _, m := range selectorRE.FindAllStringSubmatchIndex(masked, -1) {
		name := masked[m[2]:m[3]]
		out = append(out, Selector{Metric: name, Enclosing: enclosing(masked, m[2])})
	}
	return out
}

// maskStrings replaces the contents of quoted strings with spaces, keeping
// offsets, so that regular expressions in label matchers are not read as
// PromQL.
func maskStrings(s string) string {
	b := []byte(s)
	in := byte(0)
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case in != 0 && c == '\\':
			b[i] = ' '
			if i+1 < len(b) {
				i++
				b[i] = ' '
			}
		case in != 0 && c == in:
			in = 0
		case in != 0:
			b[i] = ' '
		case c == '"' || c == '\'':
			in = c
		}
	}
	return string(b)
}

// enclosing returns the name of the function whose parenthesis most
// directly encloses position pos.
func enclosing(s string, pos int) string {
	depth := 0
	for i := pos - 1; i >= 0; i-- {
		switch s[i] {
		case ')', ']':
			depth++
		case '[':
			depth--
		case '(':
			if depth > 0 {
				depth--
				continue
			}
			j := i
			for j > 0 && (isIdent(s[j-1])) {
				j--
			}
			return s[j:i]
		}
	}
	return ""
}

func isIdent(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// Expand substitutes template variables in a query with the given values
// (without the "$"), as Grafana would before sending it.
func Expand(expr string, vars map[string]string) string {
	for k, v := range vars {
		expr = strings.ReplaceAll(expr, "${"+k+"}", v)
		expr = strings.ReplaceAll(expr, "$"+k, v)
	}
	return expr
}
