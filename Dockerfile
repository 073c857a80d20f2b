# One Dockerfile for every deployable of the mesh, built from the repository root (the uv lock
# covers the whole workspace). `make images` builds all four; one by hand:
#
#     DOCKER_BUILDKIT=1 docker build --target users -t mesh/users:dev .
#
# Targets: gateway, users, orders, notifications. Each final stage holds only a virtualenv with
# that deployable's locked dependencies (no compilers, no uv, no sources) and its CycloneDX SBOM,
# and runs as a numeric non-root user on a read-only root filesystem.
#
# Build arguments (docs/deployment.md, "Building the images"):
#   PYTHON_IMAGE, UV_IMAGE  the bases; defaults are the pinned official images, `make
#                           offline-images` makes stand-ins from Debian packages and PyPI
#   VERSION, REVISION, CREATED, SOURCE  the OCI labels (`make images` fills them from git)
# Secret (optional): `--secret id=ca_bundle,src=<PEM bundle>` trusts a TLS-intercepting proxy
# while the dependencies download; it is mounted for that one step and never stored in a layer.
# No `# syntax=` line: the engine's built-in Dockerfile frontend is used, so a build needs no
# registry for the frontend either.

# checkov:skip=CKV_DOCKER_7: the bases are build arguments whose defaults are pinned versions
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.8

FROM ${UV_IMAGE} AS uv

# ---- build: resolve the lock into /app/.venv for one workspace member --------------------------
FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
# `strip` for the compiled extensions: several wheels ship theirs with debug symbols. A tool of
# the build stage only, at the version of whichever base is used.
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends binutils >/dev/null \
    && rm -rf /var/lib/apt/lists/*
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Everything the lock refers to: the root project and every workspace member.
COPY pyproject.toml uv.lock ./
COPY libs libs
COPY services services
COPY gateway gateway
# Installs one member's locked dependencies and writes their SBOM beside the virtualenv.
# Type stubs, the test suites packages ship and pip (a virtualenv never runs it) are not needed
# at run time.
COPY deploy/images/install-deployable.sh /usr/local/bin/install-deployable

FROM build AS gateway-build
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca_bundle \
    install-deployable mesh-gateway

FROM build AS users-build
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca_bundle \
    install-deployable users-service

FROM build AS orders-build
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca_bundle \
    install-deployable orders-service

FROM build AS notifications-build
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca_bundle \
    install-deployable notifications-service

# ---- runtime: what every deployable shares -------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/mesh/mesh
LABEL org.opencontainers.image.source=${SOURCE} \
      org.opencontainers.image.revision=${REVISION} \
      org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.created=${CREATED} \
      org.opencontainers.image.licenses=MIT \
      org.opencontainers.image.vendor=mesh \
      io.mesh.sbom=/app/sbom.cdx.json
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/app/.venv/bin:$PATH \
    HOST=0.0.0.0 \
    GRACEFUL_TIMEOUT=20
# A numeric user that owns nothing in the image: the virtualenv stays root-owned and read-only.
RUN groupadd --system --gid 10001 mesh \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mesh
WORKDIR /app
USER 10001:10001
# For plain `docker run`; Kubernetes uses its own probes and compose its own healthcheck.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ['PORT'], timeout=2)"]

# ---- one final stage per deployable: CMD is the production command of meshdev.processes --------
FROM runtime AS gateway
COPY --from=gateway-build /app /app
LABEL org.opencontainers.image.title=mesh-gateway \
      org.opencontainers.image.description="The mesh's API gateway: routing, JWT auth, rate limits, one OpenAPI document"
ENV PORT=8000 OTEL_SERVICE_NAME=gateway
EXPOSE 8000
CMD ["gunicorn", "--config", "python:meshkit.gunicorn_conf", "mesh_gateway.main:create_app()"]

FROM runtime AS users
COPY --from=users-build /app /app
LABEL org.opencontainers.image.title=mesh-users \
      org.opencontainers.image.description="The mesh's users service: registration, login, signed tokens"
ENV PORT=8001 OTEL_SERVICE_NAME=users
EXPOSE 8001
CMD ["gunicorn", "--config", "python:meshkit.gunicorn_conf", "users_service.main:create_app()"]

FROM runtime AS orders
COPY --from=orders-build /app /app
LABEL org.opencontainers.image.title=mesh-orders \
      org.opencontainers.image.description="The mesh's orders service: orders, idempotent creation, order events"
ENV PORT=8002 OTEL_SERVICE_NAME=orders
EXPOSE 8002
CMD ["gunicorn", "--config", "python:meshkit.gunicorn_conf", "orders_service.main:create_app()"]

FROM runtime AS notifications
COPY --from=notifications-build /app /app
LABEL org.opencontainers.image.title=mesh-notifications \
      org.opencontainers.image.description="The mesh's notifications service: event consumer, list, SSE and WebSocket push"
ENV PORT=8003 OTEL_SERVICE_NAME=notifications
EXPOSE 8003
CMD ["gunicorn", "--config", "python:meshkit.gunicorn_conf", "notifications_service.main:create_app()"]
