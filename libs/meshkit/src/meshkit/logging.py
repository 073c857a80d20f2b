"""Log records on stdout, each carrying `service`, `pid` (which gunicorn worker of a pod),
`trace_id`, `span_id` and `request_id`: JSON lines for machines (the default), or one readable,
coloured line per record for a person at a terminal (`LOG_FORMAT=console`).

When logs are exported over OTLP (`meshkit.telemetry`), the same records, stamped and redacted
the same way, also go to the OpenTelemetry logs bridge (`add_export_handler`).

What aio-pika and aiormq log while a broker connection drops and is restored (errors and
tracebacks for an outage they recover from by themselves) is quietened by
`BrokerReconnectFilter`; `meshkit.messaging.broker` logs the outage in one warning instead.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
import re
import sys
import zlib
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# The trace id answered in `X-Trace-Id`, also when the request itself is not traced (probes,
# OTEL_SDK_DISABLED), so problem bodies and headers always agree.
trace_id_var: ContextVar[str | None] = ContextVar("trace_id", default=None)

_SECRET_QUERY = re.compile(r"(?i)((?:access_token|token|password|secret)=)[^&\s\"]+")
# What ContextFilter stamps on every record.
STAMPED = ("service", "trace_id", "span_id", "request_id")
# uvicorn's copy of some messages with ANSI colour codes in it: never worth a field.
NOT_LOGGED = ("color_message",)


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


# AMQP's CONNECTION_FORCED: the broker shut down (a restart) or an operator closed the connection.
_CONNECTION_FORCED = 320


def _connection_lost(exc: object) -> bool:
    """True for the ways a connection to the broker ends that aio-pika reconnects after: reset,
    refused, end of stream, or the broker going down. Not for a refused login, a vhost that is
    gone, or any other close by the broker: those do not heal by reconnecting."""
    # Imported here: a service without a broker connection never logs these.
    from aiormq.exceptions import (
        AMQPConnectionError,
        AuthenticationError,
        ConnectionClosed,
        IncompatibleProtocolError,
        ProbableAuthenticationError,
    )

    if isinstance(exc, ConnectionClosed):
        return exc.args[:1] == (_CONNECTION_FORCED,)
    not_healed = AuthenticationError | ProbableAuthenticationError | IncompatibleProtocolError
    if isinstance(exc, not_healed):
        return False
    # OSError: reset, refused, timed out, a name that does not resolve (yet).
    return isinstance(exc, AMQPConnectionError | OSError | asyncio.IncompleteReadError)


class BrokerReconnectFilter(logging.Filter):
    """Lowers to DEBUG, without their traceback, the records aio-pika and aiormq log for a lost
    broker connection they restore themselves: the connection's drop, its failed reconnection
    attempts' transport errors (the attempt itself is a warning of aio-pika's), and the channels
    that cannot reopen until the connection is back. `meshkit.messaging.broker` logs the loss
    and the recovery as one warning each, and an error if the outage lasts. Every other record
    of theirs (an unexpected exception, a close for another reason) keeps its level.

    A handler filter: a logger's own filters see only the records logged on it, not its
    children's, and dictConfig adds them again at every configuration."""

    _SOURCES = ("aiormq.", "aio_pika.")

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._SOURCES):
            return True
        if record.levelno > logging.DEBUG and self._recovered_by_reconnecting(record):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info, record.exc_text = None, None
        # A lowered record is shown only where its logger shows DEBUG records.
        return logging.getLogger(record.name).isEnabledFor(record.levelno)

    @staticmethod
    def _recovered_by_reconnecting(record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        args = record.args if isinstance(record.args, tuple) else ()
        if record.name == "aiormq.connection":
            if message.startswith("Unexpected connection close from remote"):
                return args[1:2] == (_CONNECTION_FORCED,)
            if message == "Cancelling cause reader exited abnormally":
                return record.exc_info is not None and _connection_lost(record.exc_info[1])
            # Raised to whoever connects, who reports it (aio-pika's reconnection loop, or
            # `Broker` for the first connection).
            return message.startswith("error when creating transport")
        if record.name == "aio_pika.tools" and message.startswith("Callback %r error"):
            # A channel's own attempt to reopen when the connection under it has closed; the
            # connection reopens every channel once it is back.
            callback = getattr(args[0], "callback", args[0]) if args else None
            error = args[2] if len(args) > 2 else None
            return getattr(callback, "__qualname__", "") == "RobustChannel._on_close" and (
                isinstance(error, RuntimeError) or _connection_lost(error)
            )
        return False


def _wants_colour() -> bool:
    """The NO_COLOR / FORCE_COLOR conventions, else whether stdout is a terminal."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR", "0") not in ("", "0"):
        return True
    return sys.stdout.isatty()


_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_LEVEL_COLOURS = {
    "DEBUG": "\x1b[34m",
    "INFO": "\x1b[32m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[1;31m",
}
# A colour per service name, the same in every process (crc32, unlike hash(), is not salted).
_SERVICE_COLOURS = tuple(f"\x1b[{code}m" for code in (36, 35, 34, 96, 95, 94, 92, 93))
_STANDARD_ATTRIBUTES = frozenset(
    (*vars(logging.makeLogRecord({})), "message", "asctime", "taskName", *STAMPED, *NOT_LOGGED)
)
# Already in the access line's message.
_NOT_SHOWN = frozenset(("http_status",))


class ConsoleFormatter(logging.Formatter):
    """One line per record for a person: time, level, service/pid, logger, message, the
    record's extra fields (`duration_ms=23.4`), then the short trace and request ids:

        13:04:53.078 INFO    orders/4711 meshkit.access  GET /api/orders 200  trace=4bf92f35

    Trace and request ids are shortened to 8 hex digits, enough to follow a request by eye;
    warnings and errors show the whole trace id, to paste into Jaeger. Exceptions follow as
    the usual traceback.
    """

    def __init__(self, colour: bool | None = None) -> None:
        super().__init__()
        self.colour = _wants_colour() if colour is None else colour

    def _paint(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.colour else text

    def format(self, record: logging.LogRecord) -> str:
        time = f"{self.formatTime(record, '%H:%M:%S')}.{int(record.msecs):03d}"
        service = getattr(record, "service", "") or ""
        where = f"{service}/{record.process}" if service else str(record.process)
        where_colour = _SERVICE_COLOURS[zlib.crc32(service.encode()) % len(_SERVICE_COLOURS)]
        level = self._paint(_LEVEL_COLOURS.get(record.levelname, ""), f"{record.levelname:<7}")
        parts = [
            self._paint(_DIM, time),
            level,
            self._paint(where_colour, where),
            self._paint(_DIM, record.name) + " ",
            record.getMessage(),
        ]
        extras = " ".join(
            f"{key}={value}"
            for key, value in vars(record).items()
            if key not in _STANDARD_ATTRIBUTES and key not in _NOT_SHOWN
        )
        if extras:
            parts.append(" " + self._paint(_DIM, extras))
        ids = []
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            ids.append(f"trace={trace_id if record.levelno >= logging.WARNING else trace_id[:8]}")
        request_id = getattr(record, "request_id", None)
        if request_id:
            ids.append(f"req={request_id[:8]}")
        if ids:
            parts.append(" " + self._paint(_DIM, " ".join(ids)))
        line = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _formatter(log_format: str) -> dict[str, Any]:
    if log_format == "console":
        return {"()": ConsoleFormatter}
    if log_format == "json":
        return {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s "
            "%(service)s %(process)s %(trace_id)s %(span_id)s %(request_id)s",
            "rename_fields": {
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "process": "pid",
            },
            "reserved_attrs": [*RESERVED_ATTRS, *NOT_LOGGED],
            "timestamp": False,
        }
    raise ValueError(
        f"LOG_FORMAT={log_format!r} is not supported: use json (the default) or console"
    )


def logging_config(service: str, level: str = "INFO", log_format: str = "json") -> dict[str, Any]:
    """A `dictConfig` for a service process; gunicorn's `logconfig_dict` uses the same one."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": ContextFilter, "service": service},
            "broker_reconnect": {"()": BrokerReconnectFilter},
        },
        "formatters": {log_format: _formatter(log_format)},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": log_format,
                "filters": ["broker_reconnect", "context"],
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


def configure_logging(service: str, level: str = "INFO", log_format: str = "json") -> None:
    logging.config.dictConfig(logging_config(service, level, log_format))


# The records of the exporters and of their HTTP and gRPC clients stay off the export: a failing
# export logs, and exporting that record would fail and log again.
_EXPORTING = frozenset(("opentelemetry", "urllib3", "requests", "grpc"))


def _stdout_loggers() -> list[logging.Logger]:
    """The root logger and every logger that prints on its own (`gunicorn.error`)."""
    return [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
        and any(handler.name == "stdout" for handler in logger.handlers)
    ]


def add_export_handler(handler: logging.Handler) -> None:
    """Hand every record that is printed to `handler` as well (after the stdout handler),
    stamped and redacted as the printed line is."""
    stdout = next(
        (h for logger in _stdout_loggers() for h in logger.handlers if h.name == "stdout"), None
    )
    stamps = [f for f in stdout.filters if isinstance(f, ContextFilter)] if stdout else []
    stamp = stamps[0] if stamps else ContextFilter()
    handler.addFilter(lambda record: record.name.partition(".")[0] not in _EXPORTING)
    # Not exported either (the printed line's filter has lowered them already, this drops them).
    handler.addFilter(BrokerReconnectFilter())
    # The printed line's filter has normally stamped and redacted the record already (the
    # stdout handler comes first on every logger): stamped here only if not.
    handler.addFilter(lambda record: "request_id" in record.__dict__ or stamp.filter(record))
    for logger in _stdout_loggers():
        logger.addHandler(handler)


def remove_export_handler(handler: logging.Handler) -> None:
    for logger in _stdout_loggers():
        logger.removeHandler(handler)
