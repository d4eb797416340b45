#!/bin/sh
# Install PyGObject<3.51 (the GObject bindings Aravis is used through) into a virtual environment, only when
# `from gi.repository import Aravis` fails there. The Debian packages it needs (Aravis, its introspection data,
# the headers to build PyGObject and pycairo) come from .ci/install-system.sh, which runs first.
#
#   usage: sh .ci/install-aravis.sh [VENV]      (VENV defaults to the repository's .venv)
set -eu

export PIP_DISABLE_PIP_VERSION_CHECK=1
say() { echo "install-aravis.sh: $*"; }

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$repo/.venv}
python=$venv/bin/python
if [ ! -x "$python" ]; then
    echo "install-aravis.sh: no Python at $python (create the virtual environment first: scripts/setup.sh)" >&2
    exit 1
fi

probe='import gi; gi.require_version("Aravis", "0.8"); from gi.repository import Aravis; print(gi.__version__)'
if version=$("$python" -c "$probe" 2>/dev/null); then
    say "PyGObject $version with Aravis 0.8 already importable in $venv"
else
    say "installing PyGObject<3.51 into $venv (builds PyGObject and pycairo from source)"
    "$python" -m pip install -q "PyGObject<3.51" </dev/null
    version=$("$python" -c "$probe") || {
        echo "install-aravis.sh: PyGObject installed but Aravis 0.8 is not importable from $python" \
             "(are gir1.2-aravis-0.8 and libgirepository1.0-dev installed? .ci/install-system.sh does it)" >&2
        exit 1
    }
    say "installed PyGObject $version; Aravis 0.8 importable in $venv"
fi
