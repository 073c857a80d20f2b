"""deploy/tools/validate_k8s.py fails where it must (it runs in the validators' own venv)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from meshdev.deployfiles import ROOT, TOOLS, ToolMissingError

VALIDATE = ROOT / "deploy" / "tools" / "validate_k8s.py"


def validate(tmp_path: Path, manifest: str) -> subprocess.CompletedProcess[str]:
    python = TOOLS / "venv" / "bin" / "python"
    if not python.exists():
        raise ToolMissingError("the validators are not installed: run `make tools`")
    path = tmp_path / "manifest.yaml"
    path.write_text(manifest)
    return subprocess.run(
        [str(python), str(VALIDATE), "--kubernetes-version", "1.33.0", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_valid_object_passes(tmp_path: Path) -> None:
    done = validate(tmp_path, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndatta: {}\n",
            "Additional properties are not allowed ('datta' was unexpected)",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"
            "spec: {replicas: two, selector: {}, template: {}}\n",
            "'two' is not of type 'integer'",
        ),
        (
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: x}\n",
            "Couldn't find schema for kind Widget",
        ),
    ],
    ids=["unknown-field", "wrong-type", "unknown-kind"],
)
def test_an_invalid_object_fails(tmp_path: Path, manifest: str, message: str) -> None:
    done = validate(tmp_path, manifest)
    assert done.returncode == 1
    assert message in done.stderr


def test_the_listed_operator_resources_pass_without_a_schema(tmp_path: Path) -> None:
    done = validate(
        tmp_path,
        "apiVersion: postgresql.cnpg.io/v1\nkind: Cluster\nmetadata: {name: db}\n---\n"
        "apiVersion: rabbitmq.com/v1beta1\nkind: RabbitmqCluster\nmetadata: {name: mq}\n",
    )
    assert done.returncode == 0, done.stderr
    assert "custom resources not schema-checked: Cluster" in done.stdout


SERVICE_MONITOR = """\
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: collector, namespace: mesh}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: otel-collector}}
  endpoints: [{port: prometheus, interval: %s, honorLabels: true}]
"""
PROMETHEUS_RULE = """\
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: {name: mesh, namespace: mesh}
spec:
  groups: [{name: g, rules: [{alert: Down, %s for: 5m, labels: {severity: ticket}}]}]
"""


def test_valid_prometheus_operator_resources_pass(tmp_path: Path) -> None:
    manifest = SERVICE_MONITOR % "30s" + "---\n" + PROMETHEUS_RULE % "expr: up == 0,"
    done = validate(tmp_path, manifest)
    assert done.returncode == 0, done.stderr
    assert "2 PrometheusRule, ServiceMonitor checked by their npm schemas" in done.stdout


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (
            SERVICE_MONITOR % "thirty-seconds",
            "ServiceMonitor/collector: data/spec/endpoints/0/interval must match pattern",
        ),
        (
            SERVICE_MONITOR.replace(
                "selector: {matchLabels: {app.kubernetes.io/name: otel-collector}}", ""
            )
            % "30s",
            "ServiceMonitor/collector: data/spec must have required property selector",
        ),
        (
            PROMETHEUS_RULE % "",
            "PrometheusRule/mesh: data/spec/groups/0/rules/0 must have required property expr",
        ),
        (
            PROMETHEUS_RULE.replace("for: 5m", "for: five minutes") % "expr: up == 0,",
            "PrometheusRule/mesh: data/spec/groups/0/rules/0/for must match pattern",
        ),
    ],
    ids=["bad-duration", "no-selector", "rule-without-expr", "bad-for"],
)
def test_an_invalid_prometheus_operator_resource_fails(
    tmp_path: Path, manifest: str, message: str
) -> None:
    done = validate(tmp_path, manifest)
    assert done.returncode == 1, done.stdout
    assert message in done.stderr
