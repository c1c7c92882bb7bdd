// Package compress serves scrapes gzip-compressed with writers kept from
// scrape to scrape. promhttp keeps its gzip writers in a sync.Pool, which
// every garbage collection empties, and compresses at gzip's default
// level: the first scrape, and any scrape after a collection, allocated and
// cleared a new compressor of about 1 MB (a quarter of the CPU time of a
// cold scrape at 1,000 connections on the development VM, most of it page
// faults), and every scrape spent more time compressing than at the
// fastest level, for a response of a few kB to a few hundred kB
// (go test -bench ScrapeCompression ./internal/compress).
package compress

import (
	"compress/gzip"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Writers keeps gzip writers between scrapes, whatever the garbage
// collector does. It is safe for concurrent use.
type Writers struct {
	free chan *gzip.Writer
}

// NewWriters returns a keeper of up to keep writers, one of them made and
// used already, so that the first scrape finds it ready.
func NewWriters(keep int) *Writers {
	p := &Writers{free: make(chan *gzip.Writer, keep)}
	z := p.get(io.Discard)
	// The compressor is allocated on the first write, not by NewWriter.
	z.Write([]byte("warm"))
	z.Close()
	p.put(z)
	return p
}

// get returns a writer compressing into w: a kept one if any is free.
func (p *Writers) get(w io.Writer) *gzip.Writer {
	select {
	case z := <-p.free:
		z.Reset(w)
		return z
	default:
		z, _ := gzip.NewWriterLevel(w, gzip.BestSpeed) // the level is valid
		return z
	}
}

// put keeps z for later scrapes, unless enough are kept.
func (p *Writers) put(z *gzip.Writer) {
	select {
	case p.free <- z:
	default:
	}
}

// Handler serves h's responses gzip-compressed, with writers kept in
// writers, to clients that accept gzip (Prometheus does), and as they are
// to others.
func Handler(h http.Handler, writers *Writers) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Vary", "Accept-Encoding")
		if !acceptsGzip(r.Header.Values("Accept-Encoding")) {
			h.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Encoding", "gzip")
		z := writers.get(w)
		h.ServeHTTP(&gzipResponse{ResponseWriter: w, z: z}, r)
		// Close writes the stream's end even when h wrote nothing: an
		// empty body is still a valid gzip stream. An error here is the
		// client's connection failing, which h's writes met first.
		z.Close()
		writers.put(z)
	})
}

// gzipResponse is a ResponseWriter whose body goes through a gzip writer.
type gzipResponse struct {
	http.ResponseWriter
	z           *gzip.Writer
	wroteHeader bool
}

// WriteHeader drops a Content-Length that h may have set for the
// uncompressed body.
func (g *gzipResponse) WriteHeader(code int) {
	if g.wroteHeader {
		return
	}
	g.wroteHeader = true
	g.Header().Del("Content-Length")
	g.ResponseWriter.WriteHeader(code)
}

// Write compresses p into the response, writing the header first if h did
// not: the compressed bytes reach the response underneath, which would
// otherwise send h's header as it is.
func (g *gzipResponse) Write(p []byte) (int, error) {
	g.WriteHeader(http.StatusOK)
	return g.z.Write(p)
}

// Unwrap gives http.ResponseController the response underneath.
func (g *gzipResponse) Unwrap() http.ResponseWriter { return g.ResponseWriter }

// acceptsGzip reports whether the Accept-Encoding header values allow a
// gzip-compressed response (RFC 9110, section 12.5.3): gzip or its alias
// x-gzip with a non-zero quality, or, when neither is named, "*" with a
// non-zero quality.
func acceptsGzip(values []string) bool {
	named, star := -1.0, -1.0 // quality when listed
	for _, v := range values {
		for item := range strings.SplitSeq(v, ",") {
			coding, q, ok := parseCoding(item)
			if !ok {
				continue
			}
			switch coding {
			case "gzip", "x-gzip":
				named = max(named, q)
			case "*":
				star = max(star, q)
			}
		}
	}
	if named >= 0 {
		return named > 0
	}
	return star > 0
}

// parseCoding splits one element of Accept-Encoding, such as "gzip;q=0.5",
// into the coding in lower case and its quality (1 when not given). ok is
// false for an empty element or a malformed quality.
func parseCoding(item string) (coding string, q float64, ok bool) {
	coding, params, _ := strings.Cut(item, ";")
	coding = strings.ToLower(strings.TrimSpace(coding))
	if coding == "" {
		return "", 0, false
	}
	q = 1
	for p := range strings.SplitSeq(params, ";") {
		name, value, found := strings.Cut(p, "=")
		if !found || !strings.EqualFold(strings.TrimSpace(name), "q") {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil || v < 0 || v > 1 {
			return "", 0, false
		}
		q = v
	}
	return coding, q, true
}
