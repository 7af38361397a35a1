#!/usr/bin/env bash
# Fuzz the apiserver's /v1 OpenAPI document with schemathesis (--checks all).
# Creates a venv under target/ (once), installs schemathesis, then runs the Rust integration
# test that starts the API on 127.0.0.1 with the in-memory test backend and shells out to `st`.
# Usage: scripts/schemathesis.sh [extra cargo test args]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${SCHEMATHESIS_VENV:-$root/target/schemathesis-venv}
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet schemathesis
fi
"$venv/bin/st" --version
cd "$root"
SCHEMATHESIS="$venv/bin/st" cargo test -p dhcpmanager-apiserver --test schemathesis "$@" -- --ignored --nocapture
