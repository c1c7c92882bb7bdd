package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kingpin/v2"
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

// defaultListenAddress is the exporter's port: free in Prometheus' list of
// default ports, and clear of Zabbix (10050-10053) and Kubernetes
// (10248-10259).
const defaultListenAddress = ":10074"

// serviceAccount is where a pod finds its service account's token and
// the cluster's CA.
const serviceAccount = "/var/run/secrets/kubernetes.io/serviceaccount"

// config is what the flags say, in the configuration structs of the
// packages they configure.
type config struct {
	metricsPath    string
	maxRequests    int
	timeoutOffset  time.Duration
	procfs         string
	netnsDirs      []string
	maxConnections uint32
	kernelLookup   bool
	dockerEnabled  bool
	pprof          bool

	resolve     resolve.Config
	naming      naming.Config
	connections collector.ConnectionsConfig
	docker      docker.Config
	kubelet     kube.Config
	web         *web.FlagConfig
	log         *promslog.Config
}

// parseFlags reads the command line. It returns the exit code when the
// exporter should stop (help, version, a bad flag), else -1.
func parseFlags(args []string) (config, int) {
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
	app.Flag("path.host-netns", "Network namespace file of the host, whose conntrack table kube-proxy and Docker use. The exporter runs in it (--network host, hostNetwork: true), so by default it is the exporter's own; a warning says when pid 1's is another.").
		Default(resolve.HostNetNSPath).StringVar(&cfg.resolve.HostNetNS)
	app.Flag("path.netns-dir", "Directory of bind-mounted network namespaces, searched when no process of a namespace is left (repeatable).").
		Default("/run/netns").StringsVar(&cfg.netnsDirs)
	app.Flag("path.bpffs", "Mount point of the host's BPF filesystem, where Cilium pins its maps (tc/globals).").
		Default("/sys/fs/bpf").StringVar(&cfg.resolve.BPFFS)
	app.Flag("bpf.max-connections", "Size of the kernel map of connections: open ones plus those closed since the last scrape. Entries are preallocated, about 160 bytes of kernel memory each; a scrape after changes walks the map's hash table, whose size follows this.").
		Default(strconv.Itoa(bpf.DefaultMaxConnections)).Uint32Var(&cfg.maxConnections)
	app.Flag("bpf.conntrack-lookup", "Look connections up in conntrack tables from a BPF program (Linux 5.18 or later, with the conntrack kfuncs) instead of through netlink; --no-bpf.conntrack-lookup uses netlink only.").
		Default("true").BoolVar(&cfg.kernelLookup)
	app.Flag("collector.max-series", "Maximum number of label sets of the connection metrics; connections beyond are counted under the label value _other.").
		Default("10000").IntVar(&cfg.connections.MaxSeries)
	app.Flag("collector.series-idle", "How long a label set without open connections is kept.").
		Default("10m").DurationVar(&cfg.connections.SeriesIdle)
	app.Flag("collector.resolve-attempts", "Scrapes that may retry resolving an open connection whose NAT table could not be read.").
		Default("3").IntVar(&cfg.connections.ResolveAttempts)
	app.Flag("collector.tcp-stats", "Export the kernel's counts of each label set's connections: bytes sent and received, retransmits, round-trip time (four series per label set); --no-collector.tcp-stats leaves them out and reads no socket at scrapes.").
		Default("true").BoolVar(&cfg.connections.TCPStats)
	app.Flag("collector.name-timeout", "Longest a new connection waits for the kubelet's or Docker's cache to catch up with it, so that it is named by its pod or container; then it is exported with the names known and counted in connection_exporter_naming_timeouts_total.").
		Default(collector.DefaultNameTimeout.String()).DurationVar(&cfg.connections.NameTimeout)
	app.Flag("collector.name-wait", "Longest a scrape waits, within its deadline, for the cache refreshes its new connections asked for, so that they are exported named at this scrape rather than the next; 0 leaves them to the next scrape.").
		Default("1s").DurationVar(&cfg.connections.NameSettle)
	app.Flag("docker", "Name containers and resolve Swarm service addresses from the Docker Engine API (off when no engine answers: names come back when it does).").
		Default("true").BoolVar(&cfg.dockerEnabled)
	app.Flag("docker.host", "Docker Engine API address; default DOCKER_HOST or the standard socket.").
		StringVar(&cfg.docker.Host)
	app.Flag("docker.resync-interval", "Period of full resyncs of the container cache besides the events stream.").
		Default("5m").DurationVar(&cfg.docker.Resync)
	app.Flag("path.docker-netns", "Docker's directory of network namespaces, where Swarm load balancers live (lb_<network>).").
		Default("/run/docker/netns").StringVar(&cfg.resolve.DockerNetNS)
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
	cfg.web = webflag.AddFlags(app, defaultListenAddress)
	cfg.log = &promslog.Config{}
	promslogflag.AddFlags(app, cfg.log)
	app.Version(version.Print(exporterName))
	app.HelpFlag.Short('h')
	if _, err := app.Parse(args); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", exporterName, err)
		return cfg, 2
	}
	cfg.resolve.ProcFS, cfg.resolve.NetNSDirs = cfg.procfs, cfg.netnsDirs
	cfg.naming.ProcFS = cfg.procfs
	return cfg, -1
}

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
