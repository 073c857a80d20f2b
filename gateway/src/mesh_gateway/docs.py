"""The gateway's own pages: Swagger UI and ReDoc from packaged assets (no CDN, so they work
offline and under a CSP) over the merged OpenAPI document of the whole mesh."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline.core import _STATIC_PATH as OFFLINE_DOCS_ASSETS

from mesh_gateway.openapi import MergedApiDocument

TITLE = "Mesh API"
DESCRIPTION = (
    "Every public operation of the mesh, through its gateway. Use **Authorize** with your "
    "email and password to call the operations that need a token."
)
ASSETS_PATH = "/docs-assets"


def _docs_router(expected: list[str]) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{TITLE} - Swagger UI",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{TITLE} - ReDoc",
            redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )

    @router.get("/openapi-status")
    async def openapi_status(request: Request) -> dict[str, list[str]]:
        """Which upstream documents are merged into /openapi.json."""
        merged: MergedApiDocument = request.app.state.gateway.document
        return {"services": sorted(merged.services), "expected": expected}

    return router


def serve_docs(api: FastAPI, *, upstreams: list[str]) -> None:
    """Replaces FastAPI's own pages (their scripts come from a CDN) and document (the
    gateway's: the merge of its upstreams')."""
    api.router.routes[:] = [
        route
        for route in api.router.routes
        if getattr(route, "path", None) not in ("/docs", "/redoc")
    ]
    api.include_router(_docs_router(sorted(upstreams)))
    api.mount(ASSETS_PATH, StaticFiles(directory=OFFLINE_DOCS_ASSETS), name="docs-assets")

    def merged_openapi() -> dict[str, Any]:
        state = getattr(api.state, "gateway", None)
        return state.document.document if state is not None else {}

    api.openapi = merged_openapi  # type: ignore[method-assign]
