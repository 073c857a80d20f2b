"""The compose observability stack: collector -> Jaeger, Prometheus and Loki -> Grafana.

Every dashboard query must name a metric from deploy/observability/metrics.yaml, the one list
of metrics the services emit (extend it when a service adds an instrument); the alerting rules
are held to the same list in test_alerts.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from meshdev.deployfiles import (
    OBSERVABILITY,
    PROMETHEUS_RULES,
    listed_series,
    promql_metric_names,
)

DASHBOARDS = sorted((OBSERVABILITY / "grafana" / "dashboards").glob("*.json"))


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [p for p in panels if p["type"] != "row"]


def test_metric_names_are_found_in_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (job, le) (rate(a_bucket{job=~"x"}[5m]))) '
        "/ ignoring(x) b_total and on() c"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_a_query_that_is_not_promql_is_refused() -> None:
    with pytest.raises(ValueError, match="unexpected"):
        promql_metric_names("rate(a_total[$__rate_interval])")


def test_every_dashboard_query_names_an_emitted_metric() -> None:
    assert DASHBOARDS, "no Grafana dashboard"
    emitted = listed_series()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in _panels(dashboard):
            exprs = [target["expr"] for target in panel["targets"]]
            assert exprs, f"{path.name}: panel {panel['title']!r} has no query"
            for expr in exprs:
                # Grafana puts a duration in place of its interval variable before Prometheus
                # reads the query.
                names = promql_metric_names(expr.replace("$__rate_interval", "1m"))
                assert names, f"{panel['title']!r}: no metric in {expr}"
                unknown = names - emitted
                assert not unknown, f"{path.name}: {panel['title']!r} queries {unknown}"
        for variable in dashboard["templating"]["list"]:
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["definition"])
            assert match is not None, variable["definition"]
            assert match[1] in emitted, variable["definition"]


def test_every_panel_uses_a_provisioned_datasource() -> None:
    datasources = _yaml(OBSERVABILITY / "grafana/provisioning/datasources/datasources.yaml")
    uids = {source["uid"] for source in datasources["datasources"]}
    assert {"prometheus", "jaeger", "loki"} <= uids
    for path in DASHBOARDS:
        for panel in _panels(json.loads(path.read_text())):
            assert panel["datasource"]["uid"] in uids, panel["title"]


def test_the_dashboard_covers_red_outbox_dlq_and_consumer_lag() -> None:
    queries = " ".join(
        target["expr"]
        for path in DASHBOARDS
        for panel in _panels(json.loads(path.read_text()))
        for target in panel["targets"]
    )
    for needed in (
        "http_server_request_duration_seconds_count",  # rate and errors
        "http_server_request_duration_seconds_bucket",  # duration
        "outbox_pending_messages",
        'queue=~".*\\\\.dlq"',
        "rabbitmq_queue_messages_ready",
    ):
        assert needed in queries, needed


def test_traces_go_to_jaeger_and_metrics_to_prometheus(compose: dict[str, Any]) -> None:
    services = compose["services"]
    collector = _yaml(OBSERVABILITY / "otel-collector.yaml")
    pipelines = collector["service"]["pipelines"]
    assert pipelines["traces"]["exporters"] == ["otlp/jaeger"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    jaeger_host = collector["exporters"]["otlp/jaeger"]["endpoint"].split(":")[0]
    assert jaeger_host in services
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318"

    exporter_port = collector["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    prometheus = _yaml(OBSERVABILITY / "prometheus.yaml")
    targets = {
        t
        for job in prometheus["scrape_configs"]
        for c in job["static_configs"]
        for t in c["targets"]
    }
    assert f"otel-collector:{exporter_port}" in targets

    mounted = {
        v["source"] for s in services.values() for v in s.get("volumes", []) if "source" in v
    }
    for config in ("otel-collector.yaml", "prometheus.yaml"):
        assert str(OBSERVABILITY / config) in mounted, config
    assert any(port["target"] == 16686 for port in services["jaeger"]["ports"])


def test_grafana_datasources_point_at_compose_services(compose: dict[str, Any]) -> None:
    datasources = _yaml(OBSERVABILITY / "grafana/provisioning/datasources/datasources.yaml")
    for source in datasources["datasources"]:
        host = source["url"].split("//")[1].split(":")[0]
        assert host in compose["services"], source["url"]


def test_grafana_loads_the_dashboards_from_where_compose_mounts_them(
    compose: dict[str, Any],
) -> None:
    providers = _yaml(OBSERVABILITY / "grafana/provisioning/dashboards/dashboards.yaml")
    paths = {provider["options"]["path"] for provider in providers["providers"]}
    grafana = compose["services"]["grafana"]
    mounts = {v["target"]: v["source"] for v in grafana["volumes"] if v["type"] == "bind"}
    for path in paths:
        assert mounts.get(path) == str(OBSERVABILITY / "grafana" / "dashboards"), path
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.rsplit("/", 1)[0] in paths
    assert (OBSERVABILITY / "grafana" / "dashboards" / home.rsplit("/", 1)[1]).exists()
    assert mounts["/etc/grafana/provisioning"] == str(OBSERVABILITY / "grafana" / "provisioning")


def test_prometheus_loads_the_rules_of_the_one_rules_file(compose: dict[str, Any]) -> None:
    """compose's one-shot writes the PrometheusRule's `.spec` where prometheus.yaml's
    rule_files look, before Prometheus starts."""
    services = compose["services"]
    extract = services["prometheus-rules"]
    assert extract["image"].startswith("mikefarah/yq:4.")
    binds = {v["target"]: v["source"] for v in extract["volumes"] if v["type"] == "bind"}
    (source_in_container,) = binds
    assert binds[source_in_container] == str(PROMETHEUS_RULES)
    script = " ".join(extract["command"])
    match = re.fullmatch(rf"yq '\.spec' {re.escape(source_in_container)} > (\S+)", script)
    assert match is not None, script
    written = Path(match[1])

    (volume,) = [v for v in extract["volumes"] if v["type"] == "volume"]
    assert Path(volume["target"]) == written.parent
    prometheus = services["prometheus"]
    mounted = {v["source"]: v["target"] for v in prometheus["volumes"] if v["type"] == "volume"}
    rules_dir = Path(mounted[volume["source"]])
    (pattern,) = _yaml(OBSERVABILITY / "prometheus.yaml")["rule_files"]
    assert Path(pattern).parent == rules_dir
    assert (rules_dir / written.name).match(pattern)
    condition = prometheus["depends_on"]["prometheus-rules"]["condition"]
    assert condition == "service_completed_successfully"


def test_logs_go_to_loki_through_the_collector(compose: dict[str, Any]) -> None:
    services = compose["services"]
    collector = _yaml(OBSERVABILITY / "otel-collector.yaml")
    assert collector["service"]["pipelines"]["logs"]["exporters"] == ["otlphttp/loki"]
    endpoint = urlsplit(collector["exporters"]["otlphttp/loki"]["endpoint"])
    assert endpoint.path == "/otlp", "Loki's native OTLP endpoint (the exporter adds /v1/logs)"
    assert endpoint.hostname in services
    loki = _yaml(OBSERVABILITY / "loki.yaml")
    assert endpoint.port == loki["server"]["http_listen_port"]
    mounts = {v["target"]: v["source"] for v in services["loki"]["volumes"] if "source" in v}
    config = next(a.split("=", 1)[1] for a in services["loki"]["command"] if "-config.file" in a)
    assert mounts[config] == str(OBSERVABILITY / "loki.yaml")
    # No deployable turns its logs off: every record reaches the collector.
    for name in ("users", "orders", "notifications", "gateway"):
        assert services[name]["environment"].get("OTEL_LOGS_EXPORTER", "otlp") == "otlp", name


def test_loki_indexes_the_service_and_keeps_per_process_ids_out_of_its_labels() -> None:
    limits = _yaml(OBSERVABILITY / "loki.yaml")["limits_config"]
    resource = limits["otlp_config"]["resource_attributes"]
    labels = {
        attribute
        for rule in resource["attributes_config"]
        if rule["action"] == "index_label"
        for attribute in rule["attributes"]
    }
    # service.name is the `service_name` label the trace → logs query selects streams by.
    assert "service.name" in labels
    assert resource["ignore_defaults"] is True
    assert "service.instance.id" not in labels  # a stream per gunicorn worker otherwise
    assert limits["allow_structured_metadata"] is True  # trace_id, span_id, request_id


def test_a_span_links_to_its_traces_log_lines_and_a_log_line_to_its_trace() -> None:
    datasources = {
        source["uid"]: source
        for source in _yaml(OBSERVABILITY / "grafana/provisioning/datasources/datasources.yaml")[
            "datasources"
        ]
    }
    to_logs = datasources["jaeger"]["jsonData"]["tracesToLogsV2"]
    assert datasources[to_logs["datasourceUid"]]["type"] == "loki"
    assert to_logs["customQuery"] is True
    # Loki keeps the OTLP record's trace id as structured metadata `trace_id`, not in the line;
    # `$$` is Grafana's escape for its own `${...}` variables in provisioning files.
    assert re.fullmatch(
        r'\{service_name=~"\.\+"\} \| trace_id="\$\$\{__trace\.traceId\}"', to_logs["query"]
    )
    (to_trace,) = datasources["loki"]["jsonData"]["derivedFields"]
    assert (to_trace["matcherType"], to_trace["matcherRegex"]) == ("label", "trace_id")
    assert to_trace["datasourceUid"] == "jaeger"
    assert to_trace["url"] == "$${__value.raw}"
