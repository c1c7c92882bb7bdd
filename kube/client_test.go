package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const token = "eyJhbGciOiJSUzI1NiJ9.test-service-account-token"

// fakeKubelet serves /pods over TLS like the kubelet's authenticated port:
// the PodList of testdata/pods.json for the right bearer token, 401
// otherwise, or the failure mode set in mode.
type fakeKubelet struct {
	srv  *httptest.Server
	mode atomic.Value // "", "500", "garbage", "slow"
}

func newFakeKubelet(t *testing.T) *fakeKubelet {
	t.Helper()
	pods, err := os.ReadFile("testdata/pods.json")
	if err != nil {
		t.Fatal(err)
	}
	k := &fakeKubelet{}
	k.mode.Store("")
	k.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/pods" {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}`)
			return
		}
		switch k.mode.Load().(string) {
		case "500":
			http.Error(w, "internal error", http.StatusInternalServerError)
		case "garbage":
			io.WriteString(w, `{"kind":"PodList","items":[{"metadata":`)
		case "hostile":
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, hostilePods)
		case "slow":
			select {
			case <-time.After(2 * time.Second):
			case <-r.Context().Done():
			}
		default:
			w.Header().Set("Content-Type", "application/json")
			w.Write(pods)
		}
	}))
	t.Cleanup(k.srv.Close)
	return k
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func newTestClient(t *testing.T, k *fakeKubelet, tok string) *Client {
	t.Helper()
	ca := writeFile(t, "ca.crt", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k.srv.Certificate().Raw})))
	c, err := NewClient(Config{URL: k.srv.URL, TokenFile: writeFile(t, "token", tok+"\n"), CAFile: ca, Timeout: 500 * time.Millisecond},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClientNamesContainers(t *testing.T) {
	k := newFakeKubelet(t)
	c := newTestClient(t, k, token)
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	p, name, ok := c.Container("4bd9f0ac1b6c2e6f3e8b7c9d0a1b2c3d4e5f60718293a4b5c6d7e8f901234567")
	if !ok || p.Namespace != "default" || p.Workload != "nginx" || name != "nginx" {
		t.Errorf("Container = %+v, %q, %v", p, name, ok)
	}
	if p, ok := c.PodByIP(netip.MustParseAddr("10.42.1.8")); !ok || p.Name != "redis-0" {
		t.Errorf("PodByIP = %+v, %v", p, ok)
	}
	if _, ok := c.PodByIP(netip.MustParseAddr("192.0.2.10")); ok {
		t.Error("a host-network pod's address names the pod")
	}
	if eps := endpoints(c); len(eps) != 4 || eps["10.42.1.8"] != "cache/redis-0/redis" {
		t.Errorf("endpoints %v; want 4 (two addresses of nginx, redis, debug)", eps)
	}
}

func TestClientFailuresKeepLastList(t *testing.T) {
	k := newFakeKubelet(t)
	c := newTestClient(t, k, token)
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ mode, reason string }{
		{"500", "http_500"},
		{"garbage", "decode"},
		{"slow", "timeout"},
	} {
		k.mode.Store(tc.mode)
		if err := c.Refresh(context.Background()); err == nil {
			t.Errorf("%s: no error", tc.mode)
		}
		if got := counter(t, c, tc.reason); got != 1 {
			t.Errorf("%s: errors{reason=%q} = %v, want 1", tc.mode, tc.reason, got)
		}
		if _, _, ok := c.Container("4bd9f0ac1b6c2e6f3e8b7c9d0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"); !ok {
			t.Errorf("%s: the last good pod list was dropped", tc.mode)
		}
	}
}

func TestClientWrongToken(t *testing.T) {
	k := newFakeKubelet(t)
	c := newTestClient(t, k, "wrong")
	if err := c.Refresh(context.Background()); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("wrong token: %v", err)
	}
	if got := counter(t, c, "http_401"); got != 1 {
		t.Errorf("errors{reason=http_401} = %v", got)
	}
}

// hostilePods names a pod, its namespace and its owner with what a
// malicious or broken API server could send.
var hostilePods = `{"kind":"PodList","items":[{"metadata":{"name":"a\"b\\c\nd","namespace":"\ud800x",` +
	`"uid":"u1","ownerReferences":[{"kind":"Deployment","name":"` + strings.Repeat("w", 100000) + `","controller":true}]},` +
	`"status":{"podIP":"10.42.9.9"}}]}`

// TestClientHostileNames: names with quotes, backslashes, newlines,
// broken UTF-16 escapes and 100 KB are listed as the kubelet gave them
// (the collector makes them valid label values).
func TestClientHostileNames(t *testing.T) {
	k := newFakeKubelet(t)
	k.mode.Store("hostile")
	c := newTestClient(t, k, token)
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	eps := endpoints(c)
	if got := eps["10.42.9.9"]; !strings.HasPrefix(got, "\ufffdx/a\"b\\c\nd/") || len(got) < 100000 {
		t.Errorf("hostile pod listed as %.80q", got)
	}
}

func TestClientRejectsUnknownCA(t *testing.T) {
	k := newFakeKubelet(t)
	// httptest servers all share one certificate: make an unrelated CA.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca := writeFile(t, "ca.crt", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	c, err := NewClient(Config{URL: k.srv.URL, TokenFile: writeFile(t, "token", token), CAFile: ca}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(context.Background()); err == nil {
		t.Error("a kubelet certificate signed by another CA was accepted")
	}
	if got := counter(t, c, "tls"); got != 1 {
		t.Errorf("errors{reason=tls} = %v, want 1", got)
	}
}

// TestFailureReasons: DNS, TLS, timeouts and the rest are told apart, each
// with what a user can do.
func TestFailureReasons(t *testing.T) {
	for _, tc := range []struct {
		err    error
		reason string
		hint   string
	}{
		{&url.Error{Op: "Get", Err: &net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "node-1", IsNotFound: true}}}, "dns", "status.hostIP"},
		{&url.Error{Op: "Get", Err: &tls.CertificateVerificationError{Err: x509.HostnameError{Certificate: &x509.Certificate{}, Host: "10.0.0.1"}}}, "tls", "does not name"},
		{&url.Error{Op: "Get", Err: &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}}, "tls", "ca-file"},
		{&url.Error{Op: "Get", Err: tls.RecordHeaderError{}}, "tls", "http://"},
		{&url.Error{Op: "Get", Err: context.DeadlineExceeded}, "timeout", ""},
		{&url.Error{Op: "Get", Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}, "connect", ""},
	} {
		reason, hint := failure(tc.err)
		if reason != tc.reason || !strings.Contains(hint, tc.hint) {
			t.Errorf("failure(%v) = %q, %q; want %q with a hint of %q", tc.err, reason, hint, tc.reason, tc.hint)
		}
	}
}

func TestNewClientRejectsBadConfig(t *testing.T) {
	if _, err := NewClient(Config{URL: "node-1:10250"}, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		t.Error("URL without scheme accepted")
	}
	if _, err := NewClient(Config{URL: "https://node-1:10250", CAFile: writeFile(t, "ca", "not a pem")}, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		t.Error("CA file without certificates accepted")
	}
}
