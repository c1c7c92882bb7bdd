package docker

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/moby/api/types/events"
)

// The engine's answers in testdata/engine were recorded from Docker 20.10
// (API 1.41): a container "web" of Compose service "web" on a user-defined
// bridge, publishing 8080 on 127.0.0.1:18080, the events of its creation,
// and the answer for a container that does not exist.
const webID = "38d6d35597ed6ad005762f29b51649bf99c8da1ac1712a8e375127a4571831ef"

// fakeEngine serves the recorded answers over a unix socket, as dockerd
// does, and counts the inspects it answers.
type fakeEngine struct {
	path     string
	inspects atomic.Int32
}

func newFakeEngine(t *testing.T) *fakeEngine {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", "engine", name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	e := &fakeEngine{path: filepath.Join(t.TempDir(), "docker.sock")}
	web, list, networks, notFound := read("container-web.json"), read("containers.json"), read("networks.json"), read("notfound.json")
	mux := http.NewServeMux()
	mux.HandleFunc("/_ping", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Api-Version", "1.41")
		io.WriteString(w, "OK")
	})
	mux.HandleFunc("/v1.41/containers/json", func(w http.ResponseWriter, r *http.Request) { w.Write(list) })
	mux.HandleFunc("/v1.41/containers/{id}/json", func(w http.ResponseWriter, r *http.Request) {
		e.inspects.Add(1)
		if r.PathValue("id") != webID {
			w.WriteHeader(http.StatusNotFound)
			w.Write(notFound)
			return
		}
		w.Write(web)
	})
	mux.HandleFunc("/v1.41/networks", func(w http.ResponseWriter, r *http.Request) { w.Write(networks) })
	mux.HandleFunc("/v1.41/networks/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"message":"network not found"}`)
	})
	ln, err := net.Listen("unix", e.path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return e
}

// recordedEvents returns the recorded events of web's creation.
func recordedEvents(t *testing.T) []events.Message {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "engine", "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []events.Message
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m events.Message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func newEngineClient(t *testing.T, e *fakeEngine) *Client {
	t.Helper()
	// A procfs of no process: the recorded pid is nobody's here.
	c, err := New(Config{Host: "unix://" + e.path, ProcFS: t.TempDir(), Timeout: 5 * time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	c.setUp(true)
	return c
}

// TestHandleEvents: the recorded events of a container's creation put it in
// the cache with its name, workload, address and published port; its
// death takes it out.
func TestHandleEvents(t *testing.T) {
	e := newFakeEngine(t)
	c := newEngineClient(t, e)
	ctx := context.Background()
	evs := recordedEvents(t)
	for _, m := range evs {
		c.handle(ctx, m)
	}
	ct, ok := c.ByID(webID)
	if !ok || ct.Name != "web" || ct.Workload() != "web" || ct.ComposeProject != "shop" {
		t.Fatalf("after the events: %+v, %v", ct, ok)
	}
	if w, kind := c.Workload(netip.MustParseAddr("172.30.0.2")); w != "web" || kind != AddrContainer {
		t.Errorf("Workload(web's address) = %q, %v", w, kind)
	}
	if w, kind := c.Workload(netip.MustParseAddr("172.30.0.9")); w != "" || kind != AddrLocalSubnet {
		t.Errorf("Workload(a free address of shopnet) = %q, %v; want a local subnet", w, kind)
	}
	if got, ok := c.PublishedTarget(netip.MustParseAddrPort("127.0.0.1:18080")); !ok || got != netip.MustParseAddrPort("172.30.0.2:8080") {
		t.Errorf("PublishedTarget = %v, %v", got, ok)
	}
	if !c.IsBridgeGateway(netip.MustParseAddr("172.30.0.1")) {
		t.Error("shopnet's gateway not known")
	}
	die := evs[len(evs)-1]
	if die.Action != events.ActionStart {
		t.Fatalf("last recorded event is %s, want start", die.Action)
	}
	die.Action = events.ActionDie
	c.handle(ctx, die)
	if _, ok := c.ByID(webID); ok {
		t.Error("a dead container is still in the cache")
	}
	if _, ok := c.PublishedTarget(netip.MustParseAddrPort("127.0.0.1:18080")); ok {
		t.Error("a dead container's port is still published")
	}
}

// TestServeWants: requested refreshes list and inspect what the cache
// lacks, remember ids the engine does not know, and say how fresh the
// cache is.
func TestServeWants(t *testing.T) {
	e := newFakeEngine(t)
	c := newEngineClient(t, e)
	ctx := context.Background()
	before := time.Now()
	if c.ContainersFresh(before) {
		t.Fatal("fresh before any listing")
	}
	other := strings.Repeat("ab", 32)
	c.RequestContainers()
	c.RequestID(other)
	c.RequestID(webID) // listed too: inspected once
	start := time.Now()
	c.serveWants(ctx, start)
	if _, ok := c.ByID(webID); !ok {
		t.Error("the listing did not bring web in")
	}
	if !c.Absent(other) || c.Absent(webID) {
		t.Errorf("absent: other %v, web %v; want true, false", c.Absent(other), c.Absent(webID))
	}
	if !c.ContainersFresh(before) || c.ContainersFresh(start) {
		t.Errorf("freshness: for before %v, for the listing's start %v; want true, false", c.ContainersFresh(before), c.ContainersFresh(start))
	}
	if n := e.inspects.Load(); n != 2 {
		t.Errorf("%d inspects, want 2 (web once, the other id once)", n)
	}
	settled := make(chan struct{})
	go func() { c.Settle(ctx); close(settled) }()
	select {
	case <-settled:
	case <-time.After(10 * time.Second):
		t.Fatal("Settle still waits after the refreshes were made")
	}
	// While the engine is away, nothing is asked and nobody waits.
	c.setUp(false)
	c.RequestContainers()
	c.Settle(ctx)
}
