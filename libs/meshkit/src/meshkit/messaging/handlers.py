"""Typed event handlers: each event type's payload model and handler, registered once.

The registry is what a consumer dispatches to and what its queue is bound to, so the two cannot
drift apart. Dispatching an event no handler takes, or whose `data` its payload model refuses,
raises `MalformedEventError`: the consumer dead-letters that message alone, with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from meshkit.messaging.consumer import MalformedEventError
from meshkit.messaging.events import CloudEvent

P = TypeVar("P", bound=BaseModel)
R = TypeVar("R")

# A handler gets the envelope (id, subject, ...) and its `data` validated into its payload model.
EventHandler = Callable[[CloudEvent, P], R]


class EventHandlers(Generic[R]):
    """Event type → (payload model, handler), each handler returning an `R`."""

    def __init__(self, *, wildcards: Iterable[str] = ()) -> None:
        """`wildcards`: topic patterns (`*` is one word) to bind instead of the event types
        they cover, so the queue also receives the types no handler takes (dead-lettered)."""
        self._handlers: dict[str, tuple[type[BaseModel], EventHandler[Any, R]]] = {}
        self._wildcards = {
            pattern: re.compile(re.escape(pattern).replace(r"\*", r"[^.]+"))
            for pattern in wildcards
        }

    def on(
        self, event_type: str, payload: type[P]
    ) -> Callable[[EventHandler[P, R]], EventHandler[P, R]]:
        """Registers the decorated function as the handler of `event_type`."""

        def register(handler: EventHandler[P, R]) -> EventHandler[P, R]:
            if event_type in self._handlers:
                raise ValueError(f"{event_type} already has a handler")
            self._handlers[event_type] = (payload, handler)
            return handler

        return register

    @property
    def bindings(self) -> tuple[str, ...]:
        """The routing keys a queue of these handlers is bound to: each event type, or the
        wildcard that covers it. A wildcard that covers no handled type is an error."""
        keys = {
            next((p for p, regex in self._wildcards.items() if regex.fullmatch(t)), t): None
            for t in self._handlers
        }
        if unused := [p for p in self._wildcards if p not in keys]:
            raise ValueError(f"wildcards covering no handled event type: {', '.join(unused)}")
        return tuple(keys)

    def dispatch(self, event: CloudEvent) -> R:
        """The result of the event's handler, given its validated payload."""
        try:
            payload, handler = self._handlers[event.type]
        except KeyError:
            raise MalformedEventError(f"no handler for events of type {event.type}") from None
        try:
            data = payload.model_validate(event.data)
        except ValidationError as exc:
            raise MalformedEventError(f"{event.type} {event.id}: {exc}") from exc
        return handler(event, data)
