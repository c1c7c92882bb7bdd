// Command connection_exporter exports, for every outbound TCP connection on
// the host, the address the application dialled and the address that really
// answered, resolved from the NAT tables that balanced the connection.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/cilium/ebpf/btf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/promslog"
	promslogflag "github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"
	webflag "github.com/prometheus/exporter-toolkit/web/kingpinflag"

	"github.com/connection-exporter/connection_exporter/bpf"
	"github.com/connection-exporter/connection_exporter/collector"
	"github.com/connection-exporter/connection_exporter/docker"
	"github.com/connection-exporter/connection_exporter/kube"
	"github.com/connection-exporter/connection_exporter/naming"
	"github.com/connection-exporter/connection_exporter/resolve"
)

const exporterName = "connection_exporter"

// serviceAccount is where a pod finds its service account's token and
// the cluster's CA.
const serviceAccount = "/var/run/secrets/kubernetes.io/serviceaccount"

// kubeletDefaults fills in, for an https kubelet URL, the service account's
// token and CA where the flags left them empty and the files exist: inside
// a pod they do; outside one, or for an http URL, nothing is needed.
func kubeletDefaults(c kube.Config) kube.Config {
	if !strings.HasPrefix(c.URL, "https://") {
		return c
	}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	if c.TokenFile == "" && exists(serviceAccount+"/token") {
		c.TokenFile = serviceAccount + "/token"
	}
	if c.CAFile == "" && !c.InsecureSkipVerify && exists(serviceAccount+"/ca.crt") {
		c.CAFile = serviceAccount + "/ca.crt"
	}
	return c
}

// defaultListenAddress is the exporter's port: free in Prometheus' list of
// default ports, and clear of Zabbix (10050-10053) and Kubernetes
// (10248-10259).
const defaultListenAddress = ":10074"

type config struct {
	metricsPath     string
	maxRequests     int
	timeoutOffset   time.Duration
	procfs          string
	hostNetNS       string
	netnsDirs       []string
	bpffs           string
	dockerNetNS     string
	docker          docker.Config
	dockerEnabled   bool
	maxConnections  uint32
	kernelLookup    bool
	maxSeries       int
	seriesIdle      time.Duration
	resolveAttempts int
	nameTimeout     time.Duration
	nameWait        time.Duration
	pprof           bool
	kubelet         kube.Config
}

func main() {
	os.Exit(run())
}

func run() int {
	var cfg config
	app := kingpin.New(exporterName, "Prometheus exporter of where outbound TCP connections really go.")
	app.Flag("web.telemetry-path", "Path under which to expose metrics.").
		Default("/metrics").StringVar(&cfg.metricsPath)
	app.Flag("web.max-requests", "Maximum number of parallel scrape requests; 0 disables the limit.").
		Default("40").IntVar(&cfg.maxRequests)
	app.Flag("web.timeout-offset", "Offset subtracted from Prometheus' scrape timeout to leave time to send the answer.").
		Default("500ms").DurationVar(&cfg.timeoutOffset)
	app.Flag("path.procfs", "Mount point of the host's procfs.").
		Default("/proc").StringVar(&cfg.procfs)
	app.Flag("path.host-netns", "Network namespace file of the host, whose conntrack table kube-proxy and Docker use. Default: <path.procfs>/1/ns/net when readable, else the exporter's own namespace.").
		PlaceHolder("auto").StringVar(&cfg.hostNetNS)
	app.Flag("path.netns-dir", "Directory of bind-mounted network namespaces, searched when no process of a namespace is left (repeatable).").
		Default("/run/netns").StringsVar(&cfg.netnsDirs)
	app.Flag("path.bpffs", "Mount point of the host's BPF filesystem, where Cilium pins its maps (tc/globals).").
		Default("/sys/fs/bpf").StringVar(&cfg.bpffs)
	app.Flag("bpf.max-connections", "Size of the kernel map of connections: open ones plus those closed since the last scrape. Entries are preallocated, about 160 bytes of kernel memory each; a scrape after changes walks the map's hash table, whose size follows this.").
		Default(strconv.Itoa(bpf.DefaultMaxConnections)).Uint32Var(&cfg.maxConnections)
	app.Flag("bpf.conntrack-lookup", "Look connections up in conntrack tables from a BPF program (Linux 5.18 or later, with the conntrack kfuncs) instead of through netlink; --no-bpf.conntrack-lookup uses netlink only.").
		Default("true").BoolVar(&cfg.kernelLookup)
	app.Flag("collector.max-series", "Maximum number of label sets of the connection metrics; connections beyond are counted under the label value _other.").
		Default("10000").IntVar(&cfg.maxSeries)
	app.Flag("collector.series-idle", "How long a label set without open connections is kept.").
		Default("10m").DurationVar(&cfg.seriesIdle)
	app.Flag("collector.resolve-attempts", "Scrapes that may retry resolving an open connection whose NAT table could not be read.").
		Default("3").IntVar(&cfg.resolveAttempts)
	app.Flag("collector.name-timeout", "Longest a new connection waits for the kubelet's or Docker's cache to catch up with it, so that it is named by its pod or container; then it is exported with the names known and counted in connection_exporter_naming_timeouts_total.").
		Default(collector.DefaultNameTimeout.String()).DurationVar(&cfg.nameTimeout)
	app.Flag("collector.name-wait", "Longest a scrape waits, within its deadline, for the cache refreshes its new connections asked for, so that they are exported named at this scrape rather than the next; 0 leaves them to the next scrape.").
		Default("1s").DurationVar(&cfg.nameWait)
	app.Flag("docker", "Name containers and resolve Swarm service addresses from the Docker Engine API (off when no engine answers: names come back when it does).").
		Default("true").BoolVar(&cfg.dockerEnabled)
	app.Flag("docker.host", "Docker Engine API address; default DOCKER_HOST or the standard socket.").
		StringVar(&cfg.docker.Host)
	app.Flag("docker.resync-interval", "Period of full resyncs of the container cache besides the events stream.").
		Default("5m").DurationVar(&cfg.docker.Resync)
	app.Flag("path.docker-netns", "Docker's directory of network namespaces, where Swarm load balancers live (lb_<network>).").
		Default("/run/docker/netns").StringVar(&cfg.dockerNetNS)
	app.Flag("kubelet.url", "Kubelet API of this node (e.g. https://$(HOST_IP):10250, or http:// for the read-only port or a local proxy) to name pods; empty disables Kubernetes naming.").
		StringVar(&cfg.kubelet.URL)
	app.Flag("kubelet.token-file", "Bearer token for an https kubelet URL. Default: the pod's service account token, if it exists.").
		PlaceHolder(serviceAccount + "/token").StringVar(&cfg.kubelet.TokenFile)
	app.Flag("kubelet.ca-file", "CA of the kubelet's serving certificate, for an https kubelet URL. Default: the pod's service account CA if it exists, else the system's roots.").
		PlaceHolder(serviceAccount + "/ca.crt").StringVar(&cfg.kubelet.CAFile)
	app.Flag("kubelet.insecure-skip-verify", "Do not verify the kubelet's serving certificate.").
		Default("false").BoolVar(&cfg.kubelet.InsecureSkipVerify)
	app.Flag("kubelet.refresh-interval", "How often the node's pods are fetched.").
		Default("15s").DurationVar(&cfg.kubelet.Refresh)
	app.Flag("debug.pprof", "Serve Go profiles under /debug/pprof/ (behind the same web configuration).").
		Default("false").BoolVar(&cfg.pprof)
	webConfig := webflag.AddFlags(app, defaultListenAddress)
	logConfig := &promslog.Config{}
	promslogflag.AddFlags(app, logConfig)
	app.Version(version.Print(exporterName))
	app.HelpFlag.Short('h')
	if _, err := app.Parse(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", exporterName, err)
		return 2
	}
	logger := promslog.New(logConfig)
	logger.Info("starting "+exporterName, "version", version.Info())
	logger.Info("build context", "build_context", version.BuildContext())

	if missing := missingCapabilities(); len(missing) > 0 {
		logger.Error("missing privileges: run as root or grant these capabilities", "missing", strings.Join(missing, ","))
		return 1
	}

	// Opened before any thread moves into another network namespace, so
	// that the network counters are those of the exporter's own.
	var proc prometheus.Collector
	if p, err := collector.NewProcess("/proc"); err != nil {
		logger.Warn("process metrics come from client_golang's collector", "reason", err)
		proc = collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})
	} else {
		defer p.Close()
		proc = p
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// The kernel's types are decoded once for both loads below, and
	// dropped with start-up's other garbage.
	types := btf.NewCache()
	tracker, err := bpf.New(bpf.Config{MaxConnections: cfg.maxConnections, ProcFS: cfg.procfs, NetNSDirs: cfg.netnsDirs, Types: types},
		logger.With("component", "bpf"))
	if err != nil {
		logger.Error("cannot load the kernel programs", "err", err)
		return 1
	}
	defer func() {
		if err := tracker.Close(); err != nil {
			logger.Error("cannot detach the kernel programs", "err", err)
		}
	}()

	hostNetNS := cfg.hostNetNS
	if hostNetNS == "" {
		hostNetNS = resolve.HostNetNSPath(cfg.procfs)
	}
	ctCfg := resolve.ConntrackConfig{ProcFS: cfg.procfs, HostNetNS: hostNetNS, NetNSDirs: cfg.netnsDirs}
	if cfg.kernelLookup {
		if l, err := bpf.NewConntrackLookup(types); err != nil {
			logger.Info("conntrack tables are read through netlink only", "reason", err)
		} else {
			defer l.Close()
			ctCfg.Kernel = kernelLookup{l}
		}
	}
	ct, err := resolve.NewConntrack(ctCfg, logger.With("component", "conntrack"))
	if err != nil {
		logger.Error("cannot open conntrack", "err", err)
		return 1
	}
	logger.Info("host network namespace", "path", hostNetNS, "inode", ct.HostNetNS())

	static := prometheus.NewRegistry()
	static.MustRegister(versioncollector.NewCollector(exporterName))
	static.MustRegister(collectors.NewGoCollector(), proc, ct)

	namingCfg := naming.Config{ProcFS: cfg.procfs, HostNetNS: ct.HostNetNS()}
	steps := resolve.Chain{ct.OwnNamespace()}
	var last resolve.Chain // after the host's conntrack: where it translated nothing
	if cfg.dockerEnabled {
		cfg.docker.ProcFS = cfg.procfs
		dc, err := docker.New(cfg.docker, logger.With("component", "docker"))
		if err != nil {
			logger.Error("invalid docker configuration", "err", err)
			return 1
		}
		go dc.Run(ctx)
		static.MustRegister(dc)
		namingCfg.Containers = dc
		steps = append(steps,
			ct.Swarm(resolve.SwarmConfig{NetNSDir: cfg.dockerNetNS, Network: dc.OverlayNetwork}),
			ct.Ingress(resolve.IngressConfig{NetNSDir: cfg.dockerNetNS, IngressAddr: dc.IngressAddr}))
		last = append(last, resolve.DockerProxy(resolve.DockerProxyConfig{HostNetNS: ct.HostNetNS(), Target: dc.PublishedTarget, Gateway: dc.IsBridgeGateway}))
	}
	if cfg.kubelet.URL != "" {
		cfg.kubelet.ProcFS = cfg.procfs
		kc, err := kube.NewClient(kubeletDefaults(cfg.kubelet), logger.With("component", "kubelet"))
		if err != nil {
			logger.Error("invalid kubelet configuration", "err", err)
			return 1
		}
		go kc.Run(ctx)
		static.MustRegister(kc)
		namingCfg.Pods = kc
	}
	steps = append(steps,
		resolve.NewCilium(resolve.CiliumConfig{BPFFS: cfg.bpffs}, logger.With("component", "cilium")),
		ct.HostNamespace())
	steps = append(steps, last...)

	conns, err := collector.NewConnections(collector.ConnectionsConfig{
		MaxSeries: cfg.maxSeries, SeriesIdle: cfg.seriesIdle, ResolveAttempts: cfg.resolveAttempts,
		NameTimeout: cfg.nameTimeout, NameSettle: cfg.nameWait,
	}, &trackerSource{t: tracker}, &chainResolver{chain: steps}, naming.New(namingCfg), logger.With("collector", "connections"))
	if err != nil {
		logger.Error("invalid collector configuration", "err", err)
		return 1
	}
	exp := collector.NewExporter(map[string]collector.Collector{"connections": conns}, logger)
	// Start-up leaves garbage behind, from the listing of existing
	// connections above all. Collected now, with the heap's next goal set
	// from what start-up keeps, it does not make the first scrape (every
	// connection new, the heaviest) pay for a collection.
	runtime.GC()

	mux := http.NewServeMux()
	mux.Handle(cfg.metricsPath, metricsHandler(exp, static, cfg, logger))
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
	go func() { served <- web.ListenAndServe(server, webConfig, logger) }()

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

// metricsHandler serves one scrape: the collectors run with a deadline taken
// from Prometheus' scrape timeout header, in parallel scrapes up to
// cfg.maxRequests, and the response is compressed for clients that accept
// gzip by writers kept from scrape to scrape.
func metricsHandler(exp *collector.Exporter, static prometheus.Gatherer, cfg config, logger *slog.Logger) http.Handler {
	// Two writers kept: one Prometheus, or a pair of them, scraping at once.
	writers := newGzipWriters(2)
	var slots chan struct{}
	if cfg.maxRequests > 0 {
		slots = make(chan struct{}, cfg.maxRequests)
	}
	errorLog := slog.NewLogLogger(logger.Handler(), slog.LevelError)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slots != nil {
			select {
			case slots <- struct{}{}:
				defer func() { <-slots }()
			default:
				http.Error(w, "too many parallel scrapes", http.StatusServiceUnavailable)
				return
			}
		}
		ctx := r.Context()
		timeout, err := scrapeTimeout(r.Header.Get("X-Prometheus-Scrape-Timeout-Seconds"), cfg.timeoutOffset)
		if err != nil {
			logger.Debug("ignoring scrape timeout header", "err", err)
		}
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(exp.Scrape(ctx))
		compressed(promhttp.HandlerFor(parallelGatherers{static, reg}, promhttp.HandlerOpts{
			ErrorLog:           errorLog,
			ErrorHandling:      promhttp.ContinueOnError,
			DisableCompression: true, // done by compressed, with writers kept
		}), writers).ServeHTTP(w, r)
	})
}

// parallelGatherers gathers from all its gatherers at once and merges what
// they return as prometheus.Gatherers does, which gathers from one after
// the other: the process and Go collectors (a millisecond or so of reading
// procfs) then no longer delay the connection collector's start.
type parallelGatherers []prometheus.Gatherer

// Gather implements prometheus.Gatherer.
func (gs parallelGatherers) Gather() ([]*dto.MetricFamily, error) {
	done := make(prometheus.Gatherers, len(gs))
	var wg sync.WaitGroup
	for i, g := range gs {
		wg.Go(func() {
			mfs, err := g.Gather()
			done[i] = prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return mfs, err })
		})
	}
	wg.Wait()
	return done.Gather()
}

// scrapeTimeout turns the X-Prometheus-Scrape-Timeout-Seconds header into the
// time a scrape may take: the timeout less offset. It returns zero (no
// deadline) for an empty header and an error for a malformed one.
func scrapeTimeout(header string, offset time.Duration) (time.Duration, error) {
	if header == "" {
		return 0, nil
	}
	secs, err := strconv.ParseFloat(header, 64)
	if err != nil {
		return 0, fmt.Errorf("parse scrape timeout %q: %w", header, err)
	}
	if secs <= 0 || secs > 24*3600 || secs != secs {
		return 0, fmt.Errorf("scrape timeout %q out of range", header)
	}
	d := time.Duration(secs*float64(time.Second)) - offset
	if d <= 0 {
		// The offset would eat the whole budget: use half of it instead.
		d = time.Duration(secs * float64(time.Second) / 2)
	}
	return d, nil
}

// trackerSource adapts bpf.Tracker to collector.Source.
type trackerSource struct {
	t *bpf.Tracker
}

func (s *trackerSource) Connections(fn func(*collector.Conn)) (int, error) {
	return s.t.Read(adaptConn(fn))
}

func (s *trackerSource) Get(cookies []uint64, fn func(*collector.Conn)) error {
	return s.t.Get(cookies, adaptConn(fn))
}

// adaptConn turns a function of collector connections into one of bpf
// connections, with one collector.Conn for all calls.
func adaptConn(fn func(*collector.Conn)) func(*bpf.Conn) {
	var k collector.Conn
	return func(c *bpf.Conn) {
		k = collector.Conn{
			Cookie: c.Cookie, PID: c.PID, Comm: c.Comm, NetNS: c.NetNS, CgroupID: c.CgroupID,
			Src: c.Src, Dst: c.Dst, State: collector.State(c.State), Reported: c.Reported, Seeded: c.Seeded,
		}
		fn(&k)
	}
}

func (s *trackerSource) Release(cookies []uint64) error { return s.t.Release(cookies) }
func (s *trackerSource) Lost() (uint64, error)          { return s.t.Lost() }
func (s *trackerSource) Capacity() uint32               { return s.t.Capacity() }
func (s *trackerSource) Recorded() (uint64, error)      { return s.t.Recorded() }

// kernelLookup adapts bpf.ConntrackLookup to resolve.KernelLookup.
type kernelLookup struct{ l *bpf.ConntrackLookup }

func (k kernelLookup) Lookup(n int, orig func(int) resolve.Tuple, found func(int, resolve.Tuple)) error {
	return k.l.Lookup(n, func(i int) bpf.Tuple { return bpf.Tuple(orig(i)) },
		func(i int, r bpf.Tuple) { found(i, resolve.Tuple(r)) })
}

// chainResolver adapts a resolve.Chain to collector.Resolver.
type chainResolver struct {
	chain resolve.Chain
}

func (r *chainResolver) Resolve(ctx context.Context, in []collector.Lookup, out []collector.Destination) {
	r.chain.Resolve(ctx, in, out)
}

// Prepare starts the chain's table reads ahead of a large Resolve call.
func (r *chainResolver) Prepare(ctx context.Context, n int) (collector.Resolver, bool) {
	chain, whole := r.chain.Prepare(ctx, n)
	return &chainResolver{chain: chain}, whole
}
