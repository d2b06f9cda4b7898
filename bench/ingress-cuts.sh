#!/usr/bin/env bash
# POST streams cut by the ingress: maps and event streams through the local plane's Traefik while
# the function's replicas go between 2 and 4, once with Traefik speaking HTTP/1.1 to the pods and
# once h2c (what the operator sets; README, "Service"). Prints what each client got, per scheme.
# Needs the plane with pods that run: `npm run cluster -- up`. Run nothing else on the plane.
#   npm run bench:ingress [-- SECONDS_PER_SCHEME]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-150}
export KUBECONFIG=$PWD/.sluice/kubeconfig PATH=$PWD/.sluice/bin:$PWD/node_modules/.bin:$PATH
ingress=$(cat .sluice/ingress-url)
api=$(cat .sluice/ingress-api-url)
ns=bench-ingress
system=bench-ingress-system
release=sluice-bench
work=$(mktemp -d)
cleanup() {
  kubectl delete sfn --all -n $ns --wait=true --timeout=60s >/dev/null 2>&1 || true
  helm uninstall $release -n $system --wait >/dev/null 2>&1 || true
  kubectl delete ns $ns $system --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

kubectl create ns $system >/dev/null
kubectl create ns $ns >/dev/null
crds=true
kubectl get crd streamingfunctions.sluice.dev >/dev/null 2>&1 && crds=false
helm install $release charts/sluice -n $system --set crds.enabled=$crds \
  --set operator.watchNamespace=$ns --wait --timeout=180s >/dev/null
kubectl apply -n $ns -f examples/echo.yaml >/dev/null
kubectl wait -n $ns sfn/echo --for=condition=Ready --timeout=120s >/dev/null

body=$(node -e 'console.log(JSON.stringify({inputs:Array.from({length:40},(_,i)=>({i,sleepMs:250}))}))')
# Traefik's servers for echo's Service, with their scheme.
servers() { curl -s "$api/api/http/services?search=$ns-echo-&per_page=100" | grep -o '"url":"[a-z0-9]*://' | sort -u; }

maps() { # $1: client number, $2: end time
  while [ "$(date +%s)" -lt "$2" ]; do
    rc=0
    curl -sS -N -X POST -d "$body" --max-time 60 "$ingress/echo/_sluice/map" >"$work/map$1" 2>/dev/null || rc=$?
    results=$(grep -c '^event: result' "$work/map$1" || true)
    if [ "$rc" = 0 ] && [ "$results" = 40 ]; then echo ok; else echo "map rc=$rc results=$results"; fi
  done
}
streams() {
  while [ "$(date +%s)" -lt "$2" ]; do
    rc=0
    curl -sS -N --max-time 60 "$ingress/echo/?n=5&pause=300" >"$work/get$1" 2>/dev/null || rc=$?
    if [ "$rc" = 0 ] && grep -q '^event: done' "$work/get$1"; then echo ok; else echo "stream rc=$rc"; fi
  done
}
replicas() {
  local min=4
  while [ "$(date +%s)" -lt "$1" ]; do
    kubectl patch sfn echo -n $ns --type=merge -p "{\"spec\":{\"scaling\":{\"minReplicas\":$min}}}" >/dev/null
    min=$((6 - min))
    sleep 7
  done
}

printf '%-8s %10s %10s %s\n' scheme requests ok 'not ok (curl exit codes)'
for scheme in http h2c; do
  # The operator writes the Service when its spec changes, so an override stays while this runs.
  kubectl annotate svc echo -n $ns --overwrite "traefik.ingress.kubernetes.io/service.serversscheme=$scheme" >/dev/null
  for _ in $(seq 1 100); do [ "$(servers)" = "\"url\":\"$scheme://" ] && break; sleep 0.1; done
  end=$(( $(date +%s) + seconds ))
  { for i in 1 2 3; do maps $i $end & done; for i in 1 2; do streams $i $end & done; wait; } >"$work/$scheme.log" &
  replicas $end
  wait
  kubectl patch sfn echo -n $ns --type=merge -p '{"spec":{"scaling":{"minReplicas":2}}}' >/dev/null
  total=$(wc -l <"$work/$scheme.log")
  good=$(grep -c '^ok$' "$work/$scheme.log" || true)
  bad=$(grep -v '^ok$' "$work/$scheme.log" | sort | uniq -c | tr -s ' ' | paste -sd ',' - || true)
  printf '%-8s %10s %10s %s\n' "$scheme" "$total" "$good" "${bad:-none}"
done
