#!/usr/bin/env bash
# Smoke test of tests/real/cluster.sh on this machine (root; bounded; non-zero exit on any failure):
#   start the cluster (time it); node Ready and untainted; `k3s kubectl`, `k3s ctr`;
#   a namespace labelled pod-security.kubernetes.io/enforce=restricted refuses a privileged pod;
#   a locally built image (docker build + `docker save | k3s ctr images import -`, or cluster.sh
#   mkimage when no Docker engine answers) runs with imagePullPolicy: Never under `restricted`;
#   a pod resolves kubernetes.default.svc.cluster.local and another Service's name (read with
#   `kubectl logs`); `kubectl exec`; a LoadBalancer Service answers on <node address>:<port> from the
#   host; `kubectl port-forward`; a default-deny NetworkPolicy blocks a pod's traffic and allow rules
#   (DNS egress to kube-system k8s-app=kube-dns, as the project's) admit it;
#   stop, warm start (time it), stop; nothing of the cluster remains (processes, interfaces, mounts,
#   iptables chains, ipsets, cgroups, CNI cache).
#
#   tests/real/smoke.sh [--keep]     --keep: leave the cluster running at the end (skips the last checks)
# Env: as cluster.sh (OPS_DEMO_CLUSTER_DIR, OPS_DEMO_NODE_IP, ...); SMOKE_LB_PORT (default 18080).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cluster=$here/cluster.sh
STATE=${OPS_DEMO_CLUSTER_DIR:-/var/lib/ops-demo-cluster}
BIN=${OPS_DEMO_BIN:-${OPS_DEMO_CACHE:-/var/cache/ops-demo}/bin}
NODE_IP=${OPS_DEMO_NODE_IP:-10.41.0.1}
LB_PORT=${SMOKE_LB_PORT:-18080}
PF_PORT=18081
NS=ops-demo-smoke
IMAGE=ops-demo-smoke:v1
keep=0; [ "${1:-}" = --keep ] && keep=1

[ "$(id -u)" -eq 0 ] || { echo "smoke: must run as root" >&2; exit 1; }
t_start=$SECONDS
results=()
failed=0
say() { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
pass() { results+=("PASS  $*"); say "PASS $*"; }
fail() { results+=("FAIL  $*"); say "FAIL $*"; failed=1; }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
# retry SECONDS CMD... : bounded polling
retry() { local secs=$1; shift; local end=$((SECONDS + secs)); until "$@"; do [ $SECONDS -lt $end ] || return 1; sleep 1; done; }

summary() {
  local rc=$?
  [ -n "${pf_pid:-}" ] && kill "$pf_pid" 2>/dev/null || true
  if [ "$keep" = 0 ] && [ "${stopped:-0}" = 0 ] && [ -x "$cluster" ]; then
    say "stopping the cluster (exit path)"; "$cluster" stop >/dev/null 2>&1 || true
  fi
  echo
  echo "==== smoke summary ($((SECONDS - t_start)) s) ===="
  printf '%s\n' "${results[@]}"
  [ -n "${cold_s:-}" ] && echo "start (first in this run): ${cold_s} s${cold_kind:+ ($cold_kind)}"
  [ -n "${warm_s:-}" ] && echo "warm start (after stop, state kept): ${warm_s} s"
  [ -n "${noop_s:-}" ] && echo "start while running (no-op): ${noop_s} s"
  if [ $failed -ne 0 ] || [ $rc -ne 0 ]; then echo "RESULT: FAIL"; exit 1; fi
  echo "RESULT: PASS"
}
trap summary EXIT

# ------------------------------------------------------------------------------------------------
cold_kind=$([ -f "$STATE/pki/ca.crt" ] && echo "state dir existed" || echo "cold: new state dir")
say "starting the cluster ($cold_kind)"
s=$SECONDS
"$cluster" start || { fail "cluster.sh start"; exit 1; }
cold_s=$((SECONDS - s)); pass "cluster.sh start (${cold_s} s)"
s=$SECONDS; "$cluster" start >/dev/null 2>&1 && noop_s=$((SECONDS - s)) && pass "cluster.sh start again is a no-op (${noop_s} s)"
check "cluster.sh status exits 0" "$cluster" status
eval "$("$cluster" env)"
command -v k3s >/dev/null && [ "$(command -v kubectl)" = "$STATE/bin/kubectl" ] || fail "env puts k3s and kubectl on PATH"
[ "$(stat -c %a "$STATE/kubeconfig")" = 600 ] && pass "admin kubeconfig mode 600" || fail "admin kubeconfig mode 600"
node=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')
[ -n "$node" ] && [ -z "$(kubectl get node "$node" -o jsonpath='{.spec.taints}')" ] &&
  [ "$(kubectl get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ] &&
  pass "node $node Ready, untainted, InternalIP $(kubectl get node "$node" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')" ||
  fail "node Ready and untainted"
check "k3s kubectl get --raw /readyz" bash -c 'k3s kubectl get --raw /readyz | grep -qx ok'
check "k3s ctr version" bash -c 'k3s ctr version >/dev/null'
check "k3s ctr -n k8s.io images ls lists the pause image" bash -c 'k3s ctr -n k8s.io images ls -q | grep -q ops-demo/pause'

# ------------------------------------------------------------------------------------------------
say "building the smoke image $IMAGE (static busybox)"
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >/dev/null; }
fi
ctx=$(mktemp -d)
mkdir -p "$ctx/root/bin" "$ctx/root/tmp" "$ctx/root/etc"
cp /bin/busybox "$ctx/root/bin/busybox"
for a in sh httpd wget nslookup cat echo sleep mkdir nc ls sed tail grep head; do ln -s busybox "$ctx/root/bin/$a"; done
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$ctx/root/etc/passwd"
chmod 1777 "$ctx/root/tmp"
import_ok=0
if [ -x "$repo/scripts/docker-engine" ] && "$repo/scripts/docker-engine" >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  printf 'FROM scratch\nCOPY root/ /\nENTRYPOINT ["/bin/sh"]\n' > "$ctx/Dockerfile"
  if docker build -q -t "$IMAGE" "$ctx" >/dev/null && docker save "$IMAGE" | k3s ctr images import - >/dev/null; then
    import_ok=1; how="docker build; docker save | k3s ctr images import -"
  fi
fi
if [ $import_ok = 0 ]; then
  "$cluster" mkimage "docker.io/library/$IMAGE" "$ctx/root" /bin/sh | k3s ctr images import - >/dev/null && import_ok=1
  how="cluster.sh mkimage | k3s ctr images import -"
fi
rm -rf "$ctx"
images=$(k3s ctr images ls -q 2>/dev/null || true)
[ $import_ok = 1 ] && grep -qx "docker.io/library/$IMAGE" <<<"$images" &&
  pass "image $IMAGE imported ($how)" || { fail "image import"; exit 1; }

# ------------------------------------------------------------------------------------------------
kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=90s >/dev/null 2>&1 || true
kubectl create namespace "$NS" >/dev/null
kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/enforce-version=latest >/dev/null
if out=$(kubectl -n "$NS" run privileged --image="$IMAGE" --image-pull-policy=Never --restart=Never \
    --overrides='{"spec":{"containers":[{"name":"privileged","image":"'"$IMAGE"'","imagePullPolicy":"Never","command":["sleep","60"],"securityContext":{"privileged":true}}]}}' 2>&1); then
  fail "restricted namespace refuses a privileged pod (it was admitted)"
else
  grep -q 'violates PodSecurity "restricted' <<<"$out" && pass "restricted namespace refuses a privileged pod: $(grep -o 'violates PodSecurity "restricted[^"]*"' <<<"$out" | head -1)" ||
    fail "privileged pod refused for another reason: $out"
fi

secctx='securityContext: {runAsNonRoot: true, runAsUser: 65534, runAsGroup: 65534, seccompProfile: {type: RuntimeDefault}}'
csec='securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}, readOnlyRootFilesystem: true}'
kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: smoke-server}}
spec:
  $secctx
  containers:
  - name: web
    image: $IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "mkdir -p /tmp/www && echo hello-from-ops-demo-smoke > /tmp/www/index.html && echo smoke-server-listening-on-8080 && exec httpd -f -vv -p 8080 -h /tmp/www"]
    ports: [{containerPort: 8080, name: http}]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 2}
    $csec
    volumeMounts: [{name: tmp, mountPath: /tmp}]
  volumes: [{name: tmp, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: smoke-server}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-lb}
spec:
  type: LoadBalancer
  selector: {app: smoke-server}
  ports: [{port: $LB_PORT, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: smoke-client}}
spec:
  $secctx
  containers:
  - name: client
    image: $IMAGE
    imagePullPolicy: Never
    command: [sleep, "3600"]
    $csec
---
apiVersion: v1
kind: Pod
metadata: {name: dns-check, labels: {app: smoke-dns}}
spec:
  restartPolicy: Never
  $secctx
  containers:
  - name: dns
    image: $IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "nslookup -type=a kubernetes.default.svc.cluster.local && nslookup -type=a web.$NS.svc.cluster.local"]
    $csec
EOF
if retry 180 bash -c "kubectl -n $NS wait pod/server pod/client --for=condition=Ready --timeout=5s >/dev/null 2>&1"; then
  pass "pods from the local image (imagePullPolicy: Never) run under enforce=restricted"
else
  fail "smoke pods Ready"; kubectl -n "$NS" get pods -o wide >&2 || true; kubectl -n "$NS" describe pods >&2 || true; exit 1
fi

# DNS from a pod, read back with kubectl logs
web_ip=$(kubectl -n "$NS" get svc web -o jsonpath='{.spec.clusterIP}')
retry 120 bash -c "[ \"\$(kubectl -n $NS get pod dns-check -o jsonpath='{.status.phase}')\" = Succeeded ] || [ \"\$(kubectl -n $NS get pod dns-check -o jsonpath='{.status.phase}')\" = Failed ]" || true
dnslog=$(kubectl -n "$NS" logs dns-check 2>&1 || true)
if [ "$(kubectl -n "$NS" get pod dns-check -o jsonpath='{.status.phase}')" = Succeeded ] &&
   grep -q "Address: 10.43.0.1$" <<<"$dnslog" && grep -q "Address: $web_ip$" <<<"$dnslog"; then
  pass "pod resolves kubernetes.default.svc.cluster.local -> 10.43.0.1 and web.$NS.svc.cluster.local -> $web_ip (kubectl logs)"
else
  fail "pod DNS (phase $(kubectl -n "$NS" get pod dns-check -o jsonpath='{.status.phase}')): $dnslog"
fi
check "kubectl logs server shows its start line" bash -c "kubectl -n $NS logs server | grep -q smoke-server-listening-on-8080"
# busybox-static is static glibc: its wget segfaults (NSS) and names only resolve with its own
# nslookup, so the client resolves with nslookup and speaks HTTP with nc
fetch='case "$1" in *[!0-9.]*) a=$(nslookup -type=a -timeout=2 "$1" 2>/dev/null | sed -n "s/^Address: \([0-9.]*\)$/\1/p" | tail -n 1) ;; *) a=$1 ;; esac; [ -n "$a" ] && printf "GET / HTTP/1.0\r\n\r\n" | nc -w 3 "$a" 80'
can_reach() { local out; out=$(kubectl -n "$NS" exec client -- sh -c "$fetch" _ "$1" 2>/dev/null || true); grep -q hello-from-ops-demo-smoke <<<"$out"; }
cannot_reach() { ! can_reach "$1"; }
check "kubectl exec client: http://web.$NS.svc.cluster.local (cluster DNS + Service)" can_reach "web.$NS.svc.cluster.local"

# LoadBalancer from the host
if retry 60 bash -c "[ \"\$(kubectl -n $NS get svc web-lb -o jsonpath='{.status.loadBalancer.ingress[0].ip}')\" = $NODE_IP ]"; then
  pass "LoadBalancer web-lb got ingress $NODE_IP (servicelb stand-in)"
else
  fail "LoadBalancer ingress (status: $(kubectl -n "$NS" get svc web-lb -o jsonpath='{.status.loadBalancer}'))"
fi
check "curl http://$NODE_IP:$LB_PORT/ from the host reaches the pod" \
  retry 30 bash -c "curl -sf --max-time 3 http://$NODE_IP:$LB_PORT/ | grep -q hello-from-ops-demo-smoke"

# port-forward
kubectl -n "$NS" port-forward pod/server "$PF_PORT:8080" --address 127.0.0.1 >/tmp/ops-demo-smoke-pf.log 2>&1 &
pf_pid=$!
check "kubectl port-forward pod/server $PF_PORT:8080" \
  retry 30 bash -c "curl -sf --max-time 3 http://127.0.0.1:$PF_PORT/ | grep -q hello-from-ops-demo-smoke"
kill "$pf_pid" 2>/dev/null || true; wait "$pf_pid" 2>/dev/null || true; pf_pid=""

# NetworkPolicy (kube-router)
kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-all}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
EOF
check "default-deny NetworkPolicy blocks client -> web ($web_ip)" retry 45 cannot_reach "$web_ip"
check "default-deny NetworkPolicy blocks client's DNS" bash -c "! kubectl -n $NS exec client -- nslookup -type=a -timeout=2 web.$NS.svc.cluster.local >/dev/null 2>&1"
kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress}
spec:
  podSelector: {matchLabels: {app: smoke-client}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
  - to:
    - podSelector: {matchLabels: {app: smoke-server}}
    ports: [{protocol: TCP, port: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-ingress}
spec:
  podSelector: {matchLabels: {app: smoke-server}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: smoke-client}}
    ports: [{protocol: TCP, port: 8080}]
EOF
check "allow rules admit client -> web.$NS.svc.cluster.local (DNS egress to kube-dns + ingress 8080)" \
  retry 45 can_reach "web.$NS.svc.cluster.local"
kubectl -n "$NS" delete networkpolicy server-ingress >/dev/null
check "without the ingress rule, the server's default-deny blocks the client again" retry 45 cannot_reach "$web_ip"

say "deleting namespace $NS"
kubectl delete namespace "$NS" --wait=true --timeout=120s >/dev/null 2>&1 && pass "namespace deleted" || fail "namespace deletion within 120 s"

if [ "$keep" = 1 ]; then say "--keep: leaving the cluster running"; exit 0; fi

# ------------------------------------------------------------------------------------------------
say "stop, then warm start"
"$cluster" stop && pass "cluster.sh stop" || fail "cluster.sh stop"
s=$SECONDS
if "$cluster" start; then warm_s=$((SECONDS - s)); pass "warm start (${warm_s} s)"; else fail "warm start"; fi
check "status after warm start" "$cluster" status
check "CoreDNS answers at 10.43.0.10 after warm start (busybox nslookup from the host)" \
  bash -c "busybox nslookup -type=a kubernetes.default.svc.cluster.local 10.43.0.10 | grep -q 'Address: 10.43.0.1$'"
"$cluster" stop && pass "cluster.sh stop" || fail "cluster.sh stop"
stopped=1
check "cluster.sh stop again (nothing running) is safe" "$cluster" stop
check "cluster.sh status exits non-zero when stopped" bash -c "! '$cluster' status >/dev/null 2>&1"

# ------------------------------------------------------------------------------------------------
say "checking that nothing of the cluster remains"
leftover_procs() {
  local f p exe cmd out=""
  for f in /proc/[0-9]*; do
    p=${f#/proc/}; [ "$p" = $$ ] && continue
    exe=$(readlink "$f/exe" 2>/dev/null || true)
    cmd=$(tr '\0' ' ' < "$f/cmdline" 2>/dev/null || true)
    case "$exe" in "$BIN"/kube-*|"$BIN"/kubelet|"$BIN"/coredns) out+=" $p:$exe";; esac
    case "$cmd" in *"$STATE"/*|*/run/ops-demo-containerd*) case "$cmd" in *smoke.sh*|*grep*) ;; *) out+=" $p:${cmd:0:80}";; esac;; esac
  done
  [ -z "$out" ] || { echo "left: $out" >&2; return 1; }
}
check "no process of the cluster remains" leftover_procs
check "no interface of the cluster remains (opsdemo0, opsdemo0p, opsdemo-cni0, veths)" \
  bash -c "! ip -o link show | grep -Eq 'opsdemo|veth.*master opsdemo'"
check "no iptables chain/rule of the cluster remains (KUBE-*, CNI-*, OPS-DEMO-*; iptables + ip6tables, all tables)" \
  bash -c "! { iptables-save; ip6tables-save; } 2>/dev/null | grep -E 'KUBE-|CNI-|OPS-DEMO|ops-demo'"
check "no ipset of the cluster remains" bash -c "! ipset list -n 2>/dev/null | grep -Ei 'kube'"
check "no nftables table of kube-proxy remains" bash -c "! nft list tables 2>/dev/null | grep -q kube-proxy"
check "no mount under $STATE or /run/ops-demo-containerd remains" bash -c "! grep -E ' ($STATE|/run/ops-demo-containerd)' /proc/self/mountinfo"
check "no kubepods cgroup remains" bash -c "! ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null | grep -q ."
check "no CNI cache/netns of the cluster remains" bash -c "! ls /var/lib/cni/results/ops-demo-* 2>/dev/null | grep -q . && [ ! -e /run/ops-demo-containerd ]"
