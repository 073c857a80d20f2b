"""pytest plugin of the mesh (enabled in pyproject): spans go to an in-memory exporter."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshdev.containers import ContainerMesh, container_mesh
from meshdev.docker import REPOSITORY, require_engine
from meshdev.faults import TcpProxy
from meshdev.redis import redis_proxy
from meshkit import telemetry
from meshkit.telemetry import configure_telemetry

SPANS = InMemorySpanExporter()
METRICS = InMemoryMetricReader()


def pytest_configure(config: pytest.Config) -> None:
    configure_telemetry(
        service_name="tests",
        service_version="0",
        environment="test",
        span_processors=(SimpleSpanProcessor(SPANS),),
        metric_readers=(METRICS,),
    )


@pytest.fixture
def spans() -> InMemorySpanExporter:
    SPANS.clear()
    return SPANS


@pytest.fixture
def nowhere_to_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process as `configure_telemetry` leaves one with no OTLP endpoint and no extra
    processor: no provider of its own, `tracing_enabled()` and `metrics_enabled()` false. The
    in-memory ones above stay global and catch whatever is still recorded (`spans`,
    `recorded`)."""
    for name in [name for name in os.environ if name.startswith("OTEL_EXPORTER_OTLP")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(telemetry, "_state", {})


@pytest.fixture
async def redis_link() -> AsyncIterator[TcpProxy]:
    """A fault proxy that is the test's only way to the machine's Redis."""
    async with redis_proxy() as proxy:
        yield proxy


@pytest.fixture(scope="session")
def containerised_mesh(worker_id: str) -> Iterator[ContainerMesh]:
    """The mesh of compose.yaml in containers, one per session: the `containers` target of
    tests/integration/mesh and the subject of tests/containers. Without a Docker engine the
    test is skipped with the reason (failed under `CI=true`)."""
    require_engine()
    logs: Path = REPOSITORY / ".test-artifacts" / "logs" / f"containers-{worker_id}"
    with container_mesh(logs) as running:
        yield running


@pytest.fixture
def metric_reader() -> InMemoryMetricReader:
    """Every metric of the test process; `collect()` reads the current values."""
    return METRICS


def metric_points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    """The current data points of the instrument `name`, from every resource and scope."""
    data = reader.get_metrics_data()
    return [
        point
        for resource in (data.resource_metrics if data else [])
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def recorded(reader: InMemoryMetricReader, scope: str = "") -> dict[str, float]:
    """What each counter (its sum) and histogram (its count) of the meters named `scope…` has
    recorded so far, by name: the instruments a request or a message adds to, unlike the
    gauges read at collection."""
    data = reader.get_metrics_data()
    totals: dict[str, float] = {}
    for resource in data.resource_metrics if data else []:
        for meter in resource.scope_metrics:
            if not meter.scope.name.startswith(scope):
                continue
            for metric in meter.metrics:
                counted = isinstance(metric.data, Sum) and metric.data.is_monotonic
                for point in metric.data.data_points:
                    if isinstance(point, HistogramDataPoint):
                        totals[metric.name] = totals.get(metric.name, 0) + point.count
                    elif counted and isinstance(point, NumberDataPoint):
                        totals[metric.name] = totals.get(metric.name, 0) + point.value
    return totals


_EXERCISED: dict[str, int] = {}
_SECONDS: dict[str, float] = {}


def _in_containers(nodeid: str) -> bool:
    return nodeid.startswith("tests/containers") or "[containers" in nodeid


def _category(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    if "/integration/" in path or path.startswith("tests/integration"):
        name = path.rsplit("/", 1)[-1]
        if "fault" in name:
            return "fault scenarios"
        if "fuzz" in name:
            return "fuzzed operations"
        return "integration scenarios"
    if path.startswith("tests/deploy"):
        return "deployment checks"
    if path.startswith("tests/containers"):
        return "container scenarios"
    return "unit and API tests"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    part = "in containers" if _in_containers(report.nodeid) else "the rest"
    _SECONDS[part] = _SECONDS.get(part, 0.0) + report.duration
    if report.when != "call" or not report.passed:
        return
    category = _category(report.nodeid)
    _EXERCISED[category] = _EXERCISED.get(category, 0) + 1
    for name, value in report.user_properties:
        if name == "fuzz_cases" and isinstance(value, int):
            _EXERCISED["fuzz cases"] = _EXERCISED.get("fuzz cases", 0) + value


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line saying what the run exercised (tests record fuzz cases with `record_property`)."""
    if _EXERCISED:
        parts = ", ".join(f"{count} {name}" for name, count in sorted(_EXERCISED.items()))
        terminalreporter.write_line(f"exercised: {parts}")
    if _SECONDS:
        parts = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in sorted(_SECONDS.items()))
        terminalreporter.write_line(f"time of the tests: {parts}")
