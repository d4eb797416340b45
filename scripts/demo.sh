#!/usr/bin/env bash
# One command for the demo: set up, start the daemon on config/demo.toml, print verdicts as they arrive.
# Metrics: http://127.0.0.1:9108/metrics   Stop: Ctrl-C (the daemon drains and exits 0).
# DEMO_SECONDS=N stops after N seconds (default: run until Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/inspector check-config config/demo.toml
.venv/bin/inspector run --config config/demo.toml &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null || true; wait $daemon' EXIT
for _ in $(seq 1 100); do  # wait until metrics are served (the model is warm by then)
  .venv/bin/python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:9108/metrics', timeout=1)" \
    2>/dev/null && break
  kill -0 $daemon 2>/dev/null || { echo "demo: the daemon exited; see its messages above" >&2; exit 1; }
  sleep 0.2
done
echo "demo: daemon running (pid $daemon); metrics at http://127.0.0.1:9108/metrics; verdicts follow"
if [ -n "${DEMO_SECONDS:-}" ]; then
  .venv/bin/inspector listen --timeout "$DEMO_SECONDS"
  echo "demo: metrics sample:"
  .venv/bin/python -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9108/metrics').read().decode())" \
    | grep -E '^inspector_(verdicts_total|frames_captured_total|known_parts_total)' || true
else
  .venv/bin/inspector listen
fi
