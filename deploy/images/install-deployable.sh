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
# From the lock, the same resolution the virtualenv was installed from.
uv export --locked --no-dev --package "$member" --format cyclonedx1.5 \
    --preview-features sbom-export --output-file /app/sbom.cdx.json >/dev/null

# Nothing at run time reads type stubs; the interpreter never writes bytecode into the read-only
# image (UV_COMPILE_BYTECODE compiled it above).
find /app/.venv -name '*.pyi' -delete
