// Command connection_exporter exports, for every outbound TCP connection on
// the host, the address the application dialled and the address that really
// answered, resolved from the NAT tables that balanced the connection.
package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf/btf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/connection-exporter/connection_exporter/bpf"
	"github.com/connection-exporter/connection_exporter/collector"
	"github.com/connection-exporter/connection_exporter/docker"
	"github.com/connection-exporter/connection_exporter/internal/procmetrics"
	"github.com/connection-exporter/connection_exporter/kube"
	"github.com/connection-exporter/connection_exporter/naming"
	"github.com/connection-exporter/connection_exporter/resolve"
)

const exporterName = "connection_exporter"

func main() {
	os.Exit(run())
}

// run wires the exporter together: capture, resolution, the caches that
// name, the collectors, and the web server.
func run() int {
	cfg, code := parseFlags(os.Args[1:])
	if code >= 0 {
		return code
	}
	logger := promslog.New(cfg.log)
	logger.Info("starting "+exporterName, "version", version.Info())
	logger.Info("build context", "build_context", version.BuildContext())
	if missing := missingCapabilities(); len(missing) > 0 {
		logger.Error("missing privileges: run as root or grant these capabilities", "missing", strings.Join(missing, ","))
		return 1
	}
	// Opened before any thread moves into another network namespace, so
	// that the network counters are those of the exporter's own.
	proc := processCollector(logger)
	defer proc.close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// The kernel's types are decoded once for both loads, and dropped
	// with start-up's other garbage.
	types := btf.NewCache()
	tracker, err := bpf.New(bpf.Config{MaxConnections: cfg.maxConnections, ProcFS: cfg.procfs, NetNSDirs: cfg.netnsDirs, Types: types,
		TCPStats: cfg.connections.TCPStats},
		logger.With("component", "bpf"))
	if err != nil {
		logger.Error("cannot load the kernel programs", "err", err)
		return 1
	}
	defer closeTracker(tracker, logger)
	cfg.resolve.Kernel = kernelLookup(cfg.kernelLookup, types, logger)
	defer closeLookup(cfg.resolve.Kernel)

	caches, err := startCaches(ctx, &cfg, logger)
	if err != nil {
		logger.Error("invalid configuration", "err", err)
		return 1
	}
	resolver, err := resolve.New(cfg.resolve, logger)
	if err != nil {
		logger.Error("cannot open conntrack", "err", err)
		return 1
	}
	logger.Info("host network namespace", "path", cfg.resolve.HostNetNS, "inode", resolver.HostNetNS())
	if warning := resolve.CheckHostNetNS(cfg.resolve.HostNetNS, cfg.procfs); warning != "" {
		logger.Warn(warning)
	}
	cfg.naming.HostNetNS = resolver.HostNetNS()
	conns, err := collector.NewConnections(cfg.connections, tracker, resolver, naming.New(cfg.naming), logger.With("collector", "connections"))
	if err != nil {
		logger.Error("invalid collector configuration", "err", err)
		return 1
	}
	caches["connections"], caches["kernel"] = conns, collector.NewKernel(resolver, tracker)
	exp := collector.NewExporter(caches, logger)
	static := prometheus.NewRegistry()
	static.MustRegister(versioncollector.NewCollector(exporterName), collectors.NewGoCollector(), proc.collector)
	collectStartGarbage(logger)
	return serve(ctx, cfg, metricsHandler(exp, static, cfg, logger), logger)
}

// startCaches starts the caches that name connections (Docker's and the
// kubelet's, as configured), hands them to the naming and resolution
// configurations, and returns the collectors of their health.
func startCaches(ctx context.Context, cfg *config, logger *slog.Logger) (map[string]collector.Collector, error) {
	cs := make(map[string]collector.Collector)
	if cfg.dockerEnabled {
		cfg.docker.ProcFS = cfg.procfs
		dc, err := docker.New(cfg.docker, logger.With("component", "docker"))
		if err != nil {
			return nil, err
		}
		go dc.Run(ctx)
		cfg.naming.Containers, cfg.resolve.Docker = dc, dc
		cs["docker"] = collector.NewDocker(dc)
	}
	if cfg.kubelet.URL != "" {
		cfg.kubelet.ProcFS = cfg.procfs
		kc, err := kube.NewClient(kubeletDefaults(cfg.kubelet), logger.With("component", "kubelet"))
		if err != nil {
			return nil, err
		}
		go kc.Run(ctx)
		cfg.naming.Pods = kc
		cs["kubelet"] = collector.NewKubelet(kc)
	}
	return cs, nil
}

// processCollectorOf is the process_* collector and how to close it.
type processCollectorOf struct {
	collector prometheus.Collector
	close     func()
}

// processCollector returns procmetrics' collector, or client_golang's when
// procfs cannot be read as it needs.
func processCollector(logger *slog.Logger) processCollectorOf {
	p, err := procmetrics.New("/proc")
	if err != nil {
		logger.Warn("process metrics come from client_golang's collector", "reason", err)
		return processCollectorOf{collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), func() {}}
	}
	return processCollectorOf{p, func() { p.Close() }}
}

// kernelLookup loads the conntrack lookup program if enabled, or returns
// nil (netlink only).
func kernelLookup(enabled bool, types *btf.Cache, logger *slog.Logger) resolve.KernelLookup {
	if !enabled {
		return nil
	}
	l, err := bpf.NewConntrackLookup(types)
	if err != nil {
		logger.Info("conntrack tables are read through netlink only", "reason", err)
		return nil
	}
	return l
}

func closeLookup(l resolve.KernelLookup) {
	if c, ok := l.(interface{ Close() error }); ok {
		c.Close()
	}
}

func closeTracker(t *bpf.Tracker, logger *slog.Logger) {
	if err := t.Close(); err != nil {
		logger.Error("cannot detach the kernel programs", "err", err)
	}
}

// serve serves the metrics, the landing page and (if asked) profiles until
// ctx is done, then shuts the server down. It returns the exit code.
func serve(ctx context.Context, cfg config, metrics http.Handler, logger *slog.Logger) int {
	mux := http.NewServeMux()
	mux.Handle(cfg.metricsPath, metrics)
	if cfg.pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	}
	if cfg.metricsPath != "/" {
		landing, err := web.NewLandingPage(web.LandingConfig{
			Name:        "Connection Exporter",
			Description: "Where outbound TCP connections really go",
			Version:     version.Info(),
			Links:       []web.LandingLinks{{Address: cfg.metricsPath, Text: "Metrics"}},
		})
		if err != nil {
			logger.Error("cannot build the landing page", "err", err)
			return 1
		}
		mux.Handle("/", landing)
	}
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- web.ListenAndServe(server, cfg.web, logger) }()
	select {
	case err := <-served:
		logger.Error("cannot serve", "err", err)
		return 1
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := server.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Warn("scrapes still running at shutdown", "err", err)
	}
	return 0
}
