"""Offline validation of everything under deploy/ plus the Dockerfile and compose files.

Run by `make deploy-check` (part of `make test`) with the pinned tools in .tools/:

    .tools/venv/bin/python deploy/tools/check.py --kubectl .tools/bin/kubectl \
        --promtool .tools/bin/promtool

Independent checks run in parallel (the machine has two cores); every failing check prints its
full output. Rendered manifests are kept in .tools/rendered/ for inspection and for tests/deploy.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
BIN = Path(sys.executable).parent
RENDERED = TOOLS / "rendered"
RULES = TOOLS / "prometheus-rules"  # the rendered PrometheusRules' specs, as Prometheus reads them
PROMETHEUS_CONFIG = ROOT / "deploy" / "observability" / "prometheus.yaml"
KUBERNETES_VERSION = "1.33.0"
COMPOSE_FILES = ("compose.yaml", "compose.observability.yaml")
DOCKERFILES = ("Dockerfile",)


@dataclass
class Result:
    name: str
    ok: bool
    seconds: float
    output: str


def run(name: str, *commands: Sequence[str | Path]) -> Result:
    started = time.monotonic()
    output = []
    for command in commands:
        done = subprocess.run(
            [str(part) for part in command],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        output.append(f"$ {' '.join(str(p) for p in command)}\n{done.stdout}{done.stderr}")
        if done.returncode != 0:
            return Result(name, False, time.monotonic() - started, "\n".join(output))
    return Result(name, True, time.monotonic() - started, "\n".join(output))


def kustomizations() -> dict[str, Path]:
    """base and every overlay, by name."""
    k8s = ROOT / "deploy" / "k8s"
    found = {"base": k8s / "base"}
    for kustomization in sorted((k8s / "overlays").glob("*/kustomization.yaml")):
        found[kustomization.parent.name] = kustomization.parent
    return found


def render(kubectl: str) -> Result:
    started = time.monotonic()
    RENDERED.mkdir(parents=True, exist_ok=True)
    for stale in [*RENDERED.glob("*.yaml"), *RENDERED.glob("scripts/*")]:
        stale.unlink()
    for name, path in kustomizations().items():
        done = subprocess.run(
            [kubectl, "kustomize", str(path)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            return Result("kustomize", False, time.monotonic() - started, done.stderr)
        (RENDERED / f"{name}.yaml").write_text(done.stdout)
    names = ", ".join(kustomizations())
    return Result("kustomize", True, time.monotonic() - started, f"rendered {names}")


def shell_scripts() -> list[Path]:
    """The repository's shell scripts and those embedded in rendered ConfigMaps (`*.sh` keys)."""
    import yaml  # the validators' venv has PyYAML (kubernetes-validate needs it)

    scripts = sorted(ROOT.glob("deploy/**/*.sh"))
    embedded = RENDERED / "scripts"
    embedded.mkdir(exist_ok=True)
    for manifest in sorted(RENDERED.glob("*.yaml")):
        for document in yaml.safe_load_all(manifest.read_text()):
            if not document or document.get("kind") != "ConfigMap":
                continue
            for key, value in document.get("data", {}).items():
                if key.endswith(".sh"):
                    name = f"{manifest.stem}-{document['metadata']['name']}-{key}"
                    (embedded / name).write_text(value)
                    scripts.append(embedded / name)
    return scripts


def rule_files() -> list[Path]:
    """The `spec` of every rendered PrometheusRule (a Prometheus rules file), one file each."""
    import yaml

    RULES.mkdir(exist_ok=True)
    for stale in RULES.glob("*.yaml"):
        stale.unlink()
    found = []
    for manifest in sorted(RENDERED.glob("*.yaml")):
        for document in yaml.safe_load_all(manifest.read_text()):
            if document and document.get("kind") == "PrometheusRule":
                path = RULES / f"{manifest.stem}-{document['metadata']['name']}.yaml"
                path.write_text(yaml.safe_dump(document["spec"], sort_keys=False))
                found.append(path)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubectl", default=str(TOOLS / "bin" / "kubectl"))
    parser.add_argument("--promtool", default=str(TOOLS / "bin" / "promtool"))
    args = parser.parse_args()

    checkov = [BIN / "checkov", "--config-file", Path(__file__).with_name("checkov.yaml")]
    compose = [BIN / "docker-compose", *(a for f in COMPOSE_FILES for a in ("-f", f))]
    with ThreadPoolExecutor(max_workers=2) as pool:
        independent = [
            pool.submit(run, "yamllint", [BIN / "yamllint", "--strict", "."]),
            pool.submit(
                run, "hadolint", [BIN / "hadolint", "--failure-threshold", "warning", *DOCKERFILES]
            ),
            pool.submit(
                run,
                "compose",
                # Each file alone must be valid against the Compose specification, and the
                # layered result must resolve (no engine needed for `config`).
                [
                    BIN / "check-jsonschema",
                    "--builtin-schema",
                    "vendor.compose-spec",
                    *COMPOSE_FILES,
                ],
                [*compose[:3], "--env-file", ".env.example", "config", "--quiet"],
                [*compose, "--env-file", ".env.example", "config", "--quiet"],
            ),
        ]
        rendered = render(args.kubectl)
        results = [rendered]
        if rendered.ok:
            manifests = sorted(RENDERED.glob("*.yaml"))
            scripts = shell_scripts()
            rules = rule_files()
            results += [
                run("shellcheck", [BIN / "shellcheck", *scripts]),
                # Prometheus' own checks: the rules as the operator hands them to Prometheus,
                # and compose's Prometheus configuration (its rule_files are container paths).
                run(
                    "promtool",
                    [args.promtool, "check", "rules", *rules],
                    [args.promtool, "check", "config", "--syntax-only", PROMETHEUS_CONFIG],
                )
                if rules
                else Result("promtool", False, 0.0, "no PrometheusRule in any rendered overlay"),
            ]
            results += [
                r.result()
                for r in [
                    pool.submit(
                        run,
                        "kubernetes-validate",
                        [
                            sys.executable,
                            Path(__file__).with_name("validate_k8s.py"),
                            "--kubernetes-version",
                            KUBERNETES_VERSION,
                            *manifests,
                        ],
                    ),
                    pool.submit(
                        run,
                        "checkov",
                        # Two runs: given --directory, checkov ignores --file.
                        [*checkov, "--framework", "kubernetes", "--directory", RENDERED],
                        [
                            *checkov,
                            "--framework",
                            "dockerfile",
                            *(a for f in DOCKERFILES for a in ("--file", f)),
                        ],
                    ),
                ]
            ]
        results += [future.result() for future in independent]

    for result in results:
        print(f"{'ok  ' if result.ok else 'FAIL'} {result.name:<20} {result.seconds:5.1f}s")
    failed = [r for r in results if not r.ok]
    for result in failed:
        print(f"\n==== {result.name} ====\n{result.output}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
