"""Kubernetes pod specs as written, run on a Docker engine: a rendered Deployment's, StatefulSet's
or Job's pod template translated into `docker run` arguments, and its probes asked as the kubelet
asks them.

What running them this way proves: the images start with the spec's command and args; their
environment (ConfigMaps, Secrets, the downward API, Kubernetes' `$(VAR)` expansion) is complete
and right; they work under the spec's security context (user and groups, non-root, read-only
root filesystem, every capability dropped, no privilege escalation), with its volumes (emptyDirs
and claims as fresh empty directories, Secret and ConfigMap files with their modes, owned by
fsGroup as the kubelet leaves them) and within its memory limit; they reach each other and their
datastores under the Services' names; and every startup, readiness and liveness probe answers as
it expects.

What only a real cluster proves: NetworkPolicies (the test's network lets everything through),
the probes' timing (delays, periods, thresholds, restarts), rolling updates, replicas and
topology spread, HPA and PDB, the kubelet's preStop hook and the termination grace period,
Service routing and load balancing (a network alias on one container stands for a Service, with
no port translation), how the node's volume plugins apply fsGroup, emptyDir size limits, seccomp
profiles (the engine's default applies), ephemeral-storage and CPU-request scheduling, image
pulls, admission (Pod Security) and the operators' own pods.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import httpx

from meshdev.deployfiles import (
    K8S,
    Cluster,
    Manifest,
    PodSpecError,
    container_env,
    expand,
    render,
)
from meshdev.docker import DEPLOYABLES, app_image, docker, infrastructure_image

FAKE_NODE = "podspecs-node"
PROBE_KINDS = ("startupProbe", "readinessProbe", "livenessProbe")


# ---- rendering ---------------------------------------------------------------------------------


def rendered_overlay(overlay: str) -> list[Manifest]:
    """`kubectl kustomize deploy/k8s/overlays/<overlay>` (the pinned kubectl, as tests/deploy)."""
    try:
        return render(K8S / "overlays" / overlay)
    except subprocess.CalledProcessError as error:
        raise PodSpecError(f"kubectl kustomize {overlay}: {error.stderr.strip()}") from error


def workloads(manifests: Sequence[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def pod_template(workload: Manifest) -> Manifest:
    template: Manifest = workload["spec"]["template"]
    return template


# ---- quantities --------------------------------------------------------------------------------

_SUFFIXES = {
    "": Fraction(1),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def quantity(value: str | int | float) -> Fraction:
    """A Kubernetes resource quantity (`512Mi`, `250m`, `1`, `2G`) as an exact number."""
    match = _QUANTITY.match(str(value).strip())
    if match is None or match[2] not in _SUFFIXES:
        raise PodSpecError(f"not a Kubernetes quantity: {value!r}")
    return Fraction(match[1]) * _SUFFIXES[match[2]]


# ---- what the operators would create (components/operators) ------------------------------------


def throwaway_password() -> str:
    """URL-safe, as the operators generate them and as the services' URLs need."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Database:
    """One CloudNativePG Cluster's application database, as its operator bootstraps it."""

    cluster: str
    name: str
    owner: str
    password: str


@dataclass(frozen=True)
class OperatorStandIns:
    """What CloudNativePG and the RabbitMQ Cluster Operator would create for the overlay's
    custom resources: the Secrets, the databases with their owners, the Services' names."""

    secrets: dict[str, dict[str, bytes]]
    databases: tuple[Database, ...]
    postgres_hosts: tuple[str, ...]
    rabbitmq_hosts: tuple[str, ...]
    rabbitmq_user: str | None
    rabbitmq_password: str | None


def operator_stand_ins(manifests: Sequence[Manifest]) -> OperatorStandIns:
    """Per CloudNativePG `Cluster` <c>: the Secret `<c>-app` (the `initdb` owner's username and
    a password), the database, the Services `<c>-rw`, `<c>-ro`, `<c>-r`. Per `RabbitmqCluster`
    <r>: the Secret `<r>-default-user` (a generated user) and the Services `<r>`, `<r>-nodes`."""
    found: dict[str, dict[str, bytes]] = {}
    databases: list[Database] = []
    postgres_hosts: list[str] = []
    rabbitmq_hosts: list[str] = []
    user = password = None
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        namespace = manifest["metadata"].get("namespace", "default")
        if manifest["kind"] == "Cluster" and manifest["apiVersion"].startswith("postgresql.cnpg"):
            initdb = manifest["spec"].get("bootstrap", {}).get("initdb", {})
            database = Database(
                name,
                initdb.get("database", "app"),
                initdb.get("owner", "app"),
                throwaway_password(),
            )
            databases.append(database)
            host = f"{name}-rw"
            found[f"{name}-app"] = {
                "username": database.owner.encode(),
                "user": database.owner.encode(),
                "password": database.password.encode(),
                "dbname": database.name.encode(),
                "host": host.encode(),
                "port": b"5432",
            }
            for suffix in ("rw", "ro", "r"):
                postgres_hosts.extend(dns_names(f"{name}-{suffix}", namespace))
        elif manifest["kind"] == "RabbitmqCluster":
            user, password = f"default_user_{secrets.token_urlsafe(15)}", throwaway_password()
            found[f"{name}-default-user"] = {
                "username": user.encode(),
                "password": password.encode(),
                "host": f"{name}.{namespace}.svc".encode(),
                "port": b"5672",
            }
            rabbitmq_hosts.extend(
                dns_names(name, namespace) + dns_names(f"{name}-nodes", namespace)
            )
    return OperatorStandIns(
        found, tuple(databases), tuple(postgres_hosts), tuple(rabbitmq_hosts), user, password
    )


# ---- the pod's identity (what the API server and the kubelet fill in) --------------------------


@dataclass(frozen=True)
class PodIdentity:
    name: str
    namespace: str
    ip: str
    host_ip: str
    node_name: str = FAKE_NODE
    uid: str = field(default_factory=lambda: secrets.token_hex(16))

    def fields(self, template: Manifest) -> dict[str, str]:
        """The downward API's values (`fieldRef`) for the pod of `template`."""
        metadata = template.get("metadata", {})
        return {
            f"metadata.{section}['{key}']": str(value)
            for section in ("labels", "annotations")
            for key, value in metadata.get(section, {}).items()
        } | {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
            "spec.nodeName": self.node_name,
            "spec.serviceAccountName": template["spec"].get("serviceAccountName", "default"),
            "status.hostIP": self.host_ip,
            "status.hostIPs": self.host_ip,
            "status.podIP": self.ip,
            "status.podIPs": self.ip,
        }


def pod_name(workload: Manifest) -> str:
    """A name as the controllers give one: `<deployment>-<hash>-<id>`, `<statefulset>-0`,
    `<job>-<id>`."""
    name, kind = workload["metadata"]["name"], workload["kind"]
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # the controllers' "safe" characters

    def random(length: int) -> str:
        return "".join(secrets.choice(alphabet) for _ in range(length))

    if kind == "StatefulSet":
        return f"{name}-0"
    if kind == "Deployment":
        return f"{name}-{random(10)}-{random(5)}"
    return f"{name}-{random(5)}"


# ---- security context --------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who the container's processes are: `--user uid[:gid]` and the supplementary groups."""

    user: str | None  # None: the image's USER
    groups: tuple[int, ...]
    expected_uid: int
    expected_gid: int | None


def process_identity(template: Manifest, container: Manifest, image_user: str) -> Identity:
    """The pod's and the container's securityContext (the container's wins), checked the way
    the kubelet checks `runAsNonRoot` against the image's user when no runAsUser is given."""
    pod = template["spec"].get("securityContext", {})
    own = container.get("securityContext", {})
    uid = own.get("runAsUser", pod.get("runAsUser"))
    gid = own.get("runAsGroup", pod.get("runAsGroup"))
    non_root = own.get("runAsNonRoot", pod.get("runAsNonRoot", False))
    image_uid_text = image_user.partition(":")[0] or "0"
    if uid is None and not image_uid_text.isdigit():
        if non_root:
            raise PodSpecError(
                f"image's user {image_user!r} is not numeric: the kubelet cannot verify "
                "runAsNonRoot"
            )
        raise PodSpecError(f"image's user {image_user!r} is not numeric: give runAsUser")
    effective_uid = int(uid) if uid is not None else int(image_uid_text)
    if non_root and effective_uid == 0:
        raise PodSpecError("runAsNonRoot, and the container would run as root (UID 0)")
    user = None
    if uid is not None or gid is not None:
        user = str(effective_uid) + (f":{gid}" if gid is not None else "")
    groups = [int(g) for g in pod.get("supplementalGroups", [])]
    if pod.get("fsGroup") is not None:
        groups.append(int(pod["fsGroup"]))
    return Identity(user, tuple(dict.fromkeys(groups)), effective_uid, gid)


# ---- volumes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileVolume:
    """A Secret or ConfigMap volume: its files written to a directory of this machine and mounted
    read-only, owned root:fsGroup and group-readable as the kubelet leaves them."""

    name: str
    mount_path: str
    files: tuple[tuple[str, bytes, int], ...]  # path in the volume, content, mode
    group: int | None
    sub_path: str | None = None

    def write(self, root: Path) -> Path:
        directory = root / self.name
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
        for path, content, mode in self.files:
            target = directory / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            target.chmod(mode)
            if self.group is not None:
                try:
                    os.chown(target, 0, self.group)
                except PermissionError as error:
                    raise PodSpecError(
                        f"volume {self.name}: cannot give {path} to root:{self.group} "
                        "(run as root, or without fsGroup)"
                    ) from error
        return directory


def _file_volume(
    volume: Manifest, mount: Manifest, cluster: Cluster, fs_group: int | None
) -> FileVolume:
    kind = "Secret" if "secret" in volume else "ConfigMap"
    source = volume["secret" if kind == "Secret" else "configMap"]
    object_name = source["secretName"] if kind == "Secret" else source["name"]
    values = cluster.values(kind, object_name)
    if values is None:
        raise PodSpecError(f"{kind} {object_name!r} does not exist: the pod would not start")
    default_mode = int(source.get("defaultMode", 0o644))
    items = source.get("items") or [{"key": key, "path": key} for key in values]
    files = []
    for item in items:
        if item["key"] not in values:
            raise PodSpecError(f"{kind} {object_name!r} has no key {item['key']!r}")
        mode = int(item.get("mode", default_mode))
        if fs_group is not None:
            mode |= 0o440  # the kubelet makes volume files group-readable for fsGroup
        files.append((item["path"], values[item["key"]], mode))
    return FileVolume(
        volume["name"], mount["mountPath"], tuple(files), fs_group, mount.get("subPath")
    )


@dataclass(frozen=True)
class EmptyDirectory:
    """An emptyDir (or a StatefulSet's claim, a fresh volume too): a new empty directory of this
    machine, writable by everyone (`0777`) and owned by fsGroup with the set-group-ID bit, as the
    kubelet leaves it. `medium: Memory` puts it on this machine's /dev/shm (a tmpfs; the pages
    the container writes count in its memory limit, as in a cluster), the others on disk.

    Not Docker's `--tmpfs`: Docker copies the image's directory at that path (its files and its
    mode) into the tmpfs, where Kubernetes mounts an empty directory over it. The sizeLimit is
    not enforced (a cluster evicts the pod, or the tmpfs is full)."""

    name: str
    mount_path: str
    group: int | None
    memory: bool
    read_only: bool = False

    def create(self, root: Path) -> Path:
        directory = root / self.name
        directory.mkdir(parents=True, exist_ok=True)
        if self.group is not None:
            os.chown(directory, 0, self.group)
        directory.chmod(0o2777 if self.group is not None else 0o777)
        return directory


# ---- probes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One of the container's probes; `check` asks it once, as the kubelet would."""

    kind: str  # startupProbe, readinessProbe or livenessProbe
    action: Literal["httpGet", "tcpSocket", "exec"]
    port: int | None = None  # container port
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    timeout: float = 1.0

    def check(self, container: str) -> str | None:
        """None when the probe succeeds, else why it failed."""
        if self.action == "exec":
            try:
                answer = docker("exec", container, *self.command, check=False, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                return f"exec {list(self.command)}: no answer within {self.timeout} s"
            if answer.returncode != 0:
                output = (answer.stdout + answer.stderr).strip()[-300:]
                return f"exec {list(self.command)}: exit {answer.returncode}: {output}"
            return None
        assert self.port is not None
        try:
            host, port = published_port(container, self.port)
        except subprocess.CalledProcessError as error:
            return f"port {self.port} is not published: {error.stderr.strip()}"
        if self.action == "tcpSocket":
            return _tcp_check(host, port, self.timeout)
        url = f"{self.scheme.lower()}://{host}:{port}{self.path}"
        try:  # the kubelet does not verify certificates
            with httpx.Client(timeout=self.timeout, verify=False) as client:  # noqa: S501
                response = client.get(url, headers=dict(self.headers))
        except httpx.HTTPError as error:
            return f"GET {self.path}: {type(error).__name__}: {error}"
        if 200 <= response.status_code < 400:
            return None
        return f"GET {self.path}: {response.status_code} {response.text[:300]}"


def _tcp_check(host: str, port: int, timeout: float) -> str | None:
    """A connect through the published port. Docker's proxy accepts every connection and closes
    it at once when nothing listens in the container: an immediate end of stream is a refusal;
    a connection that stays open (or greets) is a listener."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            connection.settimeout(min(timeout, 0.5))
            try:
                if connection.recv(1) == b"":
                    return f"tcp {port}: connection closed at once (nothing listens)"
            except TimeoutError:
                return None
            except ConnectionResetError:
                return f"tcp {port}: connection reset (nothing listens)"
    except OSError as error:
        return f"tcp {port}: {error}"
    return None


def _probe(kind: str, spec: Manifest, ports: Mapping[str, int]) -> Probe:
    timeout = float(spec.get("timeoutSeconds", 1))
    if "exec" in spec:
        return Probe(kind, "exec", command=tuple(spec["exec"]["command"]), timeout=timeout)
    action: Literal["httpGet", "tcpSocket"] = "httpGet" if "httpGet" in spec else "tcpSocket"
    if action not in spec:
        raise PodSpecError(f"{kind}: only httpGet, tcpSocket and exec probes are supported here")
    handler = spec[action]
    if handler.get("host"):
        raise PodSpecError(f"{kind}: a probe's host is not supported here")
    port = handler["port"]
    if isinstance(port, str) and not port.isdigit():
        if port not in ports:
            raise PodSpecError(f"{kind}: no container port named {port!r}")
        port = ports[port]
    return Probe(
        kind,
        action,
        port=int(port),
        path=handler.get("path", "/"),
        scheme=handler.get("scheme", "HTTP"),
        headers=tuple((h["name"], h["value"]) for h in handler.get("httpHeaders", [])),
        timeout=timeout,
    )


# ---- the container run -------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerRun:
    """One pod's one container, as `docker run` arguments."""

    name: str  # the Docker container's name
    hostname: str  # the pod's name, as in a cluster
    image: str
    entrypoint: str | None  # the spec's command[0]; None keeps the image's ENTRYPOINT
    arguments: tuple[str, ...] | None  # None keeps the image's CMD
    env: Mapping[str, str]
    identity: Identity
    read_only: bool
    cap_drop: tuple[str, ...]
    cap_add: tuple[str, ...]
    no_new_privileges: bool
    directories: tuple[EmptyDirectory, ...]
    files: tuple[FileVolume, ...]
    volumes_root: Path  # where the file volumes and disk emptyDirs are on this machine
    memory_root: Path  # where the memory emptyDirs are, on a tmpfs of this machine
    memory: int | None  # bytes
    cpus: str | None
    ports: Mapping[str, int]  # every container port by name (or by number when unnamed)
    network: str
    ip: str
    aliases: tuple[str, ...]
    stop_timeout: int | None
    probes: Mapping[str, Probe]
    labels: Mapping[str, str] = field(default_factory=lambda: {"mesh.test": "1"})

    def docker_args(self) -> list[str]:
        # The image's HEALTHCHECK is Docker's; the kubelet runs the spec's probes only.
        args = ["run", "--detach", "--pull", "never", "--no-healthcheck", "--name", self.name]
        args += ["--hostname", self.hostname, "--network", self.network, "--ip", self.ip]
        for alias in self.aliases:
            args += ["--network-alias", alias]
        for key, value in self.labels.items():
            args += ["--label", f"{key}={value}"]
        if self.identity.user is not None:
            args += ["--user", self.identity.user]
        for group in self.identity.groups:
            args += ["--group-add", str(group)]
        if self.read_only:
            args.append("--read-only")
        for capability in self.cap_drop:
            args += ["--cap-drop", capability]
        for capability in self.cap_add:
            args += ["--cap-add", capability]
        if self.no_new_privileges:
            args += ["--security-opt", "no-new-privileges"]
        for directory in self.directories:
            root = self.memory_root if directory.memory else self.volumes_root
            mode = "ro" if directory.read_only else "rw"
            args += ["--volume", f"{root / directory.name}:{directory.mount_path}:{mode}"]
        for volume in self.files:
            source = self.volumes_root / volume.name
            if volume.sub_path:
                source = source / volume.sub_path
            args += ["--volume", f"{source}:{volume.mount_path}:ro"]
        if self.memory is not None:  # and no swap, as on a Kubernetes node
            args += ["--memory", str(self.memory), "--memory-swap", str(self.memory)]
        if self.cpus is not None:
            args += ["--cpus", self.cpus]
        for port in dict.fromkeys(self.ports.values()):
            args += ["--publish", f"127.0.0.1::{port}"]
        if self.stop_timeout is not None:
            args += ["--stop-timeout", str(self.stop_timeout)]
        for key, value in self.env.items():
            args += ["--env", f"{key}={value}"]
        if self.entrypoint is not None:
            args += ["--entrypoint", self.entrypoint]
        args.append(self.image)
        args += list(self.arguments or ())
        return args

    def start(self) -> str:
        """Makes the volumes and starts the container; returns its id."""
        for directory in self.directories:
            directory.create(self.memory_root if directory.memory else self.volumes_root)
        for volume in self.files:
            volume.write(self.volumes_root)
        return docker(*self.docker_args()).stdout.strip()


def local_image(spec_image: str) -> str | None:
    """The image built here that stands for the spec's: the registry, tag and digest differ
    (`localhost:5001/mesh/users:dev` in dev, `registry.example.com/mesh/users:0.1.0` in prod
    both mean `app_image("users")`); PostgreSQL, RabbitMQ and Redis map to the stand-ins of
    `.dev/images.env`. None when nothing built here stands for it."""
    repository = spec_image.split("@", 1)[0]
    last = repository.rsplit("/", 1)[-1]
    if ":" in last:
        repository = repository.rsplit(":", 1)[0]
    parts = repository.split("/")
    if len(parts) >= 2 and parts[-2] == "mesh" and parts[-1] in DEPLOYABLES:
        return app_image(parts[-1])
    infrastructure = {
        "postgres": "POSTGRES",
        "postgresql": "POSTGRES",
        "rabbitmq": "RABBITMQ",
        "redis": "REDIS",
    }
    if parts[-1] in infrastructure:
        return infrastructure_image(infrastructure[parts[-1]])
    return None


def image_user(image: str) -> str:
    return docker("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()


def dns_names(service: str, namespace: str) -> list[str]:
    """The names a Service answers to from inside its namespace."""
    local = f"{service}.{namespace}"
    return [service, local, f"{local}.svc", f"{local}.svc.cluster.local"]


def service_aliases(
    manifests: Sequence[Manifest], template: Manifest, ports: Mapping[str, int], namespace: str
) -> tuple[str, ...]:
    """The names of every Service that selects this pod. A network alias has no port
    translation, so a Service whose port differs from its target port cannot be stood for."""
    labels = template.get("metadata", {}).get("labels", {})
    names: list[str] = []
    for service in manifests:
        if service["kind"] != "Service" or service["metadata"].get("namespace") != namespace:
            continue
        selector = service["spec"].get("selector")
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            continue
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            target = ports.get(target, target) if isinstance(target, str) else target
            if int(target) != int(port["port"]):
                raise PodSpecError(
                    f"Service {service['metadata']['name']} maps {port['port']} to {target}: "
                    "a network alias cannot"
                )
        names += dns_names(service["metadata"]["name"], namespace)
    return tuple(names)


def _one_container(workload: Manifest) -> Manifest:
    spec = pod_template(workload)["spec"]
    if spec.get("initContainers") or len(spec["containers"]) != 1:
        raise PodSpecError("only pods of one container (no init containers) are supported here")
    container: Manifest = spec["containers"][0]
    return container


def container_run(
    workload: Manifest,
    cluster: Cluster,
    *,
    identity: PodIdentity,
    image: str,
    user_of_image: str,
    network: str,
    volumes_root: Path,
    memory_root: Path,
    name_prefix: str,
) -> ContainerRun:
    """The `docker run` of a workload's pod, as its spec says; `image` is the local image that
    stands for the spec's (`local_image`)."""
    template = pod_template(workload)
    pod_spec, container = template["spec"], _one_container(workload)
    ports = {
        str(p.get("name", p["containerPort"])): int(p["containerPort"])
        for p in container.get("ports", [])
    }
    env = container_env(container, cluster, identity.fields(template))
    command = [expand(part, env) for part in container.get("command", [])]
    args = [expand(part, env) for part in container.get("args", [])]
    entrypoint = command[0] if command else None
    arguments = tuple(command[1:] + args) if command or args else None

    context = container.get("securityContext", {})
    capabilities = context.get("capabilities", {})
    fs_group = pod_spec.get("securityContext", {}).get("fsGroup")
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
    directories: list[EmptyDirectory] = []
    files: list[FileVolume] = []
    for mount in container.get("volumeMounts", []):
        name = mount["name"]
        # A StatefulSet's claim: a fresh volume, which here is a directory like a disk emptyDir.
        volume = volumes.get(name) or ({"emptyDir": {}} if name in claims else None)
        if volume is None:
            raise PodSpecError(f"volumeMount {name!r}: no such volume")
        if mount.get("subPath") and "emptyDir" in volume:
            raise PodSpecError(f"{mount['mountPath']}: subPath is only supported for files")
        if "emptyDir" in volume:
            memory = volume["emptyDir"].get("medium") == "Memory"
            read_only = bool(mount.get("readOnly"))
            directories.append(
                EmptyDirectory(name, mount["mountPath"], fs_group, memory, read_only)
            )
        elif "secret" in volume or "configMap" in volume:
            files.append(_file_volume(volume, mount, cluster, fs_group))
        else:
            raise PodSpecError(f"volume {name!r}: only emptyDir, Secret, ConfigMap are supported")

    limits = container.get("resources", {}).get("limits", {})
    memory = math.ceil(quantity(limits["memory"])) if "memory" in limits else None
    cpus = str(float(quantity(limits["cpu"]))) if "cpu" in limits else None
    grace = pod_spec.get("terminationGracePeriodSeconds")
    return ContainerRun(
        name=f"{name_prefix}-{identity.name}",
        hostname=identity.name,
        image=image,
        entrypoint=entrypoint,
        arguments=arguments,
        env=env,
        identity=process_identity(template, container, user_of_image),
        read_only=bool(context.get("readOnlyRootFilesystem", False)),
        cap_drop=tuple(capabilities.get("drop", [])),
        cap_add=tuple(capabilities.get("add", [])),
        no_new_privileges=context.get("allowPrivilegeEscalation") is False,
        directories=tuple(directories),
        files=tuple(files),
        volumes_root=volumes_root / identity.name,
        memory_root=memory_root / identity.name,
        memory=memory,
        cpus=cpus,
        ports=ports,
        network=network,
        ip=identity.ip,
        aliases=service_aliases(cluster.objects, template, ports, identity.namespace),
        stop_timeout=int(grace) if grace is not None else None,
        probes={k: _probe(k, container[k], ports) for k in PROBE_KINDS if k in container},
    )


# ---- the engine side ---------------------------------------------------------------------------


@dataclass
class PodNetwork:
    """A network of the test's own with a known subnet, so a pod's address (`status.podIP`) is
    chosen before it starts, as the downward API needs it."""

    name: str
    subnet: ipaddress.IPv4Network
    gateway: str
    _next: int = 10

    def next_ip(self) -> str:
        address = str(self.subnet.network_address + self._next)
        self._next += 1
        return address


@contextmanager
def pod_network(name: str) -> Iterator[PodNetwork]:
    """The engine picks a free subnet for a first network; the pods' network is then created
    on that subnet, which lets `docker run --ip` choose each pod's address."""
    docker("network", "create", "--label", "mesh.test=1", name)
    try:
        ipam = json.loads(docker("network", "inspect", name).stdout)[0]["IPAM"]["Config"][0]
    finally:
        docker("network", "rm", name)
    subnet = ipaddress.IPv4Network(ipam["Subnet"])
    gateway = ipam.get("Gateway") or str(subnet.network_address + 1)
    docker(
        "network", "create", "--label", "mesh.test=1", "--subnet", str(subnet),
        "--gateway", gateway, name,
    )  # fmt: skip
    try:
        yield PodNetwork(name, subnet, gateway)
    finally:
        docker("network", "rm", name, check=False)


def published_port(container: str, port: int) -> tuple[str, int]:
    """Where the container's port is published on 127.0.0.1."""
    lines = docker("port", container, f"{port}/tcp").stdout.split()
    host, _, number = next(line for line in lines if line.startswith("127.0.0.1:")).rpartition(":")
    return host, int(number)


def inspect(container: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = json.loads(docker("inspect", container).stdout)
    return found[0]


def last_logs(container: str, lines: int = 40) -> str:
    answer = docker("logs", "--tail", str(lines), container, check=False)
    return f"--- last {lines} log lines of {container} ---\n{answer.stdout}{answer.stderr}"


def oom_kills(container_id: str) -> int | None:
    """Processes of the container the kernel killed for memory (any of them, not only the first
    one Docker's `State.OOMKilled` reports); None where the engine's cgroups are not visible."""
    candidates = (
        Path("/sys/fs/cgroup/memory/docker") / container_id / "memory.oom_control",
        Path("/sys/fs/cgroup/system.slice") / f"docker-{container_id}.scope" / "memory.events",
        Path("/sys/fs/cgroup/docker") / container_id / "memory.events",
    )
    for path in candidates:
        if path.exists():
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return None


def wait_for_probe(probe: Probe, container: str, *, bound: float) -> str | None:
    """Asks the probe until it succeeds (None) or `bound` seconds pass (the last failure); the
    bound only limits a failing run, it asserts no timing."""
    deadline = time.monotonic() + bound
    while True:
        failure = probe.check(container)
        if failure is None:
            return None
        state = inspect(container)["State"]
        if not state["Running"]:
            return f"{failure}; the container stopped (exit {state['ExitCode']})"
        if time.monotonic() > deadline:
            return failure
        time.sleep(0.5)
