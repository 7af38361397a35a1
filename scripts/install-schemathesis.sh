#!/usr/bin/env bash
# Installs the schemathesis CLI (PyPI) into a venv under target/, once. The apiserver's
# schemathesis test (apiserver/tests/schemathesis.rs) runs it against the served OpenAPI document.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${SCHEMATHESIS_VENV:-$root/target/schemathesis-venv}
if [ ! -x "$venv/bin/st" ]; then
  echo "install-schemathesis: creating $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet schemathesis
fi
