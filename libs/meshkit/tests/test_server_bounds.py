"""Where the server's bounds come from: gunicorn's request limits as gunicorn reads them, the
others from the environment (what each bound does is tested through a served gateway in
gateway/tests/test_server_bounds.py)."""

from __future__ import annotations

from gunicorn.config import Config

from meshkit.server import ServerBounds


def _gunicorn(*arguments: str) -> Config:
    config = Config()
    parsed = config.parser().parse_args(list(arguments))
    for name, value in vars(parsed).items():
        if value is not None and name in config.settings:
            config.set(name, value)
    return config


def test_gunicorns_request_limits_are_its_own_settings() -> None:
    bounds = ServerBounds.from_environment(
        _gunicorn("--limit-request-line", "1000", "--limit-request-fields", "7"), environ={}
    )

    assert (bounds.request_line, bounds.request_fields) == (1000, 7)
    assert bounds.request_field_size == 8190  # gunicorn's default


def test_gunicorns_no_limit_keeps_a_bound() -> None:
    bounds = ServerBounds.from_environment(_gunicorn("--limit-request-line", "0"), environ={})

    assert bounds.request_line == ServerBounds().request_line


def test_the_other_bounds_come_from_the_environment() -> None:
    bounds = ServerBounds.from_environment(
        None,
        environ={
            "LIMIT_REQUEST_HEAD_SIZE": "2048",
            "REQUEST_HEADER_TIMEOUT": "2.5",
            "MAX_CONNECTIONS_PER_ADDRESS": "0",
            "WS_MAX_MESSAGE_SIZE": "512",
        },
    )

    assert bounds.request_head_size == 2048
    assert bounds.header_timeout == 2.5
    assert bounds.connections_per_address == 0
    assert bounds.websocket_message_size == 512
