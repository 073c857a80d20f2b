"""Rendered Kubernetes overlays and the resolved compose project, once per test session."""

from __future__ import annotations

from typing import Any

import pytest

from meshdev.deployfiles import Cluster, compose_config, kustomizations, render
from meshdev.mesh import MESH


@pytest.fixture(scope="session")
def clusters() -> dict[str, Cluster]:
    return {name: Cluster(name, render(path)) for name, path in kustomizations().items()}


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return compose_config()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`deployable` and `overlay` parameters come from the code and the deploy/ tree, so a
    deployable added to MESH or an overlay added to deploy/k8s/overlays is checked at once."""
    if "deployable" in metafunc.fixturenames:
        metafunc.parametrize("deployable", MESH, ids=[d.name for d in MESH])
    if "migrating" in metafunc.fixturenames:
        with_database = [d for d in MESH if d.database is not None]
        metafunc.parametrize("migrating", with_database, ids=[d.name for d in with_database])
    if "overlay" in metafunc.fixturenames:
        names = [name for name in kustomizations() if name != "base"]
        metafunc.parametrize("overlay", names)
