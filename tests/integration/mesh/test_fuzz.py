"""schemathesis against the gateway's merged `/openapi.json`: generated requests (valid and
invalid) for every documented operation, with a valid token where the operation needs one.
Every answer must be documented (status, content type, headers, body schema, problem bodies
included), never a 5xx, and leak nothing."""

from __future__ import annotations

from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from meshdev.customers import Customer
from meshdev.stack import MeshTarget

from .conftest import assert_no_leak, client_address

# Bounded so the fuzz run stays well under a minute on two cores: per operation and mode.
CASES_PER_MODE = 30
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)  # valid and invalid requests
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# A live stream never ends, so it cannot be one request of a fuzz run; its responses are
# covered by the stream tests (test_flows, test_security).
NOT_FUZZED = ("/api/notifications/stream",)


@pytest.fixture(scope="module")
async def fuzz_customer(mesh: MeshTarget) -> Customer:
    async with httpx.AsyncClient(timeout=15) as http:
        return await Customer.register(mesh, http)


def test_generated_requests_get_documented_answers_and_never_a_5xx(
    mesh: MeshTarget, fuzz_customer: Customer, record_property: Any
) -> None:
    gateway = mesh.url("gateway")
    schema = schemathesis.openapi.from_url(f"{gateway}/openapi.json")
    # Its own client address: the fuzzer's failed logins must not lock other tests out.
    headers = {**fuzz_customer.headers, "X-Forwarded-For": client_address()}
    cases = 0
    failures: dict[str, BaseException] = {}

    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the merged document is not valid: {result.err()}"
        operations.append(result.ok())
    for operation, mode in ((o, m) for o in operations for m in MODES):
        if operation.path in NOT_FUZZED:
            continue

        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(
            max_examples=CASES_PER_MODE,
            deadline=None,
            database=None,
            derandomize=True,  # the same cases every run: a failure is reproducible
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: schemathesis.Case[Any]) -> None:
            nonlocal cases
            cases += 1
            # The generated headers win (a fuzzed Authorization is part of the test).
            sent = {**headers, **dict(case.headers or {})}
            response = case.call(base_url=gateway, headers=sent, timeout=15)
            case.validate_response(response, checks=CHECKS, headers=sent)
            assert_no_leak(response.text, case.operation.label)

        try:
            exercise()
        except Unsatisfiable:
            if mode is not GenerationMode.NEGATIVE:
                raise
            # An operation without parameters or body has no invalid request to make.
        except Exception as failure:  # every operation runs; all failures are reported
            failures[f"{operation.label} ({mode.value})"] = failure

    record_property("fuzz_cases", cases)
    assert not failures, "\n\n".join(f"{label}: {error}" for label, error in failures.items())
