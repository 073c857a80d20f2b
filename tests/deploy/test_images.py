"""The Dockerfile builds every deployable with the production command and port the code uses."""

from __future__ import annotations

import importlib
import importlib.util
import json
import tomllib

from meshdev.deployfiles import ROOT, dockerfile_stages
from meshdev.mesh import Deployable
from meshdev.processes import production_command

STAGES = dockerfile_stages(ROOT / "Dockerfile")


def test_the_image_runs_the_production_command(deployable: Deployable) -> None:
    stage = STAGES.get(deployable.name)
    assert stage is not None, f"Dockerfile has no target {deployable.name!r}"
    cmd = stage.last("CMD")
    assert cmd is not None
    assert cmd.startswith("["), "CMD must be in exec form"
    assert json.loads(cmd) == production_command(deployable.package)


def test_the_image_listens_on_the_deployables_port(deployable: Deployable) -> None:
    stage = STAGES[deployable.name]
    assert stage.env()["PORT"] == str(deployable.port)
    assert stage.last("EXPOSE") == str(deployable.port)
    assert stage.env()["OTEL_SERVICE_NAME"] == deployable.name


def test_the_image_installs_only_its_own_workspace_member(deployable: Deployable) -> None:
    build = STAGES[f"{deployable.name}-build"]
    run = build.last("RUN") or ""
    assert run.rstrip().endswith(f"install-deployable {_member(deployable)}"), run
    script = (ROOT / "deploy" / "images" / "install-deployable.sh").read_text()
    assert 'uv sync --locked --no-dev --no-editable --package "$member"' in script


def test_every_final_stage_runs_as_a_numeric_non_root_user() -> None:
    finals = [s for s in STAGES.values() if s.last("CMD") is not None]
    runtime = STAGES["runtime"]
    assert runtime.last("USER") == "10001:10001"
    assert all(s.last("USER") in (None, "10001:10001") for s in finals)


def test_the_migration_command_exists(migrating: Deployable) -> None:
    deployable = migrating
    module = importlib.import_module(f"{deployable.package}.migrate")
    assert callable(module.main), f"python -m {deployable.package}.migrate has no main()"
    assert importlib.util.find_spec(f"{deployable.package}.migrations") is not None


def _member(deployable: Deployable) -> str:
    """The uv workspace member whose src/ holds the deployable's package."""
    members = [
        path
        for pattern in ("services/*", "gateway")
        for path in ROOT.glob(pattern)
        if (path / "src" / deployable.package).is_dir()
    ]
    assert len(members) == 1, f"{deployable.package} found in {members}"
    name: str = tomllib.loads((members[0] / "pyproject.toml").read_text())["project"]["name"]
    return name
