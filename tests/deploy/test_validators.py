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
