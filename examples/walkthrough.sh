#!/usr/bin/env bash
# The README's walkthrough as a script: starts the host on embedded defaults
# in a temporary folder, calls the counter, kills the host with SIGKILL,
# starts it again and shows the state intact. Run from anywhere after
# `./scripts/build-guests` and `cargo build --release`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/bulkhead"
work=$(mktemp -d)
trap 'kill -9 $pid 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
ln -s "$root/guest-tools" guest-tools

start() {
  "$bin" serve >"$work/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:7070/healthz >/dev/null && return; sleep 0.1; done
  cat "$work/serve.log"; exit 1
}
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

start
. ./bulkhead-data/dev-tokens.env
auth="Authorization: Bearer $BULKHEAD_AGENT_TOKEN"
json="Content-Type: application/json"
b=http://127.0.0.1:7070
sid=$(curl -s -XPOST $b/v1/sessions -H "$auth" -H "$json" -d '{}' | field 'd["id"]')
echo "session $sid"
for _ in 1 2; do
  curl -s -XPOST $b/v1/sessions/$sid/calls -H "$auth" -H "$json" -d '{"tool":"counter","input":{"by":2}}' \
    | field '"counter ->", d["output"]["value"]'
done
echo "kill -9 the host, start it again"
kill -9 $pid; wait $pid 2>/dev/null || true
start
curl -s -XPOST $b/v1/sessions/$sid/calls -H "$auth" -H "$json" -d '{"tool":"counter","input":{"by":2}}' \
  | field '"counter ->", d["output"]["value"]'
"$bin" audit verify
