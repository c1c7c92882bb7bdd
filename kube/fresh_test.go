package kube

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestClientIndexesNetNS: a process of a pod's cgroup ties its network
// namespace to the pod, so that a connection whose process has exited is
// still named; host-network pods and host processes are left out.
func TestClientIndexesNetNS(t *testing.T) {
	procfs := t.TempDir()
	proc := func(pid, cgroup, netns string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(procfs, pid, "ns"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(procfs, pid, "cgroup"), []byte(cgroup), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(netns, filepath.Join(procfs, pid, "ns", "net")); err != nil {
			t.Fatal(err)
		}
	}
	// nginx's sandbox, under containerd with the systemd driver.
	proc("100", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f2e3d4c_5b6a_4978_8695_a4b3c2d1e0f9.slice/cri-containerd-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.scope\n", "net:[4026532999]")
	// The host-network node agent shares the host's namespace.
	proc("200", "0::/kubepods/pod3b4c5d6e-7f80-4a9b-8c1d-2e3f4a5b6c7d/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\n", "net:[4026531840]")
	proc("300", "0::/system.slice/sshd.service\n", "net:[4026531840]")

	k := newFakeKubelet(t)
	c := newTestClient(t, k, token)
	c.cfg.ProcFS = procfs
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if p, ok := c.PodByNetNS(4026532999); !ok || p.Name != "nginx-7c79c4bf97-x2k9p" {
		t.Errorf("PodByNetNS(nginx's) = %+v, %v", p, ok)
	}
	if p, ok := c.PodByNetNS(4026531840); ok {
		t.Errorf("the host's namespace named by pod %s", p.Name)
	}
	// A list of the same pods keeps the namespaces found.
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.PodByNetNS(4026532999); !ok {
		t.Error("namespace lost by a second list of the same pods")
	}
}

// TestClientPlainHTTP: an http URL needs no CA and sends no token, even
// when token and CA files are configured (they may not exist at all).
func TestClientPlainHTTP(t *testing.T) {
	pods, err := os.ReadFile("testdata/pods.json")
	if err != nil {
		t.Fatal(err)
	}
	var auth atomic.Value
	auth.Store("")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth.Store(r.Header.Get("Authorization"))
		w.Write(pods)
	}))
	t.Cleanup(srv.Close)
	c, err := NewClient(Config{URL: srv.URL, TokenFile: writeFile(t, "token", token), CAFile: "/nonexistent/ca.crt"},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("http URL with an absent CA file: %v", err)
	}
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a := auth.Load().(string); a != "" {
		t.Errorf("token sent over plain http: %q", a)
	}
	if _, ok := c.PodByIP(netip.MustParseAddr("10.42.1.8")); !ok {
		t.Error("pods of a plain http kubelet not known")
	}
}

// TestClientRequest: a request fetches the list at once rather than at the
// next refresh, no sooner than MinInterval after the previous fetch, and
// Settle returns once it has; Fresh tells lists fetched after a moment
// from older ones.
func TestClientRequest(t *testing.T) {
	var fetches atomic.Int32
	k := newFakeKubelet(t)
	inner := k.srv.Config.Handler
	k.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		inner.ServeHTTP(w, r)
	})
	c := newTestClient(t, k, token)
	c.cfg.Refresh, c.cfg.MinInterval = time.Hour, 50*time.Millisecond
	if !c.Waitable() {
		t.Error("not waitable before its first fetch")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	c.Request()
	c.Settle(ctx)
	before := time.Now()
	if !c.Waitable() || c.Fresh(before) {
		t.Errorf("after the first fetch: waitable %v, fresh for a later moment %v", c.Waitable(), c.Fresh(before))
	}
	n := fetches.Load()
	c.Request()
	settled := make(chan struct{})
	go func() { c.Settle(ctx); close(settled) }()
	select {
	case <-settled:
	case <-time.After(10 * time.Second):
		t.Fatal("a request was not served")
	}
	if !c.Fresh(before) {
		t.Error("not fresh after a requested fetch")
	}
	if got := fetches.Load() - n; got != 1 {
		t.Errorf("%d fetches for one request, want 1", got)
	}
	c.Settle(ctx) // nothing pending: returns at once
}

// TestClientNeverReachedNotWaitable: a kubelet that failed its first fetch
// is not worth waiting for.
func TestClientNeverReachedNotWaitable(t *testing.T) {
	k := newFakeKubelet(t)
	c := newTestClient(t, k, "wrong")
	c.Refresh(context.Background())
	if c.Waitable() {
		t.Error("waitable after a failed first fetch")
	}
}
