"""RFC 9457 problem details for every error a service returns.

One base exception (`ProblemError`) is turned into a response by one handler; framework errors
(404/405, validation, unhandled exceptions) are reshaped into the same format.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import trace
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from meshkit.db import is_database_unavailable
from meshkit.logging import trace_id_var

PROBLEM_MEDIA_TYPE = "application/problem+json"

logger = logging.getLogger("meshkit.problems")


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """The body of every error response (RFC 9457)."""

    type: str = Field(default="about:blank", description="A URI reference naming the problem.")
    title: str
    status: int
    detail: str
    instance: str
    trace_id: str = Field(description="The W3C trace id of the request, for support requests.")
    errors: list[ValidationIssue] | None = Field(
        default=None, description="Present on 422: what was wrong, and where."
    )


class ProblemError(Exception):
    """Raise to answer with a problem; subclasses fix the status and title."""

    status: int = 500
    title: str | None = None
    type: str = "about:blank"
    errors: list[ValidationIssue] | None = None

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title
        self.headers = dict(headers or {})


class NotFoundError(ProblemError):
    status = 404


class ConflictError(ProblemError):
    status = 409


class UnprocessableError(ProblemError):
    """422 for input that is well-formed but not acceptable; like every 422 of the contract it
    carries `errors`, here the one issue at `loc`."""

    status = 422

    def __init__(
        self, detail: str, *, loc: Sequence[str | int] = (), error_type: str = "value_error"
    ) -> None:
        super().__init__(detail)
        self.errors = [ValidationIssue(loc=list(loc), msg=detail, type=error_type)]


class UnauthorizedError(ProblemError):
    """401 with the `WWW-Authenticate: Bearer` challenge the contract requires."""

    status = 401

    def __init__(self, detail: str = "Missing or invalid access token.") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class ServiceUnavailableError(ProblemError):
    status = 503


class TooManyRequestsError(ProblemError):
    status = 429

    def __init__(self, detail: str, *, retry_after_seconds: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after_seconds))})


def current_trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        return format(context.trace_id, "032x")
    return trace_id_var.get() or ""


def problem_response(
    request: Request,
    *,
    status: int,
    detail: str,
    title: str | None = None,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    errors: Sequence[ValidationIssue] | None = None,
) -> JSONResponse:
    problem = Problem(
        type=type_,
        title=title or HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=request.url.path,
        trace_id=current_trace_id(),
        errors=list(errors) if errors is not None else None,
    )
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _validation_issues(raw_errors: Sequence[Any]) -> list[ValidationIssue]:
    # Only location, message and type: pydantic's `input` and `ctx` may echo secrets (passwords).
    return [
        ValidationIssue(
            loc=[part for part in error.get("loc", ()) if isinstance(part, str | int)],
            msg=str(error.get("msg", "")),
            type=str(error.get("type", "")),
        )
        for error in raw_errors
    ]


async def _handle_problem_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        request,
        status=exc.status,
        detail=exc.detail,
        title=exc.title,
        type_=exc.type,
        headers=exc.headers,
        errors=exc.errors,
    )


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"No resource at {request.url.path}."
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}."
    return problem_response(request, status=exc.status_code, detail=detail, headers=exc.headers)


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem_response(
        request,
        status=422,
        detail="The request is not valid; see `errors`.",
        errors=_validation_issues(exc.errors()),
    )


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The details go to the log (with the trace id), never to the client.
    logger.exception("unhandled error while serving %s %s", request.method, request.url.path)
    return problem_response(
        request, status=500, detail="An unexpected error occurred; it has been logged."
    )


async def _handle_dependency_error(request: Request, exc: Exception) -> JSONResponse:
    if not is_database_unavailable(exc):
        return await _handle_unexpected(request, exc)
    logger.warning(
        "database unavailable while serving %s %s: %r", request.method, request.url.path, exc
    )
    return problem_response(
        request,
        status=503,
        detail="The service's database is unavailable; try again shortly.",
        headers={"Retry-After": "1"},
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _handle_problem_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    for unavailable in (sa_exc.DBAPIError, sa_exc.TimeoutError, OSError):
        app.add_exception_handler(unavailable, _handle_dependency_error)
    app.add_exception_handler(Exception, _handle_unexpected)


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}, "description": "Client error"},
    "5XX": {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}, "description": "Server error"},
}
"""Add to a router's `responses=` so the OpenAPI document describes the problem bodies."""
