package compress

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func TestAcceptsGzip(t *testing.T) {
	for _, tc := range []struct {
		header []string
		want   bool
	}{
		{nil, false},
		{[]string{""}, false},
		{[]string{"gzip"}, true},
		{[]string{"GZIP"}, true},
		{[]string{"x-gzip"}, true},
		{[]string{"gzip, deflate, br"}, true}, // what Prometheus and browsers send
		{[]string{"deflate, br"}, false},
		{[]string{"identity"}, false},
		{[]string{"*"}, true},
		{[]string{"*;q=0"}, false},
		{[]string{"gzip;q=0"}, false},
		{[]string{"gzip;q=0, *"}, false}, // named beats the wildcard
		{[]string{"gzip ; q=0.5"}, true},
		{[]string{"gzip;Q=0.001"}, true},
		{[]string{"gzip;q=0.000"}, false},
		{[]string{"gzip;q=2"}, false},   // malformed quality: ignored
		{[]string{"gzip;q=abc"}, false}, // likewise
		{[]string{"gzip;level=1"}, true},
		{[]string{"br", "gzip"}, true}, // several header lines
		{[]string{"gzip;q=0", "gzip"}, true},
		{[]string{" , ,gzip"}, true},
	} {
		if got := acceptsGzip(tc.header); got != tc.want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", tc.header, got, tc.want)
		}
	}
}

func FuzzAcceptsGzip(f *testing.F) {
	for _, s := range []string{"gzip", "gzip;q=0.5, *;q=0", "x-gzip;q=1.0", ";;,=q"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		// Any header is answered, and the answer does not depend on case.
		if acceptsGzip([]string{header}) != acceptsGzip([]string{strings.ToUpper(header)}) {
			t.Errorf("answer for %q depends on case", header)
		}
	})
}

// TestCompressed serves a body through compressed to clients that accept
// gzip and to others, and checks the headers and that the body arrives
// whole either way.
func TestCompressed(t *testing.T) {
	body := strings.Repeat("connection_destination_info{destination=\"10.43.0.1:80\"} 1\n", 500)
	h := Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", fmt.Sprint(len(body))) // of the uncompressed body
		io.WriteString(w, body)
	}), NewWriters(1))
	for _, tc := range []struct {
		accept string
		gzip   bool
	}{{"gzip", true}, {"", false}, {"gzip;q=0", false}} {
		req := httptest.NewRequest("GET", "/metrics", nil)
		if tc.accept != "" {
			req.Header.Set("Accept-Encoding", tc.accept)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		res := rec.Result()
		if got := res.Header.Get("Vary"); got != "Accept-Encoding" {
			t.Errorf("%q: Vary %q, want Accept-Encoding", tc.accept, got)
		}
		got := rec.Body.Bytes()
		if tc.gzip {
			if enc := res.Header.Get("Content-Encoding"); enc != "gzip" {
				t.Fatalf("%q: Content-Encoding %q, want gzip", tc.accept, enc)
			}
			if cl := res.Header.Get("Content-Length"); cl != "" {
				t.Errorf("%q: Content-Length %s of the uncompressed body kept", tc.accept, cl)
			}
			if len(got) >= len(body)/4 {
				t.Errorf("%q: %d bytes for %d, hardly compressed", tc.accept, len(got), len(body))
			}
			got = gunzip(t, got)
		} else if enc := res.Header.Get("Content-Encoding"); enc != "" {
			t.Errorf("%q: Content-Encoding %q, want none", tc.accept, enc)
		}
		if string(got) != body {
			t.Errorf("%q: body of %d bytes, want %d", tc.accept, len(got), len(body))
		}
	}
}

// TestCompressedError: an error that the handler writes with http.Error
// reaches a gzip client compressed, with its status.
func TestCompressedError(t *testing.T) {
	h := Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "too many parallel scrapes", http.StatusServiceUnavailable)
	}), NewWriters(1))
	req := httptest.NewRequest("GET", "/metrics", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Content-Encoding") != "gzip" {
		t.Fatalf("status %d, Content-Encoding %q; want 503 and gzip", rec.Code, rec.Header().Get("Content-Encoding"))
	}
	if got := string(gunzip(t, rec.Body.Bytes())); got != "too many parallel scrapes\n" {
		t.Errorf("body %q", got)
	}
}

// TestGzipWritersKept: the writers outlive garbage collections, which
// empty the sync.Pool that promhttp keeps its writers in, and at most keep
// of them are kept.
func TestGzipWritersKept(t *testing.T) {
	p := NewWriters(2)
	first := p.get(io.Discard)
	second := p.get(io.Discard) // none kept left: a new one
	third := p.get(io.Discard)
	if first == second || second == third {
		t.Fatal("a writer handed out twice")
	}
	p.put(first)
	p.put(second)
	p.put(third) // beyond keep: dropped
	runtime.GC()
	runtime.GC()
	got := map[*gzip.Writer]bool{p.get(io.Discard): true, p.get(io.Discard): true}
	if !got[first] || !got[second] {
		t.Errorf("the kept writers did not survive two collections")
	}
	if z := p.get(io.Discard); z == third {
		t.Errorf("a writer beyond the two to keep was kept")
	}
}

// BenchmarkScrapeCompression compresses a scrape's response of 600 series
// (about 60 kB) after a garbage collection, as a scrape that follows one
// does: with the writers the exporter keeps, and with promhttp's own
// compression, whose pool the collection emptied. go test -run X -bench
// ScrapeCompression -benchmem .
func BenchmarkScrapeCompression(b *testing.B) {
	reg := prometheus.NewRegistry()
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "connection_destination_info", Help: "h"},
		[]string{"destination", "actual_destination", "workload"})
	for i := range 600 {
		g.WithLabelValues(fmt.Sprintf("10.43.%d.%d:80", i/256, i%256), fmt.Sprintf("10.42.%d.%d:8080", i/256, i%256), "client").Set(1)
	}
	reg.MustRegister(g)
	for _, bc := range []struct {
		name string
		h    http.Handler
	}{
		{"kept", Handler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{DisableCompression: true}), NewWriters(2))},
		{"promhttp", promhttp.HandlerFor(reg, promhttp.HandlerOpts{})},
	} {
		b.Run(bc.name, func(b *testing.B) {
			req := httptest.NewRequest("GET", "/metrics", nil)
			req.Header.Set("Accept-Encoding", "gzip")
			b.ReportAllocs()
			size := 0
			for b.Loop() {
				b.StopTimer()
				runtime.GC()
				rec := httptest.NewRecorder()
				b.StartTimer()
				bc.h.ServeHTTP(rec, req)
				size = rec.Body.Len()
			}
			b.ReportMetric(float64(size), "bytes")
		})
	}
}

func gunzip(t *testing.T, b []byte) []byte {
	t.Helper()
	z, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(z)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
