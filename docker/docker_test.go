package docker

import (
	"log/slog"
	"net/netip"
	"testing"
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
