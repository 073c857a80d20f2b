"""Liveness (`/healthz`, no dependencies) and readiness (`/readyz`, every registered check)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from meshkit.problems import problem_response
from meshkit.telemetry import untraced

ReadinessCheck = Callable[[], Awaitable[object]]

logger = logging.getLogger("meshkit.health")

PROBE_PATHS = frozenset({"/healthz", "/readyz"})


async def _run_check(check: ReadinessCheck, limit_seconds: float) -> str | None:
    try:
        with untraced():
            await asyncio.wait_for(check(), limit_seconds)
    except Exception as exc:
        return type(exc).__name__
    return None


def health_router(
    checks: Callable[[FastAPI], Mapping[str, ReadinessCheck]], *, timeout: float = 2.0
) -> APIRouter:
    """`checks(app)` returns the named checks of the running app (they live in its state)."""
    router = APIRouter(tags=["health"], include_in_schema=False)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        named = dict(checks(request.app))
        results = await asyncio.gather(*(_run_check(c, timeout) for c in named.values()))
        failing = {name: error for name, error in zip(named, results, strict=True) if error}
        if failing:
            logger.warning("not ready: %s", failing)
            names = ", ".join(sorted(failing))
            return problem_response(
                request,
                status=503,
                detail=f"Not ready: {names} did not answer.",
                headers={"Retry-After": "1"},
            )
        return JSONResponse({"status": "ready", "checks": sorted(named)})

    return router
