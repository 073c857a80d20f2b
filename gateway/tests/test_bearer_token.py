"""The bearer token of a request's Authorization header, as the edge reads it."""

from __future__ import annotations

import pytest

from mesh_gateway.edge import bearer_token


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        (b"", None),
        (b"Bearer ", None),
        (b"Basic abc", None),
        (b"Bearer abc", "abc"),
        (b"bearer  abc ", "abc"),
    ],
)
def test_bearer_token_parsing(header: bytes | None, token: str | None) -> None:
    assert bearer_token(header) == token
