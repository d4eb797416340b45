#!/bin/sh
# Install what tests/test_capture_aravis.py needs, only what is missing:
#
#   aravis-tools           arv-fake-gv-camera-0.8, the fake GigE Vision camera
#   aravis-tools-cli       arv-tool-0.8, lists devices and reads/writes features
#   gir1.2-aravis-0.8      Aravis 0.8 and its introspection data (pulls in libaravis-0.8-0)
#   libgirepository1.0-dev, libcairo2-dev, pkg-config, gcc
#                          to build PyGObject (< 3.51: it uses girepository-1.0) and pycairo from source
#   iproute2               `ip netns`, to run GigE Vision inside a namespace that holds only lo
#
# then PyGObject<3.51 into a virtual environment.
#
#   usage: sh .ci/install-aravis.sh [VENV]      (VENV defaults to the repository's .venv)
#
# Runs as root, non-interactively, with no stdin (CI). A second run does nothing and is quick: each package is
# checked with `dpkg -s` (and its command with `command -v`) first, `apt-get update` only runs when something has
# to be installed, and pip only runs when `from gi.repository import Aravis` fails in VENV. No service is started:
# while packages are installed a policy-rc.d answering 101 is put in place unless one exists, then removed.
set -eu

export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
say() { echo "install-aravis.sh: $*"; }

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$repo/.venv}
python=$venv/bin/python

if [ "$(id -u)" -ne 0 ]; then
    echo "install-aravis.sh: must run as root" >&2
    exit 1
fi
if [ ! -x "$python" ]; then
    echo "install-aravis.sh: no Python at $python (create the virtual environment first: scripts/setup.sh)" >&2
    exit 1
fi

# package:command pairs; "-" when the package has no command to prove it.
WANTED="aravis-tools:arv-fake-gv-camera-0.8 aravis-tools-cli:arv-tool-0.8 gir1.2-aravis-0.8:- \
libgirepository1.0-dev:- libcairo2-dev:- pkg-config:pkg-config gcc:cc iproute2:ip"

installed() {
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'
}

missing=""
for pair in $WANTED; do
    pkg=${pair%%:*}
    cmd=${pair#*:}
    if installed "$pkg" && { [ "$cmd" = "-" ] || command -v "$cmd" >/dev/null 2>&1; }; then
        say "$pkg already installed"
    else
        missing="$missing $pkg"
    fi
done

if [ -n "$missing" ]; then
    policy=/usr/sbin/policy-rc.d
    added_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# temporary, from .ci/install-aravis.sh: start no service\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        added_policy=yes
    fi
    cleanup() {
        if [ -n "$added_policy" ]; then
            rm -f "$policy"
        fi
    }
    trap cleanup EXIT INT TERM
    say "installing:$missing"
    apt-get update -q </dev/null
    # shellcheck disable=SC2086  # word splitting of $missing is intended
    apt-get install -y -q --no-install-recommends $missing </dev/null
    for pair in $WANTED; do
        pkg=${pair%%:*}
        cmd=${pair#*:}
        installed "$pkg" || { echo "install-aravis.sh: $pkg still missing after install" >&2; exit 1; }
        if [ "$cmd" != "-" ] && ! command -v "$cmd" >/dev/null 2>&1; then
            echo "install-aravis.sh: $cmd still missing after installing $pkg" >&2
            exit 1
        fi
    done
    say "installed:$missing"
else
    say "Debian packages: nothing to install"
fi

probe='import gi; gi.require_version("Aravis", "0.8"); from gi.repository import Aravis; print(gi.__version__)'
if version=$("$python" -c "$probe" 2>/dev/null); then
    say "PyGObject $version with Aravis 0.8 already importable in $venv"
else
    say "installing PyGObject<3.51 into $venv (builds PyGObject and pycairo from source)"
    "$python" -m pip install -q "PyGObject<3.51" </dev/null
    version=$("$python" -c "$probe") || {
        echo "install-aravis.sh: PyGObject installed but Aravis 0.8 is still not importable from $python" >&2
        exit 1
    }
    say "installed PyGObject $version; Aravis 0.8 importable in $venv"
fi
