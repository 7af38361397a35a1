#!/bin/bash
# DHCP test lab: real DHCP servers and a DHCP client side in network namespaces of its own.
# Many labs can coexist; each is named and keeps its state under ${DHCPLAB_DIR:-/tmp/dhcplab}/NAME.
#
#   NAME-srv  : bridge "lan" 10.77.0.1/24 (server address 1), ports "p-ag" and "p-srv2"
#   NAME-srv2 : "lan" 10.77.0.2/24 (server address 2: a second server on the same segment)
#   NAME-ag   : "lab0", the veth peer of p-ag, no IP, up: the parent interface for macvlans
#
# Subcommands (run as root):
#   up NAME | down NAME
#   node NAME N                       another node: namespace NAME-agN (N = 2..9) with its own
#                                     "lab0" on the same segment; prints the namespace
#   pod NAME                          a "pod" behind the agent namespace: namespace NAME-pod with
#                                     "eth0" 10.244.0.2/24 (default via 10.244.0.1), its veth peer
#                                     "v-pod" 10.244.0.1/24 in NAME-ag, forwarding on in NAME-ag;
#                                     prints the namespace
#   parent NAME N                     another parent interface "labN" (N = 1..9) in NAME-ag on the
#                                     same segment (two parents on one host); prints its name
#   start NAME dnsmasq|kea|dhcpd [lease=S] [t1=S] [t2=S] [addr=10.77.0.1|10.77.0.2] [authoritative[=0|1]]
#                                [range=FIRST-LAST]
#   stop NAME SERVER [addr=A]         (without addr: that server on every address)
#   leases NAME SERVER [addr=A]       lease database as JSON lines (see leases.py)
#   macvlan NAME IFNAME MAC [MODE]    add a macvlan (default mode bridge) on lab0 in NAME-ag, up
#   capture-start NAME IFACE FILE | capture-stop NAME     (tcpdump in NAME-ag, udp port 67 or 68)
#   exec NAME CMD...                  run CMD in NAME-ag
#   srv-exec NAME ADDR CMD...         run CMD in the namespace that holds server address ADDR
#   path NAME                         print the lab's state directory
#   gc                                take down labs of the Rust harness (named dl<PID>-<N>) whose
#                                     test process is gone (killed tests run no destructors)
# Nothing here touches the host's own interfaces: every link is created inside the lab namespaces.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=${DHCPLAB_DIR:-/tmp/dhcplab}
ADDR1=10.77.0.1
ADDR2=10.77.0.2
PARENT=lab0
SRV_IFACE=lan
DNSMASQ_MIN_LEASE=120

die() { echo "lab.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

check_name() {
  [[ ${1:-} =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$ ]] || die "bad lab name '${1:-}' (letters, digits, _ . -; at most 32)"
}
dir_of() { echo "$ROOT/$1"; }
ag_ns() { echo "$1-ag"; }
srv_ns_of() { # NAME ADDR -> namespace holding ADDR
  case $2 in
    "$ADDR1") echo "$1-srv" ;;
    "$ADDR2") echo "$1-srv2" ;;
    *) die "addr must be $ADDR1 or $ADDR2, not '$2'" ;;
  esac
}
# `ip netns list` fails ("Peer netns reference is invalid") while other namespaces are being deleted
NETNS_DIR=/run/netns
ns_exists() { [ -e "$NETNS_DIR/$1" ]; }

# --- process bookkeeping: every process we start has a pid file; stop = kill that pid ---------------
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
kill_pidfile() {
  local f=$1 p
  [ -f "$f" ] || return 0
  p=$(cat "$f")
  if alive "$p"; then
    kill "$p" 2>/dev/null || true
    for _ in $(seq 1 50); do alive "$p" || break; sleep 0.1; done
    if alive "$p"; then kill -9 "$p" 2>/dev/null || true; fi
    for _ in $(seq 1 20); do alive "$p" || break; sleep 0.1; done
  fi
  rm -f "$f"
}

# --- topology ------------------------------------------------------------------------------------
up() {
  local name=$1 srv ag srv2 d
  srv="$name-srv"; srv2="$name-srv2"; ag=$(ag_ns "$name"); d=$(dir_of "$name")
  for ns in "$srv" "$srv2" "$ag"; do ns_exists "$ns" && die "namespace $ns exists: 'down $name' first"; done
  mkdir -p "$d"
  # record what we create before creating it, so that down can clean up after a half-done up
  echo "$srv $srv2 $ag" >"$d/namespaces"
  for ns in "$srv" "$srv2" "$ag"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # no IPv6: router solicitations and DAD from every macvlan only add noise to captures
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  done
  # one L2 segment: a bridge in NAME-srv joins the agent side and the second server address, so
  # two servers can run at once (failover / rebind tests) each with its own address and sockets
  ip -n "$srv" link add "$SRV_IFACE" type bridge stp_state 0 forward_delay 0
  ip link add p-ag netns "$srv" type veth peer name "$PARENT" netns "$ag"
  ip link add p-srv2 netns "$srv" type veth peer name "$SRV_IFACE" netns "$srv2"
  ip -n "$srv" link set p-ag master "$SRV_IFACE"
  ip -n "$srv" link set p-srv2 master "$SRV_IFACE"
  ip -n "$srv" addr add "$ADDR1/24" dev "$SRV_IFACE"
  ip -n "$srv2" addr add "$ADDR2/24" dev "$SRV_IFACE"
  ip -n "$srv" link set p-ag up
  ip -n "$srv" link set p-srv2 up
  ip -n "$srv" link set "$SRV_IFACE" up
  ip -n "$srv2" link set "$SRV_IFACE" up
  ip -n "$ag" link set "$PARENT" up
  # a client without an address gets replies from 10.77.0.x with no route back: reverse-path
  # filtering (inherited from the host, 2 on Ubuntu) would drop them
  ip netns exec "$ag" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
    "net.ipv4.conf.$PARENT.rp_filter=0"
  # several macvlans with IPs in one subnet: answer ARP only on the interface that owns the IP
  ip netns exec "$ag" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
}

# another "node": namespace NAME-agN whose parent interface (also named lab0, like eth0 on every
# node of a cluster) sits on the same L2 segment as the first agent namespace and the servers
node() {
  local name=$1 n=$2 srv ag d
  [[ $n =~ ^[2-9]$ ]] || die "node number must be 2..9, not '$n'"
  srv="$name-srv"; ag="$name-ag$n"; d=$(dir_of "$name")
  ns_exists "$srv" || die "lab $name is not up"
  ns_exists "$ag" && die "namespace $ag exists"
  echo " $ag" >>"$d/namespaces"
  ip netns add "$ag"
  ip -n "$ag" link set lo up
  ip netns exec "$ag" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip link add "p-ag$n" netns "$srv" type veth peer name "$PARENT" netns "$ag"
  ip -n "$srv" link set "p-ag$n" master "$SRV_IFACE"
  ip -n "$srv" link set "p-ag$n" up
  ip -n "$ag" link set "$PARENT" up
  ip netns exec "$ag" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
    "net.ipv4.conf.$PARENT.rp_filter=0"
  ip netns exec "$ag" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
  echo "$ag"
}

# a pod network namespace behind the agent namespace, as a CNI plugin would make it
pod() {
  local name=$1 ag pod d
  ag=$(ag_ns "$name"); pod="$name-pod"; d=$(dir_of "$name")
  ns_exists "$ag" || die "lab $name is not up"
  ns_exists "$pod" && die "namespace $pod exists"
  echo " $pod" >>"$d/namespaces"
  ip netns add "$pod"
  ip -n "$pod" link set lo up
  ip link add v-pod netns "$ag" type veth peer name eth0 netns "$pod"
  ip -n "$ag" addr add 10.244.0.1/24 dev v-pod
  ip -n "$ag" link set v-pod up
  ip -n "$pod" addr add 10.244.0.2/24 dev eth0
  ip -n "$pod" link set eth0 up
  ip -n "$pod" route add default via 10.244.0.1
  ip netns exec "$ag" sysctl -qw net.ipv4.ip_forward=1
  echo "$pod"
}

# a second parent interface in the agent namespace: labN, its bridge port p-labN
second_parent() {
  local name=$1 n=$2 srv ag
  [[ $n =~ ^[1-9]$ ]] || die "parent number must be 1..9, not '$n'"
  srv="$name-srv"; ag=$(ag_ns "$name")
  ns_exists "$ag" || die "lab $name is not up"
  ip link add "p-lab$n" netns "$srv" type veth peer name "lab$n" netns "$ag"
  ip -n "$srv" link set "p-lab$n" master "$SRV_IFACE"
  ip -n "$srv" link set "p-lab$n" up
  ip -n "$ag" link set "lab$n" up
  ip netns exec "$ag" sysctl -qw "net.ipv4.conf.lab$n.rp_filter=0"
  echo "lab$n"
}

down() {
  local name=$1 d ns f
  d=$(dir_of "$name")
  for f in "$d"/*/pid "$d"/capture.pid; do [ -e "$f" ] && kill_pidfile "$f"; done
  local namespaces="$name-srv $name-srv2 $name-ag"
  [ -f "$d/namespaces" ] && namespaces=$(cat "$d/namespaces")
  for ns in $namespaces; do
    ns_exists "$ns" || continue
    # whatever a test ran inside the lab (udhcpc, the agent under test) dies with the lab
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 1 30); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.1; done
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns"
  done
  if [ "${DHCPLAB_KEEP:-0}" != 1 ]; then rm -rf "$d"; fi
}

# --- servers -------------------------------------------------------------------------------------
instance_dir() { # NAME SERVER ADDR
  echo "$(dir_of "$1")/$2-${3##*.}"
}
check_server() { case $1 in dnsmasq | kea | dhcpd) ;; *) die "unknown server '$1' (dnsmasq|kea|dhcpd)" ;; esac; }

render() { # TEMPLATE OUT k=v...
  local tpl=$1 out=$2; shift 2
  local script=() kv
  for kv in "$@"; do script+=(-e "s#@${kv%%=*}@#${kv#*=}#g"); done
  sed "${script[@]}" "$tpl" >"$out"
  local left
  left=$(grep -v '^[[:space:]]*#' "$out" | grep -o '@[A-Z_0-9]*@' | head -1 || true)
  [ -z "$left" ] || die "unrendered parameter $left in $out"
}

start() {
  local name=$1 server=$2; shift 2
  check_server "$server"
  local lease=60 t1='' t2='' addr=$ADDR1 auth=0 range=10.77.0.10-10.77.0.250 arg
  for arg in "$@"; do
    case $arg in
      lease=*) lease=${arg#*=} ;;
      t1=*) t1=${arg#*=} ;;
      t2=*) t2=${arg#*=} ;;
      addr=*) addr=${arg#*=} ;;
      authoritative | authoritative=1) auth=1 ;;
      authoritative=0) auth=0 ;;
      range=*) range=${arg#*=} ;;
      *) die "unknown parameter '$arg'" ;;
    esac
  done
  for v in "$lease" ${t1:+"$t1"} ${t2:+"$t2"}; do [[ $v =~ ^[0-9]+$ ]] || die "times are whole seconds, not '$v'"; done
  [[ $range =~ ^10\.77\.0\.[0-9]+-10\.77\.0\.[0-9]+$ ]] || die "range must be 10.77.0.A-10.77.0.B, not '$range'"
  local ns d
  ns=$(srv_ns_of "$name" "$addr")
  ns_exists "$ns" || die "lab $name is not up"
  d=$(instance_dir "$name" "$server" "$addr")
  local other
  for other in dnsmasq kea dhcpd; do
    [ "$other" = "$server" ] && continue
    if [ -f "$(instance_dir "$name" "$other" "$addr")/pid" ]; then die "$other already runs on $addr"; fi
  done
  [ -f "$d/pid" ] && kill_pidfile "$d/pid"
  rm -rf "$d"; mkdir -p "$d"

  if [ "$server" = dnsmasq ] && [ "$lease" -lt $DNSMASQ_MIN_LEASE ]; then
    echo "lab.sh: dnsmasq's minimum lease is ${DNSMASQ_MIN_LEASE} s: lease=$lease raised to $DNSMASQ_MIN_LEASE" >&2
    lease=$DNSMASQ_MIN_LEASE
  fi
  local common=(RUN="$d" IFACE="$SRV_IFACE" ADDR="$addr" LEASE="$lease"
    RANGE_START="${range%-*}" RANGE_END="${range#*-}")
  local cmd=()
  case $server in
    dnsmasq)
      render "$HERE/conf/dnsmasq.conf" "$d/server.conf" "${common[@]}" \
        T1_LINE="${t1:+dhcp-option=option:T1,$t1}" T2_LINE="${t2:+dhcp-option=option:T2,$t2}" \
        AUTHORITATIVE_LINE="$([ $auth = 1 ] && echo dhcp-authoritative)"
      cmd=(dnsmasq --keep-in-foreground --user=root --group=root --conf-file="$d/server.conf") ;;
    kea)
      local timers=
      [ -n "$t1" ] && timers+="\"renew-timer\": $t1,"
      [ -n "$t2" ] && timers+=" \"rebind-timer\": $t2,"
      render "$HERE/conf/kea-dhcp4.conf" "$d/server.conf" "${common[@]}" TIMERS="$timers" \
        AUTHORITATIVE_BOOL="$([ $auth = 1 ] && echo true || echo false)"
      mkdir -p "$d/kea"
      cmd=(env KEA_PIDFILE_DIR="$d/kea" KEA_LOCKFILE_DIR="$d/kea" KEA_LOGGER_DESTINATION=stdout
        kea-dhcp4 -c "$d/server.conf") ;;
    dhcpd)
      render "$HERE/conf/dhcpd.conf" "$d/server.conf" "${common[@]}" \
        T1_LINE="${t1:+option dhcp-renewal-time $t1;}" T2_LINE="${t2:+option dhcp-rebinding-time $t2;}" \
        AUTHORITATIVE_LINE="$([ $auth = 1 ] && echo 'authoritative;' || echo 'not authoritative;')"
      touch "$d/leases" # dhcpd refuses to start without a lease file
      cmd=(dhcpd -4 -f -d -cf "$d/server.conf" -lf "$d/leases" -pf "$d/dhcpd.pid" "$SRV_IFACE") ;;
  esac
  echo "$server $addr lease=$lease t1=${t1:-default} t2=${t2:-default} authoritative=$auth range=$range" >"$d/params"
  # `ip netns exec` and `env` exec in place: $! is the server's own pid
  ip netns exec "$ns" "${cmd[@]}" >"$d/log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$d/pid"
  # Ready when the server itself holds UDP port 67 in its namespace and, for Kea and dhcpd, which
  # receive on a packet socket, that socket is bound to the interface too: Kea binds UDP 67
  # *before* its packet socket, and a request sent in between is lost.
  for _ in $(seq 1 100); do
    if ip netns exec "$ns" ss -H -uanp 'sport = :67' | grep -q "pid=$pid," &&
      { [ "$server" = dnsmasq ] || ip netns exec "$ns" ss -H -0 -p | grep -q ":$SRV_IFACE .*pid=$pid,"; }; then
      return 0
    fi
    alive "$pid" || { echo "lab.sh: $server died:" >&2; tail -20 "$d/log" >&2; rm -f "$d/pid"; exit 1; }
    sleep 0.1
  done
  echo "lab.sh: $server did not bind port 67 within 10 s:" >&2; tail -20 "$d/log" >&2
  kill_pidfile "$d/pid"; exit 1
}

addr_arg() { # [addr=A] -> A or ""
  [ $# -eq 0 ] && return 0
  [[ $1 == addr=* ]] || die "expected addr=A, not '$1'"
  echo "${1#addr=}"
}

stop() {
  local name=$1 server=$2 addr a; shift 2
  check_server "$server"
  addr=$(addr_arg "$@")
  for a in ${addr:-$ADDR1 $ADDR2}; do
    srv_ns_of "$name" "$a" >/dev/null
    kill_pidfile "$(instance_dir "$name" "$server" "$a")/pid"
  done
}

leases() {
  local name=$1 server=$2 addr; shift 2
  check_server "$server"
  addr=$(addr_arg "$@"); addr=${addr:-$ADDR1}
  srv_ns_of "$name" "$addr" >/dev/null
  local f
  f="$(instance_dir "$name" "$server" "$addr")/leases"
  [ -f "$f" ] || die "no lease database at $f: $server never started on $addr in lab $name"
  python3 "$HERE/leases.py" "$server" "$f"
}

# --- agent side ----------------------------------------------------------------------------------
macvlan() {
  local name=$1 ifname=$2 mac=$3 mode=${4:-bridge}
  [ ${#ifname} -le 15 ] || die "interface names are at most 15 bytes: '$ifname'"
  ip -n "$(ag_ns "$name")" link add link "$PARENT" name "$ifname" address "$mac" type macvlan mode "$mode"
  ip -n "$(ag_ns "$name")" link set "$ifname" up
}

MARKER_PORT=9 # discard: the marker datagram that tells capture-stop the file has caught up

capture_start() {
  local name=$1 iface=$2 file=$3 d
  d=$(dir_of "$name")
  [ -f "$d/capture.pid" ] && die "a capture already runs in lab $name"
  echo "$iface $file" >"$d/capture.what"
  # -Z root: Debian's tcpdump drops to user tcpdump, which may not write FILE's directory.
  # --immediate-mode: otherwise packets wait in the kernel ring up to 1 s and a stop loses them.
  # -B 32768 (KiB): with the default buffer a burst of a few hundred frames was dropped by the
  # kernel (bench_scale read 29 of 100 REQUESTs, tcpdump said "139 packets dropped by kernel").
  ip netns exec "$(ag_ns "$name")" tcpdump -U --immediate-mode -B 32768 -n -Z root -i "$iface" -w "$file" \
    "udp port 67 or udp port 68 or udp port $MARKER_PORT" >"$d/capture.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$d/capture.pid"
  for _ in $(seq 1 100); do
    grep -q 'listening on' "$d/capture.log" && return 0
    alive "$pid" || { cat "$d/capture.log" >&2; rm -f "$d/capture.pid"; die "tcpdump died"; }
    sleep 0.1
  done
  kill_pidfile "$d/capture.pid"; die "tcpdump not listening within 10 s"
}

# tcpdump handles packets in order: once a marker sent after everything else is in the file,
# so is everything before it, and killing tcpdump loses nothing.
capture_stop() {
  local name=$1 d iface file marker
  d=$(dir_of "$name")
  [ -f "$d/capture.pid" ] || return 0
  read -r iface file <"$d/capture.what"
  marker="dhcplab-flush-$$-$RANDOM"
  if ip netns exec "$(ag_ns "$name")" python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())
s.sendto(sys.argv[2].encode(), ("255.255.255.255", int(sys.argv[3])))' "$iface" "$marker" "$MARKER_PORT" 2>>"$d/capture.log"; then
    for _ in $(seq 1 50); do grep -aqF "$marker" "$file" 2>/dev/null && break; sleep 0.1; done
  fi
  kill_pidfile "$d/capture.pid"
  rm -f "$d/capture.what"
}

gc() {
  local d name pid
  for d in "$ROOT"/dl*-*; do
    [ -f "$d/namespaces" ] || continue
    name=${d##*/}
    [[ $name =~ ^dl([0-9]+)-[0-9]+$ ]] || continue
    pid=${BASH_REMATCH[1]}
    alive "$pid" && continue
    echo "lab.sh: taking down $name (process $pid is gone)" >&2
    down "$name" || true
  done
}

main() {
  local sub=${1:-}
  if [ "$sub" = gc ]; then gc; return; fi
  [ $# -ge 2 ] || usage
  local name=$2; check_name "$name"; shift 2
  case $sub in
    up) up "$name" ;;
    down) down "$name" ;;
    node) [ $# -eq 1 ] || usage; node "$name" "$1" ;;
    parent) [ $# -eq 1 ] || usage; second_parent "$name" "$1" ;;
    pod) [ $# -eq 0 ] || usage; pod "$name" ;;
    start) [ $# -ge 1 ] || usage; start "$name" "$@" ;;
    stop) [ $# -ge 1 ] || usage; stop "$name" "$@" ;;
    leases) [ $# -ge 1 ] || usage; leases "$name" "$@" ;;
    macvlan) [ $# -ge 2 ] || usage; macvlan "$name" "$@" ;;
    capture-start) [ $# -eq 2 ] || usage; capture_start "$name" "$@" ;;
    capture-stop) capture_stop "$name" ;;
    exec) [ $# -ge 1 ] || usage; exec ip netns exec "$(ag_ns "$name")" "$@" ;;
    srv-exec) [ $# -ge 2 ] || usage; local ns; ns=$(srv_ns_of "$name" "$1"); shift; exec ip netns exec "$ns" "$@" ;;
    path) dir_of "$name" ;;
    *) usage ;;
  esac
}
main "$@"
