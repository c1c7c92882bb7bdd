package docker

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWorkload(t *testing.T) {
	for _, tc := range []struct {
		c    Container
		want string
	}{
		{Container{Name: "web", Service: "shop_web", ComposeService: "web"}, "shop_web"},
		{Container{Name: "shop-web-1", ComposeService: "web"}, "web"},
		{Container{Name: "adhoc"}, "adhoc"},
	} {
		if got := tc.c.Workload(); got != tc.want {
			t.Errorf("%+v: workload %q, want %q", tc.c, got, tc.want)
		}
	}
}

func TestPublishedTarget(t *testing.T) {
	c, err := New(Config{Host: "unix:///nonexistent.sock"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	web := &Container{ID: "web", Name: "web", Addrs: []netip.Addr{netip.MustParseAddr("172.17.0.2")}, Published: []Published{
		{Host: ap("0.0.0.0:8080"), Port: 80},
		{Host: ap("[::]:8080"), Port: 80},
		{Host: ap("127.0.0.1:9090"), Port: 90},
	}}
	// On two networks: which one a binding forwards to is unknown.
	multi := &Container{ID: "multi", Name: "multi", Addrs: []netip.Addr{netip.MustParseAddr("172.18.0.2"), netip.MustParseAddr("172.19.0.2")},
		Published: []Published{{Host: ap("0.0.0.0:7070"), Port: 70}}}
	c.mu.Lock()
	c.addLocked(web)
	c.addLocked(multi)
	c.mu.Unlock()
	for _, tc := range []struct {
		dst  string
		want string // "" for none
	}{
		{"127.0.0.1:8080", "172.17.0.2:80"},
		{"127.0.0.2:8080", "172.17.0.2:80"},
		{"[::1]:8080", "172.17.0.2:80"},
		{"[::ffff:127.0.0.1]:8080", "172.17.0.2:80"},
		{"127.0.0.1:9090", "172.17.0.2:90"},
		{"127.0.0.2:9090", ""}, // bound to 127.0.0.1 only
		{"[::1]:9090", ""},
		{"127.0.0.1:7070", ""},
		{"127.0.0.1:6060", ""},
	} {
		got, ok := c.PublishedTarget(ap(tc.dst))
		if tc.want == "" && ok || tc.want != "" && (!ok || got != ap(tc.want)) {
			t.Errorf("PublishedTarget(%s) = %v, %v; want %q", tc.dst, got, ok, tc.want)
		}
	}
	c.mu.Lock()
	c.removeLocked("web")
	c.mu.Unlock()
	if got, ok := c.PublishedTarget(ap("127.0.0.1:8080")); ok {
		t.Errorf("after the container is gone: %v", got)
	}
}

// TestNoEngine: where no Docker socket exists (a containerd node), naming
// by Docker is off, said once, and no call is counted as failed; it comes
// on when the socket appears.
func TestNoEngine(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "docker.sock")
	var logs bytes.Buffer
	c, err := New(Config{Host: "unix://" + sock, ProcFS: t.TempDir()}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for c.Waitable() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if c.Waitable() {
		t.Error("an engine that does not exist is waited for")
	}
	up, _, errs := c.Health()
	for reason, n := range errs {
		if n != 0 {
			t.Errorf("errors{reason=%s} = %d for an engine that does not exist", reason, n)
		}
	}
	if up {
		t.Error("up with no engine")
	}
	if n := strings.Count(logs.String(), "naming by Docker is off"); n != 1 || strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("logged %q", logs.String())
	}
}
