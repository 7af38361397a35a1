#!/usr/bin/env bash
# Fuzz the apiserver's /v1 OpenAPI document with schemathesis (--checks all), verbosely.
# Usage: scripts/schemathesis.sh [extra cargo test args]; SCHEMATHESIS_MAX_EXAMPLES=300 for more.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-schemathesis.sh"
cd "$root"
cargo test -p dhcpmanager-apiserver --test schemathesis "$@" -- --nocapture
