#!/usr/bin/env bash
# A minimal real Kubernetes control plane for tests: etcd + kube-apiserver on
# 127.0.0.1, state and logs in DIR. There is no controller-manager and no
# scheduler, so: owner references are never garbage-collected, namespace
# deletion never finishes (no finalization), no "default" ServiceAccount is
# created in new namespaces, Deployments never get Pods. Tests create their
# namespaces explicitly and clean up objects themselves.
#
# Usage: controlplane.sh up DIR     start (or find running) and print export lines
#        controlplane.sh down DIR   stop by the PIDs recorded in DIR
#        controlplane.sh env DIR    print export lines for a running control plane
#
# Environment:
#   DHCPMANAGER_TOOLS        tools root (default $HOME/.cache/dhcpmanager/tools)
#   CP_ETCD_PORT, CP_ETCD_PEER_PORT, CP_APISERVER_PORT  fixed ports (default: free ones)
#   CP_OWNER_PID             when set, a watchdog stops the control plane once this
#                            process is gone (so a crashed test leaves nothing behind)
#   CP_PURGE=1               `down` (also the watchdog's) removes DIR afterwards
#   CP_READY_TIMEOUT         seconds to wait for /readyz (default 180)
#   CP_ADDRESS               kube-apiserver's bind/advertise address (default 127.0.0.1; the
#                            kubelet-backed node of tests/k8s/node.sh uses its veth address)
#   CP_NODES=1               for a cluster with kubelets and a controller-manager: ServiceAccount
#                            admission on, authorization Node,RBAC, kubelets reached by InternalIP
#   CP_USERS="NAME=USER[/GROUP] ..."  a static token and DIR/NAME.kubeconfig for each user (e.g.
#                            kubelet=system:node:n1/system:nodes), created with the control plane
set -euo pipefail

TOOLS=${DHCPMANAGER_TOOLS:-$HOME/.cache/dhcpmanager/tools}
BIN=$TOOLS/bin
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INSTALL_HINT="$(cd "$SCRIPT_DIR/../.." && pwd)/scripts/install-k8s-tools.sh"
READY_TIMEOUT=${CP_READY_TIMEOUT:-180}

log() { printf '[controlplane] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() { sed -n '9,27p' "$0" >&2; exit 2; }
[[ $# == 2 ]] || usage
CMD=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
# A restart (`up` on a stopped one) keeps the address and mode it was created with.
ADDRESS=${CP_ADDRESS:-$(cut -d: -f1 "$DIR/apiserver.address" 2>/dev/null || echo 127.0.0.1)}
NODES=${CP_NODES:-$(cat "$DIR/nodes" 2>/dev/null || echo 0)}

require_tools() {
  local t
  for t in etcd kube-apiserver kubectl; do
    [[ -x $BIN/$t ]] || die "$BIN/$t is missing; build the tools with: $INSTALL_HINT"
  done
}

# A PID file names our process only while that PID still runs a command that
# mentions DIR: a recycled PID belongs to someone else and must not be killed.
pid_of() { # name -> pid on stdout, or nothing
  local f=$DIR/$1.pid pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 0
  if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DIR"; then echo "$pid"; fi
}

free_port() { # [address]
  python3 -c 'import socket, sys; s=socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "${1:-127.0.0.1}"
}

print_env() {
  [[ -f $DIR/admin.kubeconfig ]] || die "no control plane in $DIR (run: $0 up $DIR)"
  echo "export KUBECONFIG=$DIR/admin.kubeconfig"
  echo "export PATH=$BIN:\$PATH"
}

readyz() {
  curl -sf --max-time 5 --cacert "$DIR/pki/ca.crt" -H "Authorization: Bearer $(cat "$DIR/admin.token")" \
    "https://$(cat "$DIR/apiserver.address")/readyz" >/dev/null 2>&1
}

make_pki() {
  local pki=$DIR/pki
  [[ -f $pki/apiserver.crt ]] && return 0
  mkdir -p "$pki"
  log "generating certificates in $pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=dhcpmanager-test-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  # The "kubernetes" Service's cluster IP (first of the range) is a SAN too, as in real clusters.
  printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' \
    "$ADDRESS" >"$pki/apiserver.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

make_token() {
  [[ -f $DIR/admin.token ]] && return 0
  openssl rand -hex 24 >"$DIR/admin.token"
  # token,user,uid,"groups"
  echo "$(cat "$DIR/admin.token"),admin,admin,\"system:masters\"" >"$DIR/tokens.csv"
  local entry name user group
  for entry in ${CP_USERS:-}; do
    name=${entry%%=*} user=${entry#*=} group=
    [[ $user == */* ]] && group=${user#*/} user=${user%%/*}
    openssl rand -hex 24 >"$DIR/$name.token"
    echo "$(cat "$DIR/$name.token"),$user,$user${group:+,\"$group\"}" >>"$DIR/tokens.csv"
    chmod 600 "$DIR/$name.token"
  done
  chmod 600 "$DIR/admin.token" "$DIR/tokens.csv"
}

write_kubeconfigs() {
  local entry
  write_kubeconfig admin
  for entry in ${CP_USERS:-}; do write_kubeconfig "${entry%%=*}"; done
}

write_kubeconfig() { # name: DIR/name.kubeconfig with DIR/name.token
  cat >"$DIR/$1.kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://$(cat "$DIR/apiserver.address")
    certificate-authority-data: $(base64 -w0 <"$DIR/pki/ca.crt")
users:
- name: $1
  user:
    token: $(cat "$DIR/$1.token")
contexts:
- name: test
  context:
    cluster: test
    user: $1
current-context: test
KCFG
  chmod 600 "$DIR/$1.kubeconfig"
}

# Starts a detached process (own session, stdin closed, output to a log) and
# records its PID. Without job control the child is no group leader, so setsid
# runs it without forking and $! is the tool's own PID.
spawn() { # name command...
  local name=$1
  shift
  setsid "$@" </dev/null >>"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

start_etcd() {
  [[ -n $(pid_of etcd) ]] && return 0
  # A restart reuses the recorded ports: etcd's data dir remembers its peer URL.
  local port peer
  port=${CP_ETCD_PORT:-$(cat "$DIR/etcd.port" 2>/dev/null || free_port)}
  peer=${CP_ETCD_PEER_PORT:-$(cat "$DIR/etcd.peer-port" 2>/dev/null || free_port)}
  echo "$port" >"$DIR/etcd.port"
  echo "$peer" >"$DIR/etcd.peer-port"
  log "starting etcd on 127.0.0.1:$port (log $DIR/etcd.log)"
  # --unsafe-no-fsync: test data is disposable and fsync dominates start-up on shared disks.
  spawn etcd "$BIN/etcd" --name controlplane --data-dir "$DIR/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "controlplane=http://127.0.0.1:$peer" --unsafe-no-fsync --log-level warn
  local i
  for ((i = 0; i < 300; i++)); do
    curl -sf --max-time 2 "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    [[ -n $(pid_of etcd) ]] || die "etcd exited; see $DIR/etcd.log"
    sleep 0.2
  done
  die "etcd not healthy after 60s; see $DIR/etcd.log"
}

start_apiserver() {
  [[ -n $(pid_of kube-apiserver) ]] && return 0
  local port i
  port=${CP_APISERVER_PORT:-$(cat "$DIR/apiserver.port" 2>/dev/null || free_port "$ADDRESS")}
  echo "$port" >"$DIR/apiserver.port"
  echo "$ADDRESS:$port" >"$DIR/apiserver.address"
  log "starting kube-apiserver on https://$ADDRESS:$port (log $DIR/kube-apiserver.log)"
  # Without a controller-manager, ServiceAccount admission is disabled because no
  # controller creates the "default" ServiceAccount it would demand for every
  # Pod; TokenRequest (kubectl create token) works without it.
  local mode=(--authorization-mode RBAC --disable-admission-plugins ServiceAccount)
  echo "$NODES" >"$DIR/nodes"
  if [[ $NODES == 1 ]]; then
    # kubelets authenticate as system:node:NAME (Node authorizer); `kubectl logs` reaches
    # them by their InternalIP, not by resolving node names.
    mode=(--authorization-mode Node,RBAC --kubelet-preferred-address-types InternalIP)
  fi
  spawn kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$(cat "$DIR/etcd.port")" \
    --bind-address "$ADDRESS" --advertise-address "$ADDRESS" --secure-port "$port" \
    --cert-dir "$DIR/pki" --tls-cert-file "$DIR/pki/apiserver.crt" --tls-private-key-file "$DIR/pki/apiserver.key" \
    --client-ca-file "$DIR/pki/ca.crt" \
    "${mode[@]}" --token-auth-file "$DIR/tokens.csv" \
    --service-account-key-file "$DIR/pki/sa.pub" --service-account-signing-key-file "$DIR/pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range 10.96.0.0/24 \
    --allow-privileged=true --profiling=false
  for ((i = 0; i < READY_TIMEOUT * 2; i++)); do
    readyz && return 0
    [[ -n $(pid_of kube-apiserver) ]] || die "kube-apiserver exited; see $DIR/kube-apiserver.log"
    sleep 0.5
  done
  die "kube-apiserver not ready after ${READY_TIMEOUT}s; see $DIR/kube-apiserver.log"
}

# Polls the owner once a second; a test process that dies without calling
# `down` (panic=abort, SIGKILL, statics never dropped) still cleans up.
start_watchdog() {
  [[ -n ${CP_OWNER_PID:-} ]] || return 0
  [[ -n $(pid_of watchdog) ]] && return 0
  spawn watchdog bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" down "$3"' \
    watchdog "$CP_OWNER_PID" "$SCRIPT_DIR/controlplane.sh" "$DIR"
}

stop_one() { # name
  local pid i
  pid=$(pid_of "$1")
  if [[ -n $pid ]]; then
    log "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      [[ -d /proc/$pid ]] || break
      sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then
      kill -KILL "$pid" 2>/dev/null || true
      # A killed process lingers until its parent reaps it; wait for that too.
      for ((i = 0; i < 50; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    fi
  fi
  rm -f "$DIR/$1.pid"
}

case $CMD in
  up)
    require_tools
    if [[ -n $(pid_of kube-apiserver) && -f $DIR/admin.kubeconfig ]] && readyz; then
      log "already running in $DIR"
    else
      start_ns=$(date +%s%N)
      make_pki
      make_token
      start_etcd
      start_apiserver
      write_kubeconfigs
      log "ready in $((($(date +%s%N) - start_ns) / 1000000)) ms"
    fi
    start_watchdog
    print_env
    ;;
  down)
    # The watchdog runs `down` itself; it must not kill the shell that runs it.
    if [[ $(pid_of watchdog) != "$$" ]]; then stop_one watchdog; fi
    stop_one kube-apiserver
    stop_one etcd
    rm -f "$DIR/watchdog.pid"
    # tokens.csv marks a directory this script populated: never purge anything else.
    if [[ ${CP_PURGE:-0} == 1 && -f $DIR/tokens.csv ]]; then rm -rf "$DIR"; fi
    ;;
  env) print_env ;;
  *) usage ;;
esac
