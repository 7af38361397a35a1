#!/usr/bin/env bash
# Builds the CNI dhcp IPAM plugin and daemon (github.com/containernetworking/plugins,
# plugins/ipam/dhcp), the peer `scripts/bench.sh scale` runs beside dhcpmanager, from the Go
# module proxy into ${DHCPMANAGER_TOOLS:-$HOME/.cache/dhcpmanager/tools}/bin/cni, once: a binary
# with a matching version stamp is skipped. Like scripts/install-k8s-tools.sh (why from source:
# the machines reach only package registries), with Go caches of its own, removed when done.
#
# Usage: scripts/install-cni-dhcp.sh [--force]
set -euo pipefail

CNI_PLUGINS_VERSION=v1.10.0 # github.com/containernetworking/plugins

TOOLS=${DHCPMANAGER_TOOLS:-$HOME/.cache/dhcpmanager/tools}
BIN=$TOOLS/bin/cni
FORCE=0
for arg in "$@"; do
  case $arg in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { printf '[install-cni-dhcp] %s\n' "$*" >&2; }

if [[ $FORCE == 0 && -x $BIN/dhcp && -f $BIN/.dhcp.version && $(cat "$BIN/.dhcp.version") == "$CNI_PLUGINS_VERSION" ]]; then
  log "dhcp $CNI_PLUGINS_VERSION: present"
  exit 0
fi

export PATH=/usr/local/go/bin:$PATH
export GOTOOLCHAIN=local
export GOFLAGS="-buildvcs=false -modcacherw -p=${DHCPMANAGER_TOOLS_JOBS:-2}"
SCRATCH=$TOOLS/go-scratch-cni
export GOCACHE=$SCRATCH/cache GOMODCACHE=$SCRATCH/mod GOPATH=$SCRATCH/path
mkdir -p "$BIN"
cleanup() { rm -rf "$SCRATCH"; }
trap cleanup EXIT

start=$(date +%s)
log "building dhcp $CNI_PLUGINS_VERSION ..."
GOBIN=$BIN go install -trimpath -ldflags="-s -w" \
  "github.com/containernetworking/plugins/plugins/ipam/dhcp@$CNI_PLUGINS_VERSION"
echo "$CNI_PLUGINS_VERSION" >"$BIN/.dhcp.version"
log "built dhcp $CNI_PLUGINS_VERSION in $(($(date +%s) - start))s into $BIN (Go caches removed)"
