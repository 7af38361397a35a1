#!/usr/bin/env bash
# The benchmarks (figures, no assertions), as root:
#   scripts/bench.sh [engine] [--samples N] [--servers kea,dnsmasq,dhcpd] [--hold-secs S] [--big N] [--out FILE]
#   scripts/bench.sh agent [--samples N] [--many N] [--out FILE]
#   scripts/bench.sh api [--samples N] [--backends standalone,standalone-no-spares,kubernetes] [--servers kea,dnsmasq,dhcpd] [--renewal-addresses N] [--renewal-hold-secs S] [--out FILE]
#   scripts/bench.sh scale [--levels 100,1000,5000,10000] [--link-levels 100,1000] [--peer-levels 100,1000] [--hold-secs S] [--out FILE]
#   scripts/bench.sh transport [--sizes 100,1000,5000,10000] [--out FILE]
#   scripts/bench.sh service [--samples N] [--lease-duration D] [--renew-interval D] [--takeover-grace D]
#   scripts/bench.sh node-service [--samples N]   # a real kubelet node, our image and chart (~6 min)
#   scripts/bench.sh all        # engine, agent and api with their defaults, one after the other
# Installs what it lacks (scripts/install-deps.sh; for agent/api/service/node-service also the
# Kubernetes binaries; for scale the CNI dhcp plugin, its peer: scripts/install-cni-dhcp.sh),
# builds in release mode and runs in labs of their own (network namespaces they create and remove;
# nothing on the host's links). Each prints its table; the same figures go to
# target/bench/{engine,agent,api,scale,transport}.json. docs/benchmarks.md explains them.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/bench.sh: run as root (the benchmark creates network namespaces and macvlans)" >&2
  exit 1
fi

which=engine
case "${1:-}" in
  engine|agent|api|scale|transport|service|node-service|all) which=$1; shift ;;
esac

scripts/install-deps.sh
case "$which" in agent|api|service|node-service|all) kubernetes=yes ;; *) kubernetes=no ;; esac
if [ "$which" = scale ]; then
  scripts/install-cni-dhcp.sh
fi
if [ "$kubernetes" = yes ]; then
  scripts/install-k8s-tools.sh
  export PATH="${DHCPMANAGER_TOOLS:-$HOME/.cache/dhcpmanager/tools}/bin:$PATH"
  # the agent and the apiserver run as processes: release builds, found by dhcpmanager_tests::binaries
  cargo build --release --locked -p dhcpmanager-operator -p dhcpmanager-apiserver --bins
fi
cargo build --release --locked -p dhcpmanager-tests --bin bench_engine --bin bench_agent --bin bench_api \
  --bin bench_scale --bin bench_transport --bin bench_service --bin bench_node_service
# a lab left behind by a benchmark that was killed (no destructors ran) goes first
bash tests/lab/lab.sh gc

case "$which" in
  all)
    target/release/bench_engine
    target/release/bench_agent
    exec target/release/bench_api
    ;;
  *) exec "target/release/bench_${which//-/_}" "$@" ;;
esac
