#!/usr/bin/env bash
# Installs or builds every external tool the tests and the local control plane use.
# Idempotent: Debian packages are installed only when missing; Go binaries are built once
# into a cache outside the repo (SLUICE_CACHE, default ~/.cache/sluice) and linked into
# .sluice/bin. Usage: scripts/tools.sh [apt|etcd|k8s|kwok|helm|nats|plane|python|all]   (default: all)
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
KWOK_VERSION=${KWOK_VERSION:-v0.7.0}
HELM_VERSION=${HELM_VERSION:-v3.19.0}
ETCD_VERSION=${ETCD_VERSION:-v3.6.5}
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}
TRAEFIK_VERSION=${TRAEFIK_VERSION:-v3.6.12}
LOCAL_PATH_VERSION=${LOCAL_PATH_VERSION:-v0.0.30}
# The chart's NATS image tag (charts/sluice/values.yaml nats.image.tag; a test keeps them equal).
NATS_VERSION=${NATS_VERSION:-v2.11.8}
CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}
# Go's official tarball installs here; a non-login shell may not have it on PATH.
[ -d /usr/local/go/bin ] && PATH=$PATH:/usr/local/go/bin
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/.sluice/bin
mkdir -p "$CACHE" "$BIN"

log() { printf '[tools] %s\n' "$*" >&2; }

apt_tools() {
  local missing=()
  command -v nats-server >/dev/null || missing+=(nats-server)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  command -v python3 >/dev/null || missing+=(python3)
  # kube-proxy's nftables mode drives the kernel through nft.
  command -v nft >/dev/null || [ -x /usr/sbin/nft ] || missing+=(nftables)
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts nginx as a service on install; tests start their own.
    $sudo systemctl disable --now nginx 2>/dev/null || $sudo pkill -x nginx || true
  fi
}

# Builds Go main packages of one module into $CACHE/<name>-<version>/ and links them.
# $1 cache dir name, $2 go.mod body, $3.. "binary=package" pairs.
go_build() {
  local dir=$CACHE/$1 gomod=$2; shift 2
  local need=0 pair
  for pair in "$@"; do [ -x "$dir/bin/${pair%%=*}" ] || need=1; done
  if ((need)); then
    mkdir -p "$dir/src" "$dir/bin"
    printf '%s\n' "$gomod" >"$dir/src/go.mod"
    printf 'package tools\n' >"$dir/src/tools.go"
    (
      cd "$dir/src"
      export GOFLAGS=-mod=mod CGO_ENABLED=0
      for pair in "$@"; do
        local name=${pair%%=*} pkg=${pair#*=}
        [ -x "$dir/bin/$name" ] && continue
        log "go build $pkg (first build takes minutes; cached in $dir)"
        # No `go get $pkg` here: without a version it upgrades the pinned module (KWOK_VERSION
        # v0.7.0 became v0.8.0); go build -mod=mod resolves the version go.mod requires.
        go build -trimpath -ldflags "${LDFLAGS:-}" -o "$dir/bin/$name.tmp" "$pkg"
        mv "$dir/bin/$name.tmp" "$dir/bin/$name"
      done
    )
  fi
  for pair in "$@"; do ln -sf "$dir/bin/${pair%%=*}" "$BIN/${pair%%=*}"; done
}

k8s_tools() {
  local v=${K8S_VERSION#v} staging="0.${K8S_VERSION#v1.}"
  local mods=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
    cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
    cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
    kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
    mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller)
  local gomod="module sluice.local/k8s-tools
go 1.24
require k8s.io/kubernetes v$v
replace ("
  local m; for m in "${mods[@]}"; do gomod+=$'\n'"  k8s.io/$m => k8s.io/$m v$staging"; done
  gomod+=$'\n)'
  LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=v$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${staging#0.}" \
    go_build "k8s-$K8S_VERSION" "$gomod" \
    kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
    kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
    kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
    kube-proxy=k8s.io/kubernetes/cmd/kube-proxy
}

kwok_tools() {
  go_build "kwok-$KWOK_VERSION" "module sluice.local/kwok-tools
go 1.24
require sigs.k8s.io/kwok $KWOK_VERSION" kwok=sigs.k8s.io/kwok/cmd/kwok
}

# Debian's etcd 3.4.23 predates the watch-progress fix (3.4.31/3.5.13) that kube-apiserver 1.34
# checks for; without it the API server refuses streaming lists ("RequestWatchProgress is
# disabled") and clients that ask for them (kwok) fall back with back-off, so simulated pods
# took 30 s to turn Ready. Build etcd from its module and link it over the Debian one.
# etcd from Go, not Debian: Debian's etcd 3.4.23 lacks watch-progress requests (3.4.31+), so
# kube-apiserver 1.34 refuses watch-list requests ("RequestWatchProgress is disabled") and
# kwok's pods took 5-40 s to turn Ready instead of 0.2 s.
etcd_tools() {
  go_build "etcd-$ETCD_VERSION" "module sluice.local/etcd-tools
go 1.24
require go.etcd.io/etcd/server/v3 $ETCD_VERSION" etcd=go.etcd.io/etcd/server/v3
}

# nats-server from its module, the version the chart's image runs, for the tests and the local
# plane's NATS pods. Debian's 2.9.10 (apt, for `npm start`) is older than the chart's minimum
# (2.10) and has a race its 2.10 fixed (nats-server 105237cba): two connections authenticating
# at once for an account the server does not hold yet each build an Account object, and each
# enables JetStream on it; the second replaced the first's jsAccount in the server's table, so
# the streams made through the registered account were missing from /jsz.
nats_tools() {
  LDFLAGS="-s -w" go_build "nats-server-$NATS_VERSION" "module sluice.local/nats-tools
go 1.24
require github.com/nats-io/nats-server/v2 $NATS_VERSION" nats-server=github.com/nats-io/nats-server/v2
}

helm_tools() {
  LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" go_build "helm-$HELM_VERSION" "module sluice.local/helm-tools
go 1.24
require helm.sh/helm/v3 $HELM_VERSION" helm=helm.sh/helm/v3/cmd/helm
}

# The local plane's node side (plane/; README.md, "Local control plane"): CoreDNS
# with its kubernetes plugin, Traefik as the ingress controller, rancher's local-path-provisioner.
plane_tools() {
  go_build "coredns-$COREDNS_VERSION" "module sluice.local/coredns-tools
go 1.24
require github.com/coredns/coredns $COREDNS_VERSION" coredns=github.com/coredns/coredns
  go_build "local-path-provisioner-$LOCAL_PATH_VERSION" "module sluice.local/local-path-tools
go 1.24
require github.com/rancher/local-path-provisioner $LOCAL_PATH_VERSION" \
    local-path-provisioner=github.com/rancher/local-path-provisioner
  # Traefik's go.mod replaces three modules with its forks and excludes one, and `go install`
  # refuses a module with replace directives: this module requires it and repeats them.
  # (v3.7 needs lego v5 DNS providers that the module proxy does not serve.)
  LDFLAGS="-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" \
    go_build "traefik-$TRAEFIK_VERSION" "module sluice.local/traefik-tools
go 1.25.0
require github.com/traefik/traefik/v3 $TRAEFIK_VERSION
replace (
	github.com/abbot/go-http-auth => github.com/containous/go-http-auth v0.4.1-0.20200324110947-a37a7636d23e
	github.com/gorilla/mux => github.com/containous/mux v0.0.0-20250523120546-41b6ec3aed59
	github.com/mailgun/minheap => github.com/containous/minheap v0.0.0-20190809180810-6e71eb837595
)
exclude github.com/tencentcloud/tencentcloud-sdk-go v3.0.83+incompatible" traefik=github.com/traefik/traefik/v3/cmd/traefik
}

case "${1:-all}" in
  apt) apt_tools ;;
  k8s) k8s_tools ;;
  kwok) kwok_tools ;;
  helm) helm_tools ;;
  nats) nats_tools ;;
  etcd) etcd_tools ;;
  plane) plane_tools ;;
  python) bash "$ROOT/scripts/python-deps.sh" >/dev/null ;;
  all) apt_tools; etcd_tools; k8s_tools; kwok_tools; helm_tools; nats_tools; plane_tools; bash "$ROOT/scripts/python-deps.sh" >/dev/null ;;
  *) echo "usage: $0 [apt|etcd|k8s|kwok|helm|nats|plane|python|all]" >&2; exit 2 ;;
esac
