"""Validate rendered Kubernetes manifests with kubernetes-validate, strictly.

    python validate_k8s.py --kubernetes-version 1.33.0 rendered/*.yaml

Fails on any schema error, on unknown fields (strict schemas) and on objects whose schema is
missing, except the custom resources listed in CUSTOM_RESOURCES (with the reason). The
prometheus-operator resources (MODELLED_RESOURCES) are validated against the schemas of a
pinned npm package instead (validate-custom-resources.mjs, installed by `make tools`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from kubernetes_validate import utils

TOOLS = Path(__file__).resolve().parents[2] / ".tools"
NODE_MODULES = TOOLS / "npm" / "node_modules"

# prometheus-operator's kinds, checked by @kubernetes-models/prometheus-operator (pinned in
# deploy/tools/package-lock.json): types, required fields, enums, duration patterns, metadata.
# Those schemas come from the operator's API types and do not refuse unknown fields; the API
# server's strict field validation (kubectl's default) does at apply time.
MODELLED_RESOURCES = {
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}

# Custom resources of the operators the prod overlay expects. Their CRD schemas are not
# published in a package registry these checks can install from, so they are not vendored;
# tests/deploy checks the fields the mesh relies on instead.
CUSTOM_RESOURCES = {
    ("postgresql.cnpg.io/v1", "Cluster"): "CloudNativePG CRD schema not available offline",
    (
        "rabbitmq.com/v1beta1",
        "RabbitmqCluster",
    ): "RabbitMQ operator CRD schema not available offline",
}

_CANARY = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "canary"},
    "data": {},
    "unknownField": True,
}


def strict_mode_works(version: str) -> bool:
    """An unknown field must fail: proves the strict schemas are really in use."""
    try:
        utils.validate(_CANARY, version, strict=True)
    except utils.ValidationError:
        return True
    return False


def validate_modelled(objects: list[dict[str, Any]]) -> list[str]:
    """The prometheus-operator resources, in one run of the npm package's validators."""
    if not objects:
        return []
    if not NODE_MODULES.is_dir():
        return [f"{NODE_MODULES} is missing: run `make tools`"]
    done = subprocess.run(
        ["node", str(Path(__file__).with_name("validate-custom-resources.mjs")), str(NODE_MODULES)],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode not in (0, 1):
        return [f"validate-custom-resources.mjs failed: {done.stderr or done.stdout}"]
    return done.stderr.splitlines()


def validate_file(path: Path, version: str, modelled: list[dict[str, Any]]) -> list[str]:
    errors: list[str] = []
    for document in yaml.safe_load_all(path.read_text()):
        if not document:
            continue
        key = (document.get("apiVersion"), document.get("kind"))
        name = f"{path.name}: {key[1]}/{document.get('metadata', {}).get('name')}"
        if key in MODELLED_RESOURCES:
            modelled.append({"name": name, "object": document})
            continue
        try:
            utils.validate(document, version, strict=True)
        except utils.ValidationError as error:
            location = ".".join(str(part) for part in error.path)
            errors.append(f"{name}: {location}: {error.message}")
        except utils.SchemaNotFoundError as error:
            if key not in CUSTOM_RESOURCES:
                errors.append(f"{name}: {error.message}")
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    if not strict_mode_works(args.kubernetes_version):
        print("kubernetes-validate: strict mode accepted an unknown field", file=sys.stderr)
        return 2
    modelled: list[dict[str, Any]] = []
    errors = [
        e for path in args.files for e in validate_file(path, args.kubernetes_version, modelled)
    ]
    errors += validate_modelled(modelled)
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    skipped = ", ".join(f"{kind} ({reason})" for (_, kind), reason in CUSTOM_RESOURCES.items())
    checked = ", ".join(sorted(kind for _, kind in MODELLED_RESOURCES))
    print(
        f"kubernetes-validate {args.kubernetes_version} --strict: {len(args.files)} files, "
        f"{len(errors)} errors; {len(modelled)} {checked} checked by their npm schemas; "
        f"custom resources not schema-checked: {skipped}"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
