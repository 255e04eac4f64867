#!/usr/bin/env bash
# End-to-end test of the Orrery operator on a kind cluster. NOT run by CI here (the
# development machines have no Docker engine); run it on a machine with docker, kind,
# kubectl, helm, curl and jq. See e2e/kind/README.md.
#
# Steps: create the kind cluster (kind-config.yaml) -> build and load the orrery image
# -> helm install charts/orrery -> install Prometheus Operator and two Prometheus
# (batcave, batcomputer) -> apply a ReceiveCluster and a GlobalView -> assert that the
# querier answers `up` for both clusters and that the GlobalView status shows both
# clusters flowing -> check that deleting the GlobalView removes our remote_write
# entries and keeps the user's.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${ORRERY_KIND_CLUSTER:-orrery}"
IMAGE="${ORRERY_IMAGE:-orrery:e2e}"
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.86.1}"
PROMETHEUS_OPERATOR_BUNDLE="${PROMETHEUS_OPERATOR_BUNDLE:-https://github.com/prometheus-operator/prometheus-operator/releases/download/${PROMETHEUS_OPERATOR_VERSION}/bundle.yaml}"
TIMEOUT="${ORRERY_E2E_TIMEOUT:-600}"   # seconds per wait
KEEP="${ORRERY_KEEP_CLUSTER:-0}"        # 1: leave the cluster running afterwards

log() { printf '\n==> %s\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "missing tool: $1" >&2; exit 2; }; }
for t in docker kind kubectl helm curl jq; do need "$t"; done

cleanup() {
  [[ -n "${PF_PID:-}" ]] && kill "$PF_PID" 2>/dev/null || true
  if [[ "$KEEP" != 1 ]]; then kind delete cluster --name "$CLUSTER" || true; fi
}
trap cleanup EXIT

# retry SECONDS CMD...: runs CMD every 5s until it succeeds or SECONDS pass.
retry() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    if ((SECONDS >= deadline)); then echo "timed out: $*" >&2; return 1; fi
    sleep 5
  done
}

log "kind cluster $CLUSTER"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 180s
fi
kubectl config use-context "kind-$CLUSTER"

log "build and load image $IMAGE"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "Prometheus Operator $PROMETHEUS_OPERATOR_VERSION"
kubectl apply --server-side -f "$PROMETHEUS_OPERATOR_BUNDLE"
kubectl -n default rollout status deploy/prometheus-operator --timeout="${TIMEOUT}s"
retry "$TIMEOUT" kubectl get crd prometheuses.monitoring.coreos.com servicemonitors.monitoring.coreos.com

log "helm install orrery"
helm upgrade --install orrery charts/orrery \
  --namespace orrery-system --create-namespace \
  --set image.repository="${IMAGE%%:*}" --set image.tag="${IMAGE##*:}" \
  --set image.pullPolicy=Never --wait --timeout "${TIMEOUT}s"
# The chart's CRDs equal crds/ (checked by `cargo test -p operator --test crds`).
kubectl get crd receiveclusters.orrery.dev globalviews.orrery.dev

log "two Prometheus servers: batcave, batcomputer"
for name in batcave batcomputer; do
  sed "s/__NAME__/$name/g" e2e/kind/manifests/prometheus.yaml | kubectl apply -f -
done
for name in batcave batcomputer; do
  retry "$TIMEOUT" kubectl -n "$name" get statefulset "prometheus-$name"
  kubectl -n "$name" rollout status "statefulset/prometheus-$name" --timeout="${TIMEOUT}s"
done

log "ReceiveCluster + GlobalView"
kubectl apply -f e2e/kind/manifests/orrery.yaml
retry "$TIMEOUT" kubectl -n orrery get statefulset main-receive
kubectl -n orrery rollout status statefulset/main-receive --timeout="${TIMEOUT}s"
retry "$TIMEOUT" kubectl -n orrery wait receivecluster/main --for=condition=Ready --timeout=5s
retry "$TIMEOUT" kubectl -n orrery get deploy global-query
kubectl -n orrery rollout status deploy/global-query --timeout="${TIMEOUT}s"

log "our remote_write entries are in both Prometheus objects, the user's too"
has_entries() {
  kubectl -n "$1" get prometheus "$1" -o json | jq -e --arg ours "orrery-global-$1" \
    '[.spec.remoteWrite[].name] | (index($ours) != null) and (index("user-owned") != null)' >/dev/null
}
for name in batcave batcomputer; do retry "$TIMEOUT" has_entries "$name"; done

log "querier answers up for both clusters"
kubectl -n orrery port-forward svc/global-query 31902:10902 >/tmp/orrery-pf.log 2>&1 &
PF_PID=$!
retry 60 curl -fsS http://127.0.0.1:31902/-/ready -o /dev/null
up_clusters() {
  curl -fsS --get http://127.0.0.1:31902/api/v1/query \
    --data-urlencode 'query=count by (cluster) (up == 1)' \
    | jq -r '[.data.result[].metric.cluster] | sort | join(",")'
}
both_up() { [[ "$(up_clusters)" == "batcave,batcomputer" ]]; }
retry "$TIMEOUT" both_up
echo "up answered for: $(up_clusters)"

log "GlobalView status shows both clusters flowing"
flowing() {
  kubectl -n orrery get globalview global -o json | jq -e '
    [.status.clusters[] | select(.remoteWriteConfigured and
      any(.conditions[]; .type == "DataFlowing" and .status == "True")) | .name]
    | sort == ["batcave", "batcomputer"]' >/dev/null
}
retry "$TIMEOUT" flowing
kubectl -n orrery get globalview global -o jsonpath='{range .status.clusters[*].conditions[?(@.type=="DataFlowing")]}{.message}{"\n"}{end}'
retry "$TIMEOUT" kubectl -n orrery wait globalview/global --for=condition=Ready --timeout=5s

log "operator metrics"
kubectl -n orrery-system port-forward svc/orrery-operator-metrics 31808:8080 >/tmp/orrery-pf-op.log 2>&1 &
OP_PF=$!
retry 60 curl -fsS http://127.0.0.1:31808/healthz >/dev/null
curl -fsS http://127.0.0.1:31808/metrics | grep -E '^orrery_operator_reconcile_total'
kill "$OP_PF" || true

log "deleting the GlobalView removes only our entries"
kubectl -n orrery delete globalview global --wait --timeout="${TIMEOUT}s"
for name in batcave batcomputer; do
  kubectl -n "$name" get prometheus "$name" -o json \
    | jq -e '[.spec.remoteWrite[].name] == ["user-owned"]' >/dev/null \
    || { echo "remote_write of $name not cleaned up" >&2; exit 1; }
done

log "PASS"
