"""What a GpuWorkload is asked to run (components/kubernetes/workload.py): its arguments and their check.

What a service must be to run on Kubernetes at all is components.core.workload_rules (the stack config
checks it first, naming keys); check_args keeps the arguments' own shape and calls the same rules, so a
direct caller gets a ValueError too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pulumi

from components.core.values import UserSpec, check_image_pinned
from components.core.vocabulary import GPU_RESOURCE, MIG_RESOURCE_PREFIX
from components.core.workload_rules import (
    env_overlap_problems,
    fallback_problems,
    mig_count_problems,
    probe_kind_problems,
    probe_timing_problems,
)

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_MAX_NAME = 48  # leaves room for "-cpu" and claim names within 63


@dataclass(frozen=True)
class VolumeSpec:
    name: str  # a DNS label: the pod volume's name and the claim's suffix
    mount_path: str
    size: str | None = None  # PVC request, e.g. "10Gi"; required for kind pvc
    kind: Literal["pvc", "hostPath"] = "pvc"
    host_path: str | None = None  # absolute path on the node; required for kind hostPath
    read_only: bool = False
    storage_class: str | None = None  # None: the cluster's default class


@dataclass(frozen=True)
class ProbeSpec:
    """One health check used three ways: start-up (the model-load window), readiness and liveness."""

    http_path: str | None = None  # an HTTP GET on `port` ...
    port: int | None = None  # None: the workload's first port
    command: Sequence[str] | None = None  # ... or a command run in the container (exactly one of both)
    interval_s: int = 10
    timeout_s: int = 5
    failure_threshold: int = 3  # readiness/liveness failures before not-ready/restart
    startup_window_s: int = 600  # how long loading the model may take before liveness counts

    @property
    def startup_failure_threshold(self) -> int:
        return max(1, math.ceil(self.startup_window_s / self.interval_s))


@dataclass(frozen=True)
class GpuWorkloadArgs:
    name: str
    namespace: str
    image: pulumi.Input[str]  # a pinned tag or digest; ':latest' and untagged images are refused
    user: UserSpec
    command: Sequence[str] | None = None  # container args (Docker's CMD)
    replicas: int = 1
    gpu: int = 0  # count of gpu_resource (or of mig_resource); 0 = CPU only
    gpu_resource: str = GPU_RESOURCE  # SharingSpec.resource_name: nvidia.com/gpu.shared with renameByDefault
    mig_resource: str | None = None  # e.g. "nvidia.com/mig-1g.10gb" (mixed strategy); replaces gpu_resource
    cpu_fallback: bool = False
    cpu_image: str | None = None  # the fallback's image (a CPU build); None: the same image
    cpu_env: Mapping[str, str] = field(default_factory=dict)  # fallback env overrides
    cpu_replicas: int = 0  # the fallback's replicas: 0 until a config flip scales it up
    ports: Sequence[int] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    volumes: Sequence[VolumeSpec] = ()
    memory_mib: int | None = None  # request and limit
    cpu: str | None = None  # request only ("2", "500m"): a CPU limit throttles model loads
    shm_mib: int | None = None  # a memory-backed /dev/shm (PyTorch data loaders, NCCL)
    probe: ProbeSpec | None = None
    # nvidia.com/gpu.product values; with MIG strategy single GFD appends the profile
    # (NVIDIA-H100-80GB-HBM3-MIG-1g.10gb)
    gpu_products: Sequence[str] = ()
    card: str | None = None  # the profile key of the card the GPU pods run on
    component: str = "server"  # app.kubernetes.io/component
    # How a changed Deployment replaces its pods (components.core.gpu_memory's modes): "zero-downtime" is
    # RollingUpdate with maxSurge 1 and maxUnavailable 0 (the new pod starts beside the old one: the stack
    # checked there is a spare GPU resource and memory for it), "stop-first" is Recreate; None: Recreate
    # for a GPU Deployment (the old pod frees its GPU first), the Kubernetes default otherwise.
    rollout: Literal["zero-downtime", "stop-first"] | None = None


def check_args(args: GpuWorkloadArgs) -> None:
    """The arguments' own shape; what a service must be on Kubernetes is components.core.workload_rules."""
    if not _DNS_LABEL.match(args.name) or len(args.name) > _MAX_NAME:
        raise ValueError(f"workload name {args.name!r} must be a DNS label of at most {_MAX_NAME} characters")
    if not _DNS_LABEL.match(args.namespace):
        raise ValueError(f"namespace {args.namespace!r} must be a DNS label")
    if isinstance(args.image, str):
        check_image_pinned(args.image)
    if args.cpu_image is not None:
        check_image_pinned(args.cpu_image)
    if args.user.uid == 0:
        raise ValueError(f"{args.name}: pods run as a non-root user; uid 0 is refused")
    if args.replicas < 0 or args.cpu_replicas < 0 or args.gpu < 0:
        raise ValueError(f"{args.name}: replicas, cpu_replicas and gpu cannot be negative")
    if args.mig_resource is not None and not args.mig_resource.startswith(MIG_RESOURCE_PREFIX):
        raise ValueError(f"{args.name}: mig_resource is nvidia.com/mig-<profile>, got {args.mig_resource!r}")
    fallback = {"cpu_image": args.cpu_image, "cpu_env": args.cpu_env, "cpu_replicas": args.cpu_replicas}
    problems = [
        *mig_count_problems(args.mig_resource, args.gpu),
        *fallback_problems(
            cpu_fallback=args.cpu_fallback,
            wants_gpu=args.gpu > 0,
            fallback_settings=[field for field, value in fallback.items() if value],
        ),
        # cpu_env may override a secret_env key in the fallback (a stack whose services hold a secure
        # value keeps every env value secret, USE_GPU included); env and secret_env must not overlap.
        *env_overlap_problems(args.env, args.secret_env),
    ]
    probe = args.probe
    if probe is not None:
        has_http, has_command = probe.http_path is not None, probe.command is not None
        problems += probe_kind_problems(has_http=has_http, has_command=has_command)
        problems += probe_timing_problems(interval_s=probe.interval_s, timeout_s=probe.timeout_s)
    for problem in problems:
        raise ValueError(f"{args.name}: {problem.field}: {problem.message}")
    for port in args.ports:
        if not 0 < port < 65536:
            raise ValueError(f"{args.name}: port {port} is out of range")
    seen: set[str] = set()
    for volume in args.volumes:
        if not _DNS_LABEL.match(volume.name) or volume.name in seen or volume.name == "dshm":
            raise ValueError(
                f"{args.name}: volume name {volume.name!r} must be a unique DNS label (not dshm)"
            )
        seen.add(volume.name)
        if not volume.mount_path.startswith("/"):
            raise ValueError(f"{args.name}: volume {volume.name} mount_path must be absolute")
        if volume.kind == "pvc" and not volume.size:
            raise ValueError(f"{args.name}: pvc volume {volume.name} needs a size such as 10Gi")
        if volume.kind == "hostPath" and not (volume.host_path or "").startswith("/"):
            raise ValueError(f"{args.name}: hostPath volume {volume.name} needs an absolute host_path")
    if probe is not None:
        if probe.http_path is not None and probe.port is None and not args.ports:
            raise ValueError(f"{args.name}: an http probe needs a port")
        if probe.failure_threshold < 1:
            raise ValueError(f"{args.name}: probe failure_threshold must be >= 1")
