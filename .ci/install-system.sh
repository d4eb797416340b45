#!/bin/sh
# Install the Debian packages the test-suite needs, only when they are missing.
#
#   prometheus  ships promtool   (tests/test_prometheus_rules.py)
#   systemd     ships systemd-analyze (tests/test_systemd.py)
#
# Runs as root, non-interactively, with no stdin (CI). A second run does nothing and
# is quick: each package is checked with `command -v` and `dpkg -s` first, and
# `apt-get update` only runs when something has to be installed. No service is
# started: while packages are installed a policy-rc.d that answers 101 ("action
# forbidden") is put in place unless one already exists, and removed afterwards.
set -eu

export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" -ne 0 ]; then
    echo "install-system.sh: must run as root" >&2
    exit 1
fi

# package:command pairs; the command proves the package is usable.
WANTED="prometheus:promtool systemd:systemd-analyze"

missing=""
for pair in $WANTED; do
    pkg=${pair%%:*}
    cmd=${pair#*:}
    if command -v "$cmd" >/dev/null 2>&1 \
        && dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
        echo "install-system.sh: $pkg already installed ($(command -v "$cmd"))"
    else
        missing="$missing $pkg"
    fi
done

if [ -z "$missing" ]; then
    echo "install-system.sh: nothing to install"
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

echo "install-system.sh: installing:$missing"
apt-get update -q </dev/null
# shellcheck disable=SC2086  # word splitting of $missing is intended
apt-get install -y -q --no-install-recommends $missing </dev/null

for pair in $WANTED; do
    cmd=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || {
        echo "install-system.sh: $cmd still missing after install" >&2
        exit 1
    }
done
echo "install-system.sh: installed:$missing"
