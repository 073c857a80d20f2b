"""pytest plugin of the mesh (enabled in pyproject): spans go to an in-memory exporter."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

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
def metric_reader() -> InMemoryMetricReader:
    """Every metric of the test process; `collect()` reads the current values."""
    return METRICS
