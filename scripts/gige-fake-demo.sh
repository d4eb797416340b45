#!/usr/bin/env bash
# The GigE Vision path without a camera: a network namespace holding only `lo`, Aravis's fake GigE Vision camera
# on 127.0.0.1 inside it, `inspector run --config config/examples/gige-fake.toml` inside it, and
# `inspector listen` outside it over ipc:// (a filesystem socket crosses network namespaces). Nothing is sent
# beyond the namespace's loopback (GigE discovery broadcasts on every interface it can see: only `lo` here).
# Needs root (ip netns), aravis-tools, and Aravis + PyGObject in .venv (bash .ci/install-system.sh,
# bash .ci/install-aravis.sh). Ctrl-C stops it; everything is cleaned up on exit.
# GIGE_SECONDS=N stops after N seconds (default: run until Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=config/examples/gige-fake.toml
ENDPOINT=ipc:///tmp/inspector-gige-fake.ipc
NS=inspector-gige-$$
[ "$(id -u)" -eq 0 ] || { echo "gige-fake-demo: needs root for ip netns" >&2; exit 1; }
command -v arv-fake-gv-camera-0.8 >/dev/null || { echo "gige-fake-demo: install aravis-tools" >&2; exit 1; }
[ -x .venv/bin/inspector ] || bash scripts/setup.sh
.venv/bin/inspector check-config "$CONFIG"

camera="" daemon=""
cleanup() {
  [ -n "$daemon" ] && kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
  [ -n "$camera" ] && kill -TERM "$camera" 2>/dev/null && wait "$camera" 2>/dev/null || true
  ip netns delete "$NS" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" arv-fake-gv-camera-0.8 -i 127.0.0.1 &
camera=$!
ip netns exec "$NS" .venv/bin/inspector run --config "$CONFIG" &
daemon=$!
echo "gige-fake-demo: fake camera (pid $camera) and daemon (pid $daemon) in namespace $NS; verdicts follow"
if [ -n "${GIGE_SECONDS:-}" ]; then
  .venv/bin/inspector listen --endpoint "$ENDPOINT" --timeout "$GIGE_SECONDS"
else
  .venv/bin/inspector listen --endpoint "$ENDPOINT"
fi
