package resolve

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/connection-exporter/connection_exporter/record"
)

func TestDockerProxy(t *testing.T) {
	const host, pod = 4026531840, 4026532000
	ap := netip.MustParseAddrPort
	target := func(dst netip.AddrPort) (netip.AddrPort, bool) {
		if dst.Port() == 8080 {
			return ap("172.17.0.2:80"), true
		}
		return netip.AddrPort{}, false
	}
	gateway := func(a netip.Addr) bool { return a == netip.MustParseAddr("172.17.0.1") }
	step := DockerProxy(DockerProxyConfig{HostNetNS: host, Target: target, Gateway: gateway})
	qs := []record.Query{
		{NetNS: host, Src: ap("127.0.0.1:40000"), Dst: ap("127.0.0.1:8080")},  // to the proxy
		{NetNS: host, Src: ap("[::1]:40001"), Dst: ap("[::1]:8080")},          // to the proxy over IPv6
		{NetNS: host, Src: ap("127.0.0.1:40002"), Dst: ap("127.0.0.1:9090")},  // not published
		{NetNS: pod, Src: ap("127.0.0.1:40003"), Dst: ap("127.0.0.1:8080")},   // another namespace's loopback
		{NetNS: host, Src: ap("10.0.0.5:40004"), Dst: ap("10.0.0.5:8080")},    // DNATed, had it not been translated
		{NetNS: host, Src: ap("127.0.0.1:40005"), Dst: ap("127.0.0.1:8080")},  // an earlier step failed
		{NetNS: pod, Src: ap("172.17.0.3:40006"), Dst: ap("172.17.0.1:8080")}, // a container to its bridge's gateway
		{NetNS: pod, Src: ap("172.17.0.3:40007"), Dst: ap("172.17.0.9:8080")}, // a container to another
	}
	out := make([]record.Destination, len(qs))
	for i, q := range qs {
		out[i] = record.Destination{Actual: q.Dst, Resolver: ResolverNone}
	}
	failed := errors.New("netns gone")
	out[5].Err, out[5].ErrResolver = failed, ResolverConntrack
	rest := step.Resolve(context.Background(), qs, []int{0, 1, 2, 3, 4, 5, 6, 7}, out)

	if want := []int{2, 3, 4, 7}; !slices.Equal(rest, want) {
		t.Errorf("left %v, want %v", rest, want)
	}
	for _, i := range []int{0, 1, 5, 6} {
		if out[i].Actual != ap("172.17.0.2:80") || out[i].Resolver != ResolverDockerProxy {
			t.Errorf("query %d: %+v, want 172.17.0.2:80 by %s", i, out[i], ResolverDockerProxy)
		}
	}
	if out[5].Err != failed || out[5].ErrResolver != ResolverConntrack {
		t.Errorf("the earlier step's error was dropped: %+v", out[5])
	}
	for _, i := range []int{2, 3, 4, 7} {
		if out[i].Actual != qs[i].Dst || out[i].Resolver != ResolverNone {
			t.Errorf("query %d changed: %+v", i, out[i])
		}
	}

	// Without a Docker cache, nothing is translated.
	if rest := DockerProxy(DockerProxyConfig{HostNetNS: host}).Resolve(context.Background(), qs, []int{0, 1}, out); len(rest) != 2 {
		t.Errorf("without a target function: left %v", rest)
	}
}
