"""Stack config -> the Kubernetes components' arguments: one service's workload, probe, volumes and smoke
Job, and the GPU check of one card. Pure translation: no resource is created here."""

from __future__ import annotations

import json
from typing import Literal

from components.core import vocabulary
from components.core.catalog import GpuProfile
from components.core.gpu_memory import ZERO_DOWNTIME, Rollout
from components.core.sharing import SharingSpec, gpu_capacity
from components.kubernetes.cluster import node_product_labels
from components.kubernetes.gpu_check import GpuCheckArgs
from components.kubernetes.smoke_job import SmokeJobArgs
from components.kubernetes.workload_spec import GpuWorkloadArgs, ProbeSpec, VolumeSpec
from stacks.config import (
    Healthcheck,
    KubernetesTarget,
    Service,
    smoke_checks,
)


def probe_spec(check: Healthcheck) -> ProbeSpec:
    """One health check as start-up (a model-load window of startPeriod), readiness and liveness."""
    command: list[str] | None = None
    if check.command is not None:
        command = ["sh", "-c", check.command] if isinstance(check.command, str) else list(check.command)
    return ProbeSpec(
        http_path=check.http.path if check.http else None,
        port=check.http.port if check.http else None,
        command=command,
        interval_s=check.interval,
        timeout_s=check.timeout,
        failure_threshold=check.retries,
        startup_window_s=check.start_period or check.interval * check.retries,
    )


def volume_specs(svc: Service, target: KubernetesTarget) -> list[VolumeSpec]:
    """Relative volumes are PersistentVolumeClaims (sized by `storage`), absolute ones hostPaths."""
    specs: list[VolumeSpec] = []
    for index, volume in enumerate(svc.volumes):
        if volume.is_relative:
            claim = volume.host.removeprefix("./")
            specs.append(
                VolumeSpec(
                    name=claim,
                    mount_path=volume.container,
                    size=svc.storage[claim],
                    read_only=volume.read_only,
                    storage_class=target.storage_class,
                )
            )
        else:
            specs.append(
                VolumeSpec(
                    name=f"host-{index}",
                    mount_path=volume.container,
                    kind="hostPath",
                    host_path=volume.host,
                    read_only=volume.read_only,
                )
            )
    return specs


def service_url(name: str, svc: Service, target: KubernetesTarget) -> str:
    """The service's cluster DNS name and first port: where an in-cluster client reaches it."""
    return vocabulary.service_url(name, target.namespace, svc.ports[0].container_port)


def workload_revision(svc: Service) -> str:
    """What the workload is, as config: a change re-runs its smoke test. Secret values stay out (names in);
    key order does not count (a reformatted stack file is the same workload)."""
    plain = svc.model_dump(mode="json", by_alias=True, exclude={"secret_env"})
    return json.dumps({**plain, "secretEnv": sorted(svc.secret_env)}, sort_keys=True)


def smoke_job_args(name: str, svc: Service, target: KubernetesTarget, *, on_gpu: bool) -> SmokeJobArgs | None:
    """The service's in-cluster smoke test, or None when it has no checks here (or nothing serves)."""
    checks = smoke_checks(svc.smoke, gpu=on_gpu)
    if not checks or not svc.ports or svc.replicas == 0:
        return None
    return SmokeJobArgs(
        service=name,
        namespace=target.namespace,
        base_url=service_url(name, svc, target),
        checks=checks,
        deadline_s=svc.smoke_deadline,
        revision=workload_revision(svc),
    )


def workload_args(
    name: str,
    svc: Service,
    target: KubernetesTarget,
    profile: GpuProfile,
    sharing: SharingSpec,
    *,
    rollout: Rollout | None = None,
) -> GpuWorkloadArgs:
    """`rollout`: the service's (stacks/config/budgets.kubernetes_rollouts); it sets the strategy of a GPU
    Deployment, and of another only where the stack forces a mode (else the Kubernetes default)."""
    gpu = svc.gpu.count if svc.gpu.mode == "count" else 0
    on_cpu = svc.run_on == "cpu"
    env = dict(svc.env)
    if svc.driver_capabilities and gpu:
        env["NVIDIA_DRIVER_CAPABILITIES"] = svc.driver_capabilities
    return GpuWorkloadArgs(
        name=name,
        namespace=target.namespace,
        image=svc.image,
        user=svc.user,
        command=svc.command_list,
        replicas=0 if on_cpu else svc.replicas,
        gpu=gpu,
        gpu_resource=sharing.resource_name,
        mig_resource=vocabulary.mig_resource(svc.mig_profile) if svc.mig_profile else None,
        cpu_fallback=svc.cpu_fallback,
        cpu_image=svc.cpu_image,
        cpu_env=svc.cpu_env,
        cpu_replicas=svc.replicas if on_cpu else 0,
        ports=[port.container_port for port in svc.ports],
        env=env,
        secret_env=dict(svc.secret_env),
        volumes=volume_specs(svc, target),
        memory_mib=svc.memory,
        cpu=svc.cpu,
        shm_mib=svc.shm_size,
        probe=probe_spec(svc.healthcheck) if svc.healthcheck else None,
        # what GPU feature discovery really labels the node under this sharing (NVIDIA-A2-SHARED ...)
        gpu_products=node_product_labels(sharing, profile) if gpu else (),
        card=profile.key if gpu else None,
        rollout=_strategy_mode(rollout) if rollout is not None and (gpu or svc.rollout != "auto") else None,
    )


def _strategy_mode(rollout: Rollout) -> Literal["zero-downtime", "stop-first"]:
    return "zero-downtime" if rollout.mode == ZERO_DOWNTIME else "stop-first"


def gpu_check_args(
    profile: GpuProfile, sharing: SharingSpec, namespace: str, gpus_per_node: int
) -> GpuCheckArgs:
    """What the in-cluster check asks of one node: with time-slicing or MPS every replica of every GPU (a
    node that shares less, or whose plugin refused its config, cannot take the pod); one GPU resource
    where a pod may ask for no more (failRequestsGreaterThanOne) or MIG partitions vary per node."""
    whole_node = sharing.mig_strategy == "none" and not sharing.fail_requests_greater_than_one
    return GpuCheckArgs(
        card=profile.key,
        namespace=namespace,
        image=profile.base_image,
        products=node_product_labels(sharing, profile),
        resource=sharing.resource_name,
        capacity=gpu_capacity(sharing, profile, gpus_per_node) if whole_node else 1,
    )
