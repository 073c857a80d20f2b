"""HTTP and WebSocket routes of the notifications service; rules live in `service`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import ExitStack
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, WebSocket, status
from fastapi.sse import EventSourceResponse, ServerSentEvent

from meshkit.app import app_state
from meshkit.auth import CurrentPrincipal, InvalidTokenError, TokenVerifier
from meshkit.concurrency import first_completed
from meshkit.pagination import Page, PageParamsDep
from meshkit.problems import ProblemError
from meshkit.unit_of_work import UnitOfWorkDep
from notifications_service import service
from notifications_service.push import END_OF_STREAM, PushHub, Subscription, TooManyStreamsError
from notifications_service.schemas import NotificationRead

POLICY_VIOLATION = status.WS_1008_POLICY_VIOLATION
# How long a client over the stream cap is asked to wait (the gateway's lease life).
STREAM_RETRY_AFTER = "30"


async def _subscription(
    principal: CurrentPrincipal, hub: Annotated[PushHub, app_state("push_hub")]
) -> AsyncIterator[Subscription]:
    # Subscribed before the response starts, so nothing published after the client has
    # seen the headers can be missed; unsubscribed when the stream ends.
    subscription = ExitStack()
    try:
        queue = subscription.enter_context(hub.subscribe(principal.user_id, "sse"))
    except TooManyStreamsError as exc:
        raise _too_many_streams(exc) from None
    with subscription:
        yield queue


def _too_many_streams(exc: TooManyStreamsError) -> ProblemError:
    return ProblemError(
        f"Too many open streams: one user may hold {exc.limit} event streams and WebSockets "
        "at once; close one before opening another.",
        status=status.HTTP_429_TOO_MANY_REQUESTS,
        headers={"Retry-After": STREAM_RETRY_AFTER},
    )


notifications = APIRouter(prefix="/api/notifications", tags=["notifications"])


@notifications.get("", response_model=Page[NotificationRead])
async def list_notifications(
    principal: CurrentPrincipal, work: UnitOfWorkDep, params: PageParamsDep
) -> Page[NotificationRead]:
    """The caller's notifications, newest first."""
    return await service.list_notifications(work=work, user_id=principal.user_id, params=params)


@notifications.get("/stream", response_class=EventSourceResponse)
async def stream(
    subscription: Annotated[Subscription, Depends(_subscription)],
) -> AsyncIterable[ServerSentEvent]:
    """Server-sent events: each new notification of the caller as `event: notification`,
    `id: <notification id>`, `data: <notification JSON>`; keep-alive comments every 15 s."""
    yield ServerSentEvent(comment="subscribed")
    while (notification := await subscription.get()) is not END_OF_STREAM:
        yield ServerSentEvent(event="notification", id=str(notification.id), data=notification)


@notifications.post("/{notification_id}/read", response_model=NotificationRead)
async def mark_read(
    notification_id: uuid.UUID, principal: CurrentPrincipal, work: UnitOfWorkDep
) -> Any:
    """Mark one of the caller's notifications as read."""
    return await service.mark_read(
        work=work, notification_id=notification_id, user_id=principal.user_id
    )


@notifications.websocket("/ws")
async def websocket_stream(
    websocket: WebSocket,
    access_token: Annotated[str | None, Query(max_length=4096)] = None,
) -> None:
    """One JSON text frame per new notification of the caller; a bad token closes with 1008."""
    # Accepted first: a close before the handshake completes reaches the client as HTTP 403,
    # and the contract promises the WebSocket close code 1008.
    await websocket.accept()
    verifier: TokenVerifier = websocket.app.state.token_verifier
    try:
        principal = await verifier.verify(access_token or "")
    except InvalidTokenError:
        await websocket.close(code=POLICY_VIOLATION, reason="invalid access token")
        return
    except ProblemError:  # the keys to verify with cannot be fetched right now
        await websocket.close(code=status.WS_1013_TRY_AGAIN_LATER, reason="try again later")
        return
    hub: PushHub = websocket.app.state.push_hub
    subscription = ExitStack()
    try:
        queue = subscription.enter_context(hub.subscribe(principal.user_id, "websocket"))
    except TooManyStreamsError as exc:
        reason = f"too many open streams (at most {exc.limit} per user)"
        await websocket.close(code=POLICY_VIOLATION, reason=reason)
        return
    with subscription:

        async def forward() -> None:
            while (notification := await queue.get()) is not END_OF_STREAM:
                await websocket.send_text(notification.model_dump_json())
            await websocket.close(code=status.WS_1001_GOING_AWAY)

        async def until_closed() -> None:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass

        try:
            await first_completed(forward(), until_closed())
        except* Exception:  # noqa: S110 - a client gone mid-send ends the stream as a close does
            pass


routers = (notifications,)
