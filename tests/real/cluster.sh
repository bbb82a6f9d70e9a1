#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, in k3s's shape, for the real-cluster test tier.
#
#   tests/real/cluster.sh start           install what is missing, make PKI/configs, start everything,
#                                         wait until the API is healthy and the node Ready + untainted
#   tests/real/cluster.sh stop [--purge]  stop all it started; remove pods' containers, mounts, netns,
#                                         the CNI bridge, the node interface, its iptables/ipset rules;
#                                         --purge also removes the state dir (PKI, etcd, images)
#   tests/real/cluster.sh status          what runs; exit 0 only if the API is healthy and the node Ready
#   tests/real/cluster.sh env             `export KUBECONFIG=... PATH=...` lines (eval "$(... env)")
#   tests/real/cluster.sh mkimage REF DIR [ENTRYPOINT...]   a docker-archive tar of DIR on stdout
#                                         (import it with `k3s ctr images import -`)
#
# What runs (all from /var/cache/ops-demo/bin, built by tests/real/build.sh, plus Debian packages):
#   etcd (127.0.0.1:2379), kube-apiserver (:6443; Pod Security admission on, as by default),
#   kube-controller-manager (all default controllers, incl. node-lifecycle and nodeipam),
#   kube-scheduler, containerd (its own config/socket/root: never touches Docker's),
#   kubelet, kube-proxy (iptables mode), CNI bridge 10.42.0.0/24 + portmap, CoreDNS as a Deployment
#   (kube-system, k8s-app=kube-dns, Service kube-dns 10.43.0.10), kube-router with only the
#   NetworkPolicy controller, and a servicelb stand-in (LoadBalancer Services get the node address).
#   Service CIDR 10.43.0.0/16, pod CIDR 10.42.0.0/16, cluster domain cluster.local, as in k3s.
#
# The node address: this kernel has no `dummy` link type, so the script makes a veth pair
# opsdemo0/opsdemo0p (both ends in the host namespace, so the link has carrier) and puts
# $OPS_DEMO_NODE_IP (default 10.41.0.1/32, a range nothing else here uses) on opsdemo0. It is the
# kubelet's --node-ip, the API server's --advertise-address, where the kubelet serves, and the
# LoadBalancer ingress IP. All traffic therefore stays on loopback/this host's own interfaces.
#
# Environment:
#   OPS_DEMO_CLUSTER_DIR  state dir (default /var/lib/ops-demo-cluster): pki/, etc/, logs/, run/, bin/,
#                         kubeconfig (admin, mode 600), etcd/, containerd/, kubelet/
#   OPS_DEMO_BIN          binaries (default ${OPS_DEMO_CACHE:-/var/cache/ops-demo}/bin)
#   OPS_DEMO_NODE_IP      node address (default 10.41.0.1)
#   OPS_DEMO_NODE_NAME    node name (default: this host's name, lower-cased, as k3s does)
#   OPS_DEMO_START_TIMEOUT  seconds for each wait in start (default 180)
set -euo pipefail
umask 022

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${OPS_DEMO_CLUSTER_DIR:-/var/lib/ops-demo-cluster}
BIN=${OPS_DEMO_BIN:-${OPS_DEMO_CACHE:-/var/cache/ops-demo}/bin}
NODE_IP=${OPS_DEMO_NODE_IP:-10.41.0.1}
NODE_NAME=${OPS_DEMO_NODE_NAME:-$(hostname | tr 'A-Z' 'a-z')}
TIMEOUT=${OPS_DEMO_START_TIMEOUT:-180}

RUN=/run/ops-demo-containerd            # containerd state (sockets, task bundles, netns)
SOCK=$RUN/containerd.sock
IF=opsdemo0 IF_PEER=opsdemo0p           # node address interface (veth pair)
BRIDGE=opsdemo-cni0                     # the CNI bridge
CNI_NET=ops-demo                        # CNI network name (results cached as /var/lib/cni/results/ops-demo-*)
CLUSTER_CIDR=10.42.0.0/16 POD_SUBNET=10.42.0.0/24 SERVICE_CIDR=10.43.0.0/16
API_SERVICE_IP=10.43.0.1 DNS_IP=10.43.0.10 DOMAIN=cluster.local
API_PORT=6443
PAUSE_IMAGE=localhost/ops-demo/pause:3.10
COREDNS_IMAGE=localhost/ops-demo/coredns:v1.14.7

PKI=$STATE/pki ETC=$STATE/etc LOGS=$STATE/logs PIDS=$STATE/run
KCFG=$STATE/kubeconfig
KUBECTL=$BIN/kubectl
COMPONENTS=(etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kube-router servicelb)

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root"; }
k() { "$KUBECTL" --kubeconfig "$KCFG" "$@"; }

# ---------------------------------------------------------------------------------------------------
# processes: pid files hold "pid starttime" so a recycled pid is never taken for ours
proc_start_time() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
pid_of() { # prints the pid if the component runs
  local f=$PIDS/$1.pid pid st
  [ -f "$f" ] || return 1
  read -r pid st < "$f" || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(proc_start_time "$pid")" = "$st" ] || return 1
  # a killed process that nobody reaped yet (its parent, init here, reaps late) is not running
  [ "$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" != Z ] || return 1
  echo "$pid"
}
alive() { pid_of "$1" >/dev/null; }

spawn() { # spawn NAME CMD... : in its own session, logging to $LOGS/NAME.log
  local name=$1; shift
  local logf=$LOGS/$name.log pidf=$PIDS/$name.pid
  [ -f "$logf" ] && mv -f "$logf" "$logf.prev"
  : > "$pidf.tmp"
  setsid bash -c 'echo $$ > "$0"; exec "$@"' "$pidf.tmp" "$@" >>"$logf" 2>&1 </dev/null &
  local i pid=""
  for i in $(seq 1 50); do pid=$(cat "$pidf.tmp" 2>/dev/null); [ -n "$pid" ] && break; sleep 0.1; done
  [ -n "$pid" ] || die "$name did not start (log: $logf)"
  echo "$pid $(proc_start_time "$pid")" > "$pidf"; rm -f "$pidf.tmp"
}

stop_procs() { # stop_procs GRACE NAME... : SIGTERM to each (its whole process group: spawn made it a
  # session leader, so helpers it started go too), SIGKILL to what still runs after GRACE seconds
  local grace=$1; shift
  local name pid i left
  local -A pids=()
  for name in "$@"; do
    if pid=$(pid_of "$name"); then
      pids[$name]=$pid
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for i in $(seq 1 $((grace * 10))); do
    left=0; for name in "${!pids[@]}"; do [ -d "/proc/${pids[$name]}" ] && left=1; done
    [ $left = 0 ] && break
    sleep 0.1
  done
  for name in "${!pids[@]}"; do
    pid=${pids[$name]}
    [ -d "/proc/$pid" ] && log "  $name (pid $pid) still runs ${grace}s after SIGTERM: SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || true
    [ -d "/proc/$pid" ] && { kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; }
    log "  stopped $name (pid $pid)"
  done
  for name in "$@"; do rm -f "$PIDS/$name.pid"; done
}

# wait_for SECONDS WHAT COMPONENT CMD... : bounded; fails fast when COMPONENT dies
wait_for() {
  local secs=$1 what=$2 comp=$3; shift 3
  local deadline=$((SECONDS + secs))
  while ! "$@" >/dev/null 2>&1; do
    if [ -n "$comp" ] && ! alive "$comp"; then
      tail -n 25 "$LOGS/$comp.log" >&2 2>/dev/null || true
      die "$comp exited while waiting for $what (log: $LOGS/$comp.log)"
    fi
    if [ $SECONDS -ge $deadline ]; then
      [ -n "$comp" ] && { tail -n 25 "$LOGS/$comp.log" >&2 2>/dev/null || true; }
      die "timed out after ${secs}s waiting for $what${comp:+ (log: $LOGS/$comp.log)}"
    fi
    sleep 0.5
  done
}

# ---------------------------------------------------------------------------------------------------
# prerequisites
ensure_packages() {
  local -A want=([etcd]=etcd-server [containerd]=containerd [ctr]=containerd [runc]=runc
    [iptables]=iptables [ipset]=ipset [conntrack]=conntrack [openssl]=openssl [socat]=socat
    [jq]=jq [curl]=curl [ip]=iproute2 [gcc]=gcc [nft]=nftables [mount]=mount)
  local missing=() c
  for c in "${!want[@]}"; do command -v "$c" >/dev/null 2>&1 || missing+=("${want[$c]}"); done
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/portmap ] && [ -x /usr/lib/cni/host-local ] || missing+=(containernetworking-plugins)
  [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -n "$(ls /usr/lib/*/libc.a 2>/dev/null)" ] || missing+=(libc6-dev)
  [ ${#missing[@]} -eq 0 ] && return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  log "installing from apt: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

ensure_binaries() {
  local need=() comps=() c
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    [ -x "$BIN/$c" ] || { need+=("$c"); comps+=(kube); }
  done
  [ -x "$BIN/coredns" ] || { need+=(coredns); comps+=(coredns); }
  [ -x "$BIN/kube-router" ] || { need+=(kube-router); comps+=(kube_router); }
  [ ${#need[@]} -eq 0 ] && return 0
  mapfile -t comps < <(printf '%s\n' "${comps[@]}" | sort -u)
  if grep -qs 'tests/real/build.sh' /proc/[0-9]*/cmdline 2>/dev/null; then
    die "missing in $BIN: ${need[*]}; a tests/real/build.sh is running: wait for it (log /var/cache/ops-demo/build.log) and retry"
  fi
  [ -x "$here/build.sh" ] || die "missing in $BIN: ${need[*]} (build them with tests/real/build.sh ${comps[*]})"
  log "missing in $BIN: ${need[*]}: building (tests/real/build.sh ${comps[*]})"
  "$here/build.sh" "${comps[@]}" >&2 || die "tests/real/build.sh ${comps[*]} failed"
}

# ---------------------------------------------------------------------------------------------------
# PKI (ECDSA P-256, 10 years), regenerated when node name/address change (the CA is kept)
gen_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }
sign() { # sign NAME SUBJECT EXTENSIONS
  local n=$1 subj=$2 ext=$3
  gen_key "$PKI/$n.key"
  openssl req -new -key "$PKI/$n.key" -subj "$subj" -out "$PKI/$n.csr" 2>/dev/null
  printf '%b\n' "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n$ext" > "$PKI/$n.ext"
  openssl x509 -req -in "$PKI/$n.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days 3650 -extfile "$PKI/$n.ext" -out "$PKI/$n.crt" 2>/dev/null
  rm -f "$PKI/$n.csr" "$PKI/$n.ext"
}
gen_pki() {
  mkdir -p "$PKI"; chmod 700 "$PKI"
  local params="$NODE_NAME $NODE_IP v1"
  if [ ! -f "$PKI/ca.crt" ]; then
    log "PKI: new CA"
    gen_key "$PKI/ca.key"
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=ops-demo-cluster-ca" -days 3650 -out "$PKI/ca.crt" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    rm -f "$PKI/.params"
  fi
  [ -f "$PKI/sa.key" ] || { gen_key "$PKI/sa.key"; openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null; }
  [ "$(cat "$PKI/.params" 2>/dev/null)" = "$params" ] && return 0
  log "PKI: certificates for node $NODE_NAME ($NODE_IP)"
  local client="extendedKeyUsage=clientAuth" server="extendedKeyUsage=serverAuth"
  sign apiserver "/CN=kube-apiserver" "$server\nsubjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$DOMAIN,DNS:localhost,DNS:$NODE_NAME,IP:127.0.0.1,IP:$API_SERVICE_IP,IP:$NODE_IP"
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  sign admin "/O=system:masters/CN=admin" "$client"
  sign kube-controller-manager "/CN=system:kube-controller-manager" "$client"
  sign kube-scheduler "/CN=system:kube-scheduler" "$client"
  sign kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
  sign kubelet-server "/CN=$NODE_NAME" "$server\nsubjectAltName=DNS:$NODE_NAME,DNS:localhost,IP:$NODE_IP,IP:127.0.0.1"
  sign kube-proxy "/CN=system:kube-proxy" "$client"
  sign kube-router "/CN=system:ops-demo:kube-router" "$client"
  echo "$params" > "$PKI/.params"
}

kubeconfig() { # kubeconfig FILE USER CERTNAME SERVER
  local f=$1 user=$2 n=$3 server=$4
  umask 077
  cat > "$f" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ops-demo
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 < "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 < "$PKI/$n.crt")
    client-key-data: $(base64 -w0 < "$PKI/$n.key")
contexts:
- name: default
  context: {cluster: ops-demo, user: $user}
current-context: default
EOF
  umask 022
}

# ---------------------------------------------------------------------------------------------------
# configuration files (rewritten at every start; cheap)
write_configs() {
  mkdir -p "$ETC" "$STATE/cni/net.d" "$STATE/cni/ipam" "$STATE/bin" "$STATE/pod-logs" "$STATE/kubelet"
  local local_api="https://127.0.0.1:$API_PORT"
  kubeconfig "$KCFG" admin admin "$local_api"
  kubeconfig "$ETC/kube-controller-manager.kubeconfig" system:kube-controller-manager kube-controller-manager "$local_api"
  kubeconfig "$ETC/kube-scheduler.kubeconfig" system:kube-scheduler kube-scheduler "$local_api"
  kubeconfig "$ETC/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet-client "$local_api"
  kubeconfig "$ETC/kube-proxy.kubeconfig" system:kube-proxy kube-proxy "$local_api"
  kubeconfig "$ETC/kube-router.kubeconfig" system:ops-demo:kube-router kube-router "$local_api"

  cat > "$ETC/containerd.toml" <<EOF
# containerd for the ops-demo cluster: own root, state and socket, so Docker's containerd is untouched
version = 2
root = "$STATE/containerd"
state = "$RUN"
oom_score = 0
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$RUN/containerd.sock.ttrpc"
[debug]
  address = "$RUN/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails "can't get final child's PID from pipe: EOF"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
    max_conf_num = 1
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd-opt"
EOF

  cat > "$STATE/cni/net.d/10-ops-demo.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NET",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "isDefaultGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_SUBNET"}]],
        "dataDir": "$STATE/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
  ]
}
EOF

  cat > "$ETC/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-server.crt
tlsPrivateKeyFile: $PKI/kubelet-server.key
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
clusterDNS: [$DNS_IP]
clusterDomain: $DOMAIN
resolvConf: /etc/resolv.conf
podLogsDir: $STATE/pod-logs
# a busy disk must not evict the tests' pods, and imported images (imagePullPolicy: Never) must not
# be garbage-collected
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%", imagefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
maxPods: 110
EOF

  cat > "$ETC/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $ETC/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
mode: iptables
clusterCIDR: $CLUSTER_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [primary]
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false, masqueradeAll: false, minSyncPeriod: 1s, syncPeriod: 30s}
EOF

  # the k3s executable: `k3s ctr ...`, `k3s kubectl ...`
  cat > "$STATE/bin/k3s" <<EOF
#!/bin/sh
# k3s stand-in of the ops-demo cluster (tests/real/cluster.sh): ctr and kubectl only
case "\${1:-}" in
  # = ctr --address <socket> --namespace k8s.io ...; the namespace given through the environment, as
  # k3s does, so that an explicit -n/--namespace still works (ctr refuses the flag twice)
  ctr) shift; CONTAINERD_NAMESPACE=k8s.io exec ctr --address "$SOCK" "\$@" ;;
  kubectl) shift; KUBECONFIG="\${KUBECONFIG:-$KCFG}" exec "$KUBECTL" "\$@" ;;
  --version|-v|version) echo "k3s version v1.34.4+ops-demo (stand-in: tests/real/cluster.sh)"; exit 0 ;;
  *) echo "k3s stand-in: only 'k3s ctr ...' and 'k3s kubectl ...' are implemented" >&2; exit 2 ;;
esac
EOF
  chmod 755 "$STATE/bin/k3s"
  ln -sfn "$KUBECTL" "$STATE/bin/kubectl"
}

write_addons() {
  cat > "$ETC/addons.yaml" <<EOF
# RBAC of the NetworkPolicy controller (kube-router runs as user system:ops-demo:kube-router)
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "ops-demo:kube-router"}
rules:
- apiGroups: [""]
  resources: [namespaces, pods, services, nodes, endpoints]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "ops-demo:kube-router"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "ops-demo:kube-router"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:ops-demo:kube-router"}
---
# CoreDNS, as k3s deploys it
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
  labels: {kubernetes.io/bootstrapping: rbac-defaults}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
  labels: {kubernetes.io/bootstrapping: rbac-defaults}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:coredns}
subjects:
- {kind: ServiceAccount, name: coredns, namespace: kube-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health {
          lameduck 5s
        }
        ready
        kubernetes $DOMAIN in-addr.arpa ip6.arpa {
          pods insecure
          fallthrough in-addr.arpa ip6.arpa
        }
        forward . /etc/resolv.conf
        cache 30
        loop
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  replicas: 1
  revisionHistoryLimit: 0
  strategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata:
      labels: {k8s-app: kube-dns}
    spec:
      priorityClassName: system-cluster-critical
      serviceAccountName: coredns
      dnsPolicy: Default
      nodeSelector: {kubernetes.io/os: linux}
      tolerations:
      - {key: CriticalAddonsOnly, operator: Exists}
      - {key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}
      - {key: node-role.kubernetes.io/master, operator: Exists, effect: NoSchedule}
      containers:
      - name: coredns
        image: $COREDNS_IMAGE
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        resources:
          limits: {memory: 170Mi}
          requests: {cpu: 100m, memory: 70Mi}
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {add: [NET_BIND_SERVICE], drop: [all]}
        livenessProbe:
          httpGet: {path: /health, port: 8080, scheme: HTTP}
          initialDelaySeconds: 60
          periodSeconds: 10
          timeoutSeconds: 1
          failureThreshold: 3
        readinessProbe:
          httpGet: {path: /ready, port: 8181, scheme: HTTP}
          periodSeconds: 2
          timeoutSeconds: 1
          failureThreshold: 3
        volumeMounts:
        - {name: config-volume, mountPath: /etc/coredns, readOnly: true}
      volumes:
      - name: config-volume
        configMap:
          name: coredns
          items: [{key: Corefile, path: Corefile}]
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/cluster-service: "true", kubernetes.io/name: CoreDNS}
spec:
  selector: {k8s-app: kube-dns}
  clusterIP: $DNS_IP
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
EOF
}

# ---------------------------------------------------------------------------------------------------
# images made here (no registry is reachable): a static pause and CoreDNS, as docker-archive tars
mkimage() { # mkimage REF DIR [ENTRYPOINT...] > tar ; user from $MKIMAGE_USER
  local ref=$1 dir=$2; shift 2
  local tmp; tmp=$(mktemp -d)
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$tmp/layer.tar" -C "$dir" .
  local lsha; lsha=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
  mkdir "$tmp/$lsha"; mv "$tmp/layer.tar" "$tmp/$lsha/layer.tar"
  local ep; ep=$(printf '%s\n' "$@" | jq -R . | jq -sc 'map(select(. != ""))')
  jq -nc --arg d "sha256:$lsha" --argjson ep "$ep" --arg user "${MKIMAGE_USER:-}" \
    '{architecture:"amd64",os:"linux",created:"1970-01-01T00:00:00Z",
      config:({Env:["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
              + (if ($ep|length)>0 then {Entrypoint:$ep} else {} end)
              + (if $user != "" then {User:$user} else {} end)),
      rootfs:{type:"layers",diff_ids:[$d]},history:[{created:"1970-01-01T00:00:00Z",created_by:"tests/real/cluster.sh mkimage"}]}' > "$tmp/config.json"
  local csha; csha=$(sha256sum "$tmp/config.json" | cut -d' ' -f1)
  mv "$tmp/config.json" "$tmp/$csha.json"
  jq -nc --arg c "$csha.json" --arg r "$ref" --arg l "$lsha/layer.tar" '[{Config:$c,RepoTags:[$r],Layers:[$l]}]' > "$tmp/manifest.json"
  tar -C "$tmp" -cf - manifest.json "$csha.json" "$lsha"
  rm -rf "$tmp"
}

ctr_() { ctr --address "$SOCK" --namespace k8s.io "$@"; }

ensure_images() {
  local d=$STATE/images; mkdir -p "$d"
  local have; have=$(ctr_ images ls -q 2>/dev/null || true)
  # pause: a static C program, as Kubernetes' own pause
  local pause_src_sum; pause_src_sum=$(pause_c | sha256sum | cut -d' ' -f1)
  if ! grep -qx "$PAUSE_IMAGE" <<<"$have" || [ "$(cat "$d/.pause.sum" 2>/dev/null)" != "$pause_src_sum" ]; then
    log "image $PAUSE_IMAGE: building (static pause) and importing"
    rm -rf "$d/pause"; mkdir -p "$d/pause/root"
    pause_c > "$d/pause/pause.c"
    gcc -static -Os -o "$d/pause/root/pause" "$d/pause/pause.c" || die "gcc -static pause.c failed"
    strip "$d/pause/root/pause" 2>/dev/null || true
    MKIMAGE_USER=65535:65535 mkimage "$PAUSE_IMAGE" "$d/pause/root" /pause > "$d/pause.tar"
    ctr_ images import "$d/pause.tar" >/dev/null || die "importing $PAUSE_IMAGE failed"
    echo "$pause_src_sum" > "$d/.pause.sum"
  fi
  local cd_sum; cd_sum=$(sha256sum "$BIN/coredns" | cut -d' ' -f1)
  if ! grep -qx "$COREDNS_IMAGE" <<<"$have" || [ "$(cat "$d/.coredns.sum" 2>/dev/null)" != "$cd_sum" ]; then
    log "image $COREDNS_IMAGE: building from $BIN/coredns and importing"
    rm -rf "$d/coredns"; mkdir -p "$d/coredns/root/etc"
    cp "$BIN/coredns" "$d/coredns/root/coredns"
    printf 'root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' > "$d/coredns/root/etc/passwd"
    mkimage "$COREDNS_IMAGE" "$d/coredns/root" /coredns > "$d/coredns.tar"
    ctr_ images import "$d/coredns.tar" >/dev/null || die "importing $COREDNS_IMAGE failed"
    echo "$cd_sum" > "$d/.coredns.sum"
  fi
}

pause_c() {
  cat <<'EOF'
/* the pod sandbox's pause process: holds the namespaces, reaps zombies, exits on SIGINT/SIGTERM */
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
static void sigdown(int signo) { (void)signo; _exit(0); }
static void sigreap(int signo) { (void)signo; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction down = {0}, reap = {0};
  down.sa_handler = sigdown;
  if (sigaction(SIGINT, &down, NULL) < 0 || sigaction(SIGTERM, &down, NULL) < 0) return 1;
  reap.sa_handler = sigreap;
  reap.sa_flags = SA_NOCLDSTOP;
  if (sigaction(SIGCHLD, &reap, NULL) < 0) return 2;
  if (getpid() != 1) fprintf(stderr, "pause: not running as PID 1\n");
  for (;;) pause();
  return 42;
}
EOF
}

# ---------------------------------------------------------------------------------------------------
# host network: node address interface, forwarding, sysctls
setup_network() {
  # the CNI bridge, made up front (the bridge plugin adopts it) so that the Service CIDR can be routed
  # into it: a packet from the host to a Service IP that kube-proxy does not (yet) translate then dies
  # on our own bridge instead of leaving through the default route
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge || die "cannot create bridge $BRIDGE"
  ip link set "$BRIDGE" up
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE"
  if ! ip link show "$IF" >/dev/null 2>&1; then
    ip link add "$IF" type veth peer name "$IF_PEER" || die "cannot create veth $IF"
  fi
  sysctl -qw "net.ipv6.conf.$IF.disable_ipv6=1" "net.ipv6.conf.$IF_PEER.disable_ipv6=1" 2>/dev/null || true
  ip addr replace "$NODE_IP/32" dev "$IF"
  ip link set "$IF" up; ip link set "$IF_PEER" up
  # sysctls that the kubelet or this cluster change: remember the host's values once, restored by stop
  if [ ! -f "$STATE/sysctl.orig" ]; then
    local s
    for s in vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops; do
      echo "$s=$(sysctl -n "$s" 2>/dev/null)"
    done > "$STATE/sysctl.orig"
  fi
  sysctl -qw net.ipv4.ip_forward=1
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null || true
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || log "warning: cannot set net.bridge.bridge-nf-call-iptables=1 (NetworkPolicy on bridged traffic needs it)"
  sysctl -qw net.bridge.bridge-nf-call-ip6tables=1 2>/dev/null || true
  # Docker sets FORWARD's policy to DROP: accept the pod network (appended, so kube-router's
  # NetworkPolicy chain, which it keeps first in FORWARD, decides before this)
  iptables -w -N OPS-DEMO-FORWARD 2>/dev/null || true
  iptables -w -F OPS-DEMO-FORWARD
  iptables -w -A OPS-DEMO-FORWARD -s "$CLUSTER_CIDR" -m comment --comment "ops-demo cluster: pod network" -j ACCEPT
  iptables -w -A OPS-DEMO-FORWARD -d "$CLUSTER_CIDR" -m comment --comment "ops-demo cluster: pod network" -j ACCEPT
  iptables -w -C FORWARD -j OPS-DEMO-FORWARD 2>/dev/null || iptables -w -A FORWARD -j OPS-DEMO-FORWARD
}

# ---------------------------------------------------------------------------------------------------
healthy() { # API ready and node Ready
  curl -sfk --max-time 5 "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1 || return 1
  node_ready
}
node_ready() {
  [ "$(k get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
node_untainted() { [ -z "$(k get node "$NODE_NAME" -o jsonpath='{.spec.taints}' 2>/dev/null)" ] && node_ready; }
etcd_ok() { local h; h=$(curl -sf --max-time 3 http://127.0.0.1:2379/health) && grep -q '"health":"true"' <<<"$h"; }
api_ok() { curl -sfk --max-time 3 "https://127.0.0.1:$API_PORT/readyz" >/dev/null; }
https_ok() { curl -sfk --max-time 3 "https://127.0.0.1:$1/healthz" >/dev/null; }
http_ok() { curl -sf --max-time 3 "$1" >/dev/null; }
ctr_ok() { ctr --address "$SOCK" version >/dev/null 2>&1; }
# CoreDNS serves: its pod is Ready with a container started after $1 (when given: after a warm start
# the pod's, Deployment's and EndpointSlice's status are stale until the kubelet reports the new
# container) and a real DNS query (A kubernetes.default.svc.<domain>) to the kube-dns Service VIP,
# through kube-proxy, gets an answer
# shellcheck disable=SC2120 # (wait_for passes the argument)
dns_ready() {
  local since=${1:-} st
  st=$(k -n kube-system get pods -l k8s-app=kube-dns -o jsonpath='{range .items[*]}{.status.containerStatuses[0].ready}{" "}{.status.containerStatuses[0].state.running.startedAt}{"\n"}{end}' 2>/dev/null) || return 1
  awk -v since="$since" '$1 == "true" && $2 >= since { ok = 1 } END { exit !ok }' <<<"$st" || return 1
  dns_answers
}
dns_answers() {
  local qname="" label out
  local IFS=.
  for label in kubernetes default svc $DOMAIN; do qname+=$(printf '\\x%02x%s' "${#label}" "$label"); done
  unset IFS
  # the query goes out in one write (one datagram): printf to a file, then one dd block
  out=$(timeout 3 bash -c 'q=$(mktemp) && trap "rm -f \"\$q\"" EXIT || exit 1
    printf "\x4f\x44\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00$1\x00\x00\x01\x00\x01" > "$q"
    exec 3<>"/dev/udp/$0/53" || exit 1
    dd if="$q" bs=1500 count=1 >&3 2>/dev/null
    dd bs=1500 count=1 <&3 2>/dev/null | od -An -tu1 -v' "$DNS_IP" "$qname" 2>/dev/null) || return 1
  # shellcheck disable=SC2086
  set -- $out
  # our id 0x4f44, a response (QR), rcode 0, at least one answer
  [ "${1:-}" = 79 ] && [ "${2:-}" = 68 ] && [ $(( ${3:-0} & 128 )) -ne 0 ] && [ $(( ${4:-1} & 15 )) -eq 0 ] &&
    [ $(( ${7:-0} * 256 + ${8:-0} )) -ge 1 ]
}
all_alive() { local c; for c in "${COMPONENTS[@]}"; do alive "$c" || return 1; done; }
any_alive() { local c; for c in "${COMPONENTS[@]}"; do alive "$c" && return 0; done; return 1; }

cmd_start() {
  need_root
  local t0=$SECONDS since
  since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  mkdir -p "$STATE" "$LOGS" "$PIDS"
  if all_alive && healthy && dns_ready; then
    log "already running and healthy (node $NODE_NAME, $NODE_IP); nothing to do"
    return 0
  fi
  if any_alive || [ -e "$RUN" ] || ip link show "$IF" >/dev/null 2>&1; then
    log "a previous cluster is (half) running: stopping it first"
    cmd_stop
  fi
  log "starting the ops-demo cluster (state $STATE, node $NODE_NAME at $NODE_IP)"
  ensure_packages
  ensure_binaries
  gen_pki
  write_configs
  write_addons
  setup_network
  mkdir -p "$RUN" "$STATE/etcd"; chmod 700 "$STATE/etcd"

  spawn etcd etcd --name ops-demo --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster ops-demo=http://127.0.0.1:2380 --initial-cluster-state new \
    --quota-backend-bytes 2147483648 --snapshot-count 10000 --logger zap --log-level warn
  spawn containerd containerd --config "$ETC/containerd.toml"
  wait_for "$TIMEOUT" "etcd health" etcd etcd_ok
  log "etcd up"

  spawn kube-apiserver "$BIN/kube-apiserver" \
    --advertise-address="$NODE_IP" --bind-address=0.0.0.0 --secure-port="$API_PORT" \
    --etcd-servers=http://127.0.0.1:2379 \
    --allow-privileged=true --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --service-account-issuer="https://kubernetes.default.svc.$DOMAIN" \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" --service-node-port-range=30000-32767 \
    --profiling=false --v=1
  wait_for "$TIMEOUT" "containerd socket" containerd ctr_ok
  log "containerd up"
  ensure_images
  wait_for "$TIMEOUT" "kube-apiserver /readyz" kube-apiserver api_ok
  log "kube-apiserver ready"
  k apply -f "$ETC/addons.yaml" >"$LOGS/addons.log" 2>&1 || { cat "$LOGS/addons.log" >&2; die "applying addons failed (log: $LOGS/addons.log)"; }

  spawn kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$ETC/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$ETC/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$ETC/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10257 --leader-elect=false \
    --controllers='*' --allocate-node-cidrs=true --cluster-cidr="$CLUSTER_CIDR" --node-cidr-mask-size=24 \
    --service-cluster-ip-range="$SERVICE_CIDR" --configure-cloud-routes=false \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --root-ca-file="$PKI/ca.crt" --service-account-private-key-file="$PKI/sa.key" \
    --use-service-account-credentials=true --profiling=false --v=1
  spawn kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig="$ETC/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$ETC/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$ETC/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false --profiling=false --v=1
  spawn kubelet "$BIN/kubelet" --config="$ETC/kubelet.yaml" --kubeconfig="$ETC/kubelet.kubeconfig" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --root-dir="$STATE/kubelet" --v=1
  spawn kube-proxy "$BIN/kube-proxy" --config="$ETC/kube-proxy.yaml" --v=1
  spawn servicelb "$here/$(basename "${BASH_SOURCE[0]}")" _servicelb

  wait_for "$TIMEOUT" "kube-controller-manager /healthz" kube-controller-manager https_ok 10257
  wait_for "$TIMEOUT" "kube-scheduler /healthz" kube-scheduler https_ok 10259
  wait_for "$TIMEOUT" "kubelet /healthz" kubelet http_ok http://127.0.0.1:10248/healthz
  wait_for "$TIMEOUT" "node $NODE_NAME registered" kubelet k get node "$NODE_NAME"
  # kube-router exits when its node does not exist yet
  spawn kube-router "$BIN/kube-router" --kubeconfig="$ETC/kube-router.kubeconfig" \
    --hostname-override="$NODE_NAME" --run-firewall=true --run-router=false --run-service-proxy=false \
    --enable-cni=false --enable-ipv4=true --enable-ipv6=false \
    --service-cluster-ip-range="$SERVICE_CIDR" --health-port=20244 --metrics-port=0 --v=1
  # k3s' labels for its server node (the kubelet may not set node-role labels itself)
  k label node "$NODE_NAME" --overwrite node-role.kubernetes.io/control-plane=true node-role.kubernetes.io/master=true \
    node.kubernetes.io/instance-type=k3s >/dev/null 2>&1 || true
  wait_for "$TIMEOUT" "node $NODE_NAME Ready" kubelet node_ready
  wait_for "$TIMEOUT" "node $NODE_NAME untainted" kube-controller-manager node_untainted
  log "node $NODE_NAME Ready and untainted"
  wait_for "$TIMEOUT" "kube-proxy /healthz" kube-proxy http_ok http://127.0.0.1:10256/healthz
  wait_for "$TIMEOUT" "kube-router /healthz" kube-router http_ok http://127.0.0.1:20244/healthz
  wait_for "$TIMEOUT" "CoreDNS ready (kubectl -n kube-system get pods -l k8s-app=kube-dns)" kubelet dns_ready "$since"
  log "CoreDNS ready at $DNS_IP"
  all_alive || { cmd_status >&2 || true; die "a component exited during start (logs: $LOGS)"; }
  log "cluster up in $((SECONDS - t0)) s: node $NODE_NAME ($NODE_IP) Ready; kubeconfig $KCFG"
  log "use it: eval \"\$($0 env)\"; kubectl get pods -A; k3s ctr images ls"
}

# ---------------------------------------------------------------------------------------------------
# servicelb stand-in: LoadBalancer Services (without a loadBalancerClass) get status.loadBalancer
# ingress = the node address; kube-proxy then routes <node address>:<port> to them
cmd_servicelb() {
  local lbip="$NODE_IP" ns name type class ips
  log "servicelb: LoadBalancer Services get ingress $lbip"
  while true; do
    # --watch lists every Service first, then streams changes; re-listed every minute, so a patch
    # that failed is retried. The pipeline ends non-zero (timeout's 124, or kubectl while the API
    # server is not up): "|| true", or errexit would end this loop and every later LoadBalancer
    # Service would stay without an address
    timeout 60 "$KUBECTL" --kubeconfig "$KCFG" get services -A --watch \
      -o 'jsonpath={.metadata.namespace}{"|"}{.metadata.name}{"|"}{.spec.type}{"|"}{.spec.loadBalancerClass}{"|"}{.status.loadBalancer.ingress[*].ip}{"\n"}' 2>/dev/null |
    while IFS='|' read -r ns name type class ips; do
      [ "$type" = LoadBalancer ] && [ -z "$class" ] || continue
      [ "$ips" = "$lbip" ] && continue
      if "$KUBECTL" --kubeconfig "$KCFG" -n "$ns" patch service "$name" --subresource=status --type=merge \
          -p "{\"status\":{\"loadBalancer\":{\"ingress\":[{\"ip\":\"$lbip\",\"ipMode\":\"VIP\"}]}}}" >/dev/null 2>&1; then
        log "servicelb: $ns/$name -> $lbip"
      else
        log "servicelb: patching $ns/$name failed; retried at the next listing"
      fi
    done || true
    sleep 2
  done
}

# ---------------------------------------------------------------------------------------------------
cni_teardown() { # CNI DEL for every sandbox this cluster attached, from libcni's result cache
  local f cid netns ifname conf result cniargs caps n i plug type
  for f in /var/lib/cni/results/"$CNI_NET"-*; do
    [ -f "$f" ] || continue
    cid=$(jq -r .containerId "$f"); netns=$(jq -r '.netns // ""' "$f"); ifname=$(jq -r '.ifName // "eth0"' "$f")
    # containerd 1.6's libcni does not cache the netns: the sandbox's OCI spec has it (the bridge
    # plugin removes the veth and the masquerade rules only when it gets the netns)
    if [ -z "$netns" ] && ctr_ok; then
      netns=$(ctr_ containers info "$cid" 2>/dev/null | jq -r '[.Spec.linux.namespaces[]? | select(.type == "network") | .path][0] // ""' 2>/dev/null || true)
    fi
    [ -z "$netns" ] || [ -e "$netns" ] || netns=""
    conf=$(jq -r .config "$f" | base64 -d 2>/dev/null) || conf=""
    [ -n "$conf" ] || conf=$(cat "$STATE/cni/net.d/10-ops-demo.conflist" 2>/dev/null) || conf=""
    result=$(jq -c '.result // {}' "$f")
    cniargs=$(jq -r '[.cniArgs[]? | join("=")] | join(";")' "$f")
    caps=$(jq -c '.capabilityArgs // {}' "$f")
    n=$(jq '.plugins | length' <<<"$conf" 2>/dev/null || echo 0)
    for ((i = n - 1; i >= 0; i--)); do
      plug=$(jq -c --argjson i "$i" --argjson prev "$result" --argjson caps "$caps" \
        '. as $l | $l.plugins[$i] as $p | $p + {name: $l.name, cniVersion: $l.cniVersion, prevResult: $prev}
         + (if ($p.capabilities // {}) | length > 0
            then {runtimeConfig: ($caps | with_entries(select(.key as $k | ($p.capabilities[$k] // false))))}
            else {} end)' <<<"$conf")
      type=$(jq -r .type <<<"$plug")
      [ -x "/usr/lib/cni/$type" ] || continue
      CNI_COMMAND=DEL CNI_CONTAINERID="$cid" CNI_NETNS="$netns" CNI_IFNAME="$ifname" CNI_PATH=/usr/lib/cni \
        CNI_ARGS="$cniargs" "/usr/lib/cni/$type" <<<"$plug" >/dev/null 2>&1 || true
    done
    rm -f "$f" /var/lib/cni/results/cni-loopback-"$cid"-*
  done
}

remove_pods() { # containerd still running: CNI teardown, kill and remove every container of k8s.io
  cni_teardown
  local t c
  for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
  for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true; done
  for c in $(ctr_ containers ls -q 2>/dev/null); do
    ctr_ containers delete "$c" >/dev/null 2>&1 || true
    rm -f /var/lib/cni/results/cni-loopback-"$c"-*
  done
}

kill_leftovers() { # processes of pods (kubepods cgroups) and shims of our containerd, by pid
  local victims="" p f
  for f in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$f" ] || continue
    victims+=" $(find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null | tr '\n' ' ')"
  done
  local cmd id ns socks=""
  for f in /proc/[0-9]*/cmdline; do
    p=${f#/proc/}; p=${p%/cmdline}
    case "$(readlink "/proc/$p/exe" 2>/dev/null)" in */containerd-shim*) ;; *) continue ;; esac
    cmd=$(tr '\0' ' ' < "$f" 2>/dev/null) || continue
    grep -q -- "-address $SOCK" <<<"$cmd" || continue
    victims+=" $p"
    # a killed shim leaves its socket: /run/containerd/s/sha256(<containerd address>/<namespace>/<id>)
    id=$(sed -n 's/.* -id \([^ ]*\).*/\1/p' <<<"$cmd"); ns=$(sed -n 's/.* -namespace \([^ ]*\).*/\1/p' <<<"$cmd")
    [ -n "$id" ] && socks+=" /run/containerd/s/$(printf '%s' "$SOCK/${ns:-k8s.io}/$id" | sha256sum | cut -d' ' -f1)"
  done
  for p in $victims; do [ "$p" != $$ ] && kill -KILL "$p" 2>/dev/null || true; done
  [ -z "${victims// /}" ] || sleep 0.5
  for f in $socks; do rm -f "$f"; done
  rmdir /run/containerd/s /run/containerd 2>/dev/null || true   # only when empty
  for f in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$f" ] && find "$f" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

unmount_all() { # every mount under the state dir and containerd's state dir, deepest first
  local m i
  for i in 1 2 3; do
    mapfile -t m < <(awk -v a="$STATE/" -v b="$RUN/" -v c="$RUN" '{p=$5; gsub(/\\040/, " ", p); if (index(p, a) == 1 || index(p, b) == 1 || p == c) print p}' /proc/self/mountinfo | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
    [ ${#m[@]} -eq 0 ] && return 0
    local x; for x in "${m[@]}"; do umount "$x" 2>/dev/null || umount -l "$x" 2>/dev/null || true; done
  done
}

sweep_iptables() { # rules and chains of kube-proxy, kubelet, kube-router, CNI plugins and this script
  local ipt t rules line c chains
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for t in filter nat mangle raw; do
      rules=$("$ipt" -w -t "$t" -S 2>/dev/null) || continue
      while read -r line; do
        [ -n "$line" ] && eval "$ipt -w -t $t -D ${line#-A }" 2>/dev/null || true
      done < <(grep -E '^-A ' <<<"$rules" | grep -Ev '^-A (KUBE-|CNI-|OPS-DEMO)' | grep -E -- '-j (KUBE-|CNI-|OPS-DEMO)|ops-demo cluster' || true)
      chains=$(grep -E '^-N (KUBE-|CNI-|OPS-DEMO)' <<<"$rules" | awk '{print $2}' || true)
      for c in $chains; do "$ipt" -w -t "$t" -F "$c" 2>/dev/null || true; done
      for c in $chains; do "$ipt" -w -t "$t" -X "$c" 2>/dev/null || true; done
    done
  done
  if command -v ipset >/dev/null; then
    for c in $(ipset list -n 2>/dev/null | grep -E '^(KUBE-|kube-router|inet6:KUBE-)' || true); do ipset destroy "$c" 2>/dev/null || true; done
  fi
  if command -v nft >/dev/null; then
    for t in "ip kube-proxy" "ip6 kube-proxy"; do nft list table $t >/dev/null 2>&1 && nft delete table $t 2>/dev/null || true; done
  fi
}

cmd_stop() {
  need_root
  local purge=${1:-}
  log "stopping the ops-demo cluster (state $STATE)"
  # node side first (nothing may restart pods or rewrite rules while they are removed), then pods,
  # then the control plane (kube-apiserver's graceful shutdown waits on its own watch caches for
  # up to a minute; etcd holds every write already, so it gets 5 s), etcd and containerd last
  stop_procs 10 servicelb kube-router kube-proxy kubelet
  if alive containerd && ctr_ok; then remove_pods; fi
  stop_procs 5 kube-scheduler kube-controller-manager kube-apiserver
  stop_procs 20 etcd containerd
  kill_leftovers
  unmount_all
  cni_teardown   # whatever a crashed containerd left in the CNI cache
  rm -f /var/lib/cni/results/"$CNI_NET"-* 2>/dev/null || true
  # rules: the components' own cleanups, then a sweep for what they leave
  local clog=/dev/null cl2=/dev/null
  [ -d "$LOGS" ] && { clog=$LOGS/kube-proxy-cleanup.log; cl2=$LOGS/kube-router-cleanup.log; }
  [ -x "$BIN/kube-proxy" ] && timeout 60 "$BIN/kube-proxy" --cleanup >"$clog" 2>&1 || true
  [ -x "$BIN/kube-router" ] && timeout 60 "$BIN/kube-router" --cleanup-config >"$cl2" 2>&1 || true
  sweep_iptables
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE" 2>/dev/null || true
  ip link show "$IF" >/dev/null 2>&1 && ip link del "$IF" 2>/dev/null || true
  rm -rf "$RUN" "$STATE/cni/ipam"
  if [ -f "$STATE/sysctl.orig" ]; then
    local s; while read -r s; do [ -n "${s#*=}" ] && sysctl -qw "$s" 2>/dev/null || true; done < "$STATE/sysctl.orig"
    rm -f "$STATE/sysctl.orig"
  fi
  if [ "$purge" = --purge ]; then
    rm -rf "$STATE"
    log "state dir $STATE removed"
  fi
  log "stopped"
}

cmd_status() {
  local c pid rc=0
  for c in "${COMPONENTS[@]}"; do
    if pid=$(pid_of "$c"); then printf '  %-24s running (pid %s)\n' "$c" "$pid"
    else printf '  %-24s not running\n' "$c"; rc=1; fi
  done
  ip -br addr show "$IF" 2>/dev/null | sed 's/^/  interface /' || echo "  interface $IF absent"
  local api=false
  if api_ok; then api=true; echo "  API: healthy (https://127.0.0.1:$API_PORT)"; else echo "  API: not healthy"; rc=1; fi
  if $api && node_ready; then
    echo "  node $NODE_NAME: Ready (taints: $(k get node "$NODE_NAME" -o jsonpath='{.spec.taints}' 2>/dev/null || true))"
  else
    echo "  node $NODE_NAME: not Ready"; rc=1
  fi
  if $api; then dns_ready && echo "  CoreDNS: ready" || echo "  CoreDNS: not ready"; fi
  return $rc
}

cmd_env() {
  printf "export KUBECONFIG='%s'\n" "$KCFG"
  printf "export PATH='%s':\"\$PATH\"\n" "$STATE/bin"
}

# sourcing with OPS_DEMO_CLUSTER_SOURCED=1 gives the functions without running a subcommand
[ "${OPS_DEMO_CLUSTER_SOURCED:-}" = 1 ] && return 0
case "${1:-}" in
  start) cmd_start ;;
  stop) shift; cmd_stop "${1:-}" ;;
  status) cmd_status ;;
  env) cmd_env ;;
  mkimage) shift; [ $# -ge 2 ] || die "usage: $0 mkimage REF DIR [ENTRYPOINT...]"; mkimage "$@" ;;
  _servicelb) cmd_servicelb ;;
  *) echo "usage: $0 start | stop [--purge] | status | env | mkimage REF DIR [ENTRYPOINT...]" >&2; exit 2 ;;
esac
