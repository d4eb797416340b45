#!/bin/sh
# Install the Debian packages the test-suite needs, only those that are missing:
#
#   prometheus              promtool and the server (tests/test_prometheus_rules.py, test_prometheus_server.py)
#   systemd                 systemd-analyze (tests/test_systemd.py)
#   aravis-tools            arv-fake-gv-camera-0.8, the fake GigE Vision camera (tests/test_capture_aravis.py)
#   aravis-tools-cli        arv-tool-0.8, lists devices and reads/writes features
#   gir1.2-aravis-0.8       Aravis 0.8 and its introspection data (pulls in libaravis-0.8-0)
#   libgirepository1.0-dev, libcairo2-dev, pkg-config, gcc
#                           to build PyGObject (< 3.51: it uses girepository-1.0) and pycairo from source
#   iproute2                `ip netns`, to run GigE Vision inside a namespace that holds only lo
#
# Runs as root, non-interactively, with no stdin (CI). A second run does nothing and is quick: each package is
# checked with `dpkg -s` (and its command with `command -v`) first, and `apt-get update` only runs when something
# has to be installed. No service is started: while packages are installed a policy-rc.d that answers 101
# ("action forbidden") is put in place unless one already exists, and removed afterwards.
set -eu

export DEBIAN_FRONTEND=noninteractive
say() { echo "install-system.sh: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "install-system.sh: must run as root" >&2
    exit 1
fi

# package:command pairs; "-" when the package has no command to prove it.
WANTED="prometheus:promtool systemd:systemd-analyze aravis-tools:arv-fake-gv-camera-0.8 \
aravis-tools-cli:arv-tool-0.8 gir1.2-aravis-0.8:- libgirepository1.0-dev:- libcairo2-dev:- pkg-config:pkg-config \
gcc:cc iproute2:ip"

installed() {
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'
}
usable() {  # package:command
    installed "${1%%:*}" && { [ "${1#*:}" = "-" ] || command -v "${1#*:}" >/dev/null 2>&1; }
}

missing=""
for pair in $WANTED; do
    if usable "$pair"; then
        say "${pair%%:*} already installed"
    else
        missing="$missing ${pair%%:*}"
    fi
done
if [ -z "$missing" ]; then
    say "nothing to install"
    exit 0
fi

policy=/usr/sbin/policy-rc.d
added_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# temporary, from .ci/install-system.sh: start no service\nexit 101\n' >"$policy"
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
    usable "$pair" || { echo "install-system.sh: ${pair%%:*} still not usable after install" >&2; exit 1; }
done
say "installed:$missing"
