"""A service of the stack (`gpu-deploy:services.<name>`): its image, GPUs, ports, env, volumes, health
check, smoke checks and, on Kubernetes, replicas, the CPU fallback and storage; and the smoke checks'
header references to its secretEnv."""

from __future__ import annotations

import copy
import shlex
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from components.core.problems import raise_first
from components.core.values import GpuRequest, UserSpec, holds_password, looks_secret
from components.core.workload_rules import probe_kind_problems
from components.host import smoke_checklist
from stacks.config.errors import KeyedError
from stacks.config.fields import (
    ContextField,
    CpusField,
    DockerfileField,
    DurationField,
    EnvName,
    EnvValue,
    GpuField,
    ImageRefField,
    Model,
    PortField,
    Quantity,
    SizeField,
    UlimitField,
    UlimitName,
    UserField,
    VolumeField,
    no_secret_build_args,
)


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
        has_http, has_command = self.http is not None, self.command is not None
        raise_first(probe_kind_problems(has_http=has_http, has_command=has_command))
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


DependencyCondition = Literal["started", "healthy", "completed"]
RolloutMode = Literal["auto", "zero-downtime", "stop-first"]  # components.core.gpu_memory.ROLLOUT_MODES


class BuildOverride(Model):
    """A service's own build, compose-style; each key defaults to the stack's image section. `args` are the
    team's own build args (a version matrix: PYTHON_VERSION, TORCH_VERSION, ...): over `image.buildArgs`
    and the profile's, and checked against the card where the catalog decides them (stacks/config/
    resolution.py: image_profile)."""

    context: ContextField | None = None
    dockerfile: DockerfileField | None = None
    target: str | None = None
    args: dict[EnvName, EnvValue] = Field(default_factory=dict)

    @field_validator("args")
    @classmethod
    def _no_secret_build_args(cls, args: dict[str, str]) -> dict[str, str]:
        return no_secret_build_args(args)


class Requirements(Model):
    """What a service cannot start without (the P40 write-up's `npm run verify-env`): the plan refuses a
    stack where one is not set (or set empty), naming each."""

    env: list[EnvName] = Field(default_factory=list)
    secret_env: list[EnvName] = Field(default_factory=list)


# the IPC namespace (Docker HostConfig.IpcMode; `container:<name>` is not offered: it ties two services'
# lifetimes). host: the host's shared memory, semaphores and message queues: a relaxation (see rules_docker)
IpcMode = Literal["private", "shareable", "host", "none"]


class ServiceTest(Model):
    """`services.<name>.test`: a one-shot job of the freshly built image (or of a test stage or Dockerfile
    of the service's source) on the host with the service's GPU, env and read-only volumes; the service's
    container, and the gate that stops its old copy, start only once it exits 0 (stacks/docker_tests.py)."""

    command: list[str] | str
    target: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] | None = None  # a build stage
    dockerfile: DockerfileField | None = None  # another Dockerfile of the service's context
    timeout: DurationField = 600  # killed past this (`timeout -k 10`): exit 124 fails the deploy
    gpu_memory: SizeField | None = None  # its budget beside the running copy; None: the service's

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, value: list[str] | str) -> list[str] | str:
        if not (value.strip() if isinstance(value, str) else value):
            raise ValueError('expected the test command, e.g. ["pytest", "tests/"]')
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout_bounds(cls, value: int) -> int:
        if not 10 <= value <= 24 * 3600:
            raise ValueError(f"expected 10s to 24h, got {value}s")
        return value

    @property
    def command_list(self) -> list[str]:
        return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)


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
    # GPU memory budgets (stacks/config/budgets.py): the most this service's copy holds on each GPU it is
    # given ("20GiB", "8192m"); None: the whole device. `rollout`: how a changed copy replaces the old one
    # (auto: zero downtime where two copies fit, else the old copy stops first).
    gpu_memory: SizeField | None = None
    rollout: RolloutMode = "auto"
    test: ServiceTest | None = None  # Docker: a GPU test job before the running copy is touched
    enabled: bool = True
    restart: Literal["no", "on-failure", "always", "unless-stopped"] = "unless-stopped"
    requires: Requirements = Requirements()  # env / secretEnv names the service cannot start without
    # Docker only (DOCKER_SERVICE_KEYS, refused on kubernetes), compose's keys:
    entrypoint: list[str] | str | None = None  # the image's ENTRYPOINT replaced
    cpus: CpusField | None = None  # a CPU limit, "1.5": at most that many CPUs' time
    ulimits: dict[UlimitName, UlimitField] = Field(default_factory=dict)  # {memlock: -1, stack: 67108864}
    ipc: IpcMode | None = None  # the IPC namespace; None: the engine's default (private or shareable)
    cpu_build: BuildOverride | None = None  # runOn: cpu with a built CPU image: its build (a stage)
    # Kubernetes only (KUBERNETES_SERVICE_KEYS; refused on a Docker target):
    replicas: int = Field(default=1, ge=0, le=1000)  # pods of the service
    cpu: Annotated[str, Field(pattern=r"^(\d+(\.\d+)?|\d+m)$")] | None = None  # CPU request: "2", "500m"
    cpu_fallback: bool = False  # declare a CPU Deployment `<name>-cpu` beside the GPU one
    cpu_image: ImageRefField | None = None  # the fallback's image (a CPU build); None: the same image
    cpu_env: dict[EnvName, EnvValue] = Field(default_factory=dict)  # the fallback's env overrides
    run_on: Literal["gpu", "cpu"] = "gpu"  # cpu: the fallback runs, the GPU Deployment scales to 0
    mig_profile: Annotated[str, Field(pattern=r"^\d+g\.\d+gb$")] | None = None  # gpu counts MIG instances
    # kubernetes, several card types: the card this service runs on (placed only on nodes with it)
    profile: Annotated[str, Field(min_length=1)] | None = None  # a card key (stack.py checks it)
    storage: dict[str, Quantity] = Field(default_factory=dict)  # PVC size per named volume: {models: 10Gi}
    driver_capabilities: str | None = None  # NVIDIA_DRIVER_CAPABILITIES; the profile's default otherwise
    smoke: list[dict[str, Any]] = Field(default_factory=list)  # smoke_checklist checks (+ whenGpu)
    smoke_deadline: DurationField = 180

    @field_validator("smoke")
    @classmethod
    def _smoke_checks_parse(cls, checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, check in enumerate(checks):
            if not isinstance(check.get("whenGpu", False), bool):
                raise KeyedError(f"{index}.whenGpu", "expected true or false")
        stand_in = resolve_header_refs(checks, {name: "[secretEnv]" for _, _, name in header_refs(checks)})
        try:
            smoke_checklist.parse_checks(smoke_checks(stand_in, gpu=True))
        except smoke_checklist.ConfigError as err:
            raise ValueError(f"not a smoke check list: {err}") from None
        return checks

    @model_validator(mode="after")
    def _header_refs_name_secret_env(self) -> Service:
        for index, header, name in header_refs(self.smoke):
            if name not in self.secret_env:
                raise KeyedError(
                    "smoke",
                    f"check #{index + 1} takes header {header} from secretEnv.{name}, which this service "
                    f"does not have (secretEnv: {', '.join(sorted(self.secret_env)) or 'none'})",
                )
        return self

    @model_validator(mode="after")
    def _budget_and_rollout(self) -> Service:
        """gpuMemory is a GPU's budget; a forced zero downtime needs what moves the traffic over; a job has
        no rollout (it runs once)."""
        if self.gpu_memory is not None and not self.gpu.wants_gpu:
            raise KeyedError("gpuMemory", "a GPU memory budget needs a GPU; this service has gpu: none")
        if self.gpu_memory is not None and self.gpu.uses_mig:
            raise KeyedError(
                "gpuMemory",
                "a MIG instance's memory is fixed by its profile; gpuMemory budgets whole GPUs "
                "(gpu: all, a count or GPU indexes)",
            )
        if "rollout" in self.model_fields_set and self.one_shot:
            raise KeyedError("rollout", "a one-shot job runs once: it has no rollout (remove rollout)")
        if self.rollout == "zero-downtime":
            if self.healthcheck is None or self.healthcheck.http is None:
                raise KeyedError(
                    "rollout",
                    "zero-downtime needs an HTTP health check (healthcheck.http): the traffic moves to the "
                    "new copy once it passes",
                )
            if not self.ports or any(port.protocol != "tcp" for port in self.ports):
                raise KeyedError(
                    "rollout",
                    "zero-downtime needs published ports, all TCP (the reverse proxy carries no UDP): their "
                    "traffic is what moves to the new copy",
                )
            if self.gpu.uses_mig:
                raise KeyedError(
                    "rollout",
                    "zero-downtime needs room for two copies, which the plan cannot check on MIG "
                    "instances: use stop-first or auto",
                )
        return self

    @model_validator(mode="after")
    def _test_job(self) -> Service:
        """A test job runs before the running copy is touched, so beside it on its GPU: it needs the
        running copy's budget (gpuMemory) to know the room is there; a stage or Dockerfile of its own is
        built from the service's source."""
        test = self.test
        if test is None:
            return self
        if self.one_shot:
            raise KeyedError("test", "a one-shot job has no test job: it runs once itself (remove test)")
        for field, value in (("target", test.target), ("dockerfile", test.dockerfile)):
            if value is not None and self.image != "build":
                raise KeyedError(
                    f"test.{field}",
                    f'a test stage is built from the service\'s source: needs image: "build" (image is '
                    f"{self.image})",
                )
        if test.gpu_memory is not None and not self.gpu.wants_gpu:
            raise KeyedError("test.gpuMemory", "a GPU memory budget needs a GPU; this service has gpu: none")
        if self.gpu.wants_gpu and self.gpu_memory is None:
            raise KeyedError(
                "test",
                "the test job runs on this service's GPU while the running copy still holds it, which "
                "without gpuMemory takes the whole device: set gpuMemory",
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
                raise KeyedError(key, "looks like a credential; move it to secretEnv (stored encrypted)")
            if holds_password(value):
                raise KeyedError(
                    key,
                    "holds a URL with a password (user:password@); move it to secretEnv (stored encrypted)",
                )
        return env

    @property
    def command_list(self) -> list[str] | None:
        if self.command is None:
            return None
        return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_not_empty(cls, value: list[str] | str | None) -> list[str] | str | None:
        if value is not None and not (shlex.split(value) if isinstance(value, str) else value):
            raise ValueError("an empty entrypoint keeps the image's: remove the key, or name the program")
        return value

    @property
    def entrypoint_list(self) -> list[str] | None:
        if self.entrypoint is None:
            return None
        return shlex.split(self.entrypoint) if isinstance(self.entrypoint, str) else list(self.entrypoint)

    def missing_requirements(self) -> list[str]:
        """`env.NAME` / `secretEnv.NAME` for each required name not set (an empty plain value is not set)."""
        missing = [f"env.{n}" for n in self.requires.env if not self.env.get(n)]
        return missing + [f"secretEnv.{n}" for n in self.requires.secret_env if n not in self.secret_env]

    @property
    def effective_restart(self) -> str:
        return "no" if self.one_shot else self.restart
