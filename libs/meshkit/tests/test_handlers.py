"""Typed event handlers: dispatch to the event type's handler with its validated payload, and
`MalformedEventError` (the consumer's way to the DLQ) for what no handler can take."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel

from meshkit.messaging import CloudEvent, EventHandlers, MalformedEventError


class Greeting(BaseModel):
    name: str


class Parcel(BaseModel):
    weight: int


handlers: EventHandlers[str] = EventHandlers(wildcards=("parcel.*",))


@handlers.on("user.greeted", Greeting)
def _greeted(event: CloudEvent, greeting: Greeting) -> str:
    return f"hello {greeting.name} ({event.subject})"


@handlers.on("parcel.sent", Parcel)
def _sent(event: CloudEvent, parcel: Parcel) -> str:
    if parcel.weight < 0:
        raise MalformedEventError("a parcel weighs something")
    return f"{parcel.weight} g sent"


@handlers.on("parcel.sent.twice", Parcel)
def _sent_twice(event: CloudEvent, parcel: Parcel) -> str:
    return f"{parcel.weight} g sent twice"


def _event(event_type: str, **data: object) -> CloudEvent:
    return CloudEvent(source="test", type=event_type, subject="u1", data=data)


def test_an_event_goes_to_its_types_handler_with_its_data_validated() -> None:
    assert handlers.dispatch(_event("user.greeted", name="Ada")) == "hello Ada (u1)"
    assert handlers.dispatch(_event("parcel.sent", weight="250")) == "250 g sent"


def test_an_event_of_a_type_without_handler_is_malformed() -> None:
    with pytest.raises(
        MalformedEventError, match=re.escape("no handler for events of type parcel.lost")
    ):
        handlers.dispatch(_event("parcel.lost", weight=1))


def test_data_the_payload_model_refuses_is_malformed_with_the_reason() -> None:
    event = _event("parcel.sent", weight="heavy")
    with pytest.raises(MalformedEventError) as raised:
        handlers.dispatch(event)
    assert str(raised.value).startswith(f"parcel.sent {event.id}: 1 validation error")
    assert "weight" in str(raised.value)


def test_a_handler_can_refuse_an_event_as_malformed() -> None:
    with pytest.raises(MalformedEventError, match="a parcel weighs something"):
        handlers.dispatch(_event("parcel.sent", weight=-1))


def test_a_type_has_one_handler() -> None:
    with pytest.raises(ValueError, match=re.escape("user.greeted already has a handler")):
        handlers.on("user.greeted", Greeting)(_greeted)


def test_bindings_are_the_handled_types_or_the_wildcard_covering_them() -> None:
    # `*` is one word, as for the broker: `parcel.sent.twice` needs a binding of its own.
    assert handlers.bindings == ("user.greeted", "parcel.*", "parcel.sent.twice")


def test_a_wildcard_that_covers_no_handled_type_is_refused() -> None:
    unused: EventHandlers[str] = EventHandlers(wildcards=("order.*", "user.*"))
    unused.on("user.greeted", Greeting)(_greeted)
    with pytest.raises(ValueError, match=re.escape("covering no handled event type: order.*")):
        _ = unused.bindings
