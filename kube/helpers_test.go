package kube

import (
	"net/netip"
	"testing"
)

// counter returns the client's count of failed fetches for reason.
func counter(t *testing.T, c *Client, reason string) uint64 {
	t.Helper()
	_, _, errors := c.Health()
	n, ok := errors[reason]
	if !ok {
		t.Fatalf("no count of errors for reason %q in %v", reason, errors)
	}
	return n
}

// endpoints returns the pod addresses the client lists, with their pods.
func endpoints(c *Client) map[string]string {
	out := map[string]string{}
	c.Endpoints(func(ip netip.Addr, namespace, pod, workload string) {
		out[ip.String()] = namespace + "/" + pod + "/" + workload
	})
	return out
}
