"""The gunicorn configuration every deployable is served with:

    gunicorn --config python:meshkit.gunicorn_conf '<package>.main:create_app()'

Environment: HOST (default 0.0.0.0), PORT (default 8000), WEB_CONCURRENCY (workers, default 2),
GRACEFUL_TIMEOUT (seconds, default 20; Kubernetes' terminationGracePeriodSeconds must exceed it),
KEEPALIVE (seconds, default 75: longer than any proxy's idle timeout in front of us; an idle
kept-alive connection is closed after it), LIMIT_REQUEST_LINE / LIMIT_REQUEST_FIELDS /
LIMIT_REQUEST_FIELD_SIZE (gunicorn's request limits, its defaults 4094 / 100 / 8190) and the
other bounds of meshkit.server (LIMIT_REQUEST_HEAD_SIZE, REQUEST_HEADER_TIMEOUT,
MAX_CONNECTIONS_PER_ADDRESS, WS_MAX_MESSAGE_SIZE),
GC_YOUNG_THRESHOLD (allocations between young collections in a worker, default 10000;
Python's own is 700), LOG_FORMAT (json, the default, or console).

A bad `LOG_FORMAT` or OTLP protocol stops gunicorn here, in one line, before any worker starts.
"""

from __future__ import annotations

import gc
import os
import signal
from typing import Any

from meshkit.lifetime import die_with_parent
from meshkit.logging import logging_config
from meshkit.telemetry import check_telemetry_environment, shutdown_telemetry

check_telemetry_environment()

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"  # noqa: S104
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# uvicorn's worker, with bounds on request heads, slow heads, connections per address and
# WebSocket messages (meshkit.server); it reads the three request limits below.
worker_class = "meshkit.server.BoundedUvicornWorker"
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "20"))
timeout = int(os.environ.get("WORKER_TIMEOUT", "60"))
keepalive = int(os.environ.get("KEEPALIVE", "75"))
# gunicorn's own request limits (its defaults), which uvicorn's worker does not apply: the
# worker of meshkit.server does (414 and 431 problems).
limit_request_line = int(os.environ.get("LIMIT_REQUEST_LINE", "4094"))
limit_request_fields = int(os.environ.get("LIMIT_REQUEST_FIELDS", "100"))
limit_request_field_size = int(os.environ.get("LIMIT_REQUEST_FIELD_SIZE", "8190"))
# Not preloaded: each worker calls the app factory after the fork, so telemetry exporters, engines
# and clients are created per worker (their threads and sockets do not survive a fork).
preload_app = False
# One access line per request comes from the app's middleware, in JSON, with trace ids.
accesslog = None
logconfig_dict = logging_config(
    os.environ.get("OTEL_SERVICE_NAME", "gunicorn"),
    log_format=os.environ.get("LOG_FORMAT", "json"),
)
proc_name = os.environ.get("OTEL_SERVICE_NAME")
# Fewer, slightly longer young collections: more throughput at the same CPU
# (docs/benchmarks.md, "Garbage collection").
gc_young_threshold = int(os.environ.get("GC_YOUNG_THRESHOLD", "10000"))
# The runtime control socket defaults to one path per user: several masters on one machine
# would fight over it, and a read-only root filesystem has no place for it.
control_socket_disable = True
# Workers' heartbeat files: in memory, and writable on a read-only root filesystem with no
# mount of our own (every container runtime mounts a tmpfs on /dev/shm).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108


def post_fork(server: Any, worker: Any) -> None:
    """A worker stops when its master dies, even by SIGKILL: the uvicorn worker does not watch
    its parent, and an orphan would keep serving on the inherited socket (meshkit.lifetime)."""
    die_with_parent(worker.ppid, signal.SIGTERM)


def post_worker_init(worker: Any) -> None:
    """Keep the tens of thousands of long-lived objects built at start-up (the app, routes,
    schemas, metadata) out of every later collection, whose walks stopped the event loop
    (docs/benchmarks.md); the start-up's garbage is collected first so none of it is frozen."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(gc_young_threshold, older, oldest)


def worker_exit(server: Any, worker: Any) -> None:
    """Flush spans and metrics still buffered in this worker before it exits."""
    shutdown_telemetry()
