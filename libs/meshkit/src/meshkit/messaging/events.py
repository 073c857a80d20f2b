"""The event envelope: CloudEvents 1.0 structured JSON, carried as one AMQP message.

The AMQP properties the contract lists (persistent, `message_id` = event id, `type` = event
type, `content_type = application/cloudevents+json`) and the W3C trace headers are set here, in
one place, for every publisher.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import aio_pika
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

EVENTS_EXCHANGE = "mesh.events"
DEAD_LETTER_EXCHANGE = "mesh.dlx"
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"
TRACE_HEADERS = ("traceparent", "tracestate")


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event in structured JSON mode; `data` is the event type's payload."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    source: str = Field(min_length=1, description="The service that emitted the event.")
    type: str = Field(min_length=1, max_length=100, description="Also the routing key.")
    time: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str = Field(min_length=1, description="The id of the user the event concerns.")
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any]


def to_message(event: CloudEvent, *, trace_headers: Mapping[str, str]) -> aio_pika.Message:
    """The AMQP message for an event, with the trace context of the span that publishes it."""
    return event_message(
        event.model_dump_json(exclude_none=True).encode(),
        event_id=str(event.id),
        event_type=event.type,
        source=event.source,
        time=event.time,
        trace_headers=trace_headers,
    )


def event_message(
    body: bytes,
    *,
    event_id: str,
    event_type: str,
    source: str,
    time: datetime,
    trace_headers: Mapping[str, str],
) -> aio_pika.Message:
    """The AMQP message carrying an event already serialised (the outbox stores it so, and the
    relay sends it on without parsing it again)."""
    return aio_pika.Message(
        body=body,
        content_type=CLOUDEVENTS_CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event_id,
        type=event_type,
        timestamp=time,
        app_id=source,
        headers={k: v for k, v in trace_headers.items() if k in TRACE_HEADERS},
    )
