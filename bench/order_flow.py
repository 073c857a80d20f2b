"""Order → notification latency at a fixed rate, seen by a customer on the SSE stream.

An open-loop loader (`loadgen.paced`: each order is sent on its schedule whether or not earlier
ones have answered, so a slow mesh cannot slow the offered rate down) posts orders through the
gateway while one SSE stream of the same customer, also through the gateway, records when each
order's notification arrives. wrk cannot hold a stream open and correlate it with its
requests, so this part is Python (aiohttp, which keeps the loader's own cost low).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from loadgen import paced, percentile

ORDER_BODY = {"items": [{"sku": "bench-sku", "quantity": 2, "unit_price_cents": 1250}]}


@dataclass
class _Timings:
    sent: dict[str, float] = field(default_factory=dict)  # order id prefix -> request sent
    answered: dict[str, float] = field(default_factory=dict)  # order id prefix -> 201 received
    notified: dict[str, float] = field(default_factory=dict)  # order id prefix -> SSE event
    request_ms: list[float] = field(default_factory=list)
    failed: int = 0
    events_on_stream: int = 0  # every `data:` line, ours or not (tells a silent stream apart)


def _order_prefix(message: str) -> str | None:
    """Notifications say "Your order 1a2b3c4d was placed …": the first 8 hex digits of its id."""
    words = message.split()
    if len(words) > 2 and words[0] == "Your" and words[1] == "order":
        return words[2]
    return None


async def _listen(
    session: aiohttp.ClientSession, url: str, timings: _Timings, ready: asyncio.Event
) -> None:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
        response.raise_for_status()
        ready.set()
        async for raw in response.content:
            line = raw.decode().rstrip("\r\n")
            if not line.startswith("data:"):
                continue
            arrived = time.perf_counter()
            timings.events_on_stream += 1
            prefix = _order_prefix(json.loads(line[5:].strip()).get("message", ""))
            if prefix is not None:
                timings.notified.setdefault(prefix, arrived)


async def _order(session: aiohttp.ClientSession, url: str, timings: _Timings) -> None:
    started = time.perf_counter()
    try:
        async with session.post(url, json=ORDER_BODY) as response:
            body = await response.json(content_type=None)
            answered = time.perf_counter()
            if response.status != 201:
                timings.failed += 1
                return
    except (aiohttp.ClientError, TimeoutError):
        timings.failed += 1
        return
    prefix = str(body["id"])[:8]
    timings.sent[prefix] = started
    timings.answered[prefix] = answered
    timings.request_ms.append((answered - started) * 1000)


async def order_to_notification(
    gateway_url: str,
    token: str,
    *,
    rate: float,
    seconds: float,
    warm_up: float = 2.0,
    grace: float = 5.0,
) -> dict[str, Any]:
    """Posts `rate` orders/s for `warm_up` + `seconds` without a pause, measures the orders of
    the last `seconds` (the first ones pay for new connections, like every other figure's
    warm-up), and waits at most `grace` s for the stragglers."""
    timings = _Timings()
    warming = _Timings()  # the warm-up's orders: sent alike, never counted
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout) as s:
        ready = asyncio.Event()
        listener = asyncio.create_task(
            _listen(s, f"{gateway_url}/api/notifications/stream", timings, ready)
        )
        try:
            await asyncio.wait_for(ready.wait(), 10)
            warm_up_count = int(rate * warm_up)
            count = int(rate * seconds)
            start = time.perf_counter()
            orders = []
            async for index in paced(rate, warm_up_count + count):
                if index == warm_up_count:
                    start = time.perf_counter()
                into = warming if index < warm_up_count else timings
                orders.append(asyncio.create_task(_order(s, f"{gateway_url}/api/orders", into)))
            offered_seconds = time.perf_counter() - start
            await asyncio.wait(orders, timeout=grace + 10)
            for _ in range(int(grace / 0.05)):
                if set(timings.sent) <= set(timings.notified):
                    break
                await asyncio.sleep(0.05)
        finally:
            listener.cancel()
            (outcome,) = await asyncio.gather(listener, return_exceptions=True)
    stream_error = (
        repr(outcome)
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError)
        else None
    )

    from_request = [
        (timings.notified[k] - v) * 1000 for k, v in timings.sent.items() if k in timings.notified
    ]
    from_answer = [
        (timings.notified[k] - v) * 1000
        for k, v in timings.answered.items()
        if k in timings.notified
    ]
    by_second: dict[int, list[float]] = {}
    for key, sent in timings.sent.items():
        if key in timings.notified:
            by_second.setdefault(int(sent - start), []).append(
                (timings.notified[key] - sent) * 1000
            )
    return {
        "offered_orders_per_second": rate,
        "warm_up_seconds": warm_up,
        "warm_up_orders_failed": warming.failed,
        "achieved_orders_per_second": round(count / offered_seconds, 1),
        "orders": count,
        "orders_created": len(timings.sent),
        "orders_failed": timings.failed,
        "stream_error": stream_error,  # the SSE stream ended before the measurement did
        "events_on_stream": timings.events_on_stream,
        "notifications_seen": len(from_request),
        "notifications_missing": len(timings.sent) - len(from_request),
        "order_request_p50_ms": round(percentile(timings.request_ms, 0.5), 2),
        "order_request_p99_ms": round(percentile(timings.request_ms, 0.99), 2),
        # From the moment the order is sent (what the customer waits for, the target's figure).
        "p50_ms": round(percentile(from_request, 0.5), 2),
        "p99_ms": round(percentile(from_request, 0.99), 2),
        # From the moment the 201 is received (the asynchronous part alone).
        "after_201_p50_ms": round(percentile(from_answer, 0.5), 2),
        "after_201_p99_ms": round(percentile(from_answer, 0.99), 2),
        # Slowest order → notification of each second: a stall shows as one bad second.
        "max_ms_by_second": [round(max(by_second[s]), 1) for s in sorted(by_second)],
    }
