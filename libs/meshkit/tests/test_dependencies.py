"""Request-scoped dependencies stay on the event loop."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from meshkit.auth import get_token_verifier, require_principal
from meshkit.unit_of_work import unit_of_work


@pytest.mark.parametrize("dependency", [unit_of_work, get_token_verifier, require_principal])
def test_per_request_dependencies_do_not_run_in_the_thread_pool(
    dependency: Callable[..., Any],
) -> None:
    # FastAPI runs a plain `def` dependency in its thread pool: a thread hand-off on every
    # request, measured by `make bench` (docs/benchmarks.md).
    assert inspect.iscoroutinefunction(dependency) or inspect.isasyncgenfunction(dependency)
