"""Dead-letter tool: `python -m notifications_service.dlq list | replay (--all | ID...)`.

`list` shows the messages in `<queue>.dlq` without removing them. `replay` republishes the
chosen ones (by event id) to `mesh.events` with their original routing key (the event type),
with publisher confirms, and removes each from the DLQ only after its publish is confirmed.
Fix the cause first (a bug, a missing column): a replayed message that fails again returns
to the DLQ through the delivery limit. RABBITMQ_URL and EVENTS_QUEUE as for the service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage

from meshkit.messaging import EVENTS_EXCHANGE, declare_exchanges
from notifications_service.settings import NotificationsSettings

# Broker bookkeeping that must not travel with a replayed message.
_BROKER_HEADERS = ("x-death", "x-delivery-count", "x-first-death-", "x-last-death-")


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    routing_key: str
    reason: str
    deaths: int
    body: str


def describe(message: AbstractIncomingMessage) -> DeadLetter:
    headers: dict[str, Any] = dict(message.headers or {})
    deaths = headers.get("x-death") or []
    first = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
    routing_keys = first.get("routing-keys") or [message.routing_key or ""]
    reason = headers.get("x-first-death-reason") or first.get("reason") or "unknown"
    return DeadLetter(
        message_id=message.message_id or "",
        routing_key=message.type or str(routing_keys[0]),
        reason=reason.decode() if isinstance(reason, bytes) else str(reason),
        deaths=sum(int(d.get("count", 1)) for d in deaths if isinstance(d, dict)),
        body=message.body.decode(errors="replace"),
    )


async def _fetch_all(queue: aio_pika.abc.AbstractQueue) -> list[AbstractIncomingMessage]:
    """Takes every message without acking; the ones not acked return on channel close."""
    messages = []
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        messages.append(message)
    return messages


async def list_dead_letters(url: str, queue_name: str) -> list[DeadLetter]:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(f"{queue_name}.dlq", ensure=True)
        return [describe(m) for m in await _fetch_all(queue)]


async def replay(url: str, queue_name: str, ids: Sequence[str] | None) -> list[str]:
    """Replays the messages with these ids (all if None); returns the replayed ids."""
    connection = await aio_pika.connect(url)
    replayed: list[str] = []
    async with connection:
        channel = await connection.channel()
        publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_exchanges(publish_channel)
        exchange = await publish_channel.get_exchange(EVENTS_EXCHANGE)
        queue = await channel.get_queue(f"{queue_name}.dlq", ensure=True)
        for message in await _fetch_all(queue):
            dead = describe(message)
            if ids is not None and dead.message_id not in ids:
                continue
            headers = {
                k: v
                for k, v in (message.headers or {}).items()
                if not k.startswith(_BROKER_HEADERS)
            }
            await exchange.publish(
                aio_pika.Message(
                    body=message.body,
                    headers=headers,
                    content_type=message.content_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=message.message_id,
                    type=message.type,
                    timestamp=message.timestamp,
                    app_id=message.app_id,
                ),
                routing_key=dead.routing_key,
                mandatory=True,
            )
            await message.ack()
            replayed.append(dead.message_id)
    return replayed


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m notifications_service.dlq", description=__doc__
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="show the dead-lettered messages (JSON lines)")
    replay_parser = commands.add_parser("replay", help="republish dead-lettered messages")
    chosen = replay_parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--all", action="store_true", help="every message in the DLQ")
    chosen.add_argument("ids", nargs="*", default=[], help="event ids (message ids)")
    args = parser.parse_args(argv)
    ids = None if args.command == "list" or args.all else list(args.ids)
    if ids is not None and not ids:
        parser.error("name the event ids to replay, or --all")
    settings = NotificationsSettings()
    url, queue = settings.rabbitmq_url, settings.events_queue
    try:
        if args.command == "list":
            for dead in asyncio.run(list_dead_letters(url, queue)):
                out.write(json.dumps(dead.__dict__) + "\n")
            return 0
        done = asyncio.run(replay(url, queue, ids))
    except aiormq.exceptions.ChannelNotFoundEntity:
        out.write(
            f"no queue {queue}.dlq at this RABBITMQ_URL: the notifications service declares it "
            "when it starts\n"
        )
        return 1
    out.write(f"replayed {len(done)} message(s): {' '.join(done)}\n")
    missing = sorted(set(ids or ()) - set(done))
    if missing:
        out.write(f"not in the DLQ: {' '.join(missing)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
