#!/usr/bin/env bash
# Create .venv and install inspector into it (idempotent). torch is installed first, pinned, so that pip
# does not pick a different build; on a machine with an NVIDIA GPU this is PyPI's CUDA build of 2.13.0.
# Usage: bash scripts/setup.sh [--test]      (--test also installs the test requirements)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION"
  .venv/bin/python -m pip install -q "torch==$TORCH_VERSION"
fi
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
echo "setup: installing inspector$extra"
.venv/bin/python -m pip install -q -e ".$extra"
.venv/bin/inspector --version
