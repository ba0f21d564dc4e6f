"""GpuContainer: one service (or one-shot job) as a Docker container with NVIDIA device requests.

Creates one `docker.Container`:
- NVIDIA device requests from the service's `gpu` (all, a count, device ids / MIG instances) — never the
  legacy `gpus` string beside them — and NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES;
- bind mounts, health check (and `wait` until healthy), memory limit, shm size, a numeric non-root user,
  all capabilities dropped and no-new-privileges, restart and json-file log rotation;
- `delete_before_replace`, so a replaced container frees its GPU memory before the new one starts.
A one-shot job (a migration) is attached: `pulumi up` waits for it to exit, and a non-zero exit fails the
update before anything that depends on it starts. With `keep_image` (a rollback to a pinned tag) the job
ignores the image change, so a migration never runs backwards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_docker as docker

from components.core.values import NO_GPU, GpuRequest, PortMapping, UserSpec
from components.core.vocabulary import LABEL_AFTER_JOBS
from components.options import child_options

LOG_OPTIONS = {"max-size": "10m", "max-file": "3"}


@dataclass(frozen=True)
class HealthcheckSpec:
    test: tuple[str, ...]  # Docker's form: ("CMD-SHELL", "...") or ("CMD", ...)
    interval_s: int
    timeout_s: int
    retries: int
    start_period_s: int

    @property
    def healthy_within_s(self) -> int:
        """How long Docker may take to call the container healthy (or give up)."""
        return self.start_period_s + self.retries * (self.interval_s + self.timeout_s)


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class GpuContainerArgs:
    container_name: str
    image: pulumi.Input[str]
    network: pulumi.Input[str]
    service: str
    user: UserSpec
    gpu: GpuRequest = NO_GPU
    driver_capabilities: str = "compute,utility"
    command: Sequence[str] | None = None
    ports: Sequence[PortMapping] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    mounts: Sequence[Mount] = ()
    memory_mib: int | None = None
    shm_mib: int | None = None
    healthcheck: HealthcheckSpec | None = None
    restart: str = "unless-stopped"
    one_shot: bool = False
    labels: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    must_succeed: Sequence[pulumi.Output[int]] = ()  # exit codes of jobs this one waits for
    keep_image: bool = False  # a job that already ran keeps its image: a rollback never re-runs it
    placed_devices: pulumi.Input[Sequence[str]] | None = None  # a count's devices, chosen by the stack


def device_requests(
    gpu: GpuRequest, placed: pulumi.Input[Sequence[str]] | None = None
) -> list[docker.ContainerDeviceRequestArgs]:
    """The NVIDIA device request. A count placed on distinct devices (GPU UUIDs from the host's preflight)
    asks for those devices, since Docker gives every bare count the first GPUs."""
    if gpu.mode == "all":
        return [docker.ContainerDeviceRequestArgs(driver="nvidia", count=-1, capabilities=["gpu"])]
    if gpu.mode == "count" and placed is not None:
        return [docker.ContainerDeviceRequestArgs(driver="nvidia", device_ids=placed, capabilities=["gpu"])]
    if gpu.mode == "count":
        return [docker.ContainerDeviceRequestArgs(driver="nvidia", count=gpu.count, capabilities=["gpu"])]
    if gpu.mode == "devices":
        return [
            docker.ContainerDeviceRequestArgs(
                driver="nvidia", device_ids=list(gpu.device_ids), capabilities=["gpu"]
            )
        ]
    return []


def nvidia_env(gpu: GpuRequest, capabilities: str) -> dict[str, str]:
    """The NVIDIA runtime variables. With a count, Docker picks the devices and sets the list itself."""
    if not gpu.wants_gpu:
        return {}
    env = {"NVIDIA_DRIVER_CAPABILITIES": capabilities}
    if gpu.mode == "all":
        env["NVIDIA_VISIBLE_DEVICES"] = "all"
    elif gpu.mode == "devices":
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(gpu.device_ids)
    return env


def _check_exit(codes: list[int | None]) -> str:
    for code in codes:
        if code not in (None, 0):
            raise RuntimeError(f"a job this container waits for exited with code {code}")
    return "ok"


class GpuContainer(pulumi.ComponentResource):
    container: docker.Container
    exit_code: pulumi.Output[int]

    def __init__(self, name: str, args: GpuContainerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpu-deploy:docker:GpuContainer", name, None, opts)

        plain_env = {**args.env, **nvidia_env(args.gpu, args.driver_capabilities)}
        envs: list[pulumi.Input[str]] = [f"{k}={v}" for k, v in sorted(plain_env.items())]
        envs += [
            pulumi.Output.secret(pulumi.Output.concat(k, "=", v)) for k, v in sorted(args.secret_env.items())
        ]

        labels = dict(args.labels)
        label_args: list[docker.ContainerLabelArgs] = [
            docker.ContainerLabelArgs(label=k, value=v) for k, v in sorted(labels.items())
        ]
        if args.must_succeed:
            gate = pulumi.Output.all(*args.must_succeed).apply(_check_exit)
            label_args.append(docker.ContainerLabelArgs(label=LABEL_AFTER_JOBS, value=gate))

        health = args.healthcheck
        self.container = docker.Container(
            name,
            name=args.container_name,
            image=args.image,
            command=list(args.command) if args.command is not None else None,
            user=str(args.user),
            envs=envs,
            device_requests=device_requests(args.gpu, args.placed_devices),
            mounts=[
                docker.ContainerMountArgs(
                    type="bind", source=m.source, target=m.target, read_only=m.read_only
                )
                for m in args.mounts
            ],
            ports=[
                docker.ContainerPortArgs(
                    internal=p.container_port,
                    external=p.host_port,
                    ip=p.host_ip or None,
                    protocol=p.protocol,
                )
                for p in args.ports
            ],
            networks_advanced=[
                docker.ContainerNetworksAdvancedArgs(name=args.network, aliases=[args.service])
            ],
            memory=args.memory_mib,
            shm_size=args.shm_mib,
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=list(health.test),
                interval=f"{health.interval_s}s",
                timeout=f"{health.timeout_s}s",
                retries=health.retries,
                start_period=f"{health.start_period_s}s",
            )
            if health
            else None,
            wait=bool(health) and not args.one_shot,
            wait_timeout=health.healthy_within_s + 60 if health else None,
            restart="no" if args.one_shot else args.restart,
            must_run=not args.one_shot,
            attach=args.one_shot,
            logs=args.one_shot,
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
            security_opts=["no-new-privileges:true"],
            log_driver="json-file",
            log_opts=LOG_OPTIONS,
            labels=label_args,
            opts=child_options(
                self, opts, delete_before_replace=True, ignore_changes=["image"] if args.keep_image else None
            ),
        )
        self.exit_code = self.container.exit_code
        self.register_outputs({"name": self.container.name, "image": args.image})
