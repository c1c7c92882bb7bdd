package kubelab

// containerdConfig is containerd's configuration (Debian's 1.6, format
// version 2): its own root, state and socket; the lab's sandbox image;
// runc's state in the lab's folder; the CNI plugins; cgroupfs, as the
// kubelet's; and restrict_oom_score_adj, since root here lacks
// CAP_SYS_RESOURCE and runc could not give a sandbox its -998 otherwise.
// Arguments: root, state, socket, sandbox image, runc's root, CNI
// binaries, CNI configuration folder.
const containerdConfig = `version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
`

// cniConfig gives each pod a veth pair to the node (ptp), routed rather
// than bridged, so that a pod's traffic to a service and its answers both
// cross the node's iptables, as kube-proxy needs, with no br_netfilter.
// Arguments: the pods' subnet, the address allocator's state folder.
const cniConfig = `{
  "cniVersion": "0.4.0",
  "name": "kubelab",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %q
      }
    }
  ]
}
`

// kubeletConfig is the kubelet's configuration: webhook authentication
// and authorization (a bearer token reviewed by the API server, as the
// exporter's service account token is; decisions cached a second, so that
// a test's RBAC change applies at once), cgroupfs under a root of the
// lab's own, cgroup v1 allowed (this host is v1 hybrid), swap allowed, no
// evictions on this shared disk. Arguments: client CA, cgroup root,
// containerd's socket, pods' log folder.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 1s
    cacheUnauthorizedTTL: 1s
cgroupDriver: cgroupfs
cgroupRoot: %s
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%s
podLogsDir: %s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
clusterDomain: cluster.local
protectKernelDefaults: false
makeIPTablesUtilChains: false
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "0%%"
  nodefs.inodesFree: "0%%"
  imagefs.available: "0%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
`

// kubeProxyConfig is kube-proxy's configuration. It leaves the host-wide
// conntrack settings alone. Arguments: kubeconfig, mode, cluster CIDR,
// node name, node address.
const kubeProxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
mode: %s
clusterCIDR: %s
hostnameOverride: %s
bindAddress: %s
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`
