#!/usr/bin/env bash
# dhcpmanager end to end on this machine, as root:   scripts/demo.sh
#
# Everything happens in a sandbox: network namespaces with their own L2 segment and a real DHCP
# server (ISC Kea from Debian) on 10.77.0.0/24. Nothing is sent on the machine's real interfaces.
#   1. the engine alone: `dhcpmanager-operator lease` obtains one lease and releases it;
#   2. the original's REST API: `dhcpmanager-apiserver --standalone` on the "node", then
#      POST /v1/ip as the MetalLB fork sends it, GET /v1/status, DELETE /v1/ip;
#   3. Kubernetes: a real kube-apiserver on loopback, the CRDs and the chart's RBAC, the agent,
#      `kubectl apply` of a DhcpAddress, `kubectl get dhcpaddresses`, delete;
#   4. a LoadBalancer Service: `kubectl create service loadbalancer` gets its EXTERNAL-IP from the
#      DHCP server, a client on the segment reaches it through the lease's own MAC, and deleting
#      the Service releases the lease. (No kubelet here, so no pod behind it: the test suite's
#      node_service test runs that part on a real node.)
# Everything it starts is stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 1; }

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; }

say "installing what is missing (Debian packages; Kubernetes binaries are built once, ~8 min)"
scripts/install-deps.sh
scripts/install-k8s-tools.sh
export PATH="${DHCPMANAGER_TOOLS:-$HOME/.cache/dhcpmanager/tools}/bin:$PATH"
cargo build --bins --quiet
BIN=$PWD/target/debug

LAB=demo$$
WORK=$(mktemp -d /tmp/dhcpmanager-demo.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  tests/k8s/controlplane.sh down "$WORK/cp" >/dev/null 2>&1 || true
  tests/lab/lab.sh down "$LAB" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

say "a sandbox network: namespaces $LAB-srv (Kea on 10.77.0.1) and $LAB-ag (the node, parent interface lab0)"
tests/lab/lab.sh up "$LAB" >/dev/null
tests/lab/lab.sh start "$LAB" kea lease=600
node() { ip netns exec "$LAB-ag" "$@"; }

say "1. one lease with the engine: acquire on a fresh macvlan, print, release"
show "dhcpmanager-operator lease --parent lab0 --mac 02:de:00:00:00:01 --service demo/hello"
node "$BIN/dhcpmanager-operator" lease --parent lab0 --mac 02:de:00:00:00:01 --service demo/hello | python3 -m json.tool

say "2. the original /v1 REST API, standalone (no Kubernetes)"
cat >"$WORK/dhcpmanager.toml" <<TOML
interface = "lab0"
macs = ["02:de:00:00:01:01", "02:de:00:00:01:02", "02:de:00:00:01:03"]
etcd = []
request-timeout = "10s"
state-dir = "$WORK/state"
TOML
# Not through node(): $! would be the subshell running the function, and killing it would leave
# the apiserver running (with its spare links on lab0) into step 3.
ip netns exec "$LAB-ag" "$BIN/dhcpmanager-apiserver" --standalone --config "$WORK/dhcpmanager.toml" \
  --bind 127.0.0.1 --port 8000 >"$WORK/apiserver.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do node curl -sf http://127.0.0.1:8000/healthz >/dev/null 2>&1 && break; sleep 0.1; done
show "curl -X POST -d '{\"service\":\"default/web\"}' http://127.0.0.1:8000/v1/ip"
answer=$(node curl -s -X POST -H 'Content-Type: application/json' -d '{"service":"default/web"}' http://127.0.0.1:8000/v1/ip)
echo "$answer"
ip=$(echo "$answer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ip"])')
show "curl http://127.0.0.1:8000/v1/status"
node curl -s http://127.0.0.1:8000/v1/status | python3 -m json.tool | head -40
echo "Kea's lease database now says:"
tests/lab/lab.sh leases "$LAB" kea | grep "\"$ip\"" | tail -1
show "curl -X DELETE -d '{\"ip\":\"$ip\"}' http://127.0.0.1:8000/v1/ip"
node curl -s -X DELETE -H 'Content-Type: application/json' -d "{\"ip\":\"$ip\"}" http://127.0.0.1:8000/v1/ip
sleep 0.5
echo "Kea's lease database after the release (state free = given back):"
tests/lab/lab.sh leases "$LAB" kea | grep "\"$ip\"" | tail -1
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true; PIDS=()

say "3. Kubernetes: a real kube-apiserver on loopback, the CRDs, the agent with the chart's RBAC"
tests/k8s/controlplane.sh up "$WORK/cp" >/dev/null
export KUBECONFIG=$WORK/cp/admin.kubeconfig
kubectl apply --server-side -f charts/dhcpmanager/crds/ >/dev/null
kubectl wait --for=condition=Established crd/dhcpaddresses.dhcpmanager.io crd/macpools.dhcpmanager.io >/dev/null
kubectl create namespace dhcpmanager >/dev/null
helm template dhcpmanager charts/dhcpmanager --namespace dhcpmanager --kube-version 1.34.4 \
  --set agent.serviceController.enabled=true --show-only templates/rbac-agent.yaml \
  | kubectl apply -f - >/dev/null
# Owner references need the garbage collector (a deleted Service takes its DhcpAddress along).
"$(command -v kube-controller-manager)" --kubeconfig "$KUBECONFIG" --controllers=garbagecollector \
  --leader-elect=false --secure-port=0 --use-service-account-credentials=false \
  >"$WORK/gc.log" 2>&1 &
PIDS+=($!)
tests/k8s/sa-kubeconfig.sh "$WORK/cp" dhcpmanager dhcpmanager-agent "$WORK/agent.kubeconfig" >/dev/null
KUBECONFIG=$WORK/agent.kubeconfig NODE_NAME=demo-node POD_NAMESPACE=dhcpmanager \
  "$BIN/dhcpmanager-operator" agent --config "$WORK/dhcpmanager.toml" --link-netns "/run/netns/$LAB-ag" \
  --metrics-addr 127.0.0.1:9342 --service-controller --default-load-balancer >"$WORK/agent.log" 2>&1 &
PIDS+=($!)
kubectl create namespace shop >/dev/null
show "kubectl apply -f - (DhcpAddress shop/web, spec.service: shop/web)"
kubectl apply -f - <<YAML
apiVersion: dhcpmanager.io/v1alpha1
kind: DhcpAddress
metadata: {name: web, namespace: shop}
spec: {service: shop/web}
YAML
kubectl wait -n shop --for=jsonpath='{.status.phase}'=Bound dhcpaddress/web --timeout=60s >/dev/null || {
  echo "not Bound; the agent's log ends with:" >&2
  tail -30 "$WORK/agent.log" >&2
  exit 1
}
show "kubectl get dhcpaddresses -A ; kubectl get macpools"
kubectl get dhcpaddresses -A
kubectl get macpools
show "kubectl get events -n shop"
kubectl get events -n shop
show "curl -s 127.0.0.1:9342/metrics   (no token: the agent asks the API server about its scrapers)"
curl -s 127.0.0.1:9342/metrics
show "curl -s -H 'Authorization: Bearer <admin token>' 127.0.0.1:9342/metrics | grep dhcpmanager_addresses"
curl -s -H "Authorization: Bearer $(cat "$WORK/cp/admin.token")" 127.0.0.1:9342/metrics \
  | grep '^dhcpmanager_addresses' || true
show "kubectl delete dhcpaddress -n shop web"
kubectl delete dhcpaddress -n shop web
echo "after the delete: the agent sent DHCPRELEASE, removed the macvlan, returned the MAC:"
kubectl get macpools

say "4. a LoadBalancer Service (the agent runs with --service-controller --default-load-balancer)"
show "kubectl -n shop create service loadbalancer shop-front --tcp=80:8080"
kubectl -n shop create service loadbalancer shop-front --tcp=80:8080
kubectl wait -n shop --for=jsonpath='{.status.loadBalancer.ingress[0].ip}' service/shop-front \
  --timeout=60s >/dev/null 2>&1 || true
lbip=$(kubectl -n shop get service shop-front -o jsonpath='{.status.loadBalancer.ingress[0].ip}')
[ -n "$lbip" ] || { echo "no ingress IP; the agent's log ends with:" >&2; tail -30 "$WORK/agent.log" >&2; exit 1; }
show "kubectl -n shop get service shop-front ; kubectl -n shop get dhcpaddress shop-front"
kubectl -n shop get service shop-front
kubectl -n shop get dhcpaddress shop-front
leasemac=$(kubectl -n shop get dhcpaddress shop-front -o jsonpath='{.status.mac}')
show "ip netns exec $LAB-srv curl -sS --connect-timeout 2 http://$lbip/   (a client on the segment)"
ip netns exec "$LAB-srv" curl -sS --connect-timeout 2 "http://$lbip/" 2>&1 || true
echo "(refused by the node's kernel: the address is reachable; kube-proxy would forward it to a pod)"
show "ip -n $LAB-srv neigh show $lbip   (who answered ARP for it)"
ip -n "$LAB-srv" neigh show "$lbip"
echo "the lease's MAC is $leasemac; the node's own lab0 is $(ip -n "$LAB-ag" -o link show lab0 | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')"
echo "Kea's lease database (hostname shop-front.shop):"
tests/lab/lab.sh leases "$LAB" kea | grep "\"$lbip\"" | tail -1
show "kubectl -n shop delete service shop-front"
kubectl -n shop delete service shop-front
kubectl wait -n shop --for=delete dhcpaddress/shop-front --timeout=60s >/dev/null 2>&1 || true
echo "after the delete: the garbage collector deleted the Service's DhcpAddress, the agent released the lease:"
tests/lab/lab.sh leases "$LAB" kea | grep "\"$lbip\"" | tail -1
kubectl get macpools
say "done: everything the demo started is being stopped and removed"
