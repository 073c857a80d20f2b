"""Processes that must not outlive the process that started them.

A gunicorn worker whose master was SIGKILLed goes on serving on the listening socket it
inherited (the uvicorn worker does not watch its parent), and so does a master whose
supervisor died: the port stays taken until someone finds the orphans. On Linux the kernel can
signal a child when its parent exits (`prctl(PR_SET_PDEATHSIG)`); elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
# Loaded once, before any fork: `die_with_parent` also runs between fork and exec.
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(parent: int, sig: signal.Signals = signal.SIGTERM) -> None:
    """Have the kernel send `sig` to this process when `parent` (its parent now) exits.

    The kernel watches the parent *thread* that forked: call it in a child forked by the
    parent's main thread. If the parent is already gone, the signal is sent at once.
    """
    if _libc is None:
        return
    if _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    if os.getppid() != parent:  # it exited between our fork and the prctl
        os.kill(os.getpid(), sig)
