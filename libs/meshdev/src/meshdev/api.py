"""Clients of the mesh's public API, so tests read as behaviour (in-process or over TCP)."""

from __future__ import annotations

import httpx

PASSWORD = "correct horse battery"


class UsersApi:
    """Small helpers over the users API, so tests read as behaviour."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def register(
        self, email: str = "ada@example.com", password: str = PASSWORD
    ) -> dict[str, str]:
        response = await self.client.post(
            "/api/users", json={"email": email, "password": password, "name": "Ada"}
        )
        assert response.status_code == 201, response.text
        body: dict[str, str] = response.json()
        return body

    async def login(
        self, email: str = "ada@example.com", password: str = PASSWORD
    ) -> httpx.Response:
        return await self.client.post(
            "/api/auth/token", data={"username": email, "password": password}
        )

    async def token(self, email: str = "ada@example.com") -> str:
        await self.register(email)
        response = await self.login(email)
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token
