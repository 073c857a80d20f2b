"""One OpenAPI 3.1 document for the whole mesh, merged from every upstream's own `/openapi.json`.

- Only the public paths the gateway routes are kept (no `/internal/`, no probes).
- Components with the same name and the same content are kept once; the same name with a
  different content is renamed `<Service><Name>` (with its `$ref`s) and logged — never a silent
  overwrite.
- One security scheme, OAuth2 password flow against `/api/auth/token`, so Swagger UI's
  "Authorize" logs in; every operation that needs a token says so.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import random
from collections.abc import Mapping
from typing import Any

import httpx

from mesh_gateway.routing import is_public
from meshkit.auth import TOKEN_URL
from meshkit.http_client import ServiceClient
from meshkit.telemetry import untraced

logger = logging.getLogger("mesh_gateway.openapi")

SECURITY_SCHEME = "OAuth2PasswordBearer"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_REF_PREFIX = "#/components/"

Document = dict[str, Any]


def _rewrite_refs(node: Any, renames: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        rewritten = {key: _rewrite_refs(value, renames) for key, value in node.items()}
        ref = rewritten.get("$ref")
        if isinstance(ref, str) and ref in renames:
            rewritten["$ref"] = renames[ref]
        return rewritten
    if isinstance(node, list):
        return [_rewrite_refs(item, renames) for item in node]
    return node


def _in_prefixes(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)


def merge_documents(
    documents: Mapping[str, Document],
    prefixes: Mapping[str, tuple[str, ...]],
    *,
    title: str,
    version: str,
    description: str = "",
) -> Document:
    """Merge upstream documents (by service name) into the gateway's document."""
    paths: dict[str, Any] = {}
    components: dict[str, dict[str, Any]] = {}
    tags: dict[str, Any] = {}
    for service in sorted(documents):
        document = documents[service]
        # Rename colliding components of this service first, then rewrite its references.
        renames: dict[str, str] = {}
        for kind, entries in document.get("components", {}).items():
            if kind == "securitySchemes":
                continue
            for name, value in entries.items():
                existing = components.get(kind, {}).get(name)
                if existing is not None and existing != value:
                    new_name = f"{service.capitalize()}{name}"
                    renames[f"{_REF_PREFIX}{kind}/{name}"] = f"{_REF_PREFIX}{kind}/{new_name}"
                    logger.warning(
                        "OpenAPI component %s/%s of %s differs from another service's; "
                        "published as %s",
                        kind,
                        name,
                        service,
                        new_name,
                    )
        document = _rewrite_refs(document, renames) if renames else document
        for kind, entries in document.get("components", {}).items():
            if kind == "securitySchemes":
                continue
            merged = components.setdefault(kind, {})
            for name, value in entries.items():
                renamed = renames.get(f"{_REF_PREFIX}{kind}/{name}")
                merged[renamed.rsplit("/", 1)[1] if renamed else name] = value

        for path, operations in document.get("paths", {}).items():
            if not _in_prefixes(path, prefixes.get(service, ())):
                continue
            if path in paths:
                logger.warning("OpenAPI path %s of %s is already served; skipped", path, service)
                continue
            paths[path] = _secure_operations(path, operations)
        for tag in document.get("tags", []):
            tags.setdefault(tag["name"], tag)

    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "oauth2",
        "description": "Log in with your email as the username; every call then carries "
        "`Authorization: Bearer <access_token>`.",
        "flows": {"password": {"tokenUrl": TOKEN_URL, "scopes": {}}},
    }
    merged_document: Document = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": dict(sorted(paths.items())),
        "components": components,
    }
    if tags:
        merged_document["tags"] = list(tags.values())
    return merged_document


def _secure_operations(path: str, operations: Mapping[str, Any]) -> dict[str, Any]:
    """The gateway decides which routes are public: every other operation needs the token."""
    secured: dict[str, Any] = {}
    for method, operation in operations.items():
        if method not in _METHODS or not isinstance(operation, dict):
            secured[method] = operation
            continue
        operation = copy.copy(operation)
        if is_public(method.upper(), path):
            operation.pop("security", None)
        else:
            operation["security"] = [{SECURITY_SCHEME: []}]
        secured[method] = operation
    return secured


class MergedApiDocument:
    """Fetches every upstream's document at start (with retry) and refreshes them periodically;
    serves the last good merge meanwhile, so an upstream restart never empties /docs."""

    def __init__(
        self,
        *,
        clients: Mapping[str, ServiceClient],
        prefixes: Mapping[str, tuple[str, ...]],
        title: str,
        version: str,
        description: str,
        refresh_seconds: float,
    ) -> None:
        self._clients = clients
        self._refresh_seconds = refresh_seconds
        self._documents: dict[str, Document] = {}
        self._merge = functools.partial(
            merge_documents,
            self._documents,
            prefixes,
            title=title,
            version=version,
            description=description,
        )
        self.document: Document = self._merge()

    @property
    def services(self) -> frozenset[str]:
        return frozenset(self._documents)

    async def refresh(self) -> bool:
        """Fetch every document once; True when all of them answered."""
        results = await asyncio.gather(
            *(self._fetch(name, client) for name, client in self._clients.items())
        )
        self.document = self._merge()
        return all(results)

    async def _fetch(self, name: str, client: ServiceClient) -> bool:
        try:
            with untraced():
                response = await client.get("/openapi.json", timeout=5.0)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            logger.info("OpenAPI document of %s not available yet: %s", name, exc)
            return False
        if not isinstance(document, dict):
            return False
        self._documents[name] = document
        return True

    async def run(self) -> None:
        """Until cancelled: retry quickly until every upstream answered, then refresh slowly."""
        delay = 0.5
        while True:
            complete = await self.refresh()
            delay = self._refresh_seconds if complete else min(delay * 2, self._refresh_seconds)
            await asyncio.sleep(delay * random.uniform(0.9, 1.1))  # noqa: S311
