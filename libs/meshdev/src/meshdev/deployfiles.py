"""Reading the deployment files the way Docker, compose and Kubernetes read them.

tests/deploy uses it to compare what these files say with what the code says
(meshdev.mesh.MESH, meshdev.processes.production_command, the settings classes).
"""

from __future__ import annotations

import base64
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dockerfile  # type: ignore[import-not-found]  # BuildKit's own parser, a compiled module
import promql_parser
import yaml
from pydantic_settings import EnvSettingsSource

from meshkit.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[4]
K8S = ROOT / "deploy" / "k8s"
TOOLS = ROOT / ".tools"
# Set by the Makefile or a developer's shell; the checks read the files' own defaults.
COMPOSE_VARIABLES = frozenset(
    {
        "POSTGRES_IMAGE", "RABBITMQ_IMAGE", "REDIS_IMAGE", "PYTHON_IMAGE", "UV_IMAGE",
        "MESH_IMAGE_REPO", "MESH_IMAGE_TAG", "JWT_PRIVATE_KEY_FILE",
        "GATEWAY_PORT", "RABBITMQ_MANAGEMENT_PORT", "JAEGER_PORT", "GRAFANA_PORT",
        "PROMETHEUS_PORT",
    }
)  # fmt: skip
COMPOSE_FILES = ("compose.yaml", "compose.observability.yaml")
OBSERVABILITY = ROOT / "deploy" / "observability"
# The one rules file: a PrometheusRule whose `spec` is what Prometheus loads (compose too).
PROMETHEUS_RULES = K8S / "components" / "production" / "prometheus-rules.yaml"

Manifest = dict[str, Any]


class ToolMissingError(RuntimeError):
    """A pinned validator is not installed; `make tools` installs them."""


def _tool(env_name: str, installed: Path, fallback: str) -> str:
    candidate = os.environ.get(env_name) or (str(installed) if installed.exists() else None)
    candidate = candidate or shutil.which(fallback)
    if candidate is None:
        raise ToolMissingError(f"{fallback} not found: run `make tools` (installs it in .tools/)")
    return candidate


def promtool() -> str:
    """Prometheus' own rules checker and test runner (`make tools` installs it)."""
    return _tool("PROMTOOL", TOOLS / "bin" / "promtool", "promtool")


def prometheus_rules() -> dict[str, Any]:
    """The mesh's rules as Prometheus reads them: the PrometheusRule's `spec` (`groups:`)."""
    spec: dict[str, Any] = yaml.safe_load(PROMETHEUS_RULES.read_text())["spec"]
    return spec


_SERIES_SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count"),
    "counter": ("_total",),
    "gauge": ("",),
}


def listed_series() -> set[str]:
    """Every Prometheus series name of deploy/observability/metrics.yaml, the one list of
    metrics dashboards and rules may query."""
    metrics = yaml.safe_load((OBSERVABILITY / "metrics.yaml").read_text())["metrics"]
    return {
        metric["prometheus"] + suffix
        for metric in metrics
        for suffix in _SERIES_SUFFIXES[metric["type"]]
    }


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects; ValueError if it is not PromQL."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def kustomizations() -> dict[str, Path]:
    """base and every overlay, by name (the same discovery as deploy/tools/check.py)."""
    found = {"base": K8S / "base"}
    for kustomization in sorted((K8S / "overlays").glob("*/kustomization.yaml")):
        found[kustomization.parent.name] = kustomization.parent
    return found


def render(path: Path) -> list[Manifest]:
    kubectl = _tool("KUBECTL", TOOLS / "bin" / "kubectl", "kubectl")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def compose_config(profiles: Sequence[str] = ()) -> dict[str, Any]:
    """The layered compose project as `docker compose config` resolves it (.env.example values
    and the files' defaults: image names and ports set in the environment, by `make offline-images`
    say, are left out), with the optional services of `profiles`."""
    binary = _tool(
        "DOCKER_COMPOSE_BIN", TOOLS / "venv" / "bin" / "docker-compose", "docker-compose"
    )
    files = [arg for name in COMPOSE_FILES for arg in ("-f", name)]
    chosen = [arg for name in profiles for arg in ("--profile", name)]
    output = subprocess.run(
        [binary, *files, *chosen, "--env-file", ".env.example", "config", "--format", "json"],
        cwd=ROOT,
        env={name: value for name, value in os.environ.items() if name not in COMPOSE_VARIABLES},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    config: dict[str, Any] = json.loads(output)
    return config


class PodSpecError(Exception):
    """A pod spec the kubelet would refuse to run, or one this translation cannot reproduce."""


WORKLOADS = ("Deployment", "StatefulSet", "Job")


@dataclass
class Cluster:
    """The objects of one rendered kustomization. `stand_ins` are the Secrets created outside it
    (by operators or a secret manager); None reads placeholders for them, to check the files
    alone."""

    name: str
    objects: list[Manifest]
    stand_ins: Mapping[str, Mapping[str, bytes]] | None = None
    by_kind: dict[str, dict[str, Manifest]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_kind = {}
        for manifest in self.objects:
            self.by_kind.setdefault(manifest["kind"], {})[manifest["metadata"]["name"]] = manifest

    def get(self, kind: str, name: str) -> Manifest | None:
        return self.by_kind.get(kind, {}).get(name)

    def named(self, kind: str) -> dict[str, Manifest]:
        return self.by_kind.get(kind, {})

    def values(self, kind: str, name: str) -> Mapping[str, bytes] | None:
        """A ConfigMap's or Secret's keys and values as a pod reads them; None if it is missing."""
        manifest = self.get(kind, name)
        if manifest is None:
            return (self.stand_ins or {}).get(name) if kind == "Secret" else None
        plain, encoded = ("data", "binaryData") if kind == "ConfigMap" else ("stringData", "data")
        return {
            key: base64.b64decode(value) for key, value in manifest.get(encoded, {}).items()
        } | {key: str(value).encode() for key, value in manifest.get(plain, {}).items()}


def referenced_secrets(manifests: Sequence[Manifest]) -> set[str]:
    """The names of every Secret a pod template reads."""
    found: set[str] = set()
    for workload in (manifest for manifest in manifests if manifest["kind"] in WORKLOADS):
        spec = workload["spec"]["template"]["spec"]
        volumes = spec.get("volumes", [])
        found |= {volume["secret"]["secretName"] for volume in volumes if "secret" in volume}
        for container in spec.get("initContainers", []) + spec["containers"]:
            refs = [source.get("secretRef") for source in container.get("envFrom", [])]
            refs += [
                env.get("valueFrom", {}).get("secretKeyRef") for env in container.get("env", [])
            ]
            found |= {ref["name"] for ref in refs if ref is not None}
    return found


# Kubernetes' references have no parser outside the kubelet; their whole grammar is `$$` and
# `$(NAME)`, so one expression covers it.
_REFERENCE = re.compile(r"\$(?:\$|\(([^)]*)\))")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion of env values, command and args: `$(VAR)` becomes the value of a
    variable defined before it, `$$` is one `$` (so `$$(VAR)` stays `$(VAR)`), and references
    to unknown variables, unclosed `$(` and lone `$` stay as written."""
    return _REFERENCE.sub(lambda ref: "$" if ref[1] is None else env.get(ref[1], ref[0]), value)


def container_env(
    container: Manifest, cluster: Cluster, fields: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment the kubelet gives the container: `envFrom` first, then `env` in order,
    each literal value expanded against what is defined before it. `fields` are the pod's
    values of the downward API by path; without them placeholders stand in."""
    env: dict[str, str] = {}
    placeholders = cluster.stand_ins is None
    for source in container.get("envFrom", []):
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        ref = source["configMapRef" if kind == "ConfigMap" else "secretRef"]
        values = cluster.values(kind, ref["name"])
        if values is None and not (ref.get("optional") or (placeholders and kind == "Secret")):
            raise PodSpecError(f"{kind} {ref['name']!r} does not exist: the pod would not start")
        for key, value in (values or {}).items():
            env[source.get("prefix", "") + key] = value.decode()
    for variable in container.get("env", []):
        name, source = variable["name"], variable.get("valueFrom")
        if source is None:
            env[name] = expand(str(variable.get("value", "")), env)
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            if fields is not None and path not in fields:
                raise PodSpecError(f"fieldRef {path!r} is not supported here")
            env[name] = f"field-{path}" if fields is None else fields[path]
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            kind = "ConfigMap" if "configMapKeyRef" in source else "Secret"
            ref = source["configMapKeyRef" if kind == "ConfigMap" else "secretKeyRef"]
            found = (cluster.values(kind, ref["name"]) or {}).get(ref["key"])
            if found is None and placeholders and kind == "Secret":
                # URL-safe, so it can stand where the real value goes into a URL.
                found = f"from-secret-{ref['name']}-{ref['key']}".encode()
            if found is not None:
                env[name] = found.decode()
            elif not ref.get("optional"):
                raise PodSpecError(f"{kind} {ref['name']!r} is missing or has no {ref['key']!r}")
        else:
            raise PodSpecError(f"{name}: only fieldRef, configMapKeyRef, secretKeyRef are read")
    return env


def settings_class(package: str) -> type[ServiceSettings]:
    """The deployable's one settings class: `<package>.settings.*Settings`."""
    module = importlib.import_module(f"{package}.settings")
    classes = [
        value
        for name, value in vars(module).items()
        if name.endswith("Settings")
        and inspect.isclass(value)
        and issubclass(value, ServiceSettings)
        and value.__module__ == module.__name__
    ]
    assert len(classes) == 1, f"{package}.settings must define one *Settings class: {classes}"
    return classes[0]


@dataclass
class DockerStage:
    name: str
    commands: list[dockerfile.Command] = field(default_factory=list)

    def last(self, instruction: str) -> str | None:
        """The arguments of the stage's last `instruction` as written, flags included."""
        found = [c.original for c in self.commands if c.cmd.upper() == instruction]
        return str(found[-1].split(maxsplit=1)[1]) if found else None

    def env(self) -> dict[str, str]:
        pairs = [c.value for c in self.commands if c.cmd.upper() == "ENV"]  # (name, value, ...)
        return {k: v for value in pairs for k, v in zip(value[::2], value[1::2], strict=True)}


def dockerfile_stages(path: Path) -> dict[str, DockerStage]:
    """Stages by name (`#<index>` when unnamed), as BuildKit's parser reads the Dockerfile."""
    stages: dict[str, DockerStage] = {}
    for command in dockerfile.parse_file(str(path)):
        if command.cmd.upper() == "FROM":
            named = len(command.value) == 3 and command.value[1].upper() == "AS"
            stage = DockerStage(command.value[2] if named else f"#{len(stages)}")
            stages[stage.name] = stage
        elif stages:
            stage.commands.append(command)
    return stages


LOCAL_ADDRESSES = ("127.0.0.1", "localhost", "[::1]")


class LocalDefaultError(AssertionError):
    """A setting whose default only makes sense on a developer's machine was not provided."""


def local_only_settings(package: str) -> set[str]:
    """Settings whose default points at this machine (e.g. a database on 127.0.0.1): fine for
    `make run`, wrong in any container, so every deployment must set them."""
    cls = settings_class(package)
    return {
        name.upper()
        for name, info in cls.model_fields.items()
        if isinstance(info.default, str) and any(a in info.default for a in LOCAL_ADDRESSES)
    }


def settings_from(package: str, env: Mapping[str, str]) -> ServiceSettings:
    """Build the deployable's settings from exactly `env`, as strictly as production does.

    Raises LocalDefaultError (a setting defaulting to this machine is not set), pydantic's
    ValidationError (a required setting is missing or invalid) or UnsafeSettingsError (a value
    only acceptable in local development).
    """
    missing = local_only_settings(package) - set(env)
    if missing:
        raise LocalDefaultError(f"{package}: not set, and the default is local: {sorted(missing)}")
    cls = settings_class(package)
    # The service's own environment source, reading `env` instead of this process's environment.
    source = EnvSettingsSource(cls)
    source.env_vars = {k.lower(): v for k, v in {**env, "ENVIRONMENT": "production"}.items()}
    return cls(_build_sources=((source,), {}))
