#!/bin/sh
# Build stage of the Dockerfile: installs one workspace member's locked dependencies into
# /app/.venv and writes their CycloneDX SBOM to /app/sbom.cdx.json.
#   install-deployable <workspace member>
set -eu
member="$1"

# A TLS-intercepting proxy's CA bundle, when the build was given one (a BuildKit secret: it is
# mounted for this step only and never stored in a layer).
if [ -s /run/secrets/ca_bundle ]; then
    export SSL_CERT_FILE=/run/secrets/ca_bundle
fi

uv sync --locked --no-dev --no-editable --package "$member"
# From the lock, the same resolution the virtualenv was installed from; less the packages the
# lock holds for other platforms only (pywin32, say), so the SBOM lists what the image holds.
uv export --locked --no-dev --package "$member" --format cyclonedx1.5 \
    --preview-features sbom-export --output-file /tmp/lock.cdx.json >/dev/null
/app/.venv/bin/python - /tmp/lock.cdx.json /app/sbom.cdx.json <<'PYTHON'
import importlib.metadata, json, re, sys

def key(name):
    return re.sub(r"[-_.]+", "-", name).lower()

installed = {key(d.metadata["Name"]) for d in importlib.metadata.distributions()}
with open(sys.argv[1]) as source:
    sbom = json.load(source)
dropped = {c["bom-ref"] for c in sbom["components"] if key(c["name"]) not in installed}
sbom["components"] = [c for c in sbom["components"] if c["bom-ref"] not in dropped]
sbom["dependencies"] = [
    {**d, "dependsOn": [r for r in d.get("dependsOn", []) if r not in dropped]}
    for d in sbom.get("dependencies", [])
    if d["ref"] not in dropped
]
with open(sys.argv[2], "w") as target:
    json.dump(sbom, target, indent=1)
PYTHON

# Debug symbols of compiled extensions (a quarter of the virtualenv) and type stubs serve no
# process in the image.
find /app/.venv -name '*.so' -exec strip --strip-unneeded {} +
find /app/.venv -name '*.pyi' -delete
