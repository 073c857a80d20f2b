"""The users service as the orders service sees it: does this user exist?"""

from __future__ import annotations

import logging
import uuid

import httpx

from meshkit.http_client import ServiceClient
from meshkit.problems import ServiceUnavailableError, UnauthorizedError

logger = logging.getLogger("orders.users")


class UsersClient:
    """Wraps the process's one long-lived, pooled client of the users service."""

    def __init__(self, client: ServiceClient) -> None:
        self._client = client

    async def ensure_exists(self, user_id: uuid.UUID) -> None:
        try:
            response = await self._client.get(f"/internal/users/{user_id}")
        except httpx.HTTPError as exc:
            logger.warning("users service unreachable: %r", exc)
            raise ServiceUnavailableError(
                "The users service cannot be reached; no order was stored. Try again shortly.",
                headers={"Retry-After": "1"},
            ) from exc
        if response.status_code == 204:
            return
        if response.status_code == 404:
            raise UnauthorizedError("The account this token belongs to no longer exists.")
        logger.warning("users service answered %d", response.status_code)
        raise ServiceUnavailableError(
            "The users service could not confirm the account; no order was stored.",
            headers={"Retry-After": "1"},
        )
