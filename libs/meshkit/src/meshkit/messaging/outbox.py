"""The writing side of the transactional outbox: a service's `outbox` table and the statements
that store an event with the change it describes (in the change's own statement, in its
transaction, or for a batch), so an event is never lost and never published for a change that
was rolled back. A unit of work (`meshkit.unit_of_work`) writes the rows and wakes this
process's relay (`meshkit.messaging.relay`) once they are committed; docs/events.md describes
the whole design and its guarantees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import (
    ARRAY,
    Column,
    ColumnElement,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    bindparam,
    cast,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.dml import Insert, Update
from sqlalchemy.sql.selectable import CTE
from sqlalchemy.types import TypeEngine

from meshkit.messaging.events import CloudEvent
from meshkit.messaging.tracing import trace_carrier

# The columns a writer fills, in this order: every statement below and its parameters
# (`outbox_<column>`) are derived from this list.
_WRITTEN_COLUMNS = ("id", "event_type", "event", "traceparent", "tracestate")
_PARAMETERS = tuple(f"outbox_{name}" for name in _WRITTEN_COLUMNS)

# One row's parameters, as `outbox_row` makes them.
OutboxRow = dict[str, Any]

_Statement = TypeVar("_Statement", Insert, Update)


def outbox_row(event: CloudEvent, *, trace: Mapping[str, str] | None = None) -> OutboxRow:
    """The parameters of `event`'s row, with the trace context it was caused in (default: the
    current one), so the relay's publish and everything after it join that trace. Services
    take it from `UnitOfWork.publish`, which wakes the relay once the row is committed."""
    carrier = trace_carrier() if trace is None else trace
    values = (
        event.id,
        event.type,
        # Serialised once here; stored as JSONB and sent on by the relay as this very text.
        event.model_dump_json(exclude_none=True),
        carrier.get("traceparent"),
        carrier.get("tracestate") or None,
    )
    return dict(zip(_PARAMETERS, values, strict=True))


def outbox_arrays(rows: Sequence[OutboxRow]) -> dict[str, list[Any]]:
    """The parameters of `Outbox.insert_rows`: each parameter of `rows` as one array."""
    return {name: [row[name] for row in rows] for name in _PARAMETERS}


# The event is written as the JSON text it was serialised to (`outbox_row`).
def _parameter_type(column: ColumnElement[Any]) -> TypeEngine[Any]:
    return Text() if isinstance(column.type, JSONB) else column.type


def _stored(column: ColumnElement[Any], value: ColumnElement[Any]) -> ColumnElement[Any]:
    return cast(value, JSONB) if isinstance(column.type, JSONB) else value


class Outbox:
    """A publishing service's `outbox` table, in the service's metadata, and the statements
    that write it, built once with values as parameters (SQLAlchemy computes each one's cache
    key once, where literal values would build and hash a new statement per event)."""

    def __init__(self, metadata: MetaData) -> None:
        self.table = Table(
            "outbox",
            metadata,
            Column("id", Uuid, primary_key=True, comment="The event id."),
            Column("event_type", String(100), nullable=False),
            Column("event", JSONB, nullable=False, comment="The CloudEvents envelope."),
            Column("traceparent", String(55)),
            Column("tracestate", String(512)),
            Column(
                "created_at", DateTime(timezone=True), nullable=False, server_default=func.now()
            ),
            Column(
                "next_attempt_at",
                DateTime(timezone=True),
                nullable=False,
                server_default=func.now(),
            ),
            Column("attempts", Integer, nullable=False, server_default="0"),
            Column("last_error", Text),
            Column("sent_at", DateTime(timezone=True)),
            Index("ix_outbox_pending", "next_attempt_at", postgresql_where=text("sent_at IS NULL")),
        )
        self._columns = [self.table.c[name] for name in _WRITTEN_COLUMNS]
        # INSERT … SELECT, because its columns are fixed: a plain INSERT in a CTE would take
        # more columns from the parameters of the statement it is attached to (`id`, …).
        values = select(
            *(
                _stored(column, bindparam(name, type_=_parameter_type(column)))
                for column, name in zip(self._columns, _PARAMETERS, strict=True)
            )
        )
        # One row (parameters: `outbox_row`), in the transaction of the change.
        self.insert: Insert = insert(self.table).from_select(self._columns, values)

    def with_row(self, statement: _Statement) -> _Statement:
        """`statement` writing its event's row as well (parameters: `outbox_row`), as a
        data-modifying CTE: the change and its event are one statement, atomic without a
        transaction (no BEGIN and COMMIT round trips)."""
        return statement.add_cte(self.insert.cte("outbox_row"))

    def insert_rows(self, changes: CTE, *, key: str) -> Insert:
        """A batch of rows (parameters: `outbox_arrays`), each with the key of the change it
        describes in the array parameter `key`; a row is written only if `changes`, the
        data-modifying CTE that stores the changes, returned its key (as its column `key`: e.g.
        the ids an `ON CONFLICT DO NOTHING` insert stored)."""
        stored = changes.c[key]
        rows = (
            func.unnest(
                *(
                    bindparam(name, type_=ARRAY(_parameter_type(column)))
                    for column, name in zip(self._columns, _PARAMETERS, strict=True)
                ),
                bindparam(key, type_=ARRAY(stored.type)),
            )
            .table_valued(*_WRITTEN_COLUMNS, "key")
            .render_derived()
        )
        values = select(*(_stored(column, rows.c[column.name]) for column in self._columns))
        return (
            insert(self.table)
            .from_select(self._columns, values.join_from(rows, changes, stored == rows.c.key))
            .add_cte(changes)
        )
