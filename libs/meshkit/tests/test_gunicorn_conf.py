"""The gunicorn configuration's worker hooks."""

from __future__ import annotations

import os
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
print(gc.get_freeze_count(), freed() is None, gc.get_threshold()[0])
"""


def _started_worker(**env: str) -> list[str]:
    # In a fresh interpreter: freezing and thresholds are for the life of the process.
    done = subprocess.run(
        [sys.executable, "-c", FROZEN_AFTER_WORKER_INIT],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**{k: v for k, v in os.environ.items() if k != "GC_YOUNG_THRESHOLD"}, **env},
    )
    return done.stdout.split()


def test_a_started_worker_freezes_its_start_up_objects_after_collecting_its_garbage() -> None:
    frozen, garbage_freed, young_threshold = _started_worker()
    assert int(frozen) > 10_000  # the imported modules and everything they built
    assert garbage_freed == "True"  # collected before the freeze, not kept forever
    assert int(young_threshold) == 10_000  # Python's default is 700


def test_the_young_collection_threshold_comes_from_the_environment() -> None:
    *_, young_threshold = _started_worker(GC_YOUNG_THRESHOLD="700")
    assert young_threshold == "700"
