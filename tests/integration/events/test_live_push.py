"""SSE and WebSocket clients get their own notifications as they happen, never anyone else's."""

from __future__ import annotations

import httpx
import pytest
import websockets.asyncio.client
from websockets.exceptions import ConnectionClosed

from meshdev.customers import Customer
from meshdev.stack import RunningMesh

# The contract's promise for live delivery, from the order's 201 to the client.
LIVE_WITHIN_SECONDS = 2.0


async def test_sse_and_websocket_receive_their_users_order_and_nobody_elses(
    mesh: RunningMesh, http: httpx.AsyncClient
) -> None:
    alice = await Customer.register(mesh, http)
    bob = await Customer.register(mesh, http)
    for customer in (alice, bob):  # welcome notifications are out of the way
        await customer.notifications_of("user.registered", 1)

    async with alice.sse() as alice_sse, alice.websocket() as alice_ws, bob.sse() as bob_sse:
        order = (await alice.place_order()).json()
        for stream in (alice_sse, alice_ws):
            notification = await stream.next(within=LIVE_WITHIN_SECONDS)
            assert notification["type"] == "order.created"
            assert notification["user_id"] == alice.id
            assert order["id"][:8] in notification["message"]

        bob_order = (await bob.place_order()).json()
        first_for_bob = await bob_sse.next(within=LIVE_WITHIN_SECONDS)
        assert first_for_bob["user_id"] == bob.id
        assert bob_order["id"][:8] in first_for_bob["message"]

    assert [n["user_id"] for n in alice_sse.received + alice_ws.received] == [alice.id] * 2
    assert [n["user_id"] for n in bob_sse.received] == [bob.id]


@pytest.mark.parametrize("token", ["", "not-a-jwt", "eyJhbGciOiJFZERTQSJ9.e30.c2ln"])
async def test_websocket_with_a_bad_token_is_closed_with_1008(
    mesh: RunningMesh, token: str
) -> None:
    base = mesh.url("notifications").replace("http://", "ws://", 1)
    async with websockets.asyncio.client.connect(
        f"{base}/api/notifications/ws?access_token={token}"
    ) as socket:
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008


async def test_sse_without_a_token_is_401(mesh: RunningMesh, http: httpx.AsyncClient) -> None:
    response = await http.get(f"{mesh.url('notifications')}/api/notifications/stream")

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
