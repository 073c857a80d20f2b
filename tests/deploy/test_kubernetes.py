"""deploy/k8s: every overlay runs every deployable as the code expects, hardened.

Rendered with kustomize (the pinned kubectl); schema validation, checkov and yamllint run in
`make deploy-check`. These tests check what schemas cannot: agreement with the code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import yaml
from sqlalchemy.engine import make_url

from meshdev.deployfiles import (
    K8S,
    OBSERVABILITY,
    ROOT,
    Cluster,
    Manifest,
    container_env,
    dockerfile_stages,
    expand,
    prometheus_rules,
    referenced_secrets,
    settings_class,
    settings_from,
)
from meshdev.mesh import Deployable
from meshdev.processes import production_command

WORKLOADS = ("Deployment", "StatefulSet", "Job")
# Written from the contract; MESH grows to the same set as the services are merged.
EXPECTED_DEPLOYABLES = {"gateway", "users", "orders", "notifications"}
CONTAINER_TMP = "/tmp"  # noqa: S108 - a path inside the containers, not a file here
SENSITIVE = re.compile(r"(PASSWORD|SECRET|TOKEN|PRIVATE_KEY|API_KEY)$")


def _deployment(cluster: Cluster, name: str) -> Manifest:
    deployment = cluster.get("Deployment", name)
    assert deployment is not None, f"{cluster.name}: no Deployment {name!r}"
    return deployment


def _container(workload: Manifest) -> Manifest:
    containers: list[Manifest] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container per pod"
    return containers[0]


def _app_deployments(cluster: Cluster) -> Iterator[Manifest]:
    """Every deployable of the mesh in the manifests, merged into MESH or not yet."""
    for deployment in cluster.named("Deployment").values():
        if deployment["metadata"]["labels"].get("app.kubernetes.io/part-of") == "mesh":
            yield deployment


def _workloads(cluster: Cluster) -> Iterator[Manifest]:
    for kind in WORKLOADS:
        yield from cluster.named(kind).values()


def _containers(workload: Manifest) -> list[Manifest]:
    spec = workload["spec"]["template"]["spec"]
    containers: list[Manifest] = spec.get("initContainers", []) + spec["containers"]
    return containers


# ---- agreement with the code -------------------------------------------------------------------


def test_every_deployable_runs_the_production_command(
    clusters: dict[str, Cluster], overlay: str, deployable: Deployable
) -> None:
    container = _container(_deployment(clusters[overlay], deployable.name))
    assert container["command"] == production_command(deployable.package)
    assert container.get("args") is None


def test_every_deployable_listens_and_is_probed_on_its_port(
    clusters: dict[str, Cluster], overlay: str, deployable: Deployable
) -> None:
    cluster = clusters[overlay]
    container = _container(_deployment(cluster, deployable.name))
    env = container_env(container, cluster)
    assert env["PORT"] == str(deployable.port)
    assert env["OTEL_SERVICE_NAME"] == deployable.name
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": deployable.port}
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe


def test_every_deployable_is_reachable_through_its_service(
    clusters: dict[str, Cluster], overlay: str, deployable: Deployable
) -> None:
    cluster = clusters[overlay]
    service = cluster.get("Service", deployable.name)
    assert service is not None
    assert service["spec"]["ports"] == [
        {"name": "http", "port": deployable.port, "targetPort": "http", "protocol": "TCP"}
    ]
    pod_labels = _deployment(cluster, deployable.name)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_every_deployable_gets_the_settings_it_requires(
    clusters: dict[str, Cluster], overlay: str, deployable: Deployable
) -> None:
    cluster = clusters[overlay]
    deployment = _deployment(cluster, deployable.name)
    container = _container(deployment)
    env = container_env(container, cluster)
    unresolved = {k: v for k, v in env.items() if "$(" in v}
    assert not unresolved, f"references to undefined variables: {unresolved}"
    settings = settings_from(deployable.package, env)
    if settings.database_url is not None:
        assert make_url(settings.database_url).database == deployable.database
    key_file = getattr(settings, "jwt_private_key_file", None)
    if key_file is not None:
        secret_volumes = {
            v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v
        }
        mounts = [m for m in container["volumeMounts"] if m["name"] in secret_volumes]
        assert any(str(key_file).startswith(m["mountPath"] + "/") for m in mounts), key_file


def test_gunicorn_stops_gracefully_within_the_grace_period(
    clusters: dict[str, Cluster], overlay: str, deployable: Deployable
) -> None:
    cluster = clusters[overlay]
    pod = _deployment(cluster, deployable.name)["spec"]["template"]["spec"]
    container = _container(_deployment(cluster, deployable.name))
    graceful_timeout = int(container_env(container, cluster).get("GRACEFUL_TIMEOUT", "20"))
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    # The kubelet kills at the deadline: the preStop delay plus gunicorn's graceful stop must
    # end before it, with room for the master to exit.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + graceful_timeout + 5


def test_every_database_has_a_migration_job(
    clusters: dict[str, Cluster], overlay: str, migrating: Deployable
) -> None:
    cluster = clusters[overlay]
    job = cluster.get("Job", f"{migrating.name}-migrate")
    assert job is not None
    container = _container(job)
    assert container["command"] == ["python", "-m", f"{migrating.package}.migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    service_env = container_env(_container(_deployment(cluster, migrating.name)), cluster)
    job_env = container_env(container, cluster)
    assert job_env["DATABASE_URL"] == service_env["DATABASE_URL"]
    # `<package>.migrate` reads the service's settings class, as strictly as the service does.
    settings_from(migrating.package, job_env)


# ---- the same shape for every deployable in the manifests (merged into MESH or not yet) ------


def test_every_app_deployment_agrees_with_its_image_and_compose(
    clusters: dict[str, Cluster], compose: dict[str, Any]
) -> None:
    stages = dockerfile_stages(ROOT / "Dockerfile")
    for cluster in clusters.values():
        deployments = list(_app_deployments(cluster))
        assert {d["metadata"]["name"] for d in deployments} == EXPECTED_DEPLOYABLES
        for deployment in deployments:
            name = deployment["metadata"]["name"]
            container = _container(deployment)
            package = container["command"][-1].removesuffix(".main:create_app()")
            assert container["command"] == production_command(package), name
            assert json.loads(stages[name].last("CMD") or "null") == container["command"], name
            port = str(container["ports"][0]["containerPort"])
            assert stages[name].env()["PORT"] == port, name
            assert container_env(container, cluster)["PORT"] == port, name
            assert compose["services"][name]["environment"]["PORT"] == port, name
            service = cluster.get("Service", name)
            assert service is not None
            assert str(service["spec"]["ports"][0]["port"]) == port


# ---- secrets -----------------------------------------------------------------------------------


def _operator_secrets(cluster: Cluster) -> set[str]:
    """Secrets the prod operators create: CloudNativePG `<cluster>-app`, RabbitMQ
    `<cluster>-default-user`."""
    return {f"{name}-app" for name in cluster.named("Cluster")} | {
        f"{name}-default-user" for name in cluster.named("RabbitmqCluster")
    }


def test_every_referenced_secret_is_provided_or_documented(clusters: dict[str, Cluster]) -> None:
    readme = (K8S / "README.md").read_text()
    for overlay, cluster in clusters.items():
        if overlay == "base":
            continue
        rendered = set(cluster.named("Secret")) | _operator_secrets(cluster)
        missing = referenced_secrets(cluster.objects) - rendered
        if overlay == "dev":
            # A development cluster must come up from this repository alone.
            assert not missing, f"dev overlay does not generate {missing}"
        for name in missing:
            assert f"`{name}`" in readme, (
                f"{overlay}: Secret {name} is neither created nor documented"
            )


def test_no_secret_is_written_into_a_manifest(clusters: dict[str, Cluster]) -> None:
    for cluster in clusters.values():
        for workload in _workloads(cluster):
            for container in _containers(workload):
                for variable in container.get("env", []):
                    value = variable.get("value")
                    if value is None:
                        continue
                    assert not SENSITIVE.search(variable["name"]), variable
                    if "://" in value and "@" in value:
                        password = value.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
                        assert re.fullmatch(r"\$\([A-Z_]+\)", password), variable
        for config_map in cluster.named("ConfigMap").values():
            for key, value in config_map.get("data", {}).items():
                assert not SENSITIVE.search(key), (config_map["metadata"]["name"], key)
                assert "@" not in str(value) or "://" not in str(value), key


def test_dev_secrets_are_generated_and_labelled(clusters: dict[str, Cluster]) -> None:
    for overlay, cluster in clusters.items():
        for secret in cluster.named("Secret").values():
            assert overlay == "dev", f"{overlay} must not carry Secrets: {secret['metadata']}"
            assert secret["metadata"]["labels"]["mesh/dev-only"] == "true"


# ---- hardening (restricted Pod Security Standard, resources) -----------------------------------


def test_every_pod_is_restricted(clusters: dict[str, Cluster]) -> None:
    for cluster in clusters.values():
        for workload in _workloads(cluster):
            name = f"{cluster.name}/{workload['kind']}/{workload['metadata']['name']}"
            pod = workload["spec"]["template"]["spec"]
            assert pod["automountServiceAccountToken"] is False, name
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod["securityContext"]["runAsUser"] >= 10000, name
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
            for container in _containers(workload):
                context = container["securityContext"]
                assert context["allowPrivilegeEscalation"] is False, name
                assert context["readOnlyRootFilesystem"] is True, name
                assert context["runAsNonRoot"] is True, name
                assert context["capabilities"] == {"drop": ["ALL"]}, name
                assert set(container["resources"]) == {"requests", "limits"}, name
                assert set(container["resources"]["limits"]) >= {"cpu", "memory"}, name


def test_every_app_pod_has_a_writable_tmp(clusters: dict[str, Cluster]) -> None:
    for cluster in clusters.values():
        for workload in _workloads(cluster):
            if workload["metadata"]["labels"].get("app.kubernetes.io/part-of") != "mesh":
                continue
            pod = workload["spec"]["template"]["spec"]
            empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
            mounts = {m["mountPath"]: m["name"] for m in _container(workload)["volumeMounts"]}
            assert mounts.get(CONTAINER_TMP) in empty_dirs, workload["metadata"]["name"]


def test_every_namespace_denies_by_default(clusters: dict[str, Cluster]) -> None:
    for cluster in clusters.values():
        deny = cluster.get("NetworkPolicy", "mesh-default-deny")
        assert deny is not None
        assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
        # Every object but the namespace itself is in it: one without a namespace would land
        # in whatever namespace `kubectl apply` was run against.
        outside = [
            (o["kind"], o["metadata"]["name"])
            for o in cluster.objects
            if o["kind"] != "Namespace" and o["metadata"].get("namespace") != "mesh"
        ]
        assert outside == [], cluster.name


def test_every_app_pod_exports_telemetry_to_a_collector(
    clusters: dict[str, Cluster], overlay: str
) -> None:
    cluster = clusters[overlay]
    for deployment in _app_deployments(cluster):
        env = container_env(_container(deployment), cluster)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4318"), deployment["metadata"]
        assert "k8s.pod.name=" in env["OTEL_RESOURCE_ATTRIBUTES"]


def test_pods_leave_their_logs_to_the_clusters_log_agent(
    clusters: dict[str, Cluster], overlay: str
) -> None:
    """In a cluster the JSON lines on stdout are the log path (the node's agent ships them);
    exporting them over OTLP as well would store every line twice. The dev collector has no
    logs pipeline either."""
    cluster = clusters[overlay]
    for deployment in _app_deployments(cluster):
        env = container_env(_container(deployment), cluster)
        assert env["OTEL_LOGS_EXPORTER"] == "none", deployment["metadata"]["name"]


# ---- overlays ----------------------------------------------------------------------------------


def test_dev_runs_its_own_datastores_and_tracing(clusters: dict[str, Cluster]) -> None:
    dev = clusters["dev"]
    assert set(dev.named("StatefulSet")) == {"postgresql", "rabbitmq"}
    assert {"otel-collector", "jaeger"} <= set(dev.named("Deployment"))
    for deployment in _app_deployments(dev):
        env = container_env(_container(deployment), dev)
        for key in ("DATABASE_HOST", "RABBITMQ_HOST"):
            if key in env:
                assert dev.get("Service", env[key]) is not None, (deployment["metadata"], key)
        host = env["OTEL_EXPORTER_OTLP_ENDPOINT"].split("//")[1].split(":")[0]
        assert dev.get("Service", host) is not None


def _prod_overlays(clusters: dict[str, Cluster]) -> Iterator[Cluster]:
    prod = [c for name, c in clusters.items() if name.startswith("prod")]
    assert prod, "no production overlay"
    yield from prod


def test_production_is_highly_available(clusters: dict[str, Cluster]) -> None:
    for cluster in _prod_overlays(clusters):
        for deployment in _app_deployments(cluster):
            name = deployment["metadata"]["name"]
            assert deployment["spec"]["replicas"] >= 2, name
            hpa = cluster.get("HorizontalPodAutoscaler", name)
            assert hpa is not None, name
            assert hpa["spec"]["minReplicas"] >= 2, name
            assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"], name
            pdb = cluster.get("PodDisruptionBudget", name)
            assert pdb is not None, name
            assert pdb["spec"]["maxUnavailable"] == 1, name
            spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
            hard = {c["topologyKey"] for c in spread if c["whenUnsatisfiable"] == "DoNotSchedule"}
            assert "kubernetes.io/hostname" in hard, name
            image = _container(deployment)["image"]
            assert image.startswith("registry.example.com/mesh/"), image


def test_production_samples_traces_at_the_edge_and_dev_keeps_all(
    clusters: dict[str, Cluster],
) -> None:
    for cluster in _prod_overlays(clusters):
        for deployment in _app_deployments(cluster):
            env = container_env(_container(deployment), cluster)
            assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio", cluster.name
            assert 0 < float(env["OTEL_TRACES_SAMPLER_ARG"]) < 1, cluster.name
    for deployment in _app_deployments(clusters["dev"]):
        env = container_env(_container(deployment), clusters["dev"])
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_always_on"


def test_prod_runs_replicated_operator_clusters(
    clusters: dict[str, Cluster], migrating: Deployable
) -> None:
    prod = clusters["prod"]
    database = prod.get("Cluster", f"{migrating.database}-db")
    assert database is not None
    assert database["spec"]["instances"] >= 3
    initdb: dict[str, Any] = database["spec"]["bootstrap"]["initdb"]
    assert initdb == {"database": migrating.database, "owner": migrating.database}
    labels = database["spec"]["inheritedMetadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "postgresql"  # what the egress policy allows
    env = container_env(_container(_deployment(prod, migrating.name)), prod)
    assert env["DATABASE_HOST"] == f"{migrating.database}-db-rw"
    rabbitmq = prod.get("RabbitmqCluster", "rabbitmq")
    assert rabbitmq is not None
    assert rabbitmq["spec"]["replicas"] >= 3


# ---- monitoring (prometheus-operator) ------------------------------------------------------------


def _service_monitor(cluster: Cluster, name: str) -> Manifest:
    monitor = cluster.get("ServiceMonitor", name)
    assert monitor is not None, f"{cluster.name}: no ServiceMonitor {name!r}"
    return monitor


def test_production_alerts_with_the_one_rules_file(clusters: dict[str, Cluster]) -> None:
    for cluster in _prod_overlays(clusters):
        rule = cluster.get("PrometheusRule", "mesh")
        assert rule is not None, cluster.name
        assert rule["metadata"]["namespace"] == "mesh"
        assert rule["spec"] == prometheus_rules(), f"{cluster.name}: the rules were changed"
    assert "PrometheusRule" not in clusters["dev"].by_kind  # dev runs no Prometheus


def test_production_scrapes_the_collector_keeping_the_services_job_labels(
    clusters: dict[str, Cluster],
) -> None:
    collector = yaml.safe_load((OBSERVABILITY / "otel-collector.yaml").read_text())
    assert "prometheus" in collector["service"]["pipelines"]["metrics"]["exporters"]
    for cluster in _prod_overlays(clusters):
        monitor = _service_monitor(cluster, "otel-collector")
        assert monitor["metadata"]["namespace"] == "mesh"
        assert monitor["spec"]["selector"] == {
            "matchLabels": {"app.kubernetes.io/name": "otel-collector"}
        }
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == "prometheus"
        assert endpoint["honorLabels"] is True  # job = service.name, as the rules expect
    # The collector the dev overlay runs carries the label the ServiceMonitor selects.
    service = clusters["dev"].get("Service", "otel-collector")
    assert service is not None
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == "otel-collector"


def test_prod_scrapes_rabbitmq_per_queue_as_compose_does(clusters: dict[str, Cluster]) -> None:
    prod = clusters["prod"]
    broker = prod.get("RabbitmqCluster", "rabbitmq")
    assert broker is not None
    monitor = _service_monitor(prod, "rabbitmq")
    # The operator labels the Service of a RabbitmqCluster with its name and component.
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": broker["metadata"]["name"],
        "app.kubernetes.io/component": "rabbitmq",
    }
    (endpoint,) = monitor["spec"]["endpoints"]
    scrape = yaml.safe_load((OBSERVABILITY / "prometheus.yaml").read_text())["scrape_configs"]
    (compose_job,) = [job for job in scrape if job["job_name"] == "rabbitmq"]
    assert endpoint["port"] == "prometheus"
    assert endpoint["path"] == compose_job["metrics_path"]
    port = int(compose_job["static_configs"][0]["targets"][0].rsplit(":", 1)[1])
    policy = prod.get("NetworkPolicy", "rabbitmq")
    assert policy is not None
    scrapers = [
        rule["from"]
        for rule in policy["spec"]["ingress"]
        if {"port": port, "protocol": "TCP"} in rule["ports"]
    ]
    assert scrapers, f"no NetworkPolicy lets Prometheus reach RabbitMQ's :{port}"
    # With managed datastores there is no broker in the cluster to scrape.
    assert clusters["prod-managed"].get("ServiceMonitor", "rabbitmq") is None


def test_expand_follows_kubernetes_rules() -> None:
    assert expand("a$(X)b$(Y)", {"X": "1"}) == "a1b$(Y)"


def test_compose_and_every_overlay_set_the_same_settings(
    clusters: dict[str, Cluster], compose: dict[str, Any], overlay: str, deployable: Deployable
) -> None:
    """A setting added to one way of running the mesh is added to all of them."""
    fields = {name.upper() for name in settings_class(deployable.package).model_fields}
    in_compose = fields & set(compose["services"][deployable.name]["environment"])
    cluster = clusters[overlay]
    in_overlay = fields & set(
        container_env(_container(_deployment(cluster, deployable.name)), cluster)
    )
    assert in_compose == in_overlay


def test_forwarded_headers_are_trusted_only_behind_a_network_policy(
    clusters: dict[str, Cluster],
) -> None:
    """Trusting X-Forwarded-For from any peer is safe only when the peers are known."""
    for cluster in clusters.values():
        policies = list(cluster.named("NetworkPolicy").values())
        for deployment in _app_deployments(cluster):
            env = container_env(_container(deployment), cluster)
            if env.get("FORWARDED_ALLOW_IPS") != "*":
                continue
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            ingress_rules = [
                rule
                for policy in policies
                if "Ingress" in policy["spec"]["policyTypes"]
                and policy["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
                and policy["spec"]["podSelector"] != {}
                for rule in policy["spec"].get("ingress", [])
            ]
            name = f"{cluster.name}/{deployment['metadata']['name']}"
            assert ingress_rules, f"{name} trusts X-Forwarded-For without an ingress policy"
            for rule in ingress_rules:
                assert rule.get("from"), f"{name}: an ingress rule admits every peer"
                assert all("ipBlock" not in peer for peer in rule["from"]), name


# ---- rate-limit counters (components/redis) ------------------------------------------------------

RATE_LIMITED = ("gateway", "users")  # the deployables whose limits must hold across replicas


def _selects(selector: Manifest, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions with In) against a pod's labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def test_every_overlay_shares_the_rate_limit_counters_in_its_redis(
    clusters: dict[str, Cluster], overlay: str
) -> None:
    cluster = clusters[overlay]
    policies = list(cluster.named("NetworkPolicy").values())
    for name in RATE_LIMITED:
        deployment = _deployment(cluster, name)
        uri = urlsplit(container_env(_container(deployment), cluster)["RATE_LIMIT_STORAGE_URI"])
        assert uri.scheme == "redis", f"{overlay}/{name}: counters per process"
        service = cluster.get("Service", uri.hostname or "")
        assert service is not None, f"{overlay}/{name}: no Service {uri.hostname}"
        assert [p["port"] for p in service["spec"]["ports"]] == [uri.port]
        (redis,) = [
            d
            for d in cluster.named("Deployment").values()
            if service["spec"]["selector"].items() <= _pod_labels(d).items()
        ]
        client, server = _pod_labels(deployment), _pod_labels(redis)
        port = {"port": uri.port, "protocol": "TCP"}
        egress = [
            rule
            for policy in policies
            if _selects(policy["spec"]["podSelector"], client)
            for rule in policy["spec"].get("egress", [])
            if port in rule.get("ports", [])
            and any(_selects(peer["podSelector"], server) for peer in rule["to"])
        ]
        assert egress, f"{overlay}: no NetworkPolicy lets {name} reach Redis"
        ingress = [
            rule
            for policy in policies
            if "Ingress" in policy["spec"]["policyTypes"]
            and policy["spec"]["podSelector"] != {}
            and _selects(policy["spec"]["podSelector"], server)
            for rule in policy["spec"].get("ingress", [])
            if port in rule.get("ports", [])
        ]
        assert any(
            _selects(peer["podSelector"], client) for rule in ingress for peer in rule["from"]
        ), f"{overlay}: Redis does not admit {name}"


def test_redis_admits_only_the_rate_limited_deployables(
    clusters: dict[str, Cluster], compose: dict[str, Any], overlay: str
) -> None:
    cluster = clusters[overlay]
    redis = _deployment(cluster, "redis")
    policy = cluster.get("NetworkPolicy", "redis")
    assert policy is not None
    assert _selects(policy["spec"]["podSelector"], _pod_labels(redis))
    assert policy["spec"]["egress"] == [], "Redis calls nobody"
    admitted = {
        workload["metadata"]["name"]
        for workload in _workloads(cluster)
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
        if _selects(peer["podSelector"], _pod_labels(workload))
    }
    assert admitted == set(RATE_LIMITED), "not even the users migration Job"
    container = _container(redis)
    assert container["image"] == compose["services"]["redis"]["image"], "one Redis version"
    command = container["command"]
    assert command[command.index("--save") + 1] == "", "counters only: no snapshots"
