#!/usr/bin/env bash
# Writes a kubeconfig that authenticates as a ServiceAccount of the control
# plane in DIR, with a bound token from the TokenRequest API (`kubectl create
# token`), so tests can run components with exactly the RBAC they grant.
# The ServiceAccount is created when it does not exist yet (no controller
# creates any here).
#
# Usage: sa-kubeconfig.sh DIR NAMESPACE SERVICEACCOUNT OUT
set -euo pipefail
[[ $# == 4 ]] || { sed -n '8p' "$0" >&2; exit 2; }
DIR=$(cd "$1" && pwd)
NS=$2
SA=$3
OUT=$4
BIN=${DHCPMANAGER_TOOLS:-$HOME/.cache/dhcpmanager/tools}/bin
export KUBECONFIG=$DIR/admin.kubeconfig
[[ -f $KUBECONFIG ]] || { echo "no control plane in $DIR" >&2; exit 1; }
kubectl() { "$BIN/kubectl" "$@"; }

kubectl -n "$NS" get serviceaccount "$SA" >/dev/null 2>&1 || kubectl -n "$NS" create serviceaccount "$SA" >/dev/null
TOKEN=$(kubectl -n "$NS" create token "$SA" --duration "${SA_TOKEN_DURATION:-24h}")
SERVER=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}')
CA_DATA=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')

umask 077
cat >"$OUT" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: $SERVER
    certificate-authority-data: $CA_DATA
users:
- name: system:serviceaccount:$NS:$SA
  user:
    token: $TOKEN
contexts:
- name: test
  context:
    cluster: test
    user: system:serviceaccount:$NS:$SA
    namespace: $NS
current-context: test
KCFG
