"""The gunicorn configuration every deployable is served with:

    gunicorn --config python:meshkit.gunicorn_conf <package>.main:app

Environment: HOST (default 0.0.0.0), PORT (default 8000), WEB_CONCURRENCY (workers, default 2),
GRACEFUL_TIMEOUT (seconds, default 20; Kubernetes' terminationGracePeriodSeconds must exceed it),
KEEPALIVE (seconds, default 75: longer than any proxy's idle timeout in front of us).
"""

from __future__ import annotations

import gc
import os
from typing import Any

from meshkit.logging import logging_config
from meshkit.telemetry import shutdown_telemetry

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"  # noqa: S104
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "uvicorn_worker.UvicornWorker"
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "20"))
timeout = int(os.environ.get("WORKER_TIMEOUT", "60"))
keepalive = int(os.environ.get("KEEPALIVE", "75"))
# Not preloaded: each worker imports the app after the fork, so telemetry exporters, engines
# and clients are created per worker (their threads and sockets do not survive a fork).
preload_app = False
# One access line per request comes from the app's middleware, in JSON, with trace ids.
accesslog = None
logconfig_dict = logging_config(os.environ.get("OTEL_SERVICE_NAME", "gunicorn"))
proc_name = os.environ.get("OTEL_SERVICE_NAME")
# The runtime control socket defaults to one path per user: several masters on one machine
# would fight over it, and a read-only root filesystem has no place for it.
control_socket_disable = True


def post_worker_init(worker: Any) -> None:
    """Keep what the worker imported and built at start-up out of every later collection.

    The app, its routes, schemas and ORM metadata are tens of thousands of long-lived objects;
    each full collection walked them all, 60-100 ms with the event loop stopped, which showed as
    one slow second in ten in the order → notification latency (docs/benchmarks.md). Garbage of
    the start-up is collected first, so none of it is frozen.
    """
    gc.collect()
    gc.freeze()


def worker_exit(server: Any, worker: Any) -> None:
    """Flush spans and metrics still buffered in this worker before it exits."""
    shutdown_telemetry()
