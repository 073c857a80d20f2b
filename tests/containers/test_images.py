"""The images as built: labelled, non-root, and carrying an SBOM that says exactly what their
virtualenv holds. (Read-only roots with no writable mount are run by compose.yaml and by the
pod specs: test_faults, test_stop, test_pod_specs and the `containers` target of
tests/integration/mesh.)"""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshdev.docker import (
    DEPLOYABLES,
    app_image,
    docker,
    image_settings,
    infrastructure_image,
    require_engine,
    require_images,
)

OCI_LABELS = ("source", "revision", "version", "created")
INFRASTRUCTURE = ("POSTGRES", "RABBITMQ", "REDIS")


def _config(image: str) -> dict[str, Any]:
    require_engine()
    require_images([image])
    config: dict[str, Any] = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    return config


@pytest.mark.parametrize("deployable", DEPLOYABLES)
def test_an_application_image_is_labelled_and_runs_as_a_numeric_non_root_user(
    deployable: str,
) -> None:
    config = _config(app_image(deployable))

    assert config["User"] == "10001:10001"
    labels = config["Labels"]
    for name in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{name}") not in (None, "", "unknown"), name
    assert labels["org.opencontainers.image.title"] == f"mesh-{deployable}"


@pytest.mark.parametrize("deployable", DEPLOYABLES)
def test_the_sbom_lists_exactly_the_packages_of_the_virtualenv(deployable: str) -> None:
    image = app_image(deployable)
    _config(image)
    listing = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    installed = json.loads(docker("run", "--rm", image, "python", "-c", listing).stdout)
    sbom = json.loads(
        docker(
            "run", "--rm", image, "python", "-c", "print(open('/app/sbom.cdx.json').read())"
        ).stdout
    )

    assert sbom["bomFormat"] == "CycloneDX"
    listed = {c["name"]: c["version"] for c in sbom["components"]}
    listed[sbom["metadata"]["component"]["name"]] = sbom["metadata"]["component"]["version"]
    assert _normalised(listed) == _normalised(installed)


@pytest.mark.parametrize("name", INFRASTRUCTURE)
def test_an_offline_infrastructure_image_has_a_name_of_its_own_labels_and_no_root(
    name: str,
) -> None:
    image = infrastructure_image(name)
    if f"{name}_IMAGE" not in image_settings():
        pytest.skip(f"{image} is the official image (no `make offline-images` here)")
    config = _config(image)

    assert image.startswith("mesh-offline/"), "never tagged with a name it is not"
    assert config["User"] not in ("", "0", "root", "0:0")
    for label in OCI_LABELS:
        assert config["Labels"].get(f"org.opencontainers.image.{label}"), label


def _normalised(packages: dict[str, str]) -> dict[str, str]:
    return {name.lower().replace("_", "-").replace(".", "-"): v for name, v in packages.items()}
