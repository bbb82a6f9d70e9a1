# Versions of what the real-cluster tier builds (tests/real/build.sh); the cache is keyed by them.
PULUMI_VERSION=v3.248.0            # = @pulumi/pulumi in package.json
K8S_PROVIDER_VERSION=v4.25.0       # the one provider version the Go module proxy serves whole
K8S_PROVIDER_MODULE_VERSION=v4.0.0-20260115033456-f47bc2d6f199
KUBE_VERSION=v1.34.4
COREDNS_VERSION=v1.14.7
KUBE_ROUTER_VERSION=v2.1.0
