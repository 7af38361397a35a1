#!/usr/bin/env bash
# A one-node Kubernetes cluster with a real kubelet, for tests that run our image and the Helm
# chart as users do: the control plane of controlplane.sh (etcd, kube-apiserver) plus
# kube-controller-manager, kube-scheduler, containerd + runc, kubelet and kube-proxy (iptables),
# all plain processes started and stopped here by PID. State and logs in DIR.
#
# Usage: node.sh up DIR [LAB]    start; print export lines (KUBECONFIG, PATH, NODE_NETNS, ...)
#        node.sh down DIR        stop everything and undo every host change (order below)
#        node.sh env DIR         print the export lines of a running node
#        node.sh import DIR ARCHIVE...   `ctr -n k8s.io images import` into the node's containerd
#        node.sh exec DIR CMD... run CMD in the node's network namespace (what hostNetwork pods see)
#
# The node lives in its own network namespace, "dmnode" (NODE_NETNS): kubelet, containerd (and
# so every hostNetwork pod), kube-proxy and the pod network are there, so their links, iptables
# rules, routes and per-namespace sysctls (ip_forward) never touch the machine's.
#   k8s0   10.200.0.2/24, veth to "dmnode-host" 10.200.0.1/24 in the machine's namespace, where
#          kube-apiserver listens: the node's InternalIP. No default route: cluster IPs
#          (10.96.0.0/24) are routed on k8s0 for kube-proxy's DNAT, nothing else leaves.
#   lab0   veth into the DHCP lab's segment (the bridge "lan" of LAB-srv, see tests/lab/lab.sh):
#          the parent interface for the agent's macvlans. Without LAB, a lab "dmnode" is made
#          (and taken down by `down`).
#   cni0   the CNI bridge (+ host-local 10.244.0.0/24, loopback; Debian's /usr/lib/cni) for pods
#          without hostNetwork, masqueraded towards k8s0.
# Processes join the namespace with `nsenter --net` only (not `ip netns exec`, whose private
# mount namespace would hide the kubelet's volume mounts from containerd).
#
# Machine-wide (hence one node at a time: a lock, /run/lock/dhcpmanager-node.lock, held until
# `down`): the kubelet's sysctls vm.overcommit_memory, vm.panic_on_oom, kernel.panic,
# kernel.panic_on_oops, kernel.keys.root_max* (saved at `up`, restored at `down`), cgroups
# kubepods and k8s.io (removed), /var/lib/kubelet/device-plugins, /var/log/pods,
# /var/log/containers, /run/containerd (removed unless they existed before), /run/netns/cni-*.
# A stale node (its owner gone without `down`) is taken down by the next `up`.
#
# Environment:
#   DHCPMANAGER_TOOLS   tools root (default $HOME/.cache/dhcpmanager/tools)
#   NODE_OWNER_PID      a watchdog runs `down` once this process is gone
#   NODE_PURGE=1        `down` removes DIR afterwards
#   NODE_LOCK_TIMEOUT   seconds to wait for another node to go away (default 900)
#   NODE_PAUSE_IMAGE    the sandbox image archive (default: built by scripts/build-image.sh --pause)
set -euo pipefail

TOOLS=${DHCPMANAGER_TOOLS:-$HOME/.cache/dhcpmanager/tools}
BIN=$TOOLS/bin
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
LAB_SH=$REPO/tests/lab/lab.sh
NODE_NAME=dm-node
NETNS=dmnode
HOST_IF=dmnode-host
HOST_IP=10.200.0.1
NODE_IP=10.200.0.2
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/24
LOCK=/run/lock/dhcpmanager-node.lock
CURRENT=/run/lock/dhcpmanager-node.current
PAUSE_IMAGE=localhost/dhcpmanager-pause:1
GLOBAL_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
# What the kubelet and containerd create at fixed places, removed by `down` unless present before.
FIXED_PATHS=(/var/lib/kubelet /var/log/pods /var/log/containers /run/containerd /var/lib/cni
  /etc/cni /opt/cni /usr/libexec/kubernetes)

log() { printf '[node] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '7,12p' "$0" >&2; exit 2; }

[[ $# -ge 2 ]] || usage
CMD=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
shift 2
CP=$DIR/cp
SOCK=$DIR/containerd/containerd.sock
in_node() { nsenter --net="/run/netns/$NETNS" "$@"; }
kubectl() { "$BIN/kubectl" --kubeconfig "$CP/admin.kubeconfig" "$@"; }
ctr() { command ctr --address "$SOCK" -n k8s.io "$@"; }

pid_of() { # name -> pid if that PID still runs a command naming DIR
  local f=$DIR/$1.pid pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 0
  if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DIR"; then echo "$pid"; fi
}

spawn() { # name command...: detached, own session, output to DIR/name.log
  local name=$1
  shift
  setsid "$@" </dev/null >>"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

stop_one() { # name [grace seconds]
  local pid i grace=${2:-10}
  pid=$(pid_of "$1")
  if [[ -n $pid ]]; then
    log "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    if [[ -d /proc/$pid ]]; then
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    fi
  fi
  rm -f "$DIR/$1.pid"
}

wait_for() { # what seconds command...
  local what=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 5; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "$what not within ${secs}s (logs in $DIR)"
}

require() {
  local t
  for t in etcd kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler kube-proxy; do
    [[ -x $BIN/$t ]] || die "$BIN/$t is missing; build the tools with: $REPO/scripts/install-k8s-tools.sh"
  done
  for t in containerd runc ctr iptables nsenter flock gcc buildah; do
    command -v "$t" >/dev/null || die "$t is missing; install it with: $REPO/scripts/install-deps.sh"
  done
  [[ -x /usr/lib/cni/bridge ]] || die "/usr/lib/cni is missing: $REPO/scripts/install-deps.sh"
}

# --- the lock ------------------------------------------------------------------------------------
# A holder process keeps the machine-wide flock for as long as this node exists; `down` ends it.
# With NODE_OWNER_PID it is also the watchdog: once the owner is gone it runs `down` itself.
take_lock() {
  local stale
  if [[ -f $CURRENT ]]; then
    stale=$(cat "$CURRENT")
    if [[ $stale != "$DIR" ]] && flock -n "$LOCK" true; then
      log "a node in $stale was left behind (its lock holder is gone): taking it down first"
      NODE_PURGE=0 "$0" down "$stale" || log "cleaning $stale failed; continuing"
    fi
  fi
  [[ -n $(pid_of lock) ]] && return 0
  touch "$DIR/lock.held"
  log "waiting for the machine-wide node lock $LOCK"
  spawn lock flock -w "${NODE_LOCK_TIMEOUT:-900}" -o "$LOCK" bash -c '
    echo "$1" >"$2"; touch "$1/lock.ok"
    while [[ -e $1/lock.held ]]; do
      if [[ -n $3 ]] && ! kill -0 "$3" 2>/dev/null; then exec "$4" down "$1"; fi
      sleep 1
    done' lock "$DIR" "$CURRENT" "${NODE_OWNER_PID:-}" "$SCRIPT_DIR/node.sh"
  local i
  for ((i = 0; i < ${NODE_LOCK_TIMEOUT:-900} * 5 + 50; i++)); do
    [[ -e $DIR/lock.ok ]] && return 0
    [[ -n $(pid_of lock) ]] || die "could not take $LOCK (another node still up?)"
    sleep 0.2
  done
  die "could not take $LOCK"
}

# --- host changes that must be undone ------------------------------------------------------------
save_host_state() {
  [[ -f $DIR/sysctl.saved ]] && return 0
  local s p
  for s in "${GLOBAL_SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$DIR/sysctl.saved.part"
  mv "$DIR/sysctl.saved.part" "$DIR/sysctl.saved"
  for p in "${FIXED_PATHS[@]}"; do [[ -e $p ]] && echo "$p"; done >"$DIR/paths.existing"
  ls -1 /run/netns >"$DIR/netns.existing" 2>/dev/null || true
}

restore_host_state() {
  local line p
  if [[ -f $DIR/sysctl.saved ]]; then
    while IFS= read -r line; do
      [[ $(sysctl -n "${line%%=*}") == "${line#*=}" ]] || { log "restoring $line"; sysctl -qw "$line"; }
    done <"$DIR/sysctl.saved"
    rm -f "$DIR/sysctl.saved"
  fi
  if [[ -f $DIR/paths.existing ]]; then
    for p in "${FIXED_PATHS[@]}"; do
      grep -qxF "$p" "$DIR/paths.existing" && continue
      [[ -e $p ]] || continue
      unmount_under "$p"
      log "removing $p"
      rm -rf "$p"
    done
    rm -f "$DIR/paths.existing"
  fi
}

unmount_under() { # path: every mount at or below it, deepest first
  local m
  awk -v p="$1" '$2 == p || index($2, p "/") == 1 { print $2 }' /proc/self/mounts | sort -r |
    while IFS= read -r m; do umount -l "$m" 2>/dev/null || true; done
}

# cgroup v1 trees of the kubelet (kubepods) and containerd (k8s.io), deepest first.
remove_cgroups() {
  local c d
  for c in /sys/fs/cgroup/*/; do
    for d in "$c"kubepods "$c"k8s.io "$c"kubepods.slice; do
      [[ -d $d ]] || continue
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [[ -d $d ]] && log "cgroup $d is still busy"
    done
  done
}

# --- network -------------------------------------------------------------------------------------
net_up() {
  local lab=$1
  if [[ ! -e /run/netns/$NETNS ]]; then
    echo "$NETNS" >"$DIR/netns"
    ip netns add "$NETNS"
  fi
  in_node ip link set lo up
  # A real node: IPv6 on (a capture then shows whether our macvlans stay quiet), no reverse-path
  # filter (replies to address-less macvlans come from a server we have no route to), ARP only
  # for addresses of the receiving link.
  in_node sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0 \
    net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
    net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
  if ! ip link show "$HOST_IF" >/dev/null 2>&1; then
    ip link add "$HOST_IF" type veth peer name k8s0 netns "$NETNS"
    sysctl -qw "net.ipv6.conf.$HOST_IF.disable_ipv6=1"
    ip addr add "$HOST_IP/24" dev "$HOST_IF"
    ip link set "$HOST_IF" up
    in_node ip addr add "$NODE_IP/24" dev k8s0
    in_node ip link set k8s0 up
    in_node ip route add "$SERVICE_CIDR" dev k8s0
  fi
  if [[ -n $lab ]]; then
    echo "$lab" >"$DIR/lab"
  else
    lab=dmnode
    echo "$lab" >"$DIR/lab"
    if [[ ! -e /run/netns/$lab-srv ]]; then
      echo "$lab" >"$DIR/lab.owned"
      bash "$LAB_SH" up "$lab"
    fi
  fi
  [[ -e /run/netns/$lab-srv ]] || die "lab $lab is not up (tests/lab/lab.sh up $lab)"
  if ! in_node ip link show lab0 >/dev/null 2>&1; then
    ip link add p-dmnode netns "$lab-srv" type veth peer name lab0 netns "$NETNS"
    ip -n "$lab-srv" link set p-dmnode master lan
    ip -n "$lab-srv" link set p-dmnode up
    in_node sysctl -qw net.ipv4.conf.lab0.rp_filter=0
    in_node ip link set lab0 up
  fi
}

net_down() {
  local lab
  lab=$(cat "$DIR/lab" 2>/dev/null || true)
  if [[ -n $lab && -e /run/netns/$lab-srv ]]; then ip -n "$lab-srv" link del p-dmnode 2>/dev/null || true; fi
  ip link del "$HOST_IF" 2>/dev/null || true
  if [[ -f $DIR/netns && -e /run/netns/$NETNS ]]; then
    local p
    for p in $(ip netns pids "$NETNS" 2>/dev/null); do log "killing leftover pid $p in $NETNS"; kill -KILL "$p" 2>/dev/null || true; done
    ip netns del "$NETNS"
    rm -f "$DIR/netns"
  fi
  if [[ -f $DIR/lab.owned ]]; then
    bash "$LAB_SH" down "$(cat "$DIR/lab.owned")" || true
    rm -f "$DIR/lab.owned"
  fi
  # Pod network namespaces that containerd did not get to remove.
  local ns
  for ns in /run/netns/cni-*; do
    [[ -e $ns ]] || continue
    grep -qxF "${ns##*/}" "$DIR/netns.existing" 2>/dev/null && continue
    umount -l "$ns" 2>/dev/null || true
    rm -f "$ns"
  done
}

# --- components ----------------------------------------------------------------------------------
start_control_plane() {
  CP_ADDRESS=$HOST_IP CP_NODES=1 \
    CP_USERS="kubelet=system:node:$NODE_NAME/system:nodes kube-proxy=system:kube-proxy" \
    "$SCRIPT_DIR/controlplane.sh" up "$CP" >/dev/null
  if [[ -z $(pid_of kube-controller-manager) ]]; then
    log "starting kube-controller-manager (log $DIR/kube-controller-manager.log)"
    # Admin credentials: a test cluster; the controllers' own roles are not under test.
    spawn kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$CP/admin.kubeconfig" \
      --service-account-private-key-file "$CP/pki/sa.key" --root-ca-file "$CP/pki/ca.crt" \
      --leader-elect=false --secure-port=0 --use-service-account-credentials=false \
      --cert-dir "$DIR/kube-controller-manager-pki" --concurrent-gc-syncs 5
  fi
  if [[ -z $(pid_of kube-scheduler) ]]; then
    log "starting kube-scheduler (log $DIR/kube-scheduler.log)"
    spawn kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$CP/admin.kubeconfig" \
      --leader-elect=false --secure-port=0 --cert-dir "$DIR/kube-scheduler-pki"
  fi
}

write_cni_config() {
  mkdir -p "$DIR/cni/net.d" "$DIR/cni/ipam"
  cat >"$DIR/cni/net.d/10-dm-node.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "dm-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$DIR/cni/ipam",
        "ranges": [[{ "subnet": "$POD_CIDR" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
}

start_containerd() {
  [[ -n $(pid_of containerd) ]] && return 0
  mkdir -p "$DIR/containerd"
  write_cni_config
  cat >"$DIR/containerd/config.toml" <<EOF
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # runc cannot lower oom_score_adj without CAP_SYS_RESOURCE, which root lacks here: without
  # this every sandbox fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
    max_conf_num = 1
EOF
  log "starting containerd (log $DIR/containerd.log)"
  spawn containerd nsenter --net="/run/netns/$NETNS" containerd --config "$DIR/containerd/config.toml"
  wait_for "containerd" 30 ctr version
}

import_images() { # archive...
  local a
  for a in "$@"; do
    log "importing $a"
    ctr images import "$a" >/dev/null
  done
}

pause_image() {
  local archive=${NODE_PAUSE_IMAGE:-$REPO/target/image/pause.tar}
  if [[ -z ${NODE_PAUSE_IMAGE:-} && ! -s $archive ]]; then
    "$REPO/scripts/build-image.sh" --pause --output "$archive"
  fi
  ctr images ls -q | grep -qxF "$PAUSE_IMAGE" || import_images "$archive"
}

start_kubelet() {
  [[ -n $(pid_of kubelet) ]] && return 0
  mkdir -p "$DIR/kubelet"
  cat >"$DIR/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 without systemd on this machine kind
cgroupDriver: cgroupfs
failCgroupV1: false
containerRuntimeEndpoint: unix://$SOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
# The kubelet API is reachable only inside the node's namespace and from the machine: no client
# certificates for the kube-apiserver (kubectl logs) to manage.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
failSwapOn: false
protectKernelDefaults: false
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
maxPods: 40
serializeImagePulls: false
# A shared build machine: never evict or garbage-collect images because of its disk.
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
volumePluginDir: $DIR/kubelet/volume-plugins
EOF
  log "starting kubelet (log $DIR/kubelet.log)"
  spawn kubelet nsenter --net="/run/netns/$NETNS" "$BIN/kubelet" --config "$DIR/kubelet/config.yaml" \
    --kubeconfig "$CP/kubelet.kubeconfig" --root-dir "$DIR/kubelet/root" --cert-dir "$DIR/kubelet/pki" \
    --node-ip "$NODE_IP" --hostname-override "$NODE_NAME" --v 1
}

start_kube_proxy() {
  [[ -n $(pid_of kube-proxy) ]] && return 0
  log "starting kube-proxy (log $DIR/kube-proxy.log)"
  # conntrack sysctls are read-only outside the machine's namespace: leave them (0 = skip).
  spawn kube-proxy nsenter --net="/run/netns/$NETNS" "$BIN/kube-proxy" \
    --kubeconfig "$CP/kube-proxy.kubeconfig" --proxy-mode iptables --hostname-override "$NODE_NAME" \
    --cluster-cidr "$POD_CIDR" --iptables-localhost-nodeports=false \
    --conntrack-max-per-core 0 --conntrack-min 0 \
    --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
    --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256 \
    --v 1
}

node_ready() {
  [[ $(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

print_env() {
  [[ -f $CP/admin.kubeconfig ]] || die "no node in $DIR (run: $0 up $DIR)"
  echo "export KUBECONFIG=$CP/admin.kubeconfig"
  echo "export PATH=$BIN:\$PATH"
  echo "export NODE_NAME=$NODE_NAME"
  echo "export NODE_NETNS=$NETNS"
  echo "export NODE_LAB=$(cat "$DIR/lab")"
  echo "export CONTAINERD_ADDRESS=$SOCK"
}

# --- down ----------------------------------------------------------------------------------------
# Workloads go while kubelet and containerd still run (CNI teardown, volume unmounts), then the
# node's processes, then the control plane, then links, mounts, cgroups, sysctls, fixed paths.
drain() {
  [[ -n $(pid_of kubelet) && -f $CP/admin.kubeconfig ]] || return 0
  kubectl get --raw /readyz >/dev/null 2>&1 || return 0
  log "deleting every workload and pod"
  kubectl delete daemonsets,deployments,replicasets,statefulsets,jobs --all -A --wait=false >/dev/null 2>&1 || true
  kubectl delete pods --all -A --wait=false >/dev/null 2>&1 || true
  local i
  for ((i = 0; i < 150; i++)); do
    [[ -z $(kubectl get pods -A -o name 2>/dev/null) ]] && break
    sleep 0.2
  done
  # The kubelet stops a deleted pod's sandbox at once (CNI teardown, netns gone) but removes it
  # only at its next garbage collection, up to a minute later: wait for the stop only.
  for ((i = 0; i < 100; i++)); do
    ctr tasks ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING" { found = 1 } END { exit !found }' || break
    sleep 0.2
  done
}

remove_containers() {
  [[ -n $(pid_of containerd) ]] || return 0
  local c
  for c in $(ctr tasks ls -q 2>/dev/null); do ctr tasks kill -s KILL "$c" >/dev/null 2>&1 || true; done
  sleep 0.5
  for c in $(ctr tasks ls -q 2>/dev/null); do ctr tasks delete -f "$c" >/dev/null 2>&1 || true; done
  for c in $(ctr containers ls -q 2>/dev/null); do ctr containers delete "$c" >/dev/null 2>&1 || true; done
}

down() {
  local holder start_ns
  start_ns=$(date +%s%N)
  holder=$(pid_of lock)
  drain
  stop_one kube-proxy
  stop_one kubelet
  remove_containers
  stop_one containerd
  # containerd-shims outlive containerd by design: any left are ours (they name our state dir).
  local p
  for p in $(grep -lF -- "$DIR/containerd" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
    [[ $p == "$$" ]] && continue
    log "killing leftover containerd process $p"
    kill -KILL "$p" 2>/dev/null || true
  done
  stop_one kube-scheduler
  stop_one kube-controller-manager
  if [[ -d $CP ]]; then CP_PURGE=0 "$SCRIPT_DIR/controlplane.sh" down "$CP" || true; fi
  net_down
  unmount_under "$DIR"
  remove_cgroups
  restore_host_state
  if [[ -n $holder ]]; then
    rm -f "$DIR/lock.held"
    # The holder runs this very `down` when it is the watchdog: do not wait for ourselves.
    if [[ $holder != "$PPID" && $holder != "$$" ]]; then
      local i
      for ((i = 0; i < 50; i++)); do [[ -d /proc/$holder ]] || break; sleep 0.1; done
    fi
  fi
  rm -f "$DIR/lock.pid" "$DIR/lock.ok" "$DIR/lock.held"
  if [[ -f $CURRENT && $(cat "$CURRENT") == "$DIR" ]]; then rm -f "$CURRENT"; fi
  # cp/tokens.csv or kubelet/ marks a directory this script populated: never purge anything else.
  if [[ ${NODE_PURGE:-0} == 1 && ( -d $DIR/kubelet || -f $CP/tokens.csv ) ]]; then rm -rf "$DIR"; fi
  log "down in $((($(date +%s%N) - start_ns) / 1000000)) ms"
}

case $CMD in
  up)
    [[ $(id -u) == 0 ]] || die "run as root"
    require
    lab=${1:-}
    start_ns=$(date +%s%N)
    take_lock
    save_host_state
    net_up "$lab"
    start_control_plane
    start_containerd
    pause_image
    start_kubelet
    start_kube_proxy
    wait_for "node $NODE_NAME Ready" 120 node_ready
    # Pods need their namespace's "default" ServiceAccount (ServiceAccount admission).
    wait_for "ServiceAccount default/default" 60 kubectl -n default get serviceaccount default
    log "node $NODE_NAME Ready in $((($(date +%s%N) - start_ns) / 1000000)) ms"
    print_env
    ;;
  down) down ;;
  env) print_env ;;
  import) [[ $# -ge 1 ]] || usage; import_images "$@" ;;
  exec) [[ $# -ge 1 ]] || usage; exec nsenter --net="/run/netns/$NETNS" "$@" ;;
  *) usage ;;
esac
