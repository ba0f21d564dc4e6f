"""The one place that reads and validates a stack's `gpu-deploy:` configuration.

Every mistake becomes a `ConfigError` whose message is one line naming the full key, e.g.
`gpu-deploy:services.app.gpu: expected "all", "none", a count >= 1 or a list of device ids, got "two"`.
Validation finishes before any resource is registered.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from pulumi.runtime import config as runtime_config
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from components.core.catalog import PROFILES, GpuProfile
from components.core.values import (
    GpuRequest,
    PortMapping,
    UserSpec,
    VolumeMount,
    check_image_pinned,
    floating_tag,
    holds_password,
    host_path_problem,
    looks_secret,
    parse_host_key,
)
from components.core.vocabulary import PROJECT, RESERVED_NAMESPACES, mig_resource
from components.host import smoke

if TYPE_CHECKING:
    from components.kubernetes.cluster import SharingSpec

NAMESPACE = PROJECT  # the stack file's config namespace
PROFILE_CHOICES = (*PROFILES, "auto")


class ConfigError(Exception):
    """A stack configuration mistake: one line, naming the key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{NAMESPACE}:{_one_line(key)}: {_one_line(problem)}")


def _one_line(text: str) -> str:
    """Escape line breaks and other unprintable characters (a YAML key may hold them)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _quote(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        pass
    try:
        return repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        return "a number too large to show"


# ---------------------------------------------------------------- value parsers
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmgt])i?b?$", re.IGNORECASE)
MAX_SIZE_MIB = 16 * 1024 * 1024  # 16 TiB
_SIZE_FACTORS_MIB = {"b": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}


def parse_size_mib(value: Any) -> int:
    """Docker-style sizes with a unit: '4g', '512m', '2GiB' (a bare number is refused: 24 is not 24g)."""
    if isinstance(value, bool):
        raise ValueError(f'expected a size such as "4g" or "512m", got {_quote(value)}')
    text = str(value).strip() if isinstance(value, (str, int, float)) else ""
    match = _SIZE.match(text)
    if not match:
        if re.fullmatch(r"\d+(\.\d+)?", text):
            raise ValueError(f'a size needs a unit: "{text}m" or "{text}g"? got {_quote(value)}')
        raise ValueError(f'expected a size such as "4g" or "512m", got {_quote(value)}')
    number, unit = float(match.group(1)), (match.group(2) or "m").lower()
    if not math.isfinite(number * _SIZE_FACTORS_MIB[unit]):
        raise ValueError(f"too large, got {_quote(value)}")
    mib = int(number * _SIZE_FACTORS_MIB[unit])
    if mib > MAX_SIZE_MIB:
        raise ValueError(f"at most 16t, got {_quote(value)}")
    if mib < 4:
        raise ValueError(f"expected at least 4m, got {_quote(value)}")
    return mib


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration_s(value: Any) -> int:
    """'30s', '1m', '1m30s', '2h' or a number of seconds."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DURATION_S:
        return value
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    match = _DURATION.match(text)
    if not text or not match:
        raise ValueError(f'expected a duration such as "30s", "1m" or "1m30s", got {_quote(value)}')
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total > MAX_DURATION_S:
        raise ValueError(f"at most 7 days (168h), got {_quote(value)}")
    return total


MAX_DURATION_S = 7 * 24 * 3600


MAX_GPUS = 64
_DEVICE_ID = re.compile(r"^(\d+|\d+:\d+|GPU-[0-9a-fA-F-]{8,}|MIG-[0-9a-zA-Z/-]{8,})\Z")


def parse_gpu(value: Any) -> GpuRequest:
    problem = f'expected "all", "none", a count >= 1 or a list of device ids, got {_quote(value)}'
    if isinstance(value, GpuRequest):
        return value
    if value is None or value == "none" or value is False:
        return GpuRequest("none")
    if value == "all":
        return GpuRequest("all")
    if isinstance(value, bool):
        raise ValueError(problem)
    if isinstance(value, int) or (isinstance(value, str) and value.isascii() and value.isdigit()):
        count = int(value) if len(str(value)) <= 6 else MAX_GPUS + 1  # no 5000-digit int() here
        if count < 1:
            raise ValueError(problem)
        if count > MAX_GPUS:
            raise ValueError(f"at most {MAX_GPUS} GPUs, got {_quote(value)}")
        return GpuRequest("count", count=count)
    if isinstance(value, list) and value:
        ids = tuple(str(v) for v in value if not isinstance(v, bool))
        bad = [d for d in ids if not _DEVICE_ID.match(d)]
        if len(ids) != len(value) or bad:
            raise ValueError(
                f"expected device indexes (0), GPU UUIDs (GPU-...), MIG UUIDs (MIG-...) "
                f"or GPU:MIG indexes (0:1), got {_quote(bad[0] if bad else value)}"
            )
        if len(set(ids)) != len(ids):
            raise ValueError(f"lists a device twice: {_quote(list(ids))}")
        return GpuRequest("devices", device_ids=ids)
    raise ValueError(problem)


_PORT = re.compile(
    r"^(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):)?(?P<host>\d+):(?P<ctr>\d+)(?:/(?P<proto>tcp|udp))?$"
)


def parse_port(value: Any) -> PortMapping:
    match = _PORT.match(str(value))
    if not match or isinstance(value, bool):
        raise ValueError(
            f'expected "HOST:CONTAINER", "IP:HOST:CONTAINER" or with "/udp", got {_quote(value)}'
        )
    host, ctr = int(match.group("host")), int(match.group("ctr"))
    if not (1 <= host <= 65535 and 1 <= ctr <= 65535):
        raise ValueError(f"ports are 1-65535, got {_quote(value)}")
    proto: Literal["tcp", "udp"] = "udp" if match.group("proto") == "udp" else "tcp"
    address = (match.group("ip") or "").strip("[]")
    if address:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{address!r} is not an IP address, in {_quote(value)}") from None
    return PortMapping(ctr, host, address, proto)


def parse_volume(value: Any) -> VolumeMount:
    if not isinstance(value, str):
        raise ValueError(f'expected "host:container" or "host:container:ro", got {_quote(value)}')
    parts = value.split(":")
    mode = "rw"
    if len(parts) == 3:
        mode = parts.pop()
    if len(parts) != 2 or mode not in ("ro", "rw") or not all(parts):
        raise ValueError(f'expected "host:container" or "host:container:ro", got {_quote(value)}')
    host, container = parts
    if not container.startswith("/"):
        raise ValueError(f"the container path must be absolute, got {_quote(container)}")
    for path in (host, container):
        if ".." in PurePosixPath(path).parts:
            raise ValueError(f"'..' is not allowed in a volume path, got {_quote(value)}")
    if host.rstrip("/") == "":
        raise ValueError("the host's / cannot be mounted")
    if host.startswith("/"):
        problem = host_path_problem(host)
        if problem:
            raise ValueError(f"{problem}; mount a directory of the stack's own (under target.root)")
    return VolumeMount(host.rstrip("/") or host, container, mode == "ro")


MAX_ID = 2**31 - 1  # Docker and Kubernetes take a signed 32-bit id


def parse_user(value: Any) -> UserSpec:
    text = str(value)
    match = re.fullmatch(r"(\d+)(?::(\d+))?", text)
    if not match or isinstance(value, bool):
        raise ValueError(
            f'expected a numeric "uid:gid" such as "1001:1001" (host directories are owned by it), '
            f"got {_quote(value)}"
        )
    if any(len(g) > 10 for g in match.groups() if g):
        raise ValueError(f"uid and gid are at most {MAX_ID}, got {_quote(value)}")
    uid = int(match.group(1))
    gid = int(match.group(2)) if match.group(2) else uid
    if uid > MAX_ID or gid > MAX_ID:
        raise ValueError(f"uid and gid are at most {MAX_ID}, got {_quote(value)}")
    if uid == 0 or gid == 0:
        raise ValueError(f"containers run as a non-root user; got {_quote(value)}")
    return UserSpec(uid, gid)


_IMAGE_REF = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?\Z"
)


def parse_image_ref(value: Any) -> str:
    text = str(value)
    if text == "build":
        return text
    match = _IMAGE_REF.match(text)
    if not match or isinstance(value, bool):
        raise ValueError(f'expected "build" or a pinned image such as "redis:7.2.4", got {_quote(value)}')
    tag = floating_tag(text)
    if tag == "":
        raise ValueError(f"pin a tag or digest (e.g. redis:7.2.4): {_quote(text)} is not reproducible")
    if tag is not None:
        raise ValueError(f"pin a real tag or digest: {_quote(text)} changes under you (floating tag {tag!r})")
    return text


def _str_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ValueError(f"expected a string, number or boolean, got {_quote(value)}")


def parse_root(value: Any) -> str:
    """A host directory that relative paths live under: absolute, not '/', no '..'."""
    root = str(value)
    if not root.startswith("/") or root.rstrip("/") == "" or ".." in root.split("/"):
        raise ValueError(f"expected an absolute directory other than /, got {_quote(value)}")
    problem = host_path_problem(root)
    if problem:
        raise ValueError(f"{problem}; the stack creates and re-owns directories under its root")
    return str(PurePosixPath(root))


def parse_host(value: Any) -> str:
    """A host name or an IP address, as ssh takes it: no user@, no spaces, no leading '-' (an option)."""
    text = str(value) if isinstance(value, str) else ""
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(text):
        raise ValueError(
            f"expected a host name (gpu1.example.net) or an IP address, got {_quote(value)}"
            + ("; the user goes in `user`" if "@" in text else "")
        )
    return text


def parse_login(value: Any) -> str:
    """A login name: letters, digits, '.', '_' and '-', not starting with '-' (ssh would read an option)."""
    text = str(value) if isinstance(value, str) else ""
    if not _LOGIN.fullmatch(text):
        raise ValueError(f"expected a login name such as deploy, got {_quote(value)}")
    return text


_HOST_NAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_LOGIN = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}")


def parse_context(value: Any) -> str:
    """A build context inside this project or a sibling checkout (`../app`, `../app/sub`): the plan reads
    and hashes all of it, so `/etc`, `~` or the directory above every checkout are refused. Lexical only."""
    text = str(value) if isinstance(value, str) else ""
    normal = os.path.normpath(text) if text else ""
    parts = PurePosixPath(normal).parts
    if (
        not text
        or any(c in text for c in "\0\n\r")
        or text.startswith(("/", "~"))
        or (parts[:1] == ("..",) and (len(parts) < 2 or parts[1] == ".."))
    ):
        raise ValueError(
            f"expected a directory inside this project or a sibling checkout (../app), got {_quote(value)}"
        )
    return text


def parse_dockerfile(value: Any) -> str:
    """A Dockerfile path inside its context: relative, no '..'."""
    text = str(value) if isinstance(value, str) else ""
    if (
        not text
        or text.startswith("/")
        or ".." in PurePosixPath(text).parts
        or any(c in text for c in "\0\n\r")
    ):
        raise ValueError(f"expected a Dockerfile path inside the context, got {_quote(value)}")
    return text


ContextField = Annotated[str, BeforeValidator(parse_context)]
DockerfileField = Annotated[str, BeforeValidator(parse_dockerfile)]
HostField = Annotated[str, BeforeValidator(parse_host)]
LoginField = Annotated[str, BeforeValidator(parse_login)]


def parse_env_name(value: Any) -> str:
    text = str(value) if isinstance(value, str) else ""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", text):
        raise ValueError(
            f"an environment variable name is letters, digits and '_', not starting with a digit; "
            f"got {_quote(value)}"
        )
    return text


EnvName = Annotated[str, BeforeValidator(parse_env_name)]
GpuField = Annotated[GpuRequest, BeforeValidator(parse_gpu)]
RootDir = Annotated[str, BeforeValidator(parse_root)]
PortField = Annotated[PortMapping, BeforeValidator(parse_port)]
VolumeField = Annotated[VolumeMount, BeforeValidator(parse_volume)]
UserField = Annotated[UserSpec, BeforeValidator(parse_user)]
SizeField = Annotated[int, BeforeValidator(parse_size_mib)]
DurationField = Annotated[int, BeforeValidator(parse_duration_s)]
ImageRefField = Annotated[str, BeforeValidator(parse_image_ref)]
EnvValue = Annotated[str, BeforeValidator(_str_value)]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,40}$")]


# ---------------------------------------------------------------- models
class Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True, strict=False
    )


class CudaOverrides(Model):
    """A stack's departures from the profile's CUDA defaults, checked against the card."""

    version: str | None = None  # e.g. 12.1.1
    wheel_index: str | None = None  # cu121, cu124, ..., cpu
    torch_version: str | None = None
    driver: str | None = None  # the driver (or branch) the host runs: checked against the minimum
    mig: bool = False  # the stack needs MIG mode


class RegistryConfig(Model):
    # a registry host as Docker names it: `ghcr.io`, `registry.internal:5000` (no scheme, no path)
    server: Annotated[
        str,
        Field(
            pattern=r"^(localhost|[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+)(:\d{1,5})?$"
        ),
    ]
    username: Annotated[str, Field(min_length=1)]
    password: str  # always a Pulumi secret

    def qualify(self, repository: str) -> str:
        """The repository as pushed and pulled: `server/repository`. pulumi-docker's Image pushes to the
        registry its imageName names (Docker Hub without a host), whatever `registry.server` says
        (pulumi-docker v5.1.0 provider/image.go)."""
        return repository if repository.startswith(f"{self.server}/") else f"{self.server}/{repository}"


class ImageConfig(Model):
    repository: Annotated[str, Field(pattern=r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9._-]+)*$")]
    context: ContextField = "."
    dockerfile: DockerfileField = "Dockerfile"
    target: str | None = None
    build_args: dict[str, EnvValue] = Field(default_factory=dict)
    tag: Annotated[str, Field(pattern=r"^$|^[\w][\w.-]{0,127}$")] = ""
    registry: RegistryConfig | None = None
    app_uid: int = Field(default=1001, ge=1)

    @field_validator("build_args")
    @classmethod
    def _no_secret_build_args(cls, args: dict[str, str]) -> dict[str, str]:
        for key, value in args.items():
            if looks_secret(key) or holds_password(value):
                raise _KeyedError(
                    key,
                    "build args are stored in the image history; pass secrets at run time "
                    "(services.<name>.secretEnv)",
                )
        return args


def _pinned_host_key(key: str | None) -> str | None:
    """A pinned host key that ssh can really use (components.core.values.parse_host_key), normalised."""
    return None if key is None else str(parse_host_key(key))


HostKeyField = Annotated[str, AfterValidator(_pinned_host_key)]


class Bastion(Model):
    host: HostField
    user: LoginField = "root"
    port: int = Field(default=22, ge=1, le=65535)
    host_key: HostKeyField


class GpuNode(Model):
    """A Kubernetes GPU node the stack provisions and checks over SSH, as a Docker host's GPU steps."""

    host: HostField
    user: LoginField = "root"
    port: int = Field(default=22, ge=1, le=65535)
    host_key: HostKeyField  # pinned, required: ssh-keyscan -t ed25519 HOST
    ssh_key: str | None = None  # private key (a Pulumi secret); the agent is used without it
    bastion: Bastion | None = None
    profile: Literal["p40", "a2", "a4000", "h100"]  # the node's card: its preflight must find it


class DockerTarget(Model):
    kind: Literal["docker"]
    host: HostField = "local"  # `local`: this machine's engine
    user: LoginField = "root"
    port: int = Field(default=22, ge=1, le=65535)
    host_key: HostKeyField | None = None  # pinned SSH host key: "ssh-ed25519 AAAA..."
    ssh_key: str | None = None  # private key (a Pulumi secret); the agent is used without it
    bastion: Bastion | None = None
    root: RootDir | None = None  # where relative bind sources live on the host

    @property
    def is_local(self) -> bool:
        return self.host == "local"

    @model_validator(mode="after")
    def _ssh_needs_host_key(self) -> DockerTarget:
        if not self.is_local and self.host_key is None:
            raise _KeyedError(
                "hostKey",
                f"required for an SSH host: pin the server's key (ssh-keyscan -t ed25519 {self.host})",
            )
        return self


# ---------------------------------------------------------------- the Kubernetes target
K8sName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]


def _own_namespace(namespace: str) -> str:
    if namespace in RESERVED_NAMESPACES:
        raise ValueError(f"the stack creates its namespace; {namespace!r} is the cluster's own: pick one")
    return namespace


OwnNamespace = Annotated[K8sName, AfterValidator(_own_namespace)]  # one the stack creates and owns
ChartVersion = Annotated[str, Field(pattern=r"^v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$")]
Quantity = Annotated[str, Field(pattern=r"^[1-9]\d*(Ki|Mi|Gi|Ti)$")]  # a PVC size: 10Gi


class KubernetesTarget(Model):
    """A cluster reached through an explicit provider: this kubeconfig (or the default file), this context."""

    kind: Literal["kubernetes"]
    kubeconfig: str | None = None  # a path or the file's contents (a secret); None: ~/.kube/config
    context: Annotated[str, Field(min_length=1)]  # required: never whatever context is current
    namespace: K8sName  # the services' namespace: created by the stack, or an existing one
    # False: the namespace exists already (a team's, with other workloads in it): the stack never
    # creates, relabels or deletes it, and needs its Pod Security level to admit the pods
    create_namespace: bool = True
    # True: an object that already exists is taken over (server-side apply) instead of refused with
    # AlreadyExists; pulumi-kubernetes refuses by default since v4.29.0 (provider upsertExistingObjects)
    adopt_existing: bool = False
    distribution: Literal["microk8s", "generic"] = "generic"
    version: Annotated[str, Field(pattern=r"^1\.\d{1,2}(\.\d{1,3})?$")]  # "1.30": the schema checked
    storage_class: str | None = None  # for PersistentVolumeClaims; None: the cluster's default class
    root: RootDir | None = None  # where hostPath volumes may live on the nodes

    @property
    def is_local(self) -> bool:
        return False

    @model_validator(mode="after")
    def _own_namespace_only_when_created(self) -> KubernetesTarget:
        if self.create_namespace:
            try:
                _own_namespace(self.namespace)
            except ValueError as err:
                raise _KeyedError(
                    "namespace", f"{err}, or set target.createNamespace: false to deploy into it"
                ) from None
        return self

    @property
    def kubeconfig_is_inline(self) -> bool:
        """Whether `kubeconfig` is the file's contents (a credential) rather than a path."""
        text = self.kubeconfig or ""
        return "\n" in text or text.lstrip().startswith(("apiVersion", "{"))


class ProductSharing(Model):
    replicas: int  # nvidia.com/gpu advertised per physical GPU on nodes of this product


class GpuSharingConfig(Model):
    """How the NVIDIA device plugin shares each GPU (components.kubernetes.cluster.validate_sharing)."""

    strategy: Literal["none", "time-slicing", "mps", "mig"] | None = None  # None: the profile's default
    replicas: int | None = None  # None: 2 with time-slicing or mps, else 1
    rename_by_default: bool = False
    fail_requests_greater_than_one: bool = False
    mig_strategy: Literal["none", "single", "mixed"] = "none"
    per_product: dict[str, ProductSharing] = Field(default_factory=dict)  # nvidia.com/gpu.product -> ...
    gpus_per_node: int = Field(default=1, ge=1)  # physical GPUs on the GPU node (the capacity check)


class GpuOperatorConfig(Model):
    """The NVIDIA GPU Operator (or, disabled, the device plugin and DCGM exporter charts); versions pinned."""

    enabled: bool = True
    driver: bool = False  # the operator's driver container: off where the host has the driver
    toolkit: bool = False  # the operator's toolkit container: off where the host has the toolkit
    version: ChartVersion = "v25.3.0"  # gpu-operator chart
    namespace: OwnNamespace = "gpu-operator"  # the GPU components' own namespace, created by the stack
    dcgm: bool = True  # DCGM exporter (:9400/metrics)
    device_plugin_version: ChartVersion = "0.17.1"  # nvidia-device-plugin chart (enabled: false)
    dcgm_version: ChartVersion = "4.1.3"  # dcgm-exporter chart (enabled: false)


class HttpCheck(Model):
    path: Annotated[str, Field(pattern=r"^/")]
    port: int = Field(ge=1, le=65535)


class Healthcheck(Model):
    http: HttpCheck | None = None
    command: list[str] | str | None = None
    interval: DurationField = 30
    timeout: DurationField = 10
    retries: int = Field(default=3, ge=1, le=1000)
    start_period: DurationField = 0

    @model_validator(mode="after")
    def _one_probe(self) -> Healthcheck:
        if (self.http is None) == (self.command is None):
            raise ValueError('give exactly one of "http" (path and port) or "command"')
        return self


def header_refs(checks: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    """(check index, header, secretEnv name) for every `headers: {Name: {secretEnv: NAME}}`."""
    refs = []
    for index, check in enumerate(checks):
        http = check.get("http") if isinstance(check, dict) else None
        headers = http.get("headers") if isinstance(http, dict) else None
        for header, value in (headers or {}).items() if isinstance(headers, dict) else []:
            if isinstance(value, dict) and set(value) == {"secretEnv"}:
                refs.append((index, str(header), str(value["secretEnv"])))
    return refs


def resolve_header_refs(checks: list[dict[str, Any]], values: Mapping[str, str]) -> list[dict[str, Any]]:
    """The checks with each `{secretEnv: NAME}` header value replaced by values[NAME]: the service's own
    secret, so the key is written once (its secretEnv) and reaches the runner only on its stdin."""
    resolved = copy.deepcopy(checks)
    for index, header, name in header_refs(checks):
        resolved[index]["http"]["headers"][header] = values[name]
    return resolved


def smoke_checks(checks: list[dict[str, Any]], *, gpu: bool) -> list[dict[str, Any]]:
    """The runner's checks for a target: `whenGpu` ones and GPU checks only where there is a GPU."""
    kept = [c for c in checks if gpu or not (c.get("whenGpu") or "gpu" in c)]
    return [{k: v for k, v in c.items() if k != "whenGpu"} for c in kept]


class ProvisionConfig(Model):
    """How the host is made ready (issue: host provisioning); defaults only verify."""

    driver: Literal["install", "verify", "skip"] = "verify"
    driver_branch: Annotated[str, Field(pattern=r"^\d{3}$")] | None = None  # the profile's otherwise
    kernel_modules: Literal["proprietary", "open"] | None = None  # the profile's otherwise
    toolkit: Literal["install", "verify", "skip"] = "verify"
    runtime: Literal["docker", "containerd", "microk8s"] = "docker"
    reboot: Literal["never", "if-needed"] = "never"


DependencyCondition = Literal["started", "healthy", "completed"]


class BuildOverride(Model):
    """A service's own build, compose-style; each key defaults to the stack's image section."""

    context: ContextField | None = None
    dockerfile: DockerfileField | None = None
    target: str | None = None


class Service(Model):
    image: ImageRefField
    build: BuildOverride | None = None
    command: list[str] | str | None = None
    gpu: GpuField = GpuRequest("none")
    ports: list[PortField] = Field(default_factory=list)
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    secret_env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    volumes: list[VolumeField] = Field(default_factory=list)
    user: UserField = UserSpec(1001, 1001)
    memory: SizeField | None = None
    shm_size: SizeField | None = None
    healthcheck: Healthcheck | None = None
    depends_on: dict[str, DependencyCondition] = Field(default_factory=dict)
    one_shot: bool = False
    enabled: bool = True
    restart: Literal["no", "on-failure", "always", "unless-stopped"] = "unless-stopped"
    # Kubernetes only (KUBERNETES_SERVICE_KEYS; refused on a Docker target):
    replicas: int = Field(default=1, ge=0, le=1000)  # pods of the service
    cpu: Annotated[str, Field(pattern=r"^(\d+(\.\d+)?|\d+m)$")] | None = None  # CPU request: "2", "500m"
    cpu_fallback: bool = False  # declare a CPU Deployment `<name>-cpu` beside the GPU one
    cpu_image: ImageRefField | None = None  # the fallback's image (a CPU build); None: the same image
    cpu_env: dict[EnvName, EnvValue] = Field(default_factory=dict)  # the fallback's env overrides
    run_on: Literal["gpu", "cpu"] = "gpu"  # cpu: the fallback runs, the GPU Deployment scales to 0
    mig_profile: Annotated[str, Field(pattern=r"^\d+g\.\d+gb$")] | None = None  # gpu counts MIG instances
    # kubernetes, several card types: the card this service runs on (placed only on nodes with it)
    profile: Literal["p40", "a2", "a4000", "h100"] | None = None
    storage: dict[str, Quantity] = Field(default_factory=dict)  # PVC size per named volume: {models: 10Gi}
    driver_capabilities: str | None = None  # NVIDIA_DRIVER_CAPABILITIES; the profile's default otherwise
    smoke: list[dict[str, Any]] = Field(default_factory=list)  # components/host/smoke.py checks (+ whenGpu)
    smoke_deadline: DurationField = 180

    @field_validator("smoke")
    @classmethod
    def _smoke_checks_parse(cls, checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, check in enumerate(checks):
            if not isinstance(check.get("whenGpu", False), bool):
                raise _KeyedError(f"{index}.whenGpu", "expected true or false")
        stand_in = resolve_header_refs(checks, {name: "[secretEnv]" for _, _, name in header_refs(checks)})
        try:
            smoke.parse_checks(smoke_checks(stand_in, gpu=True))
        except smoke.ConfigError as err:
            raise ValueError(f"not a smoke check list: {err}") from None
        return checks

    @model_validator(mode="after")
    def _header_refs_name_secret_env(self) -> Service:
        for index, header, name in header_refs(self.smoke):
            if name not in self.secret_env:
                raise _KeyedError(
                    "smoke",
                    f"check #{index + 1} takes header {header} from secretEnv.{name}, which this service "
                    f"does not have (secretEnv: {', '.join(sorted(self.secret_env)) or 'none'})",
                )
        return self

    @field_validator("depends_on", mode="before")
    @classmethod
    def _depends_list(cls, value: Any) -> Any:
        if isinstance(value, list):  # compose's short form: started
            return {str(v): "started" for v in value}
        return value

    @field_validator("env", "cpu_env")
    @classmethod
    def _plain_env_is_not_secret(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            if looks_secret(key) and value:
                raise _KeyedError(key, "looks like a credential; move it to secretEnv (stored encrypted)")
            if holds_password(value):
                raise _KeyedError(
                    key,
                    "holds a URL with a password (user:password@); move it to secretEnv (stored encrypted)",
                )
        return env

    @property
    def command_list(self) -> list[str] | None:
        if self.command is None:
            return None
        return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)

    @property
    def effective_restart(self) -> str:
        return "no" if self.one_shot else self.restart


class StackConfig(Model):
    profile: Literal["p40", "a2", "a4000", "h100", "cpu", "auto"]
    target: Annotated[DockerTarget | KubernetesTarget, Field(discriminator="kind")]
    cuda: CudaOverrides = CudaOverrides()
    image: ImageConfig | None = None
    provision: ProvisionConfig = ProvisionConfig()
    gpu_sharing: GpuSharingConfig | None = None  # kubernetes only
    gpu_operator: GpuOperatorConfig | None = None  # kubernetes only
    nodes: dict[Name, GpuNode] = Field(
        default_factory=dict
    )  # kubernetes only: GPU nodes provisioned over SSH
    services: dict[Name, Service]

    @field_validator("services")
    @classmethod
    def _at_least_one(cls, services: dict[str, Service]) -> dict[str, Service]:
        if not services:
            raise ValueError("declare at least one service")
        return services

    @model_validator(mode="after")
    def _cross_checks(self) -> StackConfig:
        _check_target_kind(self)  # first: a kubernetes stack explains "build" and volumes its own way
        if isinstance(self.target, DockerTarget):
            _check_ports(self)
        enabled = {n for n, s in self.services.items() if s.enabled}
        for name, svc in self.services.items():
            key = f"services.{name}"
            if svc.image == "build" and self.image is None:
                raise _KeyedError(f"{key}.image", '"build" needs an image section (gpu-deploy:image)')
            if svc.build is not None and svc.image != "build":
                raise _KeyedError(
                    f"{key}.build", f'only a service with image: "build" is built (image is {svc.image})'
                )
            if (
                isinstance(self.target, DockerTarget)
                and any(v.is_relative for v in svc.volumes)
                and self.target.root is None
            ):
                raise _KeyedError(f"{key}.volumes", "relative host paths need target.root")
            if any("http" in check for check in svc.smoke) and not svc.ports:
                raise _KeyedError(f"{key}.smoke", "HTTP smoke checks need a published port (ports)")
            if svc.one_shot and svc.smoke:
                raise _KeyedError(
                    f"{key}.smoke", "a one-shot job has nothing to smoke-test once it has exited"
                )
            if svc.one_shot and svc.healthcheck is not None:
                raise _KeyedError(
                    f"{key}.healthcheck", "a one-shot job runs to completion; it has no health check"
                )
            for dep, condition in svc.depends_on.items():
                dep_key = f"{key}.dependsOn.{dep}"
                if dep == name:
                    raise _KeyedError(dep_key, "a service cannot depend on itself")
                if dep not in self.services:
                    raise _KeyedError(dep_key, f"no such service (services: {', '.join(self.services)})")
                target = self.services[dep]
                if svc.enabled and not target.enabled:
                    raise _KeyedError(dep_key, f"{dep} is disabled (enabled: false) but {name} needs it")
                if condition == "completed" and not target.one_shot:
                    raise _KeyedError(dep_key, f'"completed" needs {dep} to be a oneShot job')
                if target.one_shot and condition != "completed":
                    raise _KeyedError(dep_key, f'{dep} is a oneShot job: wait for it with "completed"')
                if condition == "healthy" and target.healthcheck is None:
                    raise _KeyedError(dep_key, f'"healthy" needs a healthcheck on {dep}')
        _check_acyclic({n: list(s.depends_on) for n, s in self.services.items() if n in enabled})
        if self.profile == "cpu":
            for name, svc in self.services.items():
                if svc.gpu.wants_gpu:
                    raise _KeyedError(
                        f"services.{name}.gpu", 'profile cpu has no GPU: use gpu: none (or profile "auto")'
                    )
        if isinstance(self.target, KubernetesTarget):
            _check_kubernetes_gpus(self)
        return self


class _KeyedError(ValueError):
    """Raised inside validators when the offending key is not the field being validated."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


def _check_acyclic(graph: Mapping[str, list[str]]) -> None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            cycle = [*path[path.index(node) :], node]
            raise _KeyedError(f"services.{node}.dependsOn", f"dependency cycle: {' -> '.join(cycle)}")
        state[node] = 1
        for dep in graph.get(node, []):
            if dep in graph:
                visit(dep, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        visit(node, [])


# ---------------------------------------------------------------- target kinds
# Keys only a Kubernetes target understands (field names; the messages use the camelCase keys).
KUBERNETES_STACK_KEYS = ("gpu_sharing", "gpu_operator", "nodes")
KUBERNETES_SERVICE_KEYS = (
    "replicas",
    "cpu",
    "cpu_fallback",
    "cpu_image",
    "cpu_env",
    "run_on",
    "mig_profile",
    "storage",
    "profile",
)
_NO_BUILD = (
    "a kubernetes stack deploys pinned images only: there is no build host to build on. "
    "Build and push the image in CI, then pin its tag here"
)
_CLAIM_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _alias(model: type[BaseModel], field: str) -> str:
    return model.model_fields[field].alias or field


def _wildcard(address: str) -> bool:
    return address in ("", "0.0.0.0", "::")  # noqa: S104 - bind addresses compared, not bound


def _check_ports(config: StackConfig) -> None:
    """A host port is published once per address and protocol (0.0.0.0 and :: take every address); an
    HTTP health check or smoke test needs its port over TCP."""
    seen: list[tuple[str, int, str, str]] = []  # (protocol, host port, address, key) published so far
    for name, svc in config.services.items():
        key = f"services.{name}.ports"
        if not svc.enabled:
            continue
        for port in svc.ports:
            for proto, number, address, other in seen:
                same = proto == port.protocol and number == port.host_port
                if same and (address == port.host_ip or _wildcard(address) or _wildcard(port.host_ip)):
                    where = port.host_ip or "every address"
                    raise _KeyedError(
                        key,
                        f"host port {port.host_port}/{port.protocol} on {where}: {other} has it already",
                    )
            seen.append((port.protocol, port.host_port, port.host_ip, key))
        tcp = {p.container_port for p in svc.ports if p.protocol == "tcp"}
        check = svc.healthcheck.http if svc.healthcheck else None
        if (
            check is not None
            and check.port not in tcp
            and check.port in {p.container_port for p in svc.ports}
        ):
            raise _KeyedError(
                f"services.{name}.healthcheck.http.port",
                f"port {check.port} is published over UDP only; HTTP needs TCP",
            )
        if any("http" in c for c in svc.smoke) and svc.ports and not tcp:
            raise _KeyedError(f"services.{name}.smoke", "HTTP smoke checks need a port published over TCP")


def _check_target_kind(config: StackConfig) -> None:
    """Keys only one target kind understands are refused on the other, each naming the key."""
    if isinstance(config.target, KubernetesTarget):
        _check_kubernetes(config, config.target)
        return
    for field in KUBERNETES_STACK_KEYS:
        if field in config.model_fields_set:
            raise _KeyedError(_alias(StackConfig, field), "a kubernetes setting; target.kind is docker")
    for name, svc in config.services.items():
        for field in KUBERNETES_SERVICE_KEYS:
            if field in svc.model_fields_set:
                raise _KeyedError(
                    f"services.{name}.{_alias(Service, field)}", "a kubernetes setting; target.kind is docker"
                )


def _under(path: str, root: str) -> bool:
    normal = str(PurePosixPath(path))
    return normal == root or normal.startswith(root.rstrip("/") + "/")


def _check_kubernetes(config: StackConfig, target: KubernetesTarget) -> None:
    """What the Docker path means by a key that has no Kubernetes meaning is refused, naming the key."""
    if config.profile == "auto":
        raise _KeyedError(
            "profile",
            "a kubernetes stack names its card (a2, h100, ...): auto is detected by the preflight on a "
            "Docker host, not in a cluster",
        )
    if config.image is not None:
        raise _KeyedError("image", f"{_NO_BUILD} (services.<name>.image)")
    if "provision" in config.model_fields_set and not config.nodes:
        raise _KeyedError(
            "provision",
            "host provisioning runs over SSH: list the GPU nodes under `nodes` (or let "
            "gpuOperator.driver and gpuOperator.toolkit install them in containers)",
        )
    if config.nodes and config.provision.runtime == "docker":
        expected = "microk8s" if target.distribution == "microk8s" else "containerd"
        raise _KeyedError(
            "provision.runtime",
            f"Kubernetes nodes run containerd: set {expected} (docker is for Docker hosts)",
        )
    cards = {config.profile, *(node.profile for node in config.nodes.values())}
    for name, svc in config.services.items():
        if svc.profile is not None and svc.profile not in cards:
            raise _KeyedError(
                f"services.{name}.profile",
                f"no GPU node of this stack has a {svc.profile}: its cards are {', '.join(sorted(cards))}",
            )
    operator = config.gpu_operator or GpuOperatorConfig()
    if operator.namespace == target.namespace:
        raise _KeyedError(
            "gpuOperator.namespace",
            f"the GPU components need a namespace of their own (privileged pods); {target.namespace} "
            "is the services' (target.namespace)",
        )
    for name, svc in config.services.items():
        _check_kubernetes_service(name, svc, target)


def _check_kubernetes_service(name: str, svc: Service, target: KubernetesTarget) -> None:
    key = f"services.{name}"
    if name.endswith("-"):
        raise _KeyedError(key, "a Kubernetes object name ends with a letter or digit")
    for field, image in (("image", svc.image), ("cpuImage", svc.cpu_image)):
        if image == "build":
            raise _KeyedError(f"{key}.{field}", _NO_BUILD)
        if image is not None:
            try:
                check_image_pinned(image)
            except ValueError as err:
                raise _KeyedError(f"{key}.{field}", str(err)) from None
    if svc.gpu.mode in ("all", "devices"):
        raise _KeyedError(
            f"{key}.gpu",
            "on kubernetes gpu is a count of nvidia.com/gpu (the scheduler picks the devices; "
            f"MIG instances: a count and migProfile), got {svc.gpu.mode}",
        )
    if svc.mig_profile is not None and svc.gpu.mode != "count":
        raise _KeyedError(f"{key}.migProfile", "needs gpu: the count of MIG instances")
    for port in svc.ports:
        if port.host_port != port.container_port or port.host_ip or port.protocol != "tcp":
            raise _KeyedError(
                f"{key}.ports",
                "on kubernetes a port is a TCP port of the service's ClusterIP Service, the same as "
                f'the container\'s: write "{port.container_port}:{port.container_port}"',
            )
    claims: set[str] = set()
    for volume in svc.volumes:
        if volume.is_relative:
            claim = volume.host.removeprefix("./")
            if not _CLAIM_NAME.fullmatch(claim) or len(claim) > 40:
                raise _KeyedError(
                    f"{key}.volumes",
                    "on kubernetes a relative volume names a PersistentVolumeClaim (a DNS label such "
                    f"as models), got {_quote(volume.host)}",
                )
            if claim not in svc.storage:
                raise _KeyedError(
                    f"{key}.storage.{claim}",
                    f"required: the size of the PersistentVolumeClaim behind volume {claim}, e.g. 10Gi",
                )
            claims.add(claim)
        elif target.root is None or not _under(volume.host, target.root):
            raise _KeyedError(
                f"{key}.volumes",
                f"hostPath {volume.host} must lie under target.root ({target.root or 'not set'}); "
                "or name a PersistentVolumeClaim (a relative volume)",
            )
    for claim in svc.storage:
        if claim not in claims:
            raise _KeyedError(f"{key}.storage.{claim}", f"no volume {claim}:... in {key}.volumes")
    if svc.one_shot:
        raise _KeyedError(f"{key}.oneShot", "one-shot jobs are not supported on kubernetes yet")
    if "restart" in svc.model_fields_set and svc.restart not in ("always", "unless-stopped"):
        raise _KeyedError(f"{key}.restart", "the pods of a Deployment always restart; remove restart")
    if svc.memory is None:
        raise _KeyedError(
            f"{key}.memory", "required on kubernetes: the pod's memory request and limit, e.g. 4g"
        )
    check = svc.healthcheck
    if check is not None and not 1 <= check.timeout < check.interval:
        raise _KeyedError(
            f"{key}.healthcheck.timeout",
            f"a probe's timeout is at least 1s and shorter than its interval ({check.interval}s)",
        )
    for env_key in svc.env:  # cpuEnv may override a secretEnv key in the CPU fallback
        if env_key in svc.secret_env:
            raise _KeyedError(f"{key}.secretEnv.{env_key}", "also set in env; keep one")
    _check_kubernetes_smoke(key, svc)
    if svc.cpu_fallback and not svc.gpu.wants_gpu:
        raise _KeyedError(f"{key}.cpuFallback", "is for a GPU service; this one has gpu: none")
    if not svc.cpu_fallback:
        for field in ("cpu_image", "cpu_env", "run_on"):
            if field in svc.model_fields_set and getattr(svc, field) not in (None, {}, "gpu"):
                raise _KeyedError(f"{key}.{_alias(Service, field)}", "needs cpuFallback: true")


def _check_kubernetes_smoke(key: str, svc: Service) -> None:
    """Smoke checks run from a Job beside the pods (components/kubernetes/smoke_job.py): HTTP only."""
    for index, check in enumerate(svc.smoke, start=1):
        kind = next((k for k in ("file", "gpu") if k in check), None)
        if kind is not None:
            raise _KeyedError(
                f"{key}.smoke",
                "on kubernetes only http checks run in-cluster (a Job beside the pods has no docker exec "
                f"into the service's container): check #{index} is a {kind} check; prove the GPU through "
                "an HTTP endpoint instead (whenGpu: true keeps it to GPU pods)",
            )
        headers = check["http"].get("headers") or {}
        secret = sorted(name for name in headers if smoke.is_secret_name(str(name)))
        secret += [h for i, h, _ in header_refs([check]) if h not in secret]
        if secret:
            raise _KeyedError(
                f"{key}.smoke",
                f"check #{index} sends header {secret[0]}: on kubernetes the checks live in a ConfigMap, "
                "which is no place for a credential; smoke-test an endpoint that needs none",
            )


def kubernetes_sharing(config: StackConfig, profile: GpuProfile) -> SharingSpec:
    """The device plugin's sharing spec: `gpuSharing` over the profile's default strategy."""
    from components.kubernetes.cluster import SharingSpec  # noqa: PLC0415 (lazy, see _check_kubernetes)

    wanted = config.gpu_sharing or GpuSharingConfig()
    strategy = wanted.strategy or profile.k8s_sharing
    replicas = wanted.replicas
    if replicas is None:
        replicas = 2 if strategy in ("time-slicing", "mps") else 1
    return SharingSpec(
        strategy=strategy,
        replicas=replicas,
        rename_by_default=wanted.rename_by_default,
        fail_requests_greater_than_one=wanted.fail_requests_greater_than_one,
        mig_strategy=wanted.mig_strategy,
        per_product={product: o.replicas for product, o in wanted.per_product.items()},
    )


def kubernetes_gpu_demand(config: StackConfig) -> dict[str, tuple[int, str | None]]:
    """service -> (GPU resources its running pods ask for, MIG profile) for GPU services on the GPU."""
    return {
        name: (svc.gpu.count * svc.replicas, svc.mig_profile)
        for name, svc in config.services.items()
        if svc.enabled and svc.gpu.mode == "count" and svc.run_on == "gpu"
    }


def service_card(config: StackConfig, name: str) -> str:
    """The card a Kubernetes service runs on: its own `profile`, else the stack's."""
    return config.services[name].profile or config.profile


_SHARING_WORDS = (
    ("replicas/per_product", "replicas/perProduct"),
    ("sharing.per_product", "gpuSharing.perProduct"),
    ("sharing.replicas", "gpuSharing.replicas"),
    ("sharing.rename_by_default", "gpuSharing.renameByDefault"),
    ("sharing.fail_requests_greater_than_one", "gpuSharing.failRequestsGreaterThanOne"),
    ("mig_strategy", "migStrategy"),
    ("gpus_per_node", "gpuSharing.gpusPerNode"),
)


def _sharing_problem(message: str) -> str:
    for old, new in _SHARING_WORDS:
        message = message.replace(old, new)
    return message


def _sharing_key(message: str, spec: SharingSpec) -> str:
    """The gpuSharing key a validate_sharing message is about."""
    product = re.search(r"per_product(?: key |\[)'([^']*)'", message)
    if product:
        return f"gpuSharing.perProduct.{product.group(1)}"
    for needle, key in (
        ("replicas/per_product", "gpuSharing.replicas" if spec.replicas != 1 else "gpuSharing.perProduct"),
        ("sharing.replicas", "gpuSharing.replicas"),
        ("rename_by_default", "gpuSharing.renameByDefault"),
        ("fail_requests_greater_than_one", "gpuSharing.failRequestsGreaterThanOne"),
        ("gpus_per_node", "gpuSharing.gpusPerNode"),
        ("MPS does not work on MIG", "gpuSharing.migStrategy"),
        ("strategy mig needs", "gpuSharing.migStrategy"),
        ("has no MIG", "gpuSharing.strategy" if spec.strategy == "mig" else "gpuSharing.migStrategy"),
    ):
        if needle in message:
            return key
    return "gpuSharing.strategy"


def _check_kubernetes_gpus(config: StackConfig) -> None:
    """components.kubernetes.cluster.validate_sharing, its ValueError turned into the key it is about:
    first the sharing setup alone (gpuSharing.*), then each GPU service's requests added in turn, so
    the service that no longer fits is the one named (services.<name>.gpu). Each card type's nodes hold
    its own services (`services.<name>.profile`), so each is checked on its own."""
    gpus = (config.gpu_sharing or GpuSharingConfig()).gpus_per_node
    demand = kubernetes_gpu_demand(config)
    cards = [config.profile, *sorted({service_card(config, n) for n in demand} - {config.profile})]
    for card in cards:  # not auto: refused for kubernetes before this
        own = {n: d for n, d in demand.items() if service_card(config, n) == card}
        _check_card_gpus(config, PROFILES[card], own, gpus)


def _check_card_gpus(
    config: StackConfig, profile: GpuProfile, demand: dict[str, tuple[int, str | None]], gpus: int
) -> None:
    from components.kubernetes.cluster import validate_sharing  # noqa: PLC0415 (lazy, see _check_kubernetes)

    spec = kubernetes_sharing(config, profile)
    try:
        validate_sharing(spec, profile, 0, gpus)
    except ValueError as err:
        raise _KeyedError(_sharing_key(str(err), spec), _sharing_problem(str(err))) from None
    total = 0
    mig: dict[str, int] = {}
    for name, (count, mig_profile) in demand.items():
        if mig_profile is None:
            total += count
        else:
            resource = mig_resource(mig_profile)
            mig[resource] = mig.get(resource, 0) + count
        try:
            validate_sharing(spec, profile, total, gpus, mig_requests=mig)
        except ValueError as err:
            message = str(err)
            field = "migProfile" if "MIG profile" in message or "exists only" in message else "gpu"
            raise _KeyedError(f"services.{name}.{field}", _sharing_problem(message)) from None


# ---------------------------------------------------------------- resolution
@dataclass(frozen=True)
class ResolvedStack:
    """A validated stack with its GPU profile resolved and checked."""

    stack: str
    config: StackConfig
    profile: GpuProfile | None  # None: `auto` on an SSH host, detected there by the preflight
    secret_keys: frozenset[str]
    warnings: tuple[str, ...] = ()

    def start_order(self) -> list[str]:
        """Enabled services, each after what it depends on (ties in declaration order)."""
        services = {n: s for n, s in self.config.services.items() if s.enabled}
        order: list[str] = []

        def place(name: str) -> None:
            if name in order:
                return
            for dep in services[name].depends_on:
                place(dep)
            order.append(name)

        for name in services:
            place(name)
        return order


def _check_cuda_for_some_card(cuda: CudaOverrides) -> None:
    """`auto` on an SSH host: the card is known only at deploy time, but a CUDA choice no card can run
    (an unknown release, a wheel index or driver that does not exist) is refused now, naming the key."""
    problems: list[tuple[str, str]] = []
    for card in (p for p in PROFILES.values() if p.is_gpu):
        try:
            chosen = card.with_overrides(
                cuda_version=cuda.version, wheel_flavour=cuda.wheel_index, torch_version=cuda.torch_version
            )
            if cuda.driver is not None:
                chosen.check_driver(cuda.driver)
            return
        except ValueError as err:
            field = "cuda.wheelIndex" if cuda.wheel_index and "wheel" in str(err) else "cuda.version"
            if cuda.driver is not None and "driver" in str(err).lower() and "cuda" not in field.lower():
                field = "cuda.driver"
            problems.append((field, str(err)))
    field, problem = problems[0]
    raise ConfigError(field, f"no supported card can use this: {problem}")


def resolve_profile(config: StackConfig, detected: str | None) -> tuple[GpuProfile | None, list[str]]:
    """The stack's profile with its CUDA overrides applied and checked against the card.

    `auto` without a detection (an SSH host) stays None: the host's preflight decides at deploy time,
    with the same checks (it is given the CUDA override and the MIG requirement)."""
    warnings: list[str] = []
    key: str = config.profile
    if key == "auto":
        if detected is None:
            _check_cuda_for_some_card(config.cuda)
            return None, warnings
        key = detected
        if key == "cpu":
            warnings.append("profile auto: no NVIDIA GPU found on the target, falling back to cpu")
    base = PROFILES[key]
    cuda = config.cuda
    try:
        profile = base.with_overrides(
            cuda_version=cuda.version if base.is_gpu else None,
            wheel_flavour=cuda.wheel_index if base.is_gpu else None,
            torch_version=cuda.torch_version,
        )
    except ValueError as err:
        field = "cuda.wheelIndex" if cuda.wheel_index and "wheel" in str(err) else "cuda.version"
        raise ConfigError(field, str(err)) from None
    if cuda.driver is not None:
        try:
            profile.check_driver(cuda.driver)
        except ValueError as err:
            raise ConfigError("cuda.driver", str(err)) from None
    mig_users = [n for n, s in config.services.items() if s.gpu.uses_mig]
    if (cuda.mig or mig_users) and not profile.mig_capable:
        where = "cuda.mig" if cuda.mig else f"services.{mig_users[0]}.gpu"
        capable = ", ".join(k for k, p in PROFILES.items() if p.mig_capable)
        raise ConfigError(where, f"the {profile.display_name} has no MIG; MIG exists only on {capable}")
    provision = config.provision
    if provision.driver_branch is not None and profile.is_gpu:
        try:
            profile.check_driver(provision.driver_branch)
        except ValueError as err:
            raise ConfigError("provision.driverBranch", str(err)) from None
    if provision.kernel_modules == "open" and profile.kernel_modules == "proprietary":
        raise ConfigError(
            "provision.kernelModules",
            f"the {profile.display_name} ({profile.architecture}) needs the proprietary kernel modules; "
            "the open modules need Turing or newer",
        )
    return profile, warnings


def validate(raw: Mapping[str, Any]) -> StackConfig:
    """Raw `gpu-deploy:` values (keys without the namespace) -> StackConfig, or one ConfigError."""
    if not isinstance(raw, Mapping):
        raise ConfigError("(root)", f"expected a mapping of gpu-deploy keys, got {_quote(raw)}")
    try:
        config = StackConfig.model_validate(dict(raw))
    except ValidationError as err:
        raise _to_config_error(err, raw) from None
    _check_lines(raw, "")  # after the fields' own checks, which say more where they apply
    return config


# Where a value may span lines: key material, an inline kubeconfig, secret values (a PEM certificate) and
# smoke-test bodies. Everywhere else a line break (or NUL, anywhere) in a key or value is refused: it would
# split a command line, a known_hosts entry, an env file or a log line.
_MULTILINE = (
    re.compile(r"target\.(sshKey|kubeconfig)"),
    re.compile(r"nodes\.[^.]+\.sshKey"),
    re.compile(r"services\.[^.]+\.secretEnv\.[^.]+"),
    re.compile(r"services\.[^.]+\.smoke(\..*)?"),
    re.compile(r"image\.registry\.password"),
)


def _check_lines(value: Any, key: str) -> None:
    """One line without NUL for every key, and every value outside _MULTILINE; NUL nowhere."""
    if isinstance(value, Mapping):
        for child, inner in value.items():
            name = str(child)
            path = f"{key}.{name}" if key else name
            if any(c in name for c in "\0\n\r"):
                raise ConfigError(path, "a key is one line without NUL")
            _check_lines(inner, path)
    elif isinstance(value, list):
        for inner in value:
            _check_lines(inner, key)  # a list's items are named by the list's key, as elsewhere
    elif isinstance(value, str):
        if "\0" in value:
            raise ConfigError(key, "a value may not hold a NUL character")
        if ("\n" in value or "\r" in value) and not any(
            p.fullmatch(re.sub(r"\[\d+\]", "", key)) for p in _MULTILINE
        ):
            raise ConfigError(
                key, "a value here is one line: it would split a command, a file entry or a log line"
            )


def _to_config_error(err: ValidationError, raw: Mapping[str, Any]) -> ConfigError:
    first = err.errors(include_url=False)[0]
    loc = _real_keys(first["loc"], raw)
    kind = first["type"]
    ctx = first.get("ctx") or {}
    given = first.get("input")
    exc = ctx.get("error")
    if isinstance(exc, _KeyedError):
        prefix = ".".join(loc)
        key = f"{prefix}.{exc.key}" if prefix else exc.key
        return ConfigError(key, exc.problem)
    key = ".".join(loc) or "(root)"
    if kind == "missing":
        return ConfigError(key, "required")
    if kind == "extra_forbidden":
        parent = loc[:-1]
        allowed = _allowed_keys(parent, raw)
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return ConfigError(key, f"unknown key{hint}")
    if kind in ("union_tag_not_found", "union_tag_invalid"):  # target.kind picks the target model
        field = str(ctx.get("discriminator", "kind")).strip("'")
        if kind == "union_tag_not_found":
            return ConfigError(f"{key}.{field}", "required")
        tags = ", ".join(f'"{t}"' for t in re.findall(r"'([^']*)'", str(ctx.get("expected_tags", ""))))
        return ConfigError(f"{key}.{field}", f"expected one of {tags}, got {_quote(ctx.get('tag'))}")
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        choices = ", ".join(f'"{e}"' for e in expected)
        return ConfigError(key, f"expected one of {choices}, got {_quote(given)}")
    if kind == "string_pattern_mismatch":
        return ConfigError(key, f"expected a value matching {ctx.get('pattern')}, got {_quote(given)}")
    message = str(first["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in ("value_error", "assertion_error"):
        return ConfigError(key, message)
    return ConfigError(key, f"{message[0].lower()}{message[1:]}, got {_quote(given)}")


_BRANCH_TAG = re.compile(r"function-.*|str|list\[str\]|int|bool|dict\[.*\]|.*-.*\[.*\]")


def _real_keys(loc: tuple[int | str, ...], raw: Any) -> list[str]:
    """Pydantic's error location without the union/validator branch tags it adds.

    A tag is dropped only where the input has no such key, so a service or variable named
    e.g. "str" or "int" keeps its name; "[key]" (the key itself is invalid) is dropped too."""
    keys: list[str] = []
    node: Any = raw
    for part in loc:
        in_mapping = isinstance(node, Mapping) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_mapping or in_list:
            node = node[part]
        elif (
            part == "[key]"
            or (isinstance(part, str) and _BRANCH_TAG.fullmatch(part))
            or (isinstance(node, Mapping) and node.get("kind") == part)  # a discriminated union's tag
        ):
            continue
        else:
            node = None
        keys.append(str(part))
    return keys


def _allowed_keys(loc: list[str], raw: Any = None) -> list[str]:
    """The keys a mapping at `loc` accepts, for the 'unknown key' message."""
    node: Any = StackConfig
    given: Any = raw  # the input at the same place: its `kind` picks a discriminated union's model
    for part in loc:
        node = _unwrap(node, given)
        given = given.get(part) if isinstance(given, Mapping) else None
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = next((f for n, f in node.model_fields.items() if (f.alias or n) == part), None)
            if field is None:
                return []
            node = field.annotation
        elif get_origin(node) is dict:
            node = get_args(node)[1]
        else:
            return []
    node = _unwrap(node, given)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return sorted((f.alias or n) for n, f in node.model_fields.items())
    return []


def _unwrap(annotation: Any, given: Any = None) -> Any:
    """Optional[X] / Annotated[X, ...] -> X (the model or dict inside); of several models, the one
    whose `kind` is the input's."""
    if get_origin(annotation) is Annotated:
        return _unwrap(get_args(annotation)[0], given)
    if get_origin(annotation) in (Union, UnionType):
        kind = given.get("kind") if isinstance(given, Mapping) else None
        for arg in get_args(annotation):
            field = (
                arg.model_fields.get("kind") if isinstance(arg, type) and issubclass(arg, BaseModel) else None
            )
            if kind is not None and field is not None and kind in get_args(field.annotation):
                return arg
        for arg in get_args(annotation):
            inner = _unwrap(arg)
            if (isinstance(inner, type) and issubclass(inner, BaseModel)) or get_origin(inner) is dict:
                return inner
    return annotation


# ---------------------------------------------------------------- reading Pulumi config
def read_pulumi_config() -> tuple[dict[str, Any], frozenset[str]]:
    """The raw `gpu-deploy:` values the engine handed this program, and which keys are secret."""
    raw: dict[str, Any] = {}
    secret: set[str] = set()
    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    for full_key in sorted(keys):
        namespace, _, key = full_key.partition(":")
        if namespace != NAMESPACE:
            continue
        value = runtime_config.get_config(full_key)
        if isinstance(value, str) and value[:1] in ("{", "["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(key, "is not valid JSON structured config") from None
        raw[key] = value
        if runtime_config.is_config_secret(full_key):
            secret.add(key)
    return raw, frozenset(secret)


STACK_FILE_VARIABLE = "GPU_DEPLOY_STACK_FILE"  # set by the offline tools: the stack file they read


def _secure_leaves(value: Any, key: str) -> list[tuple[str, str]]:
    if isinstance(value, Mapping):
        if set(value) == {"secure"}:
            return [(key, str(value["secure"]))]
        return [p for k, v in value.items() for p in _secure_leaves(v, f"{key}.{k}" if key else str(k))]
    if isinstance(value, list):
        return [p for v in value for p in _secure_leaves(v, key)]
    return []


def secure_values(doc: Any) -> dict[str, str] | None:
    """A stack file's `secure:` values: config key (`services.app.secretEnv.JWT_SECRET`) -> ciphertext.
    None when the document has no config mapping."""
    config = doc.get("config") if isinstance(doc, Mapping) else None
    if not isinstance(config, Mapping):
        return None
    found: dict[str, str] = {}
    for full_key, value in config.items():
        namespace, _, key = str(full_key).partition(":")
        if namespace == NAMESPACE and key:
            found.update(_secure_leaves(value, key))
    return found


def secure_paths(stack: str) -> frozenset[str] | None:
    """Where the stack file has `secure:` values, as config keys (`services.app.secretEnv.JWT_SECRET`).

    The CLI hands the program a whole top-level key as secret when one value inside it is `secure:`; the
    stack file says which value it was, so only that one is kept secret (the rest of `services` stays
    readable in plans and reviews). None when the file cannot be read: then every value under a secret
    key is treated as secret."""
    from stacks.stackfile import read_stack  # noqa: PLC0415 (stackfile imports this module)

    path = Path(os.environ.get(STACK_FILE_VARIABLE) or f"Pulumi.{stack}.yaml")
    try:
        doc = read_stack(path) or {}
    except (OSError, ConfigError):
        return None
    found = secure_values(doc)
    return None if found is None else frozenset(found)


# Where a secret may stand: each is kept a Pulumi secret all the way to where it is used (an env value
# becomes secretEnv). Anywhere else it would land in clear: in image history (build args), in a command
# line `docker inspect` shows, in a ConfigMap (Kubernetes smoke checks), in a CPU fallback's plain env.
_SECRET_PLACES = (
    re.compile(r"target\.(sshKey|kubeconfig)"),
    re.compile(r"nodes\.[^.]+\.sshKey"),
    re.compile(r"image\.registry\.password"),
    re.compile(r"services\.[^.]+\.(secretEnv|env)\.[^.]+"),
)
_SECRET_ELSEWHERE = {
    "buildArgs": "build args are kept in the image history",
    "command": "a command line is shown by docker inspect and ps",
    "smoke": "smoke checks travel in clear (on Kubernetes in a ConfigMap)",
    "cpuEnv": "the CPU fallback's env is plain; give it secretEnv",
}


def check_secure_places(paths: frozenset[str]) -> None:
    """A `secure:` value only where it can stay secret; one line naming the key otherwise."""
    for path in sorted(paths):
        if any(p.fullmatch(path) for p in _SECRET_PLACES):
            continue
        why = next(
            (v for k, v in _SECRET_ELSEWHERE.items() if f".{k}" in f".{path}"), "it would be used in clear"
        )
        raise ConfigError(
            path,
            f"a secure value cannot stay secret here ({why}): put the credential in "
            "services.<name>.secretEnv and refer to it at run time",
        )


def validate_with_secrets(
    raw: Mapping[str, Any], secret_keys: frozenset[str], secure: frozenset[str] | None = None
) -> StackConfig:
    """Validate, then keep every secure env value secret: move it to secretEnv.

    With the stack file's `secure` paths, only the env values that were `secure:` move; without them (no
    stack file to read) every env value under a secret `services` key does, rather than leak one."""
    if secure is not None:
        check_secure_places(secure)
    try:
        config = validate(raw)
    except ConfigError as err:
        raise _masked(err, raw, secret_keys, secure) from None
    if "services" not in secret_keys:
        return config
    services = {}
    for name, svc in config.services.items():
        moved = {k: v for k, v in svc.env.items() if secure is None or f"services.{name}.env.{k}" in secure}
        plain = {k: v for k, v in svc.env.items() if k not in moved}
        services[name] = svc.model_copy(update={"env": plain, "secret_env": {**moved, **svc.secret_env}})
    return config.model_copy(update={"services": services})


def _masked(
    err: ConfigError, raw: Mapping[str, Any], secret_keys: frozenset[str], secure: frozenset[str] | None
) -> ConfigError:
    """The error without any secret value in it (a message may quote the value it refuses)."""
    key, _, message = str(err).removeprefix(f"{NAMESPACE}:").partition(": ")
    secrets: list[str] = []

    def collect(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                collect(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list):
            for v in value:
                collect(v, key)
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            top = key.split(".", 1)[0]
            if (secure is not None and key in secure) or (secure is None and top in secret_keys):
                secrets.append(str(value))

    collect(raw, "")
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= 3:
            message = message.replace(json.dumps(secret), '"[secret]"').replace(secret, "[secret]")
    return ConfigError(key, message)
