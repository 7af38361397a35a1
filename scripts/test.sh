#!/usr/bin/env bash
# The whole test suite, on a fresh Debian bookworm machine of this kind, as root:
#   scripts/test.sh
# It installs what it lacks first (Debian packages, rustfmt/clippy, the Kubernetes binaries built
# once from the Go module proxy and cached), then checks formatting and lints, then runs every
# test: unit tests, and end-to-end tests against real dnsmasq, Kea and ISC dhcpd in network
# namespaces the tests create, a real etcd and a real kube-apiserver on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: run as root (the tests create network namespaces and macvlans)" >&2
  exit 1
fi

section() { printf '\n=== %s\n' "$*"; }

section "installing what the tests need"
scripts/install-deps.sh
scripts/install-k8s-tools.sh --all   # --all: promtool too (the dashboard tests)
scripts/install-schemathesis.sh
scripts/install-podman-compose.sh
tests/lab/lab.sh gc
export PATH="${DHCPMANAGER_TOOLS:-$HOME/.cache/dhcpmanager/tools}/bin:$PATH"

section "cargo fmt --check"
cargo fmt --all -- --check

section "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

section "cargo test"
# No incremental state: a whole-suite run is built once, and its dep-graph files cost gigabytes.
export CARGO_INCREMENTAL=0
cargo test --workspace --locked --no-run
# The tests run the workspace's binaries. `cargo test` builds a package's binaries only for that
# package's own integration tests, and most of ours live in tests/, a package with no such binary:
# build them all. (Only the few crates whose features dev-dependencies change are built twice, ~40 s.)
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast 2>&1 | tee target/test-output.txt
# cargo test exits non-zero on any failure (pipefail above). A test marked #[ignore] would be a
# skipped test counted as passing: there must be none.
if grep -qE '^test result: .* [1-9][0-9]* ignored' target/test-output.txt; then
  echo "scripts/test.sh: some tests were ignored; every test must run" >&2
  exit 1
fi
passed=$(awk '/^test result: ok/ { for (i = 1; i <= NF; i++) if ($i == "passed;") n += $(i - 1) } END { print n + 0 }' target/test-output.txt)
echo
echo "all test binaries passed: $passed tests"
