#!/usr/bin/env bash
# Installs podman-compose (PyPI) into a venv under target/, once, for the standalone quickstart's
# test (tests/tests/compose_podman.rs runs deploy/docker-compose.yml with it). Debian's
# podman-compose 1.0.3 cannot run that file: it ignores `name:` and `profiles:` and adds a
# bridge network next to `network_mode: host`, which podman refuses.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${PODMAN_COMPOSE_VENV:-$root/target/podman-compose-venv}
version=1.6.0
if [ ! -x "$venv/bin/podman-compose" ] || ! "$venv/bin/pip" show podman-compose 2>/dev/null | grep -qx "Version: $version"; then
  echo "install-podman-compose: creating $venv (podman-compose $version)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "podman-compose==$version"
fi
