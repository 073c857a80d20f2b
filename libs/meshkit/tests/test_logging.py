"""Log lines from the configuration every service process uses: JSON for machines, one readable
line per record for a person (`LOG_FORMAT=console`); what aio-pika and aiormq log about a broker
connection they restore themselves is no error."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import os
import re
import sys
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from aio_pika import RobustChannel
from aiormq.exceptions import AMQPConnectionError, ChannelPreconditionFailed, ConnectionClosed
from opentelemetry import trace

from meshkit.logging import ConsoleFormatter, logging_config, request_id_var


def test_a_line_names_its_service_worker_and_request() -> None:
    # The formatter and filter the services' dictConfig builds, on a handler of our own:
    # configuring logging globally here would close the test run's own handlers.
    config = logging_config("orders")
    configurator = logging.config.DictConfigurator(config)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(configurator.configure_formatter(dict(config["formatters"]["json"])))
    handler.addFilter(configurator.configure_filter(dict(config["filters"]["context"])))
    logger = logging.getLogger("meshkit.test.json_lines")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    token = request_id_var.set("req-1")
    try:
        logger.info("placed %s", "?access_token=secret")
    finally:
        request_id_var.reset(token)
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["service"] == "orders"
    assert line["pid"] == os.getpid()
    assert line["request_id"] == "req-1"
    assert line["trace_id"] is None  # no span is current
    assert line["message"] == "placed ?access_token=[REDACTED]"
    assert set(line) == {
        "time",
        "level",
        "logger",
        "message",
        "service",
        "pid",
        "trace_id",
        "span_id",
        "request_id",
    }


def _formatted(log_format: str, emit: Callable[[logging.Logger], None]) -> str:
    """What one record becomes under `log_format`, formatted and filtered as the services'
    dictConfig builds them, on a handler of our own."""
    config = logging_config("orders", log_format=log_format)
    configurator = logging.config.DictConfigurator(config)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(configurator.configure_formatter(dict(config["formatters"][log_format])))
    handler.addFilter(configurator.configure_filter(dict(config["filters"]["context"])))
    logger = logging.getLogger(f"meshkit.test.{log_format}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def _uvicorn_started(logger: logging.Logger) -> None:
    # What uvicorn logs when a worker starts: a second copy of the message with ANSI codes.
    logger.info(
        "Started server process [%d]",
        4711,
        extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"},
    )


def test_json_lines_never_carry_uvicorns_coloured_copy_of_the_message() -> None:
    line = json.loads(_formatted("json", _uvicorn_started))

    assert line["message"] == "Started server process [4711]"
    assert "color_message" not in line


def test_a_console_line_reads_time_level_service_pid_logger_and_message() -> None:
    formatter = ConsoleFormatter(colour=False)
    record = logging.makeLogRecord(
        {"name": "uvicorn.error", "levelno": logging.INFO, "levelname": "INFO", "process": 4711}
    )
    record.msg, record.args, record.service = "Started server process [%d]", (4711,), "orders"
    record.color_message = "Started server process [\x1b[36m%d\x1b[0m]"

    line = formatter.format(record)

    time, rest = line.split(" ", 1)
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", time)
    assert rest == "INFO    orders/4711 uvicorn.error  Started server process [4711]"


def test_a_console_line_ends_with_extra_fields_and_short_trace_and_request_ids() -> None:
    trace_ids: list[str] = []

    def access_line(logger: logging.Logger) -> None:
        with trace.get_tracer("test").start_as_current_span("request") as span:
            trace_ids.append(format(span.get_span_context().trace_id, "032x"))
            token = request_id_var.set("7d3c1a2b9f0e4d5c")
            try:
                logger.info(
                    "%s %s %s",
                    "GET",
                    "/api/orders?token=secret",
                    200,
                    extra={"http_status": 200, "duration_ms": 1.25, "client": "127.0.0.1"},
                )
            finally:
                request_id_var.reset(token)

    line = _formatted("console", access_line)

    assert "GET /api/orders?token=[REDACTED] 200" in line
    assert line.endswith(
        f"  duration_ms=1.25 client=127.0.0.1  trace={trace_ids[0][:8]} req=7d3c1a2b\n"
    )
    assert "http_status" not in line  # already in the message


def test_a_console_warning_carries_the_whole_trace_id_to_paste_into_jaeger() -> None:
    trace_ids: list[str] = []

    def warning(logger: logging.Logger) -> None:
        with trace.get_tracer("test").start_as_current_span("request") as span:
            trace_ids.append(format(span.get_span_context().trace_id, "032x"))
            logger.warning("users answered 503")

    line = _formatted("console", warning)

    assert line.endswith(f"users answered 503  trace={trace_ids[0]}\n")


def test_a_console_exception_is_the_usual_traceback_under_its_line() -> None:
    def failure(logger: logging.Logger) -> None:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("unhandled error on %s", "/api/orders")

    first, *traceback = _formatted("console", failure).splitlines()

    assert first.endswith("meshkit.test.console  unhandled error on /api/orders")
    assert traceback[0] == "Traceback (most recent call last):"
    assert traceback[-1] == "RuntimeError: boom"


@pytest.mark.parametrize(
    ("environment", "coloured"),
    [({}, False), ({"FORCE_COLOR": "1"}, True), ({"FORCE_COLOR": "1", "NO_COLOR": "1"}, False)],
)
def test_console_colours_follow_force_color_and_no_color_else_the_terminal(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], coloured: bool
) -> None:
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # not a terminal
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    line = _formatted("console", lambda logger: logger.error("failed"))

    assert ("\x1b[31mERROR" in line) is coloured
    assert ("\x1b[" in line) is coloured


def test_log_format_picks_the_formatter_and_refuses_what_it_does_not_know() -> None:
    assert logging_config("orders")["formatters"]["json"]["()"].endswith("JsonFormatter")
    assert logging_config("orders", log_format="console")["formatters"] == {
        "console": {"()": ConsoleFormatter}
    }
    with pytest.raises(ValueError, match=r"LOG_FORMAT='pretty' is not supported: use json"):
        logging_config("orders", log_format="pretty")


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


BROKER_LOGGERS = ("aiormq.connection", "aio_pika.tools")
BROKER_URL = "amqp://guest:******@rabbitmq:5672/"


def _kept(emit: Callable[[], None]) -> list[logging.LogRecord]:
    """The records of aiormq's and aio-pika's loggers (at the services' WARNING) that pass the
    filters of the services' stdout handler, on a handler of our own."""
    config = logging_config("orders")
    configurator = logging.config.DictConfigurator(config)
    handler = _Kept()
    for name in config["handlers"]["stdout"]["filters"]:
        handler.addFilter(configurator.configure_filter(dict(config["filters"][name])))
    loggers = [logging.getLogger(name) for name in BROKER_LOGGERS]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.WARNING)
    try:
        emit()
    finally:
        for logger, (level, propagate) in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
    return handler.records


def _reader_exited(exc: BaseException) -> None:
    """What aiormq logs when its connection's reader ends with `exc`."""
    try:
        raise exc
    except type(exc) as raised:
        logging.getLogger("aiormq.connection").warning(
            "Cancelling cause reader exited abnormally", exc_info=raised
        )


def _callback_failed(callback: object, exc: BaseException) -> None:
    """What aio-pika logs when a callback (e.g. a channel's own `_on_close`) raises `exc`."""
    logging.getLogger("aio_pika.tools").error(
        "Callback %r error: %s: %s", SimpleNamespace(callback=callback), type(exc).__name__, exc
    )


def _closed_by_broker(code: int, text: str) -> None:
    logging.getLogger("aiormq.connection").error(
        'Unexpected connection close from remote "%s", Connection.Close(reply_code=%r, '
        "reply_text=%r)",
        BROKER_URL,
        code,
        text,
    )


def test_aio_pikas_errors_about_a_broker_restart_are_dropped_the_others_kept() -> None:
    def broker_restart() -> None:
        _closed_by_broker(320, "CONNECTION_FORCED - broker forced connection closure")
        _reader_exited(ConnectionClosed(320, "CONNECTION_FORCED - broker forced closure"))
        _reader_exited(AMQPConnectionError("Server connection unexpectedly closed"))
        _callback_failed(RobustChannel._on_close, RuntimeError(f"<Connection {BROKER_URL}> closed"))
        logging.getLogger("aiormq.connection").error(
            "error when creating transport: %r", AMQPConnectionError(111, "Connection refused")
        )

    def not_healed_by_reconnecting() -> None:
        _closed_by_broker(530, "NOT_ALLOWED - vhost mesh not found")
        _reader_exited(ConnectionClosed(530, "NOT_ALLOWED - vhost mesh not found"))
        _callback_failed(RobustChannel._on_close, ChannelPreconditionFailed("inequivalent arg"))
        _callback_failed(_callback_failed, ValueError("a defect"))

    def both() -> None:
        broker_restart()
        not_healed_by_reconnecting()

    kept = _kept(both)

    # The restart is `meshkit.messaging.broker`'s to log, once: lost, then reconnected.
    assert [(r.name, r.levelname) for r in kept] == [
        ("aiormq.connection", "ERROR"),
        ("aiormq.connection", "WARNING"),
        ("aio_pika.tools", "ERROR"),
        ("aio_pika.tools", "ERROR"),
    ]
    closed, _, channel, defect = (r.getMessage() for r in kept)
    assert "reply_code=530" in closed
    assert kept[1].exc_info is not None  # the traceback of what ended the reader
    assert "ChannelPreconditionFailed" in channel
    assert "a defect" in defect
