"""The benchmark harness's own logic, without a mesh: the order of interleaved windows, how
windows combine into a figure, that the committed report is what the report code renders from
the committed figures, and that the bare Python hop it measures beside the gateway is a proxy."""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from aiohttp import web

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


def test_busy_cores_groups_the_machines_processes(bench: ModuleType) -> None:
    loadgen = importlib.import_module("loadgen")
    ticks = loadgen.CLOCK_TICKS

    def reading(at: float, **processes: tuple[int, str, int, int]) -> Any:
        return loadgen.MachineCpu(
            {
                pid: loadgen.ProcessCpu(name=name, started=started, ticks=seconds * ticks)
                for pid, name, started, seconds in processes.values()
            },
            at=at,
        )

    me = os.getpid()
    before = reading(
        100.0,
        master=(10, "gunicorn", 1, 0),  # the orders master …
        worker=(11, "gunicorn", 2, 1),  # … and its worker
        backend=(20, "postgres", 3, 5),
        broker=(30, "beam.smp", 4, 2),
        kernel=(40, "kworker/0:1-events", 5, 100),  # renames itself by the work it does
        ended=(50, "postgres", 6, 9),  # ends; its pid comes back as another program
        loader=(me, "python", 7, 3),
    )
    after = reading(
        102.0,
        master=(10, "gunicorn", 1, 0),
        worker=(11, "gunicorn", 2, 3),
        backend=(20, "postgres", 3, 6),
        new_backend=(21, "postgres", 90, 1),  # started in between
        broker=(30, "beam.smp", 4, 3),
        kernel=(40, "kworker/0:1-mm_percpu_wq", 5, 101),
        reused=(50, "sh", 95, 1),
        loader=(me, "python", 7, 4),
    )
    cores = loadgen.busy_cores(before, after, {"orders": [10, 11]})
    assert cores == {
        "orders": 1.0,  # 2 CPU-s in 2 s
        "postgresql": 1.0,
        "rabbitmq": 0.5,
        "bench loader": 0.5,
        "other": 1.0,  # the kernel worker's 1 s and the new program's on the reused pid
        "total": 4.0,
    }


async def test_paced_keeps_its_schedule_whatever_the_consumer_does(bench: ModuleType) -> None:
    loadgen = importlib.import_module("loadgen")
    started = time.perf_counter()
    ticks = [(index, time.perf_counter() - started) async for index in loadgen.paced(100, 5)]
    assert [index for index, _ in ticks] == [0, 1, 2, 3, 4]
    for index, at in ticks:
        assert at >= index / 100  # never early


async def test_fixed_rate_get_counts_requests_and_errors(bench: ModuleType) -> None:
    loadgen = importlib.import_module("loadgen")
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers["Authorization"])
        return web.Response(status=200 if request.path == "/ok" else 503)

    app = web.Application()
    app.router.add_get("/{name}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        headers = {"Authorization": "Bearer t"}
        ok = await loadgen.fixed_rate_get(
            f"http://127.0.0.1:{port}/ok", headers, rate=50, seconds=0.2
        )
        failing = await loadgen.fixed_rate_get(
            f"http://127.0.0.1:{port}/fail", headers, rate=50, seconds=0.2
        )
    finally:
        await runner.cleanup()
    assert (ok["requests"], ok["errors"]) == (10, 0)
    assert ok["p50_ms"] <= ok["p99_ms"]
    assert (failing["requests"], failing["errors"]) == (10, 10)
    assert seen == ["Bearer t"] * 20


async def test_the_bare_hop_forwards_requests_as_they_came(
    bench: ModuleType, tmp_path: Path
) -> None:
    """Scenario 1b's yardstick is a real proxy: method, path, query, headers and body reach the
    backend, and its status, headers and body come back (uvicorn's own `date` and `server`
    once); its probes stay its own."""
    seen: list[dict[str, Any]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(
            {
                "method": request.method,
                "path": request.path_qs,
                "authorization": request.headers.get("Authorization"),
                "host": request.headers.get("Host"),
                "body": await request.read(),
            }
        )
        return web.Response(status=201, body=b'{"ok": true}', headers={"X-Backend": "yes"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        backend = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with bench.bare_hop(backend, tmp_path) as hop, httpx.AsyncClient() as client:
            answer = await client.post(
                hop.url + "/api/orders?limit=5",
                content=b'{"items": []}',
                headers={"Authorization": "Bearer t"},
            )
            probe = await client.get(hop.url + "/readyz")
    finally:
        await runner.cleanup()
    assert answer.status_code == 201
    assert answer.content == b'{"ok": true}'
    assert answer.headers["x-backend"] == "yes"
    assert answer.headers.get_list("date") == [answer.headers["date"]]
    assert answer.headers.get_list("server") == ["uvicorn"]
    assert probe.status_code == 200
    assert seen == [
        {
            "method": "POST",
            "path": "/api/orders?limit=5",
            "authorization": "Bearer t",
            "host": backend.removeprefix("http://"),
            "body": b'{"items": []}',
        }
    ]
