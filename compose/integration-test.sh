#!/usr/bin/env bash
# End-to-end check of the compose stack, for machines with a Docker engine
# (`make test` cannot run it: the development machines have none; there the
# compose file is validated by tests/deploy instead).
#
#   compose/integration-test.sh [cpu|gpu]
#
# Builds the images, starts the stack, and checks through Envoy: JSON and SSE with
# the development key, the OpenAI-compatible API, 401 without a key, a router replica killed under load, a
# service refusing a plaintext call, Prometheus scraping every target. Tears everything down (volumes included) at exit.
set -euo pipefail

PROFILE="${1:-cpu}"
cd "$(dirname "$0")"
export GRAFANA_ADMIN_PASSWORD="${GRAFANA_ADMIN_PASSWORD:-$(head -c 18 /dev/urandom | base64)}"
EDGE=http://127.0.0.1:8080
API=$EDGE/llmsuite.inference.v1.InferenceService

compose() { docker compose -f docker-compose.yml -p llmsuite-it --profile "$PROFILE" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
cleanup() {
  compose logs --no-color >integration-test.log 2>&1 || true
  compose down -v --remove-orphans >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "starting the $PROFILE stack (first build takes a while)"
compose up -d --build --wait --wait-timeout 1200

KEY=$(compose logs --no-log-prefix keys-init | grep -E '^lsk_dev_' | tail -n 1)
[ -n "$KEY" ] || fail "keys-init printed no development key"

post() { curl -sS -H 'content-type: application/json' "$@"; }

echo "JSON generate with the development key"
post -f -H "x-api-key: $KEY" -d '{"prompt":"What is a token bucket?"}' "$API/Generate" | grep -q '"text"' \
  || fail "JSON Generate did not answer"

echo "no key -> 401"
code=$(post -o /dev/null -w '%{http_code}' -d '{"prompt":"x"}' "$API/Generate")
[ "$code" = 401 ] || fail "expected 401 without a key, got $code"

echo "server-sent events"
post -f -N -H "x-api-key: $KEY" -d '{"prompt":"Stream a short answer"}' "$API/GenerateStream" | grep -q '^data: ' \
  || fail "GenerateStream sent no events"

echo "OpenAI-compatible API: chat, streamed chat, models, and 401 in OpenAI's shape"
CHAT='{"model":"llmsuite/auto","messages":[{"role":"user","content":"What is a token bucket?"}]}'
post -f -H "Authorization: Bearer $KEY" -d "$CHAT" "$EDGE/v1/chat/completions" | grep -q '"chat.completion"' \
  || fail "POST /v1/chat/completions did not answer"
post -f -N -H "Authorization: Bearer $KEY" -d '{"model":"llmsuite/light","stream":true,"messages":[{"role":"user","content":"Hi"}]}' \
  "$EDGE/v1/chat/completions" | grep -q '^data: \[DONE\]' || fail "the /v1 stream did not end with [DONE]"
curl -sSf -H "Authorization: Bearer $KEY" "$EDGE/v1/models" | grep -q '"llmsuite/auto"' || fail "GET /v1/models"
curl -sS "$EDGE/v1/models" | grep -q '"invalid_api_key"' || fail "no OpenAI-shaped 401 without a key"

echo "two router replicas, one killed under load"
compose up -d --wait --scale router=2 router
load() {
  local errors=0
  for _ in $(seq 1 "$1"); do
    post -f -o /dev/null -H "x-api-key: $KEY" -d '{"prompt":"ping"}' "$API/Generate" || errors=$((errors + 1))
  done
  echo "$errors"
}
load 200 >load-before.txt &
sleep 2
docker kill "$(compose ps -q router | head -n 1)" >/dev/null
wait
errors=$(cat load-before.txt)
rm -f load-before.txt
# One request can be in flight on the killed replica (this load is sequential).
[ "$errors" -le 1 ] || fail "$errors requests failed after a router replica was killed"
[ "$(load 50)" = 0 ] || fail "requests still fail with one router replica"

echo "services refuse a direct call without a certificate"
compose exec -T router python -c '
import sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
try:
    with grpc.insecure_channel("guardrails:50052") as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
except grpc.RpcError:
    sys.exit(0)
sys.exit(1)' || fail "guardrails answered a plaintext call"

echo "Prometheus scrapes every target"
compose exec -T prometheus wget -qO- 'http://127.0.0.1:9090/api/v1/targets?state=active' \
  | grep -q '"health":"down"' && fail "a Prometheus target is down"

echo "OK: compose stack ($PROFILE) passed"
