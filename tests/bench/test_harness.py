"""The benchmark harness's own logic, without a mesh: the order of interleaved windows, how
windows combine into a figure, and that the committed report is what the report code renders
from the committed figures."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # The bench is a directory of scripts (`make bench` runs it from there), not a package.
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("mesh_bench")


async def test_windows_alternate_palindromically_and_combine(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    loadgen = importlib.import_module("loadgen")
    measured: list[str] = []
    warmed_up: list[str] = []
    cpu = {1: 0.0, 2: 0.0, 3: 0.0}
    rates = {
        "a": iter([100.0, 300.0, 110.0]),
        "b": iter([50.0, 70.0, 60.0]),
        "c": iter([10.0, 30.0, 20.0]),
    }

    def fake_wrk(url: str, *, seconds: int, connections: int, **load: Any) -> Any:
        assert connections == bench.CONNECTIONS
        assert load == {"headers": {"X-Target": url}}
        if seconds == bench.WARM_UP_SECONDS:
            warmed_up.append(url)
            return None  # warm-ups are not counted
        assert seconds == bench.WINDOW_SECONDS
        measured.append(url)
        rate = next(rates[url])
        for pid in (1, 2, 3):
            cpu[pid] += 0.5
        return loadgen.LoadResult(
            requests_per_second=rate,
            requests=int(rate * seconds),
            p50_ms=rate / 10,
            p99_ms=rate,
            errors=1 if url == "c" else 0,
        )

    monkeypatch.setattr(bench, "ROUNDS", 3)
    monkeypatch.setattr(bench, "wrk", fake_wrk)
    monkeypatch.setattr(bench, "cpu_seconds", lambda pid: cpu[pid])
    settled: list[str] = []

    async def settle_b() -> None:
        settled.append(measured[-1])

    def target(name: str, pid: int, settle: Any = None) -> Any:
        return bench.Target(name, {f"process{pid}": pid}, {"headers": {"X-Target": name}}, settle)

    figures = await bench.interleaved(
        {"a": target("a", 1), "b": target("b", 2, settle_b), "c": target("c", 3)}
    )

    assert measured == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert warmed_up == ["a", "b", "c"]  # once each, before its first window
    assert settled == ["b", "b", "b"]  # after each of its own windows, and only those
    a = figures["a"]
    assert a["windows_requests_per_second"] == [100.0, 300.0, 110.0]
    # Medians, not means: one fast (or slow) window does not move the figure.
    assert a["requests_per_second"] == 110.0
    assert (a["p50_ms"], a["p99_ms"]) == (11.0, 110.0)
    assert a["requests"] == 510 * bench.WINDOW_SECONDS
    # Three windows of 0.5 CPU-s each over all the requests of the three windows.
    assert a["cpu_ms_per_request"] == {"process1": round(1500 / (510 * bench.WINDOW_SECONDS), 3)}
    assert figures["c"]["errors"] == 3
    assert figures["b"]["errors"] == 0


def test_committed_report_is_rendered_from_its_figures(bench: ModuleType) -> None:
    report_module = importlib.import_module("report")
    report = json.loads((BENCH / "results" / "latest.json").read_text())
    ratios, targets = report_module.ratios_and_targets(report["figures"])
    assert ratios == report["ratios"]
    assert targets == report["targets"]
    assert report_module.markdown(report) == (BENCH / "results" / "latest.md").read_text()
