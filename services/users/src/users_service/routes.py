"""HTTP routes of the users service: validation and status codes only; rules live in `service`."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from meshkit.app import app_state
from meshkit.auth import CurrentPrincipal
from meshkit.fields import StorableStr
from meshkit.unit_of_work import UnitOfWorkDep
from users_service import service
from users_service.login_limits import LoginLimiter
from users_service.schemas import AccessToken, UserCreate, UserRead
from users_service.security import TokenIssuer

IssuerDep = Annotated[TokenIssuer, app_state("token_issuer")]
LimiterDep = Annotated[LoginLimiter, app_state("login_limiter")]

users = APIRouter(prefix="/api/users", tags=["users"])
auth = APIRouter(prefix="/api/auth", tags=["auth"])
internal = APIRouter(prefix="/internal/users", tags=["internal"], include_in_schema=False)


@users.post("", status_code=status.HTTP_201_CREATED, response_model=UserRead)
async def register(data: UserCreate, work: UnitOfWorkDep) -> Any:
    """Create an account. Emails are case-insensitive and unique."""
    return await service.register(work=work, data=data)


@users.get("/me", response_model=UserRead)
async def me(principal: CurrentPrincipal, work: UnitOfWorkDep) -> Any:
    """The caller's own account."""
    return await service.get_user(work=work, user_id=principal.user_id)


@users.get("/{user_id}", response_model=UserRead)
async def get_user(user_id: uuid.UUID, principal: CurrentPrincipal, work: UnitOfWorkDep) -> Any:
    """A user by id: only the caller's own id is visible; any other id is 404."""
    return await service.get_visible_user(work=work, user_id=user_id, caller_id=principal.user_id)


class _PasswordForm(OAuth2PasswordRequestForm):
    """OAuth2 password form with the contract's length bounds."""

    def __init__(
        self,
        username: Annotated[StorableStr, Form(min_length=1, max_length=320)],
        password: Annotated[StorableStr, Form(min_length=1, max_length=128)],
    ) -> None:
        super().__init__(username=username, password=password)


@auth.post("/token", response_model=AccessToken)
async def token(
    form: Annotated[_PasswordForm, Depends()],
    request: Request,
    work: UnitOfWorkDep,
    issuer: IssuerDep,
    limiter: LimiterDep,
) -> AccessToken:
    """OAuth2 password flow: `username` is the email. Failed attempts are rate limited."""
    issued = await service.login(
        work=work,
        limiter=limiter,
        issuer=issuer,
        email=form.username,
        password=form.password,
        client=request.client.host if request.client else None,
    )
    return AccessToken(access_token=issued.token, expires_in=issued.expires_in)


@auth.get("/jwks.json")
async def jwks(issuer: IssuerDep) -> dict[str, Any]:
    """Public keys that verify access tokens (JWKS, RFC 7517)."""
    return issuer.jwks


@internal.get("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def user_exists(user_id: uuid.UUID, work: UnitOfWorkDep) -> Response:
    """For other services: does this user exist? 204 or 404, no body. Not routed by the
    gateway."""
    await service.ensure_exists(work=work, user_id=user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


routers = (users, auth, internal)
