"""The Kubernetes pod specs as written: every Deployment, StatefulSet and Job of the rendered
`dev` and `prod` overlays, run on the Docker engine with the images built here, exactly as its
spec says (meshdev.podspecs translates it; its docstring says what this proves and what only a
real cluster does).

One network and one set of datastores per overlay: dev runs its own PostgreSQL and RabbitMQ
StatefulSets as written; prod has what its operators would create (one PostgreSQL standing for
every CloudNativePG cluster, with each cluster's database, owner and generated password; one
RabbitMQ with a generated default user) and throw-away values for the Secrets a secret manager
provides. Everything is reached under the Services' names, through network aliases; the test
itself talks only to ports published on 127.0.0.1.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import ClassVar

import pytest

from meshdev.deployfiles import (
    Cluster,
    Manifest,
    PodSpecError,
    container_env,
    expand,
    referenced_secrets,
)
from meshdev.docker import (
    app_image,
    docker,
    infrastructure_image,
    remove_containers,
    require_engine,
    require_images,
)
from meshdev.mesh import MESH
from meshdev.podspecs import (
    PROBE_KINDS,
    ContainerRun,
    OperatorStandIns,
    PodIdentity,
    PodNetwork,
    Probe,
    container_run,
    image_user,
    inspect,
    last_logs,
    local_image,
    oom_kills,
    operator_stand_ins,
    pod_name,
    pod_network,
    pod_template,
    rendered_overlay,
    throwaway_password,
    wait_for_probe,
    workloads,
)
from meshdev.stack import ed25519_pem

# Failure bounds only (a slow machine must not fail a test, a broken pod must not hang it).
PROBE_BOUND = 150.0
DATASTORE_BOUND = 180.0
JOB_BOUND = 180.0
# Memory emptyDirs live on this machine's tmpfs (meshdev.podspecs.EmptyDirectory).
SHARED_MEMORY = Path("/dev/shm")  # noqa: S108 - a private directory is made in it


def secret_manager_stand_ins() -> dict[str, dict[str, bytes]]:
    """The Secrets deploy/k8s/README.md asks operators to create from their secret manager
    (those pods read: `mesh-tls` is the Ingress'), with throw-away values."""
    return {"users-jwt": {"private-key.pem": ed25519_pem()}}


@cache
def rendered(overlay: str) -> list[Manifest]:
    return rendered_overlay(overlay)


def _mesh_order(name: str) -> int:
    """Datastores and other non-mesh workloads first, then the deployables in MESH's order, in
    which every one comes after those its /readyz asks."""
    order = [deployable.name for deployable in MESH]
    return order.index(name) + 1 if name in order else 0


def pods_of(manifests: list[Manifest]) -> list[str]:
    """`StatefulSet/<name>` and `Deployment/<name>`, in the order they are started."""
    statefulsets = [f"StatefulSet/{name}" for name in workloads(manifests, "StatefulSet")]
    deployments = sorted(workloads(manifests, "Deployment"), key=_mesh_order)
    return statefulsets + [f"Deployment/{name}" for name in deployments]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Cases per overlay (the test class) and per workload, so a failure names the pod spec."""
    overlay = getattr(metafunc.cls, "overlay", None)
    if overlay is None:
        return
    manifests = rendered(overlay)
    if "pod" in metafunc.fixturenames:
        names = pods_of(manifests)
        metafunc.parametrize("pod", names, ids=[n.lower().replace("/", "-") for n in names])
    if "job" in metafunc.fixturenames:
        metafunc.parametrize("job", list(workloads(manifests, "Job")))


@dataclass
class Started:
    run: ContainerRun | None = None
    error: str | None = None
    skip: str | None = None


@dataclass
class JobRun:
    exit_code: int | None
    oom_killed: bool
    user: str
    logs: str

    def problem(self) -> str | None:
        if self.exit_code != 0 or self.oom_killed:
            outcome = "did not finish" if self.exit_code is None else f"exit {self.exit_code}"
            return f"{outcome}, OOM-killed: {self.oom_killed}\n{self.logs}"
        return None


@dataclass
class RunningOverlay:
    """One overlay's pods on one network of the test's own, and how to run more."""

    overlay: str
    manifests: list[Manifest]
    cluster: Cluster
    network: PodNetwork
    files_root: Path
    memory_root: Path
    prefix: str
    containers: list[str] = field(default_factory=list)
    pods: dict[str, Started] = field(default_factory=dict)
    first_job_runs: dict[str, JobRun] = field(default_factory=dict)

    def translate(self, workload: Manifest, image: str) -> ContainerRun:
        namespace = workload["metadata"].get("namespace", "default")
        identity = PodIdentity(
            pod_name(workload), namespace, self.network.next_ip(), self.network.gateway
        )
        return container_run(
            workload,
            self.cluster,
            identity=identity,
            image=image,
            user_of_image=image_user(image),
            network=self.network.name,
            volumes_root=self.files_root,
            memory_root=self.memory_root,
            name_prefix=self.prefix,
        )

    def start(self, kind: str, name: str) -> Started:
        workload = workloads(self.manifests, kind)[name]
        spec_image = pod_template(workload)["spec"]["containers"][0]["image"]
        image = local_image(spec_image)
        if image is None:
            return Started(skip=f"{spec_image}: no image built here stands for it")
        try:
            run = self.translate(workload, image)
        except PodSpecError as error:
            return Started(error=f"{kind}/{name} cannot run as written: {error}")
        self.containers.append(run.name)
        try:
            run.start()
        except subprocess.CalledProcessError as error:
            return Started(run, error=f"docker run failed: {error.stderr}")
        return Started(run)

    def run_job(self, name: str) -> JobRun:
        """One pod of the Job, to its end (no retries: the first attempt must succeed)."""
        workload = workloads(self.manifests, "Job")[name]
        image = local_image(pod_template(workload)["spec"]["containers"][0]["image"])
        assert image is not None, f"Job {name}: no image built here stands for its image"
        run = self.translate(workload, image)
        self.containers.append(run.name)
        run.start()
        deadline = min(float(workload["spec"].get("activeDeadlineSeconds", JOB_BOUND)), JOB_BOUND)
        try:
            exit_code: int | None = int(docker("wait", run.name, timeout=deadline).stdout)
        except subprocess.TimeoutExpired:
            exit_code = None
        state = inspect(run.name)
        result = JobRun(
            exit_code,
            state["State"]["OOMKilled"] or bool(oom_kills(state["Id"])),
            state["Config"]["User"],
            last_logs(run.name),
        )
        remove_containers(run.name)
        return result


def _start_operator_datastores(running: RunningOverlay, stand_ins: OperatorStandIns) -> None:
    """What CloudNativePG and the RabbitMQ Cluster Operator would run, as plain containers."""
    if stand_ins.databases:
        init = running.files_root / "operator-postgresql-init"
        init.mkdir(mode=0o755, parents=True)
        statements = [
            f"CREATE ROLE \"{d.owner}\" LOGIN PASSWORD '{d.password}';\n"
            f'CREATE DATABASE "{d.name}" OWNER "{d.owner}";\n'
            for d in stand_ins.databases
        ]
        (init / "10-cnpg-bootstrap.sql").write_text("".join(statements))
        (init / "10-cnpg-bootstrap.sql").chmod(0o644)
        name = f"{running.prefix}-postgresql"
        running.containers.append(name)
        docker(
            "run", "--detach", "--pull", "never", "--name", name, "--label", "mesh.test=1",
            "--network", running.network.name, "--ip", running.network.next_ip(),
            *[arg for host in stand_ins.postgres_hosts for arg in ("--network-alias", host)],
            "--env", f"POSTGRES_PASSWORD={throwaway_password()}",
            "--volume", f"{init}:/docker-entrypoint-initdb.d:ro",
            infrastructure_image("POSTGRES"),
        )  # fmt: skip
        ready = ("pg_isready", "--username=postgres", "--host=127.0.0.1")
        _await(Probe("readinessProbe", "exec", command=ready, timeout=5), name)
    if stand_ins.rabbitmq_user is not None:
        name = f"{running.prefix}-rabbitmq"
        running.containers.append(name)
        docker(
            "run", "--detach", "--pull", "never", "--name", name, "--label", "mesh.test=1",
            "--network", running.network.name, "--ip", running.network.next_ip(),
            *[arg for host in stand_ins.rabbitmq_hosts for arg in ("--network-alias", host)],
            "--env", f"RABBITMQ_DEFAULT_USER={stand_ins.rabbitmq_user}",
            "--env", f"RABBITMQ_DEFAULT_PASS={stand_ins.rabbitmq_password}",
            infrastructure_image("RABBITMQ"),
        )  # fmt: skip
        ready = ("rabbitmq-diagnostics", "--quiet", "check_port_connectivity")
        _await(Probe("readinessProbe", "exec", command=ready, timeout=10), name)


def _await(probe: Probe, container: str) -> None:
    failure = wait_for_probe(probe, container, bound=DATASTORE_BOUND)
    if failure is not None:
        raise RuntimeError(f"{container} never became ready: {failure}\n{last_logs(container)}")


def _images(manifests: list[Manifest], stand_ins: OperatorStandIns) -> list[str]:
    images = {
        local_image(container["image"])
        for kind in ("Deployment", "StatefulSet", "Job")
        for workload in workloads(manifests, kind).values()
        for container in pod_template(workload)["spec"]["containers"]
    }
    if stand_ins.databases:
        images.add(infrastructure_image("POSTGRES"))
    if stand_ins.rabbitmq_user is not None:
        images.add(infrastructure_image("RABBITMQ"))
    return sorted(image for image in images if image is not None)


class PodSpecs:
    """The cases of one overlay (the subclasses say which)."""

    overlay: ClassVar[str]

    @pytest.fixture(scope="class")
    @classmethod
    def running(cls) -> Iterator[RunningOverlay]:
        require_engine()
        manifests = rendered(cls.overlay)
        stand_ins = operator_stand_ins(manifests)
        provided = dict(stand_ins.secrets)
        rendered_secrets = {m["metadata"]["name"] for m in manifests if m["kind"] == "Secret"}
        from_secret_manager = secret_manager_stand_ins()
        for name in referenced_secrets(manifests):
            if name in rendered_secrets or name in provided:
                continue
            assert name in from_secret_manager, (
                f"{cls.overlay}: pods read Secret {name!r}, which neither the overlay, an "
                "operator nor deploy/k8s/README.md's list of secret-manager Secrets provides"
            )
            provided[name] = from_secret_manager[name]
        require_images(_images(manifests, stand_ins))
        prefix = f"podspecs-{cls.overlay}-{secrets.token_hex(3)}"
        with ExitStack() as stack:
            network = stack.enter_context(pod_network(prefix))
            files_root = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
            stack.callback(shutil.rmtree, files_root, ignore_errors=True)
            memory_root = Path(
                tempfile.mkdtemp(
                    prefix=f"{prefix}-", dir=SHARED_MEMORY if SHARED_MEMORY.is_dir() else None
                )
            )
            stack.callback(shutil.rmtree, memory_root, ignore_errors=True)
            running = RunningOverlay(
                cls.overlay,
                manifests,
                Cluster(cls.overlay, manifests, provided),
                network,
                files_root,
                memory_root,
                prefix,
            )
            stack.callback(lambda: remove_containers(*running.containers))

            _start_operator_datastores(running, stand_ins)
            order = pods_of(manifests)
            for pod in [p for p in order if p.startswith("StatefulSet/")]:
                started = running.pods[pod] = running.start(*pod.split("/"))
                if started.run is not None and started.error is None:
                    _await(started.run.probes["readinessProbe"], started.run.name)
            # As `kubectl wait --for=condition=complete job --all` before the rollout.
            for job in workloads(manifests, "Job"):
                running.first_job_runs[job] = running.run_job(job)
            for pod in [p for p in order if p.startswith("Deployment/")]:
                running.pods[pod] = running.start(*pod.split("/"))
            yield running

    def test_pod_runs_as_written_and_answers_its_probes(
        self, running: RunningOverlay, pod: str
    ) -> None:
        started = running.pods[pod]
        if started.skip is not None:
            pytest.skip(started.skip)
        run = started.run
        assert started.error is None, (
            f"{started.error}\n{last_logs(run.name) if run is not None else ''}"
        )
        assert run is not None
        container = run.name
        for kind in PROBE_KINDS:
            if kind in run.probes:
                failure = wait_for_probe(run.probes[kind], run.name, bound=PROBE_BOUND)
                assert failure is None, f"{pod}: {kind} failed: {failure}\n{last_logs(run.name)}"

        def ids(option: str) -> str:
            return docker("exec", container, "id", option).stdout.strip()

        identity = run.identity
        assert ids("-u") == str(identity.expected_uid), f"{pod}: runs as another user"
        if identity.expected_gid is not None:
            assert ids("-g") == str(identity.expected_gid), f"{pod}: runs in another group"
        groups = ids("-G").split()
        assert set(map(str, identity.groups)) <= set(groups), f"{pod}: fsGroup missing: {groups}"
        state = inspect(run.name)
        assert state["HostConfig"]["ReadonlyRootfs"] is run.read_only, f"{pod}: root filesystem"
        assert state["State"]["Running"], f"{pod} stopped\n{last_logs(run.name)}"
        assert not state["State"]["OOMKilled"], f"{pod}: OOM-killed\n{last_logs(run.name)}"
        assert not oom_kills(state["Id"]), (
            f"{pod}: a process was killed at the memory limit ({run.memory} bytes)\n"
            f"{last_logs(run.name)}"
        )

    def test_job_completes_twice_in_a_row(self, running: RunningOverlay, job: str) -> None:
        first = running.first_job_runs[job]
        assert first.problem() is None, f"{job}, first run: {first.problem()}"
        second = running.run_job(job)
        assert second.problem() is None, f"{job}, second run: {second.problem()}"
        template = pod_template(workloads(running.manifests, "Job")[job])
        context = {
            **template["spec"].get("securityContext", {}),
            **template["spec"]["containers"][0].get("securityContext", {}),
        }
        expected = f"{context['runAsUser']}:{context['runAsGroup']}"
        assert (first.user, second.user) == (expected, expected)


class TestDev(PodSpecs):
    overlay = "dev"


class TestProd(PodSpecs):
    overlay = "prod"


# ---- the translation, without an engine --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expanded"),
    [
        ("$(A)-$(B)", "a-$(B)"),  # defined earlier: replaced; unknown: kept
        ("$$(A)", "$(A)"),  # escaped
        ("$$$(A)", "$a"),
        ("x$(A", "x$(A"),  # unclosed
        ("$A $ $", "$A $ $"),  # not a reference
        ("$(A)$(A)", "aa"),
    ],
)
def test_expansion_follows_kubernetes(value: str, expanded: str) -> None:
    assert expand(value, {"A": "a"}) == expanded


def test_a_variable_sees_only_those_defined_before_it() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "settings"}}],
        "env": [
            {"name": "URL", "value": "http://$(HOST):$(PORT)/$(NAME)"},
            {"name": "NAME", "value": "late"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
    }
    settings = {"kind": "ConfigMap", "metadata": {"name": "settings"}}
    cluster = Cluster("test", [settings | {"data": {"HOST": "users", "PORT": "8001"}}], {})
    identity = PodIdentity("users-0", "mesh", "10.0.0.2", "10.0.0.1")
    env = container_env(container, cluster, identity.fields({"spec": {}}))
    assert env["URL"] == "http://users:8001/$(NAME)"
    assert env["POD"] == "users-0"


def test_the_rendered_users_deployment_translates_to_docker_run(tmp_path: Path) -> None:
    manifests = rendered("dev")
    users = workloads(manifests, "Deployment")["users"]
    spec_image = pod_template(users)["spec"]["containers"][0]["image"]
    assert local_image(spec_image) == app_image("users")
    identity = PodIdentity("users-abc", "mesh", "10.0.0.7", "10.0.0.1")
    run = container_run(
        users,
        Cluster("dev", manifests, {}),
        identity=identity,
        image=app_image("users"),
        user_of_image="10001:10001",
        network="net",
        volumes_root=tmp_path / "disk",
        memory_root=tmp_path / "memory",
        name_prefix="t",
    )
    args = run.docker_args()
    for expected in (
        ["--user", "10001:10001"],
        ["--group-add", "10001"],
        ["--cap-drop", "ALL"],
        ["--security-opt", "no-new-privileges"],
        ["--volume", f"{tmp_path}/memory/users-abc/tmp:/tmp:rw"],
        ["--memory", "536870912", "--memory-swap", "536870912"],
        ["--network-alias", "users"],
        ["--entrypoint", "gunicorn", app_image("users"), "--config"],
    ):
        assert any(args[i : i + len(expected)] == expected for i in range(len(args))), expected
    assert "--read-only" in args
    assert run.env["DATABASE_URL"] == (
        "postgresql+asyncpg://users:dev-only-users-db-password@users-db-rw:5432/users"
    )
    assert run.env["K8S_POD_NAME"] == "users-abc"
    (key,) = run.files
    assert key.mount_path == "/var/run/secrets/mesh/jwt"
    assert [(path, mode) for path, _, mode in key.files] == [("private-key.pem", 0o440)]
    assert key.group == 10001
    assert run.probes["readinessProbe"].port == 8001


def test_production_images_stand_for_the_local_builds() -> None:
    prod = workloads(rendered("prod"), "Deployment")
    for name in ("gateway", "users", "orders", "notifications"):
        spec_image = pod_template(prod[name])["spec"]["containers"][0]["image"]
        assert local_image(spec_image) == app_image(name)
    assert local_image("registry.example.com/mesh/users:1.2.3@sha256:" + "0" * 64) == app_image(
        "users"
    )
    assert local_image("redis:7.4.7") == infrastructure_image("REDIS")
    assert local_image("jaegertracing/jaeger:2.7.0") is None
