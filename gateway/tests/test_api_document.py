"""One OpenAPI 3.1 document for the mesh, and Swagger UI serving it in a real browser."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
from openapi_spec_validator import validate

from mesh_gateway.openapi import SECURITY_SCHEME, merge_documents
from meshdev.api import PASSWORD, UsersApi
from meshdev.processes import free_port

# Debian's chromium, installed by `make browser` (a prerequisite of `make test`).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


async def _merged_document(client: httpx.AsyncClient) -> dict[str, Any]:
    """The document once every upstream's part is in (fetched in the background at start)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = (await client.get("/openapi-status")).json()
        if status["services"] == status["expected"]:
            document: dict[str, Any] = (await client.get("/openapi.json")).json()
            return document
        await asyncio.sleep(0.1)
    raise AssertionError(f"upstream documents still missing: {status}")


async def test_the_merged_document_is_valid_openapi_3_1_with_every_service(
    client: httpx.AsyncClient,
) -> None:
    document = await _merged_document(client)

    validate(document)
    assert document["openapi"] == "3.1.0"
    paths = document["paths"]
    assert {"/api/users", "/api/users/me", "/api/auth/token"} <= set(paths)
    assert "/api/orders/echo" in paths
    assert "/api/notifications/stream" in paths
    assert not [p for p in paths if not p.startswith("/api/")]


async def test_the_document_names_one_security_scheme_and_applies_it(
    client: httpx.AsyncClient,
) -> None:
    document = await _merged_document(client)

    schemes = document["components"]["securitySchemes"]
    assert list(schemes) == [SECURITY_SCHEME]
    assert schemes[SECURITY_SCHEME]["flows"]["password"]["tokenUrl"] == "/api/auth/token"
    paths = document["paths"]
    assert paths["/api/users/me"]["get"]["security"] == [{SECURITY_SCHEME: []}]
    assert paths["/api/orders/echo"]["get"]["security"] == [{SECURITY_SCHEME: []}]
    assert "security" not in paths["/api/users"]["post"]
    assert "security" not in paths["/api/auth/token"]["post"]


def _document(schema: dict[str, Any], path: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {
            path: {
                "get": {
                    "responses": {
                        "200": {
                            "description": "ok",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Item"}
                                }
                            },
                        }
                    }
                }
            },
            "/internal/x": {"get": {"responses": {"200": {"description": "ok"}}}},
        },
        "components": {"schemas": {"Item": schema}},
    }


def test_colliding_components_are_renamed_never_overwritten() -> None:
    orders = _document({"type": "object", "properties": {"sku": {"type": "string"}}}, "/api/orders")
    notes = _document(
        {"type": "object", "properties": {"read": {"type": "boolean"}}}, "/api/notifications"
    )

    merged = merge_documents(
        {"orders": orders, "notifications": notes},
        {"orders": ("/api/orders",), "notifications": ("/api/notifications",)},
        title="t",
        version="1",
    )

    validate(merged)
    schemas = merged["components"]["schemas"]
    assert set(schemas) == {"Item", "OrdersItem"}
    assert "read" in schemas["Item"]["properties"]  # notifications sorts first
    ref = merged["paths"]["/api/orders"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ]["$ref"]
    assert ref == "#/components/schemas/OrdersItem"
    assert "/internal/x" not in merged["paths"]


def test_identical_components_are_kept_once() -> None:
    item = {"type": "object"}
    merged = merge_documents(
        {"orders": _document(item, "/api/orders"), "users": _document(item, "/api/users")},
        {"orders": ("/api/orders",), "users": ("/api/users",)},
        title="t",
        version="1",
    )

    assert set(merged["components"]["schemas"]) == {"Item"}


async def test_swagger_ui_shows_every_service_and_the_authorize_button(
    client: httpx.AsyncClient, gateway_url: str, artifacts: Path
) -> None:
    from playwright.async_api import async_playwright

    await _merged_document(client)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 2000})
            await page.goto(f"{gateway_url}/docs")
            await page.wait_for_selector(".opblock", timeout=20_000)
            operations = await page.locator(".opblock-summary-path").all_inner_texts()
            authorize = page.locator("button.authorize")
            await authorize.wait_for(timeout=5_000)
            await page.screenshot(path=str(artifacts / "swagger-ui.png"), full_page=True)
        finally:
            await browser.close()

    paths = {text.replace("\u200b", "").strip() for text in operations}
    assert "/api/users/me" in paths
    assert "/api/auth/token" in paths
    assert "/api/orders/echo" in paths
    assert "/api/notifications/stream" in paths


async def test_swagger_ui_authorize_logs_in_and_calls_a_protected_operation(
    client: httpx.AsyncClient, gateway_url: str, artifacts: Path
) -> None:
    """Authorize (OAuth2 password flow through the gateway), then "Try it out" on /me."""
    from playwright.async_api import async_playwright

    email = f"swagger-{uuid.uuid4().hex[:8]}@example.com"
    await UsersApi(client).register(email)
    await _merged_document(client)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1600})
            await page.goto(f"{gateway_url}/docs")
            await page.locator("button.authorize").first.click()
            await page.fill("#oauth_username", email)
            await page.fill("#oauth_password", PASSWORD)
            await page.locator(".auth-btn-wrapper button.authorize").click()
            # The token request is asynchronous: logged in once "Logout" is offered.
            await page.locator(".auth-btn-wrapper button", has_text="Logout").wait_for(
                timeout=10_000
            )
            await page.locator(".auth-btn-wrapper button.btn-done").click()

            operation = page.locator("#operations-users-me_api_users_me_get")
            await operation.locator(".opblock-summary").click()
            await operation.locator("button.try-out__btn").click()
            await operation.locator("button.execute").click()
            responses = operation.locator(".live-responses-table tr.response")
            status = responses.locator(".response-col_status").first
            await status.wait_for(timeout=10_000)
            status_text = (await status.inner_text()).strip()
            body = await operation.locator(".live-responses-table .microlight").first.inner_text()
            await page.screenshot(path=str(artifacts / "swagger-ui-authorized.png"), full_page=True)
        finally:
            await browser.close()

    assert status_text.startswith("200")
    assert email in body


async def test_a_service_that_starts_later_joins_the_document(
    start_gateway: Callable[..., AbstractAsyncContextManager[str]],
    serve_stand_in: Callable[[int], AbstractAsyncContextManager[str]],
) -> None:
    port = free_port()
    async with (
        start_gateway(orders_url=f"http://127.0.0.1:{port}") as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        before = (await http.get("/openapi.json")).json()
        async with serve_stand_in(port):
            after = await _merged_document(http)

    assert not [p for p in before["paths"] if p.startswith("/api/orders")]
    assert "/api/orders/echo" in after["paths"]


async def test_docs_pages_load_their_assets_from_the_gateway(client: httpx.AsyncClient) -> None:
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = await client.get(page)
        assert html.status_code == 200
        assert f"/docs-assets/{asset}" in html.text
        assert "cdn." not in html.text
        assert (await client.get(f"/docs-assets/{asset}")).status_code == 200
