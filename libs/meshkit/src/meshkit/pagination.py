"""Keyset ("cursor") pagination, newest first, with opaque cursors.

A cursor encodes the (created_at, id) of the last item seen; the next page holds items strictly
older than it. Unlike offsets, pages neither skip nor repeat rows when new rows arrive.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, Table, select, tuple_
from sqlalchemy import Row as ResultRow
from sqlalchemy.ext.asyncio import AsyncConnection

from meshkit.problems import UnprocessableError

T = TypeVar("T")
Item = TypeVar("Item")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null at the end."
    )


@dataclass(frozen=True, slots=True)
class Cursor:
    created_at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        raw = json.dumps({"t": self.created_at.isoformat(), "i": str(self.id)}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            data = json.loads(raw)
            created_at = datetime.fromisoformat(data["t"])
            if created_at.tzinfo is None:
                raise ValueError("naive timestamp")
            return cls(created_at=created_at, id=uuid.UUID(data["i"]))
        except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise UnprocessableError(
                "The cursor is not valid; use a `next_cursor` as given.",
                loc=("query", "cursor"),
                error_type="cursor_invalid",
            ) from exc


@dataclass(frozen=True, slots=True)
class PageParams:
    limit: int
    cursor: Cursor | None


def page_params(
    limit: Annotated[int, Query(ge=1, le=100, description="Items per page.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=512, description="`next_cursor` of the previous page.")
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, cursor=Cursor.decode(cursor) if cursor else None)


PageParamsDep = Annotated[PageParams, Depends(page_params)]


async def newest_first(
    connection: AsyncConnection, table: Table, *where: ColumnElement[bool], params: PageParams
) -> Sequence[ResultRow[Any]]:
    """`table`'s rows matching `where`, newest first (`created_at`, then `id`), after the
    cursor's: one row more than the page, so that `build_page` knows if another follows."""
    created_at, id_ = table.c.created_at, table.c.id
    statement = select(table).where(*where)
    if params.cursor is not None:
        statement = statement.where(
            tuple_(created_at, id_) < tuple_(params.cursor.created_at, params.cursor.id)
        )
    page = statement.order_by(created_at.desc(), id_.desc()).limit(params.limit + 1)
    return (await connection.execute(page)).all()


def build_page(
    rows: Sequence[ResultRow[Any]], *, params: PageParams, to_item: Callable[[ResultRow[Any]], Item]
) -> Page[Item]:
    """The page of `newest_first`'s rows, its cursor the last row's (`created_at`, `id`)."""
    visible = rows[: params.limit]
    last = visible[-1] if len(rows) > params.limit and visible else None
    return Page[Item](
        items=[to_item(row) for row in visible],
        next_cursor=Cursor(last.created_at, last.id).encode() if last is not None else None,
    )
