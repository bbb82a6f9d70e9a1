#!/usr/bin/env bash
# Builds, from the Go module proxy, what the real-cluster tier runs, into a cache outside the repo
# keyed by version (a warm run finds everything and returns in a second):
#   pulumi                    the Pulumi CLI (engine), same version as @pulumi/pulumi in package.json
#   pulumi-resource-kubernetes the kubernetes provider (the one version the proxy serves whole: 4.25.0)
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl
#   coredns                   cluster DNS with only the plugins the cluster needs
#   kube-router               NetworkPolicy enforcement, as k3s embeds it
#
#   tests/real/build.sh [component ...]     default: all of them
#
# Environment: OPS_DEMO_CACHE (default /var/cache/ops-demo) holds bin/, Go's caches and the work trees.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${OPS_DEMO_CACHE:-/var/cache/ops-demo}
export PATH=/usr/local/go/bin:$PATH
export GOMODCACHE=${GOMODCACHE:-$cache/gomod} GOCACHE=${GOCACHE:-$cache/gobuild}
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local CGO_ENABLED=0
# shellcheck source=versions.sh
. "$here/versions.sh"
bin=$cache/bin
mkdir -p "$bin" "$cache/src"

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
have() { [ -x "$bin/$1" ] && [ -f "$bin/.$1.version" ] && [ "$(cat "$bin/.$1.version")" = "$2" ]; }
done_() { echo "$2" > "$bin/.$1.version"; }
ldflags="-s -w"

build_pulumi() {
  have pulumi "$PULUMI_VERSION" && return 0
  log "pulumi CLI $PULUMI_VERSION (cold: ~5-11 min)"
  local d=$cache/src/pulumi-cli-$PULUMI_VERSION; mkdir -p "$d"
  cp "$here/go/pulumi-cli/go.mod" "$here/go/pulumi-cli/go.sum" "$d/" 2>/dev/null || true
  (cd "$d"
   [ -f go.mod ] || { cat > go.mod <<MOD
module opsdemo.local/pulumi-cli

go 1.24

replace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e
MOD
     go get "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi@$PULUMI_VERSION" "github.com/pulumi/pulumi/sdk/v3@$PULUMI_VERSION"; }
   go build -trimpath -ldflags "$ldflags -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION" \
     -o "$bin/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
  done_ pulumi "$PULUMI_VERSION"
}

build_kubernetes_provider() {
  have pulumi-resource-kubernetes "$K8S_PROVIDER_VERSION" && return 0
  log "kubernetes provider $K8S_PROVIDER_VERSION ($K8S_PROVIDER_MODULE_VERSION; cold: ~10-18 min)"
  local mod=github.com/pulumi/pulumi-kubernetes/provider/v4
  go mod download -x "$mod@$K8S_PROVIDER_MODULE_VERSION" >/dev/null 2>&1 || go mod download "$mod@$K8S_PROVIDER_MODULE_VERSION"
  local src; src=$(go mod download -json "$mod@$K8S_PROVIDER_MODULE_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  local d=$cache/src/pulumi-kubernetes-$K8S_PROVIDER_VERSION
  rm -rf "$d"; cp -r "$src" "$d"; chmod -R u+w "$d"
  (cd "$d"
   # the module points its sdk at ../sdk (the repository's layout); the proxy's sdk/v4 serves instead
   go mod edit -dropreplace github.com/pulumi/pulumi-kubernetes/sdk/v4 2>/dev/null || true
   go get "github.com/pulumi/pulumi-kubernetes/sdk/v4@$(go list -m -f '{{.Version}}' github.com/pulumi/pulumi-kubernetes/sdk/v4)"
   # schema-embed.json and terraform-mapping-embed.json are generated (not in the module zip)
   (cd cmd/pulumi-resource-kubernetes && VERSION=${K8S_PROVIDER_VERSION#v} go generate ./...)
   go build -trimpath -ldflags "$ldflags -X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version=$K8S_PROVIDER_VERSION" \
     -o "$bin/pulumi-resource-kubernetes" ./cmd/pulumi-resource-kubernetes)
  done_ pulumi-resource-kubernetes "$K8S_PROVIDER_VERSION"
}

build_kube() {
  local missing=()
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    have "$c" "$KUBE_VERSION" || missing+=("$c")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "Kubernetes $KUBE_VERSION: ${missing[*]} (cold: ~6-9 min)"
  local d=$cache/src/kubernetes-$KUBE_VERSION; mkdir -p "$d"
  (cd "$d"
   if [ ! -f go.mod ]; then
     printf 'module opsdemo.local/kubernetes\n\ngo 1.24\n' > go.mod
     local staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
       cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
       cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
       kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
       mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller)
     local s minor=${KUBE_VERSION#v1.}; minor=v0.$minor
     for s in "${staging[@]}"; do go mod edit -replace "k8s.io/$s=k8s.io/$s@$minor"; done
     go mod edit -require "k8s.io/kubernetes@$KUBE_VERSION"
     for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
       go get "k8s.io/kubernetes/cmd/$c@$KUBE_VERSION"
     done
   fi
   # the version the binaries report (kubectl version, the API server's /version, kube-router's checks)
   local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
   local vflags="-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1"
   vflags="$vflags -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
   vflags="$vflags -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1"
   vflags="$vflags -X k8s.io/client-go/pkg/version.gitMinor=$minor"
   for c in "${missing[@]}"; do
     log "  $c"
     go build -trimpath -ldflags "$ldflags $vflags" -tags providerless -o "$bin/$c" "k8s.io/kubernetes/cmd/$c"
     done_ "$c" "$KUBE_VERSION"
   done)
}

build_coredns() {
  have coredns "$COREDNS_VERSION" && return 0
  log "CoreDNS $COREDNS_VERSION (cold: ~2 min)"
  local d=$cache/src/coredns-$COREDNS_VERSION; mkdir -p "$d"
  cp "$here/go/coredns/main.go" "$d/main.go"
  (cd "$d"
   [ -f go.mod ] || { printf 'module opsdemo.local/coredns\n\ngo 1.24\n' > go.mod; go get "github.com/coredns/coredns@$COREDNS_VERSION"; go mod tidy; }
   go build -trimpath -ldflags "$ldflags" -o "$bin/coredns" .)
  done_ coredns "$COREDNS_VERSION"
}

build_kube_router() {
  have kube-router "$KUBE_ROUTER_VERSION" && return 0
  log "kube-router $KUBE_ROUTER_VERSION (cold: ~2-4 min)"
  GOBIN=$bin go install -trimpath -ldflags "$ldflags" "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
  done_ kube-router "$KUBE_ROUTER_VERSION"
}

# One build at a time: .ci/run starts one in the background while the faster tiers run; the real
# tier's own call then waits here for it and finds everything built.
exec 9>"$cache/build.lock"
if ! flock -n 9; then
  log "another build is running (lock $cache/build.lock): waiting for it"
  flock 9
fi

all=(pulumi kube kubernetes_provider coredns kube_router)
want=("$@"); [ ${#want[@]} -gt 0 ] || want=("${all[@]}")
start=$SECONDS
for w in "${want[@]}"; do
  case "$w" in pulumi|kube|kubernetes_provider|coredns|kube_router) "build_$w" ;;
    *) echo "tests/real/build.sh: unknown component '$w' (allowed: ${all[*]})" >&2; exit 2 ;; esac
done
log "done in $((SECONDS - start)) s; binaries in $bin"
