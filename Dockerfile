# One Dockerfile for every deployable of the mesh, built from the repository root (the uv lock
# covers the whole workspace). Pick the deployable with its target:
#
#     docker build --target users -t mesh/users:dev .
#
# Targets: gateway, users, orders, notifications. Each final stage holds only a virtualenv with
# that deployable's locked dependencies (no compilers, no uv, no sources) and runs as a numeric
# non-root user. Base images are pinned by version; the release pipeline pins them by digest.

FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

# ---- build: resolve the lock into /app/.venv for one workspace member --------------------------
FROM python:3.11.14-slim-trixie AS build
COPY --from=uv /uv /usr/local/bin/uv
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

FROM build AS gateway-build
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --package mesh-gateway

FROM build AS users-build
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --package users-service

FROM build AS orders-build
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --package orders-service

FROM build AS notifications-build
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --package notifications-service

# ---- runtime: what every deployable shares -------------------------------------------------------
FROM python:3.11.14-slim-trixie AS runtime
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
COPY --from=gateway-build /app/.venv /app/.venv
ENV PORT=8000 OTEL_SERVICE_NAME=gateway
EXPOSE 8000
CMD ["gunicorn", "--config", "python:meshkit.gunicorn_conf", "mesh_gateway.main:app"]

FROM runtime AS users
COPY --from=users-build /app/.venv /app/.venv
ENV PORT=8001 OTEL_SERVICE_NAME=users
EXPOSE 8001
CMD ["gunicorn", "--config", "python:meshkit.gunicorn_conf", "users_service.main:app"]

FROM runtime AS orders
COPY --from=orders-build /app/.venv /app/.venv
ENV PORT=8002 OTEL_SERVICE_NAME=orders
EXPOSE 8002
CMD ["gunicorn", "--config", "python:meshkit.gunicorn_conf", "orders_service.main:app"]

FROM runtime AS notifications
COPY --from=notifications-build /app/.venv /app/.venv
ENV PORT=8003 OTEL_SERVICE_NAME=notifications
EXPOSE 8003
CMD ["gunicorn", "--config", "python:meshkit.gunicorn_conf", "notifications_service.main:app"]
