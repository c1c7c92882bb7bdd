package kube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/connection-exporter/connection_exporter/internal/labels"
)

// Config configures a kubelet Client.
type Config struct {
	// URL is the kubelet's base URL, e.g. https://node-1:10250.
	URL string
	// TokenFile holds the bearer token (the service account's).
	TokenFile string
	// CAFile is the CA that signed the kubelet's serving certificate; with
	// InsecureSkipVerify the certificate is not checked at all.
	CAFile             string
	InsecureSkipVerify bool
	// Refresh is how often the pod list is fetched; Timeout bounds one
	// fetch.
	Refresh, Timeout time.Duration
	// MaxBytes bounds the size of an answer.
	MaxBytes int64
}

// Client keeps the pods of this node, fetched from the kubelet's /pods in
// the background. Lookups answer from the last good list and never wait
// on the kubelet. It is safe for concurrent use.
type Client struct {
	cfg    Config
	logger *slog.Logger
	http   *http.Client

	mu          sync.RWMutex
	byContainer map[string]*podContainer
	byUID       map[string]*Pod
	byIP        map[string]*Pod
	pods        []Pod
	errors      map[string]float64 // by reason
	fetched     time.Time
	warned      bool
}

type podContainer struct {
	pod  *Pod
	name string
}

// NewClient checks the configuration and builds the HTTP client. It does
// not contact the kubelet: Run does.
func NewClient(cfg Config, logger *slog.Logger) (*Client, error) {
	if !strings.HasPrefix(cfg.URL, "https://") && !strings.HasPrefix(cfg.URL, "http://") {
		return nil, fmt.Errorf("kubelet URL %q: want http:// or https://", cfg.URL)
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 15 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 64 << 20
	}
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
	c := &Client{
		cfg: cfg, logger: logger,
		http:   &http.Client{Timeout: cfg.Timeout, Transport: &http.Transport{TLSClientConfig: tlsConfig}},
		errors: make(map[string]float64),
	}
	// Reported from the start, so that rate() sees the first failure.
	for _, r := range []string{"connect", "timeout", "decode", "http_401", "http_403"} {
		c.errors[r] = 0
	}
	return c, nil
}

// Run refreshes the pod list until ctx is done, backing off after failures
// up to four refresh intervals.
func (c *Client) Run(ctx context.Context) {
	wait := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if err := c.Refresh(ctx); err != nil {
			wait = min(max(2*wait, c.cfg.Refresh/4), 4*c.cfg.Refresh)
		} else {
			wait = c.cfg.Refresh
		}
	}
}

// Refresh fetches the pod list once. On failure the previous list stays,
// the failure is counted by reason and logged (at warn the first time).
func (c *Client) Refresh(ctx context.Context) error {
	pods, reason, err := c.fetch(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
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
	return nil
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
		if errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "Timeout") {
			return nil, "timeout", err
		}
		return nil, "connect", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Sprintf("http_%d", resp.StatusCode), fmt.Errorf("kubelet answered %s", resp.Status)
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
	c.byIP = make(map[string]*Pod, len(pods))
	for i := range c.pods {
		p := &c.pods[i]
		c.byUID[p.UID] = p
		for id, name := range p.Containers {
			c.byContainer[id] = &podContainer{pod: p, name: name}
		}
		if !p.HostNetwork {
			for _, ip := range p.IPs {
				c.byIP[ip] = p
			}
		}
	}
	c.fetched = time.Now()
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
	c.mu.RLock()
	defer c.mu.RUnlock()
	p, ok := c.byUID[uid]
	if !ok {
		return Pod{}, false
	}
	return *p, true
}

// PodByIP returns the pod of this node (not host-network) with address ip.
func (c *Client) PodByIP(ip string) (Pod, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	p, ok := c.byIP[ip]
	if !ok {
		return Pod{}, false
	}
	return *p, true
}

var (
	endpointDesc = prometheus.NewDesc("connection_endpoint_info",
		"A pod address of this node, to name destinations by joining on the address.",
		[]string{"ip", "namespace", "pod", "workload"}, nil)
	kubeletErrorsDesc = prometheus.NewDesc("connection_exporter_kubelet_errors_total",
		"Failed pod list fetches from the kubelet, by reason.", []string{"reason"}, nil)
	kubeletPodsDesc = prometheus.NewDesc("connection_exporter_kubelet_pods",
		"Pods in the last pod list fetched from the kubelet.", nil, nil)
	kubeletAgeDesc = prometheus.NewDesc("connection_exporter_kubelet_last_success_timestamp_seconds",
		"When the pod list was last fetched successfully.", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *Client) Describe(ch chan<- *prometheus.Desc) {
	ch <- endpointDesc
	ch <- kubeletErrorsDesc
	ch <- kubeletPodsDesc
	ch <- kubeletAgeDesc
}

// Collect implements prometheus.Collector from the cached pod list.
func (c *Client) Collect(ch chan<- prometheus.Metric) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for ip, p := range c.byIP {
		ch <- prometheus.MustNewConstMetric(endpointDesc, prometheus.GaugeValue, 1,
			ip, labels.Value(p.Namespace), labels.Value(p.Name), labels.Value(p.Workload))
	}
	for r, v := range c.errors {
		ch <- prometheus.MustNewConstMetric(kubeletErrorsDesc, prometheus.CounterValue, v, r)
	}
	ch <- prometheus.MustNewConstMetric(kubeletPodsDesc, prometheus.GaugeValue, float64(len(c.pods)))
	if !c.fetched.IsZero() {
		ch <- prometheus.MustNewConstMetric(kubeletAgeDesc, prometheus.GaugeValue, float64(c.fetched.UnixNano())/1e9)
	}
}
