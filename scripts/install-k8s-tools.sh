#!/usr/bin/env bash
# Builds the Kubernetes-side test tools (kube-apiserver, kubectl, the node's kubelet,
# kube-controller-manager, kube-scheduler and kube-proxy, etcd 3.5, helm; with --all also promtool) from the Go module proxy into
# ${DHCPMANAGER_TOOLS:-$HOME/.cache/dhcpmanager/tools}/bin, once: a tool whose
# binary exists with a matching version stamp is skipped.
#
# Why build from source: the machines reach only package registries, so release
# tarballs are out of reach, while the Go module proxy serves the sources.
#
# Usage: scripts/install-k8s-tools.sh [--all] [--force]
set -euo pipefail

# ---- versions: the one place they are recorded -------------------------------
K8S_VERSION=v1.34.4          # k8s.io/kubernetes (kube-apiserver, kubectl)
K8S_STAGING_VERSION=v0.34.4  # k8s.io/* staging modules matching K8S_VERSION
ETCD_VERSION=v3.5.35         # go.etcd.io/etcd/server/v3 (kube-apiserver 1.34 wants etcd >= 3.5)
HELM_VERSION=v3.19.5         # helm.sh/helm/v3
PROMETHEUS_VERSION=v0.316.0  # github.com/prometheus/prometheus (promtool), --all only
# The control plane and the node the tests run (tests/k8s/node.sh): one go build, one version.
K8S_CMDS=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-controller-manager
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy)
# kube-state-metrics (k8s.io/kube-state-metrics/v2) is not served by the module
# proxy reachable here (403 "not available"), so it is not built.

TOOLS=${DHCPMANAGER_TOOLS:-$HOME/.cache/dhcpmanager/tools}
BIN=$TOOLS/bin
SRC=$TOOLS/src
ALL=0
FORCE=0
for arg in "$@"; do
  case $arg in
    --all) ALL=1 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

export PATH=/usr/local/go/bin:$PATH
# The installed toolchain is new enough for every pinned module; never fetch another.
export GOTOOLCHAIN=local
export GOFLAGS="-buildvcs=false -modcacherw -p=${DHCPMANAGER_TOOLS_JOBS:-2}"
# These builds fill Go's build and module caches with ~7 GB that serve nothing once the binaries
# exist, on machines where disk runs short: they get caches of their own, removed when done.
SCRATCH=$TOOLS/go-scratch
export GOCACHE=$SCRATCH/cache GOMODCACHE=$SCRATCH/mod GOPATH=$SCRATCH/path
mkdir -p "$BIN" "$SRC"

log() { printf '[install-k8s-tools] %s\n' "$*" >&2; }

# A tool is current when its binary exists and its stamp names the pinned version.
is_current() { # name version
  [[ $FORCE == 0 && -x $BIN/$1 && -f $BIN/.$1.version && $(cat "$BIN/.$1.version") == "$2" ]]
}
stamp() { echo "$2" >"$BIN/.$1.version"; }

timed() { # label command...
  local label=$1 start end
  shift
  start=$(date +%s)
  log "building $label ..."
  "$@"
  end=$(date +%s)
  log "built $label in $((end - start))s"
}

# A throw-away module that requires MODULE@VERSION and imports the wanted main
# packages from a tools.go, so `go mod tidy` can compute a go.sum for them.
write_tools_module() { # dir module version extra-go.mod-text pkg...
  local dir=$1 module=$2 version=$3 extra=$4
  shift 4
  mkdir -p "$dir"
  {
    echo "module dhcpmanager.local/tools"
    echo
    echo "go 1.24.0"
    echo
    echo "require $module $version"
    printf '%s\n' "$extra"
  } >"$dir/go.mod"
  {
    echo "//go:build tools"
    echo
    echo "package tools"
    echo
    echo "import ("
    for pkg in "$@"; do echo "	_ \"$pkg\""; done
    echo ")"
  } >"$dir/tools.go"
  (cd "$dir" && go mod tidy)
}

# k8s.io/kubernetes replaces its k8s.io/* staging modules with local paths, which
# `go install` refuses; replace each of them with its published v0.x version.
staging_replaces() {
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  echo "replace ("
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => \./staging/src/.*#\t\1 => \1 '"$K8S_STAGING_VERSION"'#p' "$gomod"
  echo ")"
}

build_kubernetes() {
  local dir=$SRC/kubernetes-$K8S_VERSION major minor ldflags=()
  major=${K8S_VERSION#v}; major=${major%%.*}
  minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
  write_tools_module "$dir" k8s.io/kubernetes "$K8S_VERSION" "$(staging_replaces)" "${K8S_CMDS[@]}"
  # Version variables are normally injected by hack/lib/version.sh; without them
  # the binaries report v0.0.0-master and version skew checks misbehave.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=("-X $pkg.gitVersion=$K8S_VERSION" "-X $pkg.gitMajor=$major" "-X $pkg.gitMinor=$minor"
      "-X $pkg.gitTreeState=clean")
  done
  (cd "$dir" && go build -trimpath -ldflags="-s -w ${ldflags[*]}" -o "$BIN/" "${K8S_CMDS[@]}")
  local cmd
  for cmd in "${K8S_CMDS[@]}"; do stamp "${cmd##*/}" "$K8S_VERSION"; done
}

k8s_current() {
  local cmd
  for cmd in "${K8S_CMDS[@]}"; do is_current "${cmd##*/}" "$K8S_VERSION" || return 1; done
}

build_etcd() {
  # server/v3 has package main at its module root in 3.5, but its go.mod has
  # replace directives, so it is built through a throw-away module too.
  local dir=$SRC/etcd-$ETCD_VERSION
  write_tools_module "$dir" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "" go.etcd.io/etcd/server/v3
  (cd "$dir" && go build -trimpath -ldflags="-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
  stamp etcd "$ETCD_VERSION"
}

build_helm() {
  GOBIN=$BIN go install -trimpath \
    -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  stamp helm "$HELM_VERSION"
}

build_promtool() {
  GOBIN=$BIN go install -trimpath -ldflags="-s -w" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
  stamp promtool "$PROMETHEUS_VERSION"
}

total_start=$(date +%s)
if k8s_current; then
  log "${K8S_CMDS[*]##*/} $K8S_VERSION: present"
else
  timed "${K8S_CMDS[*]##*/} $K8S_VERSION" build_kubernetes
fi
if is_current etcd "$ETCD_VERSION"; then log "etcd $ETCD_VERSION: present"; else timed "etcd $ETCD_VERSION" build_etcd; fi
if is_current helm "$HELM_VERSION"; then log "helm $HELM_VERSION: present"; else timed "helm $HELM_VERSION" build_helm; fi
if [[ $ALL == 1 ]]; then
  if is_current promtool "$PROMETHEUS_VERSION"; then
    log "promtool $PROMETHEUS_VERSION: present"
  else
    timed "promtool $PROMETHEUS_VERSION" build_promtool
  fi
fi
if [[ -d $SCRATCH ]]; then
  rm -rf "$SCRATCH"
  log "removed the builds' Go caches ($SCRATCH)"
fi
log "done in $(($(date +%s) - total_start))s; tools in $BIN"
