// Package kube owns knowing the Kubernetes pods of this node: their names,
// workloads, containers, addresses and network namespaces, from the
// kubelet's API, kept fresh in the background and on request.
package kube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/connection-exporter/connection_exporter/internal/catchup"
	"github.com/connection-exporter/connection_exporter/internal/cgroup"
	"github.com/connection-exporter/connection_exporter/internal/netns"
)

// Config configures a kubelet Client.
type Config struct {
	// URL is the kubelet's base URL: https://<node address>:10250 (the
	// authenticated port), or http:// for the read-only port or a local
	// proxy.
	URL string
	// TokenFile holds the bearer token (the service account's), sent on
	// https only; empty sends none.
	TokenFile string
	// CAFile is the CA that signed the kubelet's serving certificate, for
	// https; empty means the system's roots. With InsecureSkipVerify the
	// certificate is not checked at all.
	CAFile             string
	InsecureSkipVerify bool
	// Refresh is how often the pod list is fetched unasked; Timeout bounds
	// one fetch.
	Refresh, Timeout time.Duration
	// MinInterval is the shortest time between the starts of two fetches
	// that Request asks for. Zero means one second.
	MinInterval time.Duration
	// MaxBytes bounds the size of an answer.
	MaxBytes int64
	// ProcFS is the host's procfs, where the pods' network namespaces are
	// found. Empty means /proc.
	ProcFS string
}

// Client keeps the pods of this node, fetched from the kubelet's /pods in
// the background every Refresh and when asked (Request), and the network
// namespaces of their processes. Lookups answer from the last good list and
// never wait on the kubelet. It is safe for concurrent use.
type Client struct {
	cfg    Config
	logger *slog.Logger
	http   *http.Client
	asked  *catchup.Requests

	mu          sync.RWMutex
	byContainer map[string]*podContainer
	byUID       map[string]*Pod
	byIP        map[netip.Addr]*Pod
	byNetNS     map[uint32]*Pod
	pods        []Pod
	errors      map[string]uint64 // by reason
	fetched     time.Time         // when the last good list arrived
	fresh       time.Time         // when the fetch of the last good list started
	attempted   bool              // a fetch has finished, good or not
	warned      bool
	indexed     time.Time // when the last index of namespaces started
}

type podContainer struct {
	pod  *Pod
	name string
}

// NewClient checks the configuration and builds the HTTP client. The CA and
// the token matter to https URLs only. It does not contact the kubelet:
// Run does.
func NewClient(cfg Config, logger *slog.Logger) (*Client, error) {
	secure := strings.HasPrefix(cfg.URL, "https://")
	if !secure && !strings.HasPrefix(cfg.URL, "http://") {
		return nil, fmt.Errorf("kubelet URL %q: want http:// or https://", cfg.URL)
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 15 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = time.Second
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 64 << 20
	}
	if cfg.ProcFS == "" {
		cfg.ProcFS = "/proc"
	}
	transport := &http.Transport{}
	if secure {
		tlsConfig := &tls.Config{InsecureSkipVerify: cfg.InsecureSkipVerify}
		if cfg.CAFile != "" && !cfg.InsecureSkipVerify {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("kubelet CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("kubelet CA %s: no certificate found", cfg.CAFile)
			}
			tlsConfig.RootCAs = pool
		}
		transport.TLSClientConfig = tlsConfig
	} else {
		cfg.TokenFile = "" // never sent in the clear
	}
	c := &Client{
		cfg: cfg, logger: logger,
		http:   &http.Client{Timeout: cfg.Timeout, Transport: transport},
		asked:  catchup.New(),
		errors: make(map[string]uint64),
	}
	// Reported from the start, so that rate() sees the first failure.
	for _, r := range []string{"dns", "connect", "tls", "timeout", "decode", "http_401", "http_403"} {
		c.errors[r] = 0
	}
	return c, nil
}

// Run fetches the pod list until ctx is done: every Refresh, backing off
// after failures up to four refresh intervals, and when Request asks, no
// sooner than MinInterval after the previous fetch started.
func (c *Client) Run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	var last time.Time
	wait := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-c.asked.Kicked():
			if d := time.Until(last.Add(c.cfg.MinInterval)); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
			}
		}
		last = c.asked.Starting(time.Now())
		err := c.refresh(ctx, last)
		c.asked.Served(last)
		if err != nil {
			wait = min(max(2*wait, c.cfg.Refresh/4), 4*c.cfg.Refresh)
		} else {
			wait = c.cfg.Refresh
		}
		timer.Reset(wait)
	}
}

// Refresh fetches the pod list once. On failure the previous list stays,
// the failure is counted by reason and logged (at warn the first time).
func (c *Client) Refresh(ctx context.Context) error { return c.refresh(ctx, time.Now()) }

// refresh is Refresh for a fetch that starts at start.
func (c *Client) refresh(ctx context.Context, start time.Time) error {
	pods, reason, err := c.fetch(ctx)
	var byNetNS map[uint32]*Pod
	var indexed time.Time
	if err == nil {
		// The namespaces are indexed again when the pods changed, and at
		// least every Refresh: a sandbox can be made again under the same
		// pod.
		c.mu.RLock()
		stale := !sameUIDs(c.byUID, pods) || time.Since(c.indexed) >= c.cfg.Refresh
		c.mu.RUnlock()
		if stale {
			indexed = time.Now()
			byNetNS = c.indexNetNS(pods)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.attempted = true
	if err != nil {
		c.errors[reason]++
		level := slog.LevelDebug
		if !c.warned {
			level, c.warned = slog.LevelWarn, true
		}
		c.logger.Log(ctx, level, "cannot list pods from the kubelet", "reason", reason, "err", err)
		return err
	}
	c.warned = false
	c.index(pods)
	if byNetNS != nil {
		c.indexed = indexed
	} else {
		// Same pods: the namespaces found before still hold.
		byNetNS = make(map[uint32]*Pod, len(c.byNetNS))
		for ino, p := range c.byNetNS {
			if q, ok := c.byUID[p.UID]; ok {
				byNetNS[ino] = q
			}
		}
	}
	c.byNetNS = byNetNS
	c.fresh = start
	return nil
}

// sameUIDs reports whether pods are the pods of byUID.
func sameUIDs(byUID map[string]*Pod, pods []Pod) bool {
	if len(byUID) != len(pods) {
		return false
	}
	for i := range pods {
		if _, ok := byUID[pods[i].UID]; !ok {
			return false
		}
	}
	return true
}

func (c *Client) fetch(ctx context.Context) ([]Pod, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(c.cfg.URL, "/")+"/pods", nil)
	if err != nil {
		return nil, "request", err
	}
	if c.cfg.TokenFile != "" {
		// Re-read each time: projected service account tokens rotate.
		tok, err := os.ReadFile(c.cfg.TokenFile)
		if err != nil {
			return nil, "token", fmt.Errorf("read token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := c.http.Do(req)
	if err != nil {
		reason, hint := failure(err)
		if hint != "" {
			err = fmt.Errorf("%w (%s)", err, hint)
		}
		return nil, reason, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		err := fmt.Errorf("kubelet answered %s", resp.Status)
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			err = fmt.Errorf("%w (the token was not accepted: is it the pod's service account token?)", err)
		case http.StatusForbidden:
			err = fmt.Errorf("%w (the service account may not get nodes/pods, or nodes/proxy on kubelets before 1.33: see the ClusterRole of the manifest)", err)
		}
		return nil, fmt.Sprintf("http_%d", resp.StatusCode), err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.cfg.MaxBytes+1))
	if err != nil {
		return nil, "read", err
	}
	if int64(len(body)) > c.cfg.MaxBytes {
		return nil, "too_large", fmt.Errorf("kubelet answer larger than %d bytes", c.cfg.MaxBytes)
	}
	pods, err := parsePods(body)
	if err != nil {
		return nil, "decode", err
	}
	return pods, "", nil
}

func (c *Client) index(pods []Pod) {
	c.pods = pods
	c.byContainer = make(map[string]*podContainer)
	c.byUID = make(map[string]*Pod, len(pods))
	c.byIP = make(map[netip.Addr]*Pod, len(pods))
	for i := range c.pods {
		p := &c.pods[i]
		c.byUID[p.UID] = p
		for id, name := range p.Containers {
			c.byContainer[id] = &podContainer{pod: p, name: name}
		}
		if !p.HostNetwork {
			for _, ip := range p.IPs {
				if a, err := netip.ParseAddr(ip); err == nil {
					c.byIP[a.Unmap()] = p
				}
			}
		}
	}
	c.fetched = time.Now()
}

// indexNetNS maps the network namespace of every process in the cgroup of
// one of pods to that pod (host-network pods excluded: they share the
// host's), so that a connection whose process has exited is still named by
// its pod: the pod's sandbox holds the namespace. The pointers are to pods,
// which index then makes its own.
func (c *Client) indexNetNS(pods []Pod) map[uint32]*Pod {
	byUID := make(map[string]*Pod, len(pods))
	for i := range pods {
		if !pods[i].HostNetwork {
			byUID[pods[i].UID] = &pods[i]
		}
	}
	index := make(map[uint32]*Pod)
	if len(byUID) == 0 {
		return index
	}
	entries, _ := os.ReadDir(c.cfg.ProcFS)
	for _, e := range entries {
		pid, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil {
			continue
		}
		cg, err := cgroup.Read(c.cfg.ProcFS, uint32(pid))
		if err != nil || cg.PodUID == "" {
			continue
		}
		p, ok := byUID[cg.PodUID]
		if !ok {
			continue
		}
		target, err := os.Readlink(filepath.Join(c.cfg.ProcFS, e.Name(), "ns", "net"))
		if err != nil {
			continue
		}
		if ino, ok := netns.ParseLink(target); ok {
			index[ino] = p
		}
	}
	return index
}

// Request asks Run for a fetch of the pod list soon, for a process or an
// address that the last list may not know yet. It never blocks; requests
// made before a fetch starts are served by that fetch.
func (c *Client) Request() { c.asked.Ask() }

// Settle waits until the fetches that Request asked for so far have
// finished, well or not, or ctx is done.
func (c *Client) Settle(ctx context.Context) { c.asked.Wait(ctx) }

// Fresh reports whether the pods and their namespaces are those of a list
// whose fetch started after t: every pod admitted on this node before t is
// in it.
func (c *Client) Fresh(t time.Time) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.fresh.After(t)
}

// Waitable reports whether waiting for a fetch is worth it: a list was
// fetched once (the kubelet may be restarting now), or the first fetch has
// not finished. A kubelet never reached since start is not waited for.
func (c *Client) Waitable() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return !c.fresh.IsZero() || !c.attempted
}

// Container returns the pod and container name of a container id (as found
// in a cgroup path).
func (c *Client) Container(id string) (Pod, string, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	pc, ok := c.byContainer[id]
	if !ok {
		return Pod{}, "", false
	}
	return *pc.pod, pc.name, true
}

// PodByUID returns a pod of this node by uid.
func (c *Client) PodByUID(uid string) (Pod, bool) {
	return c.lookup(func() *Pod { return c.byUID[uid] })
}

// PodByIP returns the pod of this node (not host-network) with address a.
func (c *Client) PodByIP(a netip.Addr) (Pod, bool) {
	return c.lookup(func() *Pod { return c.byIP[a.Unmap()] })
}

// PodByNetNS returns the pod (not host-network) whose network namespace
// has inode ino, as the last index of namespaces found it.
func (c *Client) PodByNetNS(ino uint32) (Pod, bool) {
	return c.lookup(func() *Pod { return c.byNetNS[ino] })
}

func (c *Client) lookup(find func() *Pod) (Pod, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	p := find()
	if p == nil {
		return Pod{}, false
	}
	return *p, true
}

// Health returns the pods of the last list, when a list last arrived
// (zero before the first), and the failed fetches since start, by reason
// (connect, timeout, decode, http_<status>...).
func (c *Client) Health() (pods int, lastSuccess time.Time, errors map[string]uint64) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	errors = make(map[string]uint64, len(c.errors))
	for r, n := range c.errors {
		errors[r] = n
	}
	return len(c.pods), c.fetched, errors
}

// Endpoints calls fn for each address of a pod of this node (host-network
// pods excluded), under the cache's read lock: fn must not call the
// Client.
func (c *Client) Endpoints(fn func(ip netip.Addr, namespace, pod, workload string)) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for ip, p := range c.byIP {
		fn(ip, p.Namespace, p.Name, p.Workload)
	}
}

// failure names why a request to the kubelet failed, as the reason label
// of the errors counter says it, and what a user can do about it.
func failure(err error) (reason, hint string) {
	var dns *net.DNSError
	var unknownCA x509.UnknownAuthorityError
	var badHost x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	var record tls.RecordHeaderError
	var ne net.Error
	switch {
	case errors.As(err, &dns):
		return "dns", "the kubelet URL's host name does not resolve: point --kubelet.url at the node's address (status.hostIP)"
	case errors.As(err, &badHost):
		return "tls", "the kubelet's serving certificate does not name the address in --kubelet.url (self-signed ones name the node alone): use --kubelet.insecure-skip-verify, or a URL its certificate names"
	case errors.As(err, &unknownCA), errors.As(err, &verify), errors.As(err, &invalid):
		return "tls", "the kubelet's serving certificate is not signed by the CA given: set --kubelet.ca-file to the CA that signs kubelet certificates, or --kubelet.insecure-skip-verify"
	case errors.As(err, &record):
		return "tls", "the kubelet does not speak TLS there: use an http:// URL for its read-only port"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout", ""
	}
	return "connect", ""
}
