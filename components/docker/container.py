"""GpuContainer: one service (or one-shot job) as a Docker container with NVIDIA device requests.

Creates, in order:
- for a GPU service, the gate `<name>-gpu-memory` (gpu-memory-gate.sh on the host): stop-first, it stops and
  removes the old copy, then waits until the GPU memory the service needs is free again; zero-downtime, it
  confirms the room for the new copy beside the old one; for a stop-first service without a GPU that
  publishes ports, the same script as the handover `<name>-handover` (no memory to wait for). Stopping
  first, it also stops the service's other containers of the stack: a copy from before the service's
  rollout mode changed, and a reverse proxy going away that held its ports (_memory_gate). Its trigger
  is a secret sha256 fingerprint of every input of the container, and both it and the container are
  replaced on any change
  (`replace_on_changes=["*"]`), the container carrying the gate's id: the gate runs exactly when the
  container is replaced, always before the new copy starts;
- one `docker.Container`: NVIDIA device requests from the service's `gpu` (all, placed devices, device ids
  / MIG instances) — never the legacy `gpus` string beside them — and NVIDIA_VISIBLE_DEVICES /
  NVIDIA_DRIVER_CAPABILITIES; bind mounts, health check (and `wait` until healthy), memory limit, shm size,
  compose's entrypoint, CPU limit (`cpus`), ulimits and IPC mode where the service sets them,
  a numeric non-root user, all capabilities dropped and no-new-privileges, restart and json-file log
  rotation, and `destroy_grace_seconds` (the provider stops a deleted container with that grace, and with
  none kills it at once: terraform-provider-docker resource_docker_container_funcs.go
  resourceDockerContainerDelete).

Two rollouts (components/core/gpu_memory.py decides which):
- stop-first: the fixed name `<stack>-<service>`, its own published ports and the service's network alias,
  `delete_before_replace=True` (pulumi-docker's default for containers, provider/resources.go; a set name
  forces it anyway: pulumi-terraform-bridge schema.go nameRequiresDeleteBeforeReplace);
- zero-downtime: no name, so pulumi-docker auto-names it `<logical name>-<7 hex>` (resources.go
  SetAutonaming) and a replacement gets a fresh name (the engine checks a replacement without its old
  inputs: pulumi/pulumi step_generator.go); `delete_before_replace=False` set explicitly, which overrides
  the provider's default (step_generator.go), so the new copy starts beside the old one, which the engine
  deletes at the end of the update (pulumi/pulumi#9979). No published ports and no alias: the stack's
  ReverseProxy owns both and routes to the copy by its name (components/docker/proxy.py).
A one-shot job (a migration) is attached: `pulumi up` waits for it to exit, and a non-zero exit fails the
update before anything that depends on it starts. With `keep_image` (a rollback to a pinned tag) the job
ignores the image change, so a migration never runs backwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_command as command
import pulumi_docker as docker

from components.core.values import NO_GPU, GpuRequest, PortMapping, UserSpec
from components.core.vocabulary import LABEL_AFTER_JOBS, LABEL_GATE, LABEL_SERVICE, LABEL_STACK
from components.docker.host_command import HostCommand, host_command
from components.options import child_options

LOG_OPTIONS = {"max-size": "10m", "max-file": "3"}
STOP_GRACE_S = 30  # `docker stop -t`: how long a copy being removed gets to finish its requests
GATE_WAIT_S = 120  # how long the gate waits for the GPU memory to be free


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


NO_GPU_DEVICES = "none"  # gpu-memory-gate.sh's GPU_DEVICES of a service without a GPU: the handover only


@dataclass(frozen=True)
class MemoryGate:
    """The gate of a GPU service, or the handover of a stop-first service without a GPU that publishes
    ports (devices NO_GPU_DEVICES): gpu-memory-gate.sh's GPU_DEVICES and NEED_MIB."""

    devices: pulumi.Input[str]  # "all", comma-separated device ids (indices, GPU UUIDs), or NO_GPU_DEVICES
    need_mib: int | None  # the service's gpuMemory; None: the whole device
    connection: command.remote.ConnectionArgs | None = None  # None: this machine is the Docker host
    wait_s: int = GATE_WAIT_S


@dataclass(frozen=True)
class GpuContainerArgs:
    container_name: str  # stop-first only: a zero-downtime copy is auto-named
    image: pulumi.Input[str]
    network: pulumi.Input[str]
    service: str
    user: UserSpec
    gpu: GpuRequest = NO_GPU
    driver_capabilities: str = "compute,utility"
    command: Sequence[str] | None = None
    entrypoint: Sequence[str] | None = None  # replaces the image's ENTRYPOINT
    ports: Sequence[PortMapping] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    mounts: Sequence[Mount] = ()
    memory_mib: int | None = None
    shm_mib: int | None = None
    cpus: str | None = None  # a CPU limit ("1.5"), in the text the provider reads back
    ulimits: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # name -> (soft, hard); -1 unlimited
    ipc: str | None = None  # HostConfig.IpcMode; None: the engine's default
    healthcheck: HealthcheckSpec | None = None
    restart: str = "unless-stopped"
    one_shot: bool = False
    labels: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    must_succeed: Sequence[pulumi.Output[int]] = ()  # exit codes of jobs this one waits for
    keep_image: bool = False  # a job that already ran keeps its image: a rollback never re-runs it
    placed_devices: pulumi.Input[Sequence[str]] | None = None  # a count's devices, chosen by the stack
    zero_downtime: bool = False  # an auto-named copy beside the old one, reached through the proxy
    stop_grace_s: int = STOP_GRACE_S
    gate: MemoryGate | None = None  # GPU services: held back until the GPU memory is free


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


def fingerprint(args: GpuContainerArgs, envs: Sequence[pulumi.Input[str]]) -> pulumi.Output[str]:
    """A secret sha256 of every input of the container: what it says changes exactly when one does, and
    it never shows a value (secret env included)."""
    plain = dataclasses.replace(
        args, image="", network="", secret_env={}, labels={}, must_succeed=(), placed_devices=None, gate=None
    )
    changing: list[Any] = [args.image, args.network, list(envs), args.placed_devices, dict(args.labels)]
    digest = pulumi.Output.all(repr(plain), *changing).apply(
        lambda values: hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()
    )
    return pulumi.Output.secret(digest)


class GpuContainer(pulumi.ComponentResource):
    container: docker.Container
    gate: HostCommand | None
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

        # 1. The GPU memory gate, before the container.
        self.gate = None
        if args.gate is not None:
            self.gate = self._memory_gate(name, args, args.gate, fingerprint(args, envs), opts)
            label_args.append(docker.ContainerLabelArgs(label=LABEL_GATE, value=self.gate.id))

        # 2. The container: a fixed name (stop-first) or an auto-named copy (zero-downtime).
        health = args.healthcheck
        copy = args.zero_downtime and not args.one_shot
        self.container = docker.Container(
            name,
            name=None if copy else args.container_name,
            image=args.image,
            command=list(args.command) if args.command is not None else None,
            entrypoints=list(args.entrypoint) if args.entrypoint is not None else None,
            user=str(args.user),
            envs=envs,
            device_requests=device_requests(args.gpu, args.placed_devices),
            mounts=[
                docker.ContainerMountArgs(
                    type="bind", source=m.source, target=m.target, read_only=m.read_only
                )
                for m in args.mounts
            ],
            ports=[]
            if copy
            else [
                docker.ContainerPortArgs(
                    internal=p.container_port,
                    external=p.host_port,
                    ip=p.host_ip or None,
                    protocol=p.protocol,
                )
                for p in args.ports
            ],
            networks_advanced=[
                docker.ContainerNetworksAdvancedArgs(
                    name=args.network, aliases=[] if copy else [args.service]
                )
            ],
            memory=args.memory_mib,
            shm_size=args.shm_mib,
            cpus=args.cpus,
            ulimits=[
                docker.ContainerUlimitArgs(name=n, soft=soft, hard=hard)
                for n, (soft, hard) in sorted(args.ulimits.items())
            ],
            ipc_mode=args.ipc,
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
            destroy_grace_seconds=None if args.one_shot else args.stop_grace_s,
            opts=child_options(
                self,
                opts,
                after=[self.gate] if self.gate is not None else [],
                delete_before_replace=not copy,
                replace_on_changes=["*"] if self.gate is not None or copy else None,
                ignore_changes=["image"] if args.keep_image else None,
            ),
        )
        self.exit_code = self.container.exit_code
        self.register_outputs({"name": self.container.name, "image": args.image})

    def _memory_gate(
        self,
        name: str,
        args: GpuContainerArgs,
        gate: MemoryGate,
        inputs: pulumi.Output[str],
        opts: pulumi.ResourceOptions | None,
    ) -> HostCommand:
        """`<name>-gpu-memory`: stop-first, the old copy stops and its memory is free before the new one
        starts; zero-downtime, the room for the new copy beside the old one is there. `<name>-handover`
        (no GPU): stop-first only, the old copy stops.

        Stop-first, the handover also stops the service's other containers of this stack: a copy
        labeled with the service (a zero-downtime copy from before the service's rollout mode changed:
        Pulumi deletes it only at the end of the update) and any container publishing one of the
        service's host ports (the stack's reverse proxy, when it is going away: the stack waits for the
        proxy first, so a proxy that stays has already let go of the ports)."""
        env: dict[str, pulumi.Input[str]] = {
            "SERVICE": args.service,
            "STOP_OLD": "0" if args.zero_downtime else "1",
            "OLD_CONTAINER": "" if args.zero_downtime else args.container_name,
            "STOP_GRACE_S": str(args.stop_grace_s),
        }
        if not args.zero_downtime and LABEL_STACK in args.labels:
            env["STACK_LABEL"] = pulumi.Output.concat(LABEL_STACK, "=", args.labels[LABEL_STACK])
            env["SERVICE_LABEL"] = f"{LABEL_SERVICE}={args.service}"
            env["FREE_PORTS"] = ",".join(f"{p.host_port}/{p.protocol}" for p in args.ports)
        env |= {
            "GPU_DEVICES": gate.devices,
            "NEED_MIB": str(gate.need_mib or 0),
            "WAIT_S": str(gate.wait_s),
        }
        # a failed job it waits for (a migration, the service's test) fails the gate before it runs: the old
        # copy is never stopped for a new one that will not start
        if args.must_succeed:  # (folded into the fingerprint: "ok" every time the jobs succeed)
            checked = pulumi.Output.all(*args.must_succeed).apply(_check_exit)
            inputs = pulumi.Output.all(inputs, checked).apply(lambda both: str(both[0]))
        return host_command(
            f"{name}-handover" if gate.devices == NO_GPU_DEVICES else f"{name}-gpu-memory",
            script="gpu-memory-gate",
            env=env,
            connection=gate.connection,
            triggers=[inputs],
            opts=child_options(self, opts, replace_on_changes=["*"]),
        )
