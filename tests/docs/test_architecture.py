"""docs/architecture.md walks one order through the code; every step it names must exist."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
# A step of the walk: "12. `package.module:Name.attribute` — what happens there".
_STEP = re.compile(r"^(\d+)\. `([\w.]+):([\w.]+)`", re.MULTILINE)


def _steps() -> list[tuple[int, str, str]]:
    return [(int(n), module, name) for n, module, name in _STEP.findall(ARCHITECTURE.read_text())]


def test_the_walk_is_numbered_in_order() -> None:
    numbers = [number for number, _, _ in _steps()]
    assert numbers, "docs/architecture.md names no step"
    assert numbers == list(range(1, len(numbers) + 1))


@pytest.mark.parametrize(
    ("module", "name"), [(module, name) for _, module, name in _steps()], ids=str
)
def test_each_named_function_exists(module: str, name: str) -> None:
    found: object = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    assert callable(found), f"{module}:{name} is not a function"
