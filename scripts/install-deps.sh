#!/bin/bash
# Installs what dhcpmanager's builds and tests need on a Debian bookworm machine (run as root).
# Idempotent and quiet: prints only when it installs or changes something.
#
# Network safety: the DHCP server packages ship services that would serve DHCP on the host's real
# interfaces. The tests run every server themselves inside network namespaces (tests/lab/lab.sh),
# so the packaged services are kept from starting during install and stopped + disabled after.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

say() { echo "install-deps: $*"; }

# Debian packages the builds and the DHCP/etcd/Prometheus tests use.
PACKAGES=(
  dnsmasq-base kea-dhcp4-server isc-dhcp-server busybox etcd-server etcd-client
  protobuf-compiler libprotobuf-dev tcpdump iproute2 procps curl jq python3-venv
  prometheus
  # The kubelet-backed test node and the image build (tests/k8s/node.sh, scripts/build-image.sh).
  containerd runc containernetworking-plugins iptables conntrack buildah mmdebstrap skopeo
  gcc libc6-dev
  # The standalone quickstart (deploy/docker-compose.yml) under podman (tests/tests/compose_podman.rs).
  podman
  # The announcement lab test plays kube-proxy with nft and inspects our nftables table.
  nftables
)
# Service names the DHCP packages register (systemd units and SysV scripts share them), each with
# the pid files its SysV script writes: isc-dhcp-server's "status" prints nothing and exits 0 when
# its INTERFACES are unset, so liveness is judged from the pid file instead.
# prometheus is not a DHCP server, but its packaged service would scrape and listen on :9090 of the
# host; the dashboard test runs its own Prometheus, so the packaged one is kept stopped the same way.
declare -A DHCP_SERVICE_PIDFILES=(
  [kea-dhcp4-server]="/run/kea-dhcp4-server.pid /run/kea/kea-dhcp4.kea-dhcp4.pid"
  [isc-dhcp-server]="/run/dhcpd.pid /run/dhcpd6.pid"
  [dnsmasq]="/run/dnsmasq/dnsmasq.pid"
  [prometheus]="/run/prometheus/prometheus.pid"
)

missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
  done
}

# A policy-rc.d that answers 101 ("action forbidden") stops invoke-rc.d and deb-systemd-invoke from
# starting any service during the install. Only ours is removed afterwards.
POLICY=/usr/sbin/policy-rc.d
OUR_POLICY=0
forbid_service_starts() {
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# temporary, written by dhcpmanager scripts/install-deps.sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    OUR_POLICY=1
  fi
}
allow_service_starts() { if [ "$OUR_POLICY" = 1 ]; then rm -f "$POLICY"; fi; }

install_packages() {
  local missing
  mapfile -t missing < <(missing_packages)
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  forbid_service_starts
  trap allow_service_starts EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  allow_service_starts
  trap - EXIT
}

sysv_service_alive() {
  local f
  for f in ${DHCP_SERVICE_PIDFILES[$1]}; do
    [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && return 0
  done
  return 1
}

systemd_running() { [ -d /run/systemd/system ]; }

unit_exists() { systemctl list-unit-files --no-legend "$1.service" 2>/dev/null | grep -q .; }

# Stop + disable every packaged DHCP server, whether systemd runs or not (containers often have none,
# and then SysV scripts in /etc/rc?.d would start the daemon at the next boot).
quiesce_dhcp_services() {
  local s
  for s in "${!DHCP_SERVICE_PIDFILES[@]}"; do
    if command -v systemctl >/dev/null 2>&1 && unit_exists "$s"; then
      if systemd_running && systemctl is-active --quiet "$s"; then
        say "stopping host service $s"; systemctl stop "$s"
      fi
      if systemctl is-enabled --quiet "$s" 2>/dev/null; then
        say "disabling host service $s"; systemctl disable --quiet "$s" 2>/dev/null || true
      fi
    fi
    if [ -x "/etc/init.d/$s" ]; then
      if ! systemd_running && sysv_service_alive "$s"; then
        say "stopping host service $s (SysV)"; "/etc/init.d/$s" stop >/dev/null || true
      fi
      if ls /etc/rc[2-5].d/S??"$s" >/dev/null 2>&1; then
        say "disabling SysV links of $s"; update-rc.d "$s" disable >/dev/null 2>&1 || true
      fi
    fi
  done
}

install_rust_components() {
  command -v rustup >/dev/null 2>&1 || { say "rustup not found: install Rust (rustup) first"; return 0; }
  local installed c
  installed=$(rustup component list --installed 2>/dev/null)
  for c in rustfmt clippy; do
    if ! grep -q "^$c" <<<"$installed"; then say "adding rustup component $c"; rustup component add "$c" >/dev/null; fi
  done
}

install_packages
quiesce_dhcp_services
install_rust_components

# HOOK: Go tools for the Kubernetes tests (kube-apiserver, envtest binaries, ...) are installed by a
# separate script owned by the Kubernetes test harness; call it from .ci/run after this one.
