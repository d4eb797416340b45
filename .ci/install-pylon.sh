#!/usr/bin/env bash
# Install pypylon (Basler's Python binding for pylon; the wheel carries the pylon runtime and its camera emulator,
# no pylon SDK needed) into a virtual environment, only when it is missing or outside the tested range.
#
#   Usage: bash .ci/install-pylon.sh [VENV]        VENV defaults to the repository's .venv (scripts/setup.sh)
#
# Tested: pypylon 26.6, 26.7, 26.8 and 26.9 (cp39-abi3 manylinux_2_31 x86_64 wheel: Python >= 3.9, glibc >= 2.31;
# Debian 12 has 2.36). The emulator stamps BlockIDs (part_id) from 26.9 on. About 90 MB to download, 240 MB
# installed. PYPYLON_SPEC overrides the requirement. Non-interactive; a second run only checks and prints.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:-$ROOT/.venv}
SPEC=${PYPYLON_SPEC:-"pypylon>=26.6,<27"}
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

if [ ! -x "$PY" ]; then
    echo "install-pylon.sh: no Python at $PY; create the environment first (bash scripts/setup.sh)" >&2
    exit 1
fi

# Prints the installed version when it satisfies SPEC; exits 1 when pypylon is missing or outside it.
check() {
    "$PY" - "$SPEC" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
try:
    have = version("pypylon")
except PackageNotFoundError:
    print("not installed")
    sys.exit(1)
print(have)
sys.exit(0 if Requirement(sys.argv[1]).specifier.contains(have, prereleases=True) else 1)
EOF
}

if have=$(check); then
    echo "install-pylon.sh: pypylon $have already installed in $VENV (wanted $SPEC): nothing to do"
else
    echo "install-pylon.sh: pypylon in $VENV: $have; installing $SPEC (binary wheel only)"
    start=$(date +%s)
    if ! "$PY" -m pip install -q --only-binary pypylon "$SPEC" </dev/null; then
        echo "install-pylon.sh: pip could not install $SPEC: pypylon wheels need Python >= 3.9 on" \
             "x86_64/aarch64 Linux with glibc >= 2.31 (ldd --version), Windows or macOS >= 14" >&2
        exit 1
    fi
    have=$(check) || { echo "install-pylon.sh: installed pypylon $have does not satisfy $SPEC" >&2; exit 1; }
    echo "install-pylon.sh: installed pypylon $have in $(( $(date +%s) - start )) s"
fi

# The wheel must also load (its shared libraries need a recent enough glibc).
"$PY" -c "from pypylon import pylon; print('install-pylon.sh: pylon runtime', pylon.GetPylonVersionString())"
