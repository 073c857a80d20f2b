"""The gunicorn configuration's worker hooks."""

from __future__ import annotations

import subprocess
import sys

FROZEN_AFTER_WORKER_INIT = """
import gc
import weakref
from meshkit import gunicorn_conf
assert gc.get_freeze_count() == 0
class Node:
    pass
garbage = Node()
garbage.cycle = garbage  # unreachable once the name is gone, freed only by a collection
freed = weakref.ref(garbage)
del garbage
gunicorn_conf.post_worker_init(None)
print(gc.get_freeze_count(), freed() is None)
"""


def test_a_started_worker_freezes_its_start_up_objects_after_collecting_its_garbage() -> None:
    # In a fresh interpreter: freezing is for the life of the process.
    done = subprocess.run(
        [sys.executable, "-c", FROZEN_AFTER_WORKER_INIT],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    frozen, garbage_freed = done.stdout.split()
    assert int(frozen) > 10_000  # the imported modules and everything they built
    assert garbage_freed == "True"  # collected before the freeze, not kept forever
