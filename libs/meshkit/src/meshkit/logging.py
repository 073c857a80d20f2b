"""JSON log lines on stdout, each carrying `service`, `pid` (which gunicorn worker of a pod),
`trace_id`, `span_id` and `request_id`."""

from __future__ import annotations

import logging
import logging.config
import re
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# The trace id answered in `X-Trace-Id`, also when the request itself is not traced (probes,
# OTEL_SDK_DISABLED), so problem bodies and headers always agree.
trace_id_var: ContextVar[str | None] = ContextVar("trace_id", default=None)

_SECRET_QUERY = re.compile(r"(?i)((?:access_token|token|password|secret)=)[^&\s\"]+")


def redact(text: str) -> str:
    """Hide credentials carried in URLs (e.g. `?access_token=` on WebSocket upgrades)."""
    return _SECRET_QUERY.sub(r"\1[REDACTED]", text)


class ContextFilter(logging.Filter):
    """Stamps every record with the service name and the current trace and request ids."""

    def __init__(self, service: str = "") -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        record.service = self.service
        record.trace_id = format(context.trace_id, "032x") if context.is_valid else None
        record.span_id = format(context.span_id, "016x") if context.is_valid else None
        record.request_id = request_id_var.get()
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if record.args:
            record.args = tuple(
                redact(arg) if isinstance(arg, str) else arg
                for arg in (record.args if isinstance(record.args, tuple) else (record.args,))
            )
        return True


def logging_config(service: str, level: str = "INFO") -> dict[str, Any]:
    """A `dictConfig` for a service process; gunicorn's `logconfig_dict` uses the same one."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter, "service": service}},
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s "
                "%(service)s %(process)s %(trace_id)s %(span_id)s %(request_id)s",
                "rename_fields": {
                    "asctime": "time",
                    "levelname": "level",
                    "name": "logger",
                    "process": "pid",
                },
                "timestamp": False,
            }
        },
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "json",
                "filters": ["context"],
            }
        },
        "root": {"handlers": ["stdout"], "level": level},
        "loggers": {
            # One access line per request comes from meshkit's middleware instead.
            "uvicorn.access": {"handlers": [], "propagate": False},
            "uvicorn.error": {"level": level},
            "gunicorn.access": {"handlers": [], "propagate": False},
            "gunicorn.error": {"handlers": ["stdout"], "level": level, "propagate": False},
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
            "aiormq": {"level": "WARNING"},
            "aio_pika": {"level": "WARNING"},
        },
    }


def configure_logging(service: str, level: str = "INFO") -> None:
    logging.config.dictConfig(logging_config(service, level))
