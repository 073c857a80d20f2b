"""Knowing that the server is stopping *before* it waits for open connections to finish.

uvicorn waits for every response in progress before it runs the lifespan shutdown, and an SSE
stream never finishes by itself: without this, a worker with open streams would hang until
gunicorn kills it, skipping the graceful stop of its consumers and relay.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def on_termination(callback: Callable[[], None]) -> Iterator[None]:
    """Runs `callback` on the event loop when SIGTERM/SIGINT arrives, then lets the server's own
    handler (installed before the lifespan starts) do its usual work."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals can only be handled in the main thread
        return
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in TERMINATION_SIGNALS}

    def handle(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        chained = previous[signal.Signals(signum)]
        if callable(chained):
            chained(signum, frame)

    for sig in TERMINATION_SIGNALS:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
