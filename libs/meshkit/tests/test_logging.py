"""The JSON log line's fields, from the configuration every service process uses."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import os

from meshkit.logging import logging_config, request_id_var


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
