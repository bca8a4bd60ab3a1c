#!/usr/bin/env bash
# Runs blox against a local ECS emulator (moto) with a small demo account and light churn, so that
# everything can be tried without an AWS account: the API on http://127.0.0.1:2000, the CLI against it.
# Ctrl-C stops it all. (The built-in simulator and `blox up` will replace this script.)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup-test-env.sh
cargo build --release -p blox

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# moto serves until its stdin closes: keep a pipe open to it for as long as this script runs.
mkfifo "$work/moto.in"
.venv/bin/python scripts/moto_server.py < "$work/moto.in" > "$work/moto.out" 2> "$work/moto.err" &
pids+=($!)
exec 3> "$work/moto.in"
for _ in $(seq 100); do grep -q '^PORT=' "$work/moto.out" 2>/dev/null && break; sleep 0.1; done
port="$(sed -n 's/^PORT=//p' "$work/moto.out")"
[ -n "$port" ] || { cat "$work/moto.err" >&2; echo "moto did not start" >&2; exit 1; }
curl -s -X POST "http://127.0.0.1:$port/moto-api/state-manager/set-transition" \
  -d '{"model_name":"ecs::task","transition":{"progression":"manual","times":1000000000}}' > /dev/null

export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo
.venv/bin/python scripts/demo_cluster.py > "$work/demo.out" &
pids+=($!)
# The queue must exist before blox opens it.
for _ in $(seq 300); do grep -q '^demo:' "$work/demo.out" 2>/dev/null && break; sleep 0.1; done
cat "$work/demo.out"

listen="${BLOX_LISTEN:-127.0.0.1:2000}"
cat <<MSG
blox demo: the API will be at http://$listen (Swagger UI at /docs). Try:
  target/release/blox instances list
  target/release/blox tasks list --cluster demo-prod --status running
  target/release/blox tasks watch
MSG
target/release/blox server --listen "$listen" --queue blox-demo --reconcile-interval 30s \
  --store "redb:${BLOX_DEMO_STORE:-$root/blox-data/demo.redb}"
