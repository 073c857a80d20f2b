"""Request and response bodies of the users API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field

from meshkit.fields import StorableStr


def _lower(value: str) -> str:
    return value.lower()


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Annotated[EmailStr, AfterValidator(_lower)] = Field(max_length=320)
    password: StorableStr = Field(min_length=8, max_length=128)
    name: StorableStr = Field(min_length=1, max_length=100)


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    name: str
    created_at: datetime


class AccessToken(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type
    expires_in: int = Field(description="Seconds until the token expires.")
