"""compose.yaml (+ compose.observability.yaml) runs every deployable as the code expects."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from meshdev.deployfiles import compose_config, settings_from
from meshdev.mesh import Deployable


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services: dict[str, Any] = compose["services"]
    assert name in services, f"compose has no service {name!r}"
    service: dict[str, Any] = services[name]
    return service


def test_every_deployable_runs_its_image_command_on_its_port(
    compose: dict[str, Any], deployable: Deployable
) -> None:
    service = _service(compose, deployable.name)
    assert service["build"]["target"] == deployable.name
    # No command override: the image's CMD (the production command) runs.
    assert service.get("command") is None
    assert service["environment"]["PORT"] == str(deployable.port)
    assert service["environment"]["OTEL_SERVICE_NAME"] == deployable.name
    assert str(deployable.port) in service.get("expose", [])


def test_gunicorn_stops_gracefully_before_docker_kills_it(
    compose: dict[str, Any], deployable: Deployable
) -> None:
    service = _service(compose, deployable.name)
    grace = service["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) > int(service["environment"]["GRACEFUL_TIMEOUT"])


def test_every_deployable_is_health_checked_on_readyz(
    compose: dict[str, Any], deployable: Deployable
) -> None:
    test = " ".join(_service(compose, deployable.name)["healthcheck"]["test"])
    assert f"http://127.0.0.1:{deployable.port}/readyz" in test


def test_every_deployable_gets_the_settings_it_requires(
    compose: dict[str, Any], deployable: Deployable
) -> None:
    service = _service(compose, deployable.name)
    settings = settings_from(deployable.package, service["environment"])
    key_file = getattr(settings, "jwt_private_key_file", None)
    if key_file is not None:
        mounted = {secret["target"] for secret in service.get("secrets", [])}
        assert str(key_file) in mounted, f"{key_file} is not a mounted compose secret"


def test_every_deployable_is_traced_to_the_collector(
    compose: dict[str, Any], deployable: Deployable
) -> None:
    environment = _service(compose, deployable.name)["environment"]
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert "otel-collector" in compose["services"]


def test_every_database_is_migrated_before_its_service_starts(
    compose: dict[str, Any], migrating: Deployable
) -> None:
    service = _service(compose, migrating.name)
    migrate = _service(compose, f"{migrating.name}-migrate")
    assert migrate["command"] == ["python", "-m", f"{migrating.package}.migrate"]
    assert migrate["build"]["target"] == migrating.name
    assert migrate["environment"]["DATABASE_URL"] == service["environment"]["DATABASE_URL"]
    # `<package>.migrate` reads the service's settings class, as strictly as the service does.
    settings_from(migrating.package, migrate["environment"])
    assert make_url(service["environment"]["DATABASE_URL"]).database == migrating.database
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    condition = service["depends_on"][f"{migrating.name}-migrate"]["condition"]
    assert condition == "service_completed_successfully"


def test_postgres_creates_every_database(compose: dict[str, Any], migrating: Deployable) -> None:
    init_scripts = [
        volume["source"]
        for volume in _service(compose, "postgres")["volumes"]
        if volume["target"].startswith("/docker-entrypoint-initdb.d/")
    ]
    sql = "".join(Path(path).read_text() for path in init_scripts)
    assert f"CREATE DATABASE {migrating.database};" in sql


def test_only_the_gateway_is_published(compose: dict[str, Any]) -> None:
    published = {name for name, service in compose["services"].items() if "ports" in service} - {
        "rabbitmq",
        "jaeger",
        "prometheus",
        "grafana",
    }  # developer UIs, on 127.0.0.1
    assert published == {"gateway"}
    assert all(
        port.get("host_ip") == "127.0.0.1"
        for service in compose["services"].values()
        for port in service.get("ports", [])
    )


def test_application_containers_are_hardened(
    compose: dict[str, Any], deployable: Deployable
) -> None:
    names = [deployable.name] + ([f"{deployable.name}-migrate"] if deployable.database else [])
    for name in names:
        service = _service(compose, name)
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        # Nothing writable, not even /tmp: gunicorn's heartbeat files go to /dev/shm.
        assert "tmpfs" not in service
        assert "volumes" not in service
        assert service["user"] == "10001:10001"


def test_the_loadgen_profile_runs_the_locustfile_against_the_gateway() -> None:
    loadgen = _service(compose_config(profiles=("loadgen",)), "loadgen")
    assert loadgen["image"].startswith("locustio/locust:")
    mount = next(v for v in loadgen["volumes"] if v["target"] == "/mnt/locust")
    assert Path(mount["source"]) == Path(__file__).resolve().parents[1] / "load"
    assert loadgen["environment"]["LOCUST_LOCUSTFILE"] == "/mnt/locust/locustfile.py"
    assert loadgen["environment"]["LOCUST_HOST"] == "http://gateway:8000"
    assert loadgen["depends_on"]["gateway"]["condition"] == "service_healthy"


def test_the_loadgen_runs_only_when_its_profile_is_asked_for(compose: dict[str, Any]) -> None:
    assert "loadgen" not in compose["services"]


def test_the_gateway_and_users_count_rate_limits_in_composes_redis(
    compose: dict[str, Any],
) -> None:
    redis = _service(compose, "redis")
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+", redis["image"]), "pinned to a release"
    assert redis["read_only"] is True
    assert redis["cap_drop"] == ["ALL"]
    assert redis["user"] == "10001:10001"
    assert "ports" not in redis, "reached by the project's containers only"
    command = redis["command"]
    assert command[command.index("--save") + 1] == "", "counters only: no snapshots"
    assert "redis-cli" in redis["healthcheck"]["test"]
    for name in ("gateway", "users"):
        service = _service(compose, name)
        uri = urlsplit(service["environment"]["RATE_LIMIT_STORAGE_URI"])
        assert (uri.scheme, uri.hostname, uri.port) == ("redis", "redis", 6379), name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
