#!/usr/bin/env bash
# The lease-engine benchmark (figures, no assertions), as root:
#   sudo scripts/bench.sh [--samples N] [--servers kea,dnsmasq,dhcpd] [--hold-secs S] [--out FILE]
# Installs what it lacks (scripts/install-deps.sh), builds bench_engine in release mode and runs it
# in a lab of its own (network namespaces it creates and removes; nothing on the host's links).
# Prints the table; the same figures go to target/bench/engine.json. docs/benchmarks.md explains
# them.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/bench.sh: run as root (the benchmark creates network namespaces and macvlans)" >&2
  exit 1
fi

scripts/install-deps.sh
cargo build --release --locked -p dhcpmanager-tests --bin bench_engine
# a lab left behind by a benchmark that was killed (no destructors ran) goes first
bash tests/lab/lab.sh gc
exec target/release/bench_engine "$@"
