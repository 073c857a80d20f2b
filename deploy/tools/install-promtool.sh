#!/usr/bin/env bash
# Install Prometheus' own `promtool` (it checks and unit-tests the alerting rules) from Debian's
# `prometheus` package without installing the package: its maintainer scripts would create a
# user and start a Prometheus server. apt verifies the download against the signed archive
# index; only /usr/bin/promtool is taken out of it.
#
#   install-promtool.sh <destination>
set -euo pipefail

destination="$1"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"  # apt downloads as its unprivileged `_apt` user

cd "$work"
if ! apt-get download -qq prometheus 2>/dev/null; then
    # No package lists yet (a fresh machine): fetch them once.
    sudo="$([ "$(id -u)" = 0 ] || echo sudo)"
    $sudo apt-get update -qq
    apt-get download -qq prometheus
fi
dpkg-deb -x prometheus_*.deb extracted
cd - >/dev/null
mkdir -p "$(dirname "$destination")"
install -m 0755 "$work/extracted/usr/bin/promtool" "$destination.tmp"
mv "$destination.tmp" "$destination"
"$destination" --version | head -n 1
