"""The cross-field rules of a stack whose target is a Kubernetes cluster (`target.kind: kubernetes`).

What the Docker keys mean here, or that they mean nothing; the rules a Kubernetes workload and its GPU
sharing must meet are components/core's (workload_rules, sharing), whose problems name a field: the
tables below and the Service model's keys turn each into the stack key it is about."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from components.core.catalog import GpuProfile
from components.core.problems import Problem
from components.core.sharing import sharing_problems
from components.core.values import check_image_pinned
from components.core.vocabulary import mig_resource
from components.core.workload_rules import (
    env_overlap_problems,
    fallback_problems,
    in_cluster_smoke_problems,
    mig_count_problems,
    probe_timing_problems,
)
from components.host import smoke_checklist
from stacks.config.cards import card_profile
from stacks.config.errors import KeyedError, quote
from stacks.config.fields import alias
from stacks.config.resolution import kubernetes_gpu_demand, kubernetes_sharing, service_card
from stacks.config.rules_docker import DOCKER_SERVICE_KEYS
from stacks.config.sections import GpuOperatorConfig, GpuSharingConfig, KubernetesTarget
from stacks.config.service import Service, header_refs

if TYPE_CHECKING:
    from stacks.config.stack import StackConfig

# components.core.sharing's fields (SharingSpec's) -> the stack keys they come from.
SHARING_KEYS = {
    "strategy": "gpuSharing.strategy",
    "replicas": "gpuSharing.replicas",
    "per_product": "gpuSharing.perProduct",
    "rename_by_default": "gpuSharing.renameByDefault",
    "fail_requests_greater_than_one": "gpuSharing.failRequestsGreaterThanOne",
    "mig_strategy": "gpuSharing.migStrategy",
    "gpus_per_node": "gpuSharing.gpusPerNode",
}
# How the sharing messages name those fields: the keys, but migStrategy alone (it reads "strategy mps
# needs migStrategy none").
SHARING_WORDS = {**SHARING_KEYS, "mig_strategy": "migStrategy"}

_NO_BUILD = (
    "a kubernetes stack deploys pinned images only: there is no build host to build on. "
    "Build and push the image in CI, then pin its tag here"
)
_CLAIM_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _under(path: str, root: str) -> bool:
    normal = str(PurePosixPath(path))
    return normal == root or normal.startswith(root.rstrip("/") + "/")


def check_kubernetes(config: StackConfig, target: KubernetesTarget) -> None:
    """What the Docker path means by a key that has no Kubernetes meaning is refused, naming the key (the
    GPU sharing rules come last, after the rules for every target: check_kubernetes_gpus)."""
    if config.profile == "auto":
        raise KeyedError(
            "profile",
            "a kubernetes stack names its card (a2, h100, ...): auto is detected by the preflight on a "
            "Docker host, not in a cluster",
        )
    if config.image is not None:
        raise KeyedError("image", f"{_NO_BUILD} (services.<name>.image)")
    if "provision" in config.model_fields_set and not config.nodes:
        raise KeyedError(
            "provision",
            "host provisioning runs over SSH: list the GPU nodes under `nodes` (or let "
            "gpuOperator.driver and gpuOperator.toolkit install them in containers)",
        )
    if config.nodes and config.provision.runtime == "docker":
        expected = "microk8s" if target.distribution == "microk8s" else "containerd"
        raise KeyedError(
            "provision.runtime",
            f"Kubernetes nodes run containerd: set {expected} (docker is for Docker hosts)",
        )
    cards = {config.profile, *(node.profile for node in config.nodes.values())}
    for name, svc in config.services.items():
        if svc.profile is not None and svc.profile not in cards:
            raise KeyedError(
                f"services.{name}.profile",
                f"no GPU node of this stack has a {svc.profile}: its cards are {', '.join(sorted(cards))}",
            )
    operator = config.gpu_operator or GpuOperatorConfig()
    if operator.namespace == target.namespace:
        raise KeyedError(
            "gpuOperator.namespace",
            f"the GPU components need a namespace of their own (privileged pods); {target.namespace} "
            "is the services' (target.namespace)",
        )
    for name, svc in config.services.items():
        _check_kubernetes_service(name, svc, target)


def _check_kubernetes_service(name: str, svc: Service, target: KubernetesTarget) -> None:
    key = f"services.{name}"
    if name.endswith("-"):
        raise KeyedError(key, "a Kubernetes object name ends with a letter or digit")
    for field in DOCKER_SERVICE_KEYS:
        if field in svc.model_fields_set:
            raise KeyedError(f"{key}.{alias(Service, field)}", "a docker setting; target.kind is kubernetes")
    for field, image in (("image", svc.image), ("cpuImage", svc.cpu_image)):
        if image == "build":
            raise KeyedError(f"{key}.{field}", _NO_BUILD)
        if image is not None:
            try:
                check_image_pinned(image)
            except ValueError as err:
                raise KeyedError(f"{key}.{field}", str(err)) from None
    if svc.gpu.mode in ("all", "devices"):
        raise KeyedError(
            f"{key}.gpu",
            "on kubernetes gpu is a count of nvidia.com/gpu (the scheduler picks the devices; "
            f"MIG instances: a count and migProfile), got {svc.gpu.mode}",
        )
    _raise_first(name, mig_count_problems(svc.mig_profile, svc.gpu.count if svc.gpu.mode == "count" else 0))
    for port in svc.ports:
        if port.host_port != port.container_port or port.host_ip or port.protocol != "tcp":
            raise KeyedError(
                f"{key}.ports",
                "on kubernetes a port is a TCP port of the service's ClusterIP Service, the same as "
                f'the container\'s: write "{port.container_port}:{port.container_port}"',
            )
    claims: set[str] = set()
    for volume in svc.volumes:
        if volume.is_relative:
            claim = volume.host.removeprefix("./")
            if not _CLAIM_NAME.fullmatch(claim) or len(claim) > 40:
                raise KeyedError(
                    f"{key}.volumes",
                    "on kubernetes a relative volume names a PersistentVolumeClaim (a DNS label such "
                    f"as models), got {quote(volume.host)}",
                )
            if claim not in svc.storage:
                raise KeyedError(
                    f"{key}.storage.{claim}",
                    f"required: the size of the PersistentVolumeClaim behind volume {claim}, e.g. 10Gi",
                )
            claims.add(claim)
        elif target.root is None or not _under(volume.host, target.root):
            raise KeyedError(
                f"{key}.volumes",
                f"hostPath {volume.host} must lie under target.root ({target.root or 'not set'}); "
                "or name a PersistentVolumeClaim (a relative volume)",
            )
    for claim in svc.storage:
        if claim not in claims:
            raise KeyedError(f"{key}.storage.{claim}", f"no volume {claim}:... in {key}.volumes")
    if svc.one_shot:
        raise KeyedError(f"{key}.oneShot", "one-shot jobs are not supported on kubernetes yet")
    if svc.test is not None:
        raise KeyedError(f"{key}.test", "a Docker host setting (a test job before the container is replaced)")
    if "restart" in svc.model_fields_set and svc.restart not in ("always", "unless-stopped"):
        raise KeyedError(f"{key}.restart", "the pods of a Deployment always restart; remove restart")
    if svc.memory is None:
        raise KeyedError(
            f"{key}.memory", "required on kubernetes: the pod's memory request and limit, e.g. 4g"
        )
    if svc.healthcheck is not None:
        check = svc.healthcheck
        _raise_first(name, probe_timing_problems(interval_s=check.interval, timeout_s=check.timeout))
    _raise_first(name, env_overlap_problems(svc.env, svc.secret_env))  # cpuEnv may override secretEnv
    _check_kubernetes_smoke(name, svc)
    fallback = [
        field
        for field in ("cpu_image", "cpu_env", "run_on")
        if field in svc.model_fields_set and getattr(svc, field) not in (None, {}, "gpu")
    ]
    problems = fallback_problems(
        cpu_fallback=svc.cpu_fallback, wants_gpu=svc.gpu.wants_gpu, fallback_settings=fallback
    )
    _raise_first(name, problems)


def _raise_first(service: str, problems: list[Problem]) -> None:
    """The first problem of a core rule about a service, under the service's key for its field."""
    for problem in problems:
        raise KeyedError(_service_key(service, problem.field), problem.message)


def _service_key(service: str, field: str) -> str:
    """`secret_env.TOKEN` of service app -> `services.app.secretEnv.TOKEN`: the field's stack key, then
    what lies below it as the rule named it (an env name, a health check's own field)."""
    head, _, below = field.partition(".")
    return f"services.{service}.{alias(Service, head)}" + (f".{below}" if below else "")


def _check_kubernetes_smoke(name: str, svc: Service) -> None:
    """Smoke checks run from a Job beside the pods (components/kubernetes/smoke_job.py): HTTP only, and
    no credential in a header (the checks live in a ConfigMap)."""
    for index, check in enumerate(svc.smoke, start=1):
        _raise_first(name, in_cluster_smoke_problems([check], start=index))
        headers = check["http"].get("headers") or {}
        secret = sorted(header for header in headers if smoke_checklist.is_secret_name(str(header)))
        secret += [h for i, h, _ in header_refs([check]) if h not in secret]
        if secret:
            raise KeyedError(
                f"services.{name}.smoke",
                f"check #{index} sends header {secret[0]}: on kubernetes the checks live in a ConfigMap, "
                "which is no place for a credential; smoke-test an endpoint that needs none",
            )


def check_kubernetes_gpus(config: StackConfig) -> None:
    """components.core.sharing's rules, each problem under the key of its field: first the sharing setup
    alone (gpuSharing.*), then each GPU service's requests added in turn, so the service that no longer
    fits is the one named (services.<name>.gpu or .migProfile). Each card type's nodes hold its own
    services (`services.<name>.profile`), so each is checked on its own."""
    gpus = (config.gpu_sharing or GpuSharingConfig()).gpus_per_node
    demand = kubernetes_gpu_demand(config)
    cards = [config.profile, *sorted({service_card(config, n) for n in demand} - {config.profile})]
    for card in cards:  # not auto: refused for kubernetes before this
        own = {n: d for n, d in demand.items() if service_card(config, n) == card}
        _check_card_gpus(config, card_profile(config, card), own, gpus)


def _check_card_gpus(
    config: StackConfig, profile: GpuProfile, demand: dict[str, tuple[int, str | None]], gpus: int
) -> None:
    spec = kubernetes_sharing(config, profile)
    for problem in sharing_problems(spec, profile, 0, gpus, words=SHARING_WORDS):
        head, _, below = problem.field.partition(".")  # per_product.NVIDIA-A2
        raise KeyedError(SHARING_KEYS[head] + (f".{below}" if below else ""), problem.message)
    total = 0
    mig: dict[str, int] = {}
    for name, (count, mig_profile) in demand.items():
        if mig_profile is None:
            total += count
        else:
            resource = mig_resource(mig_profile)
            mig[resource] = mig.get(resource, 0) + count
        # the setup passed above: what is left is about the requests, field gpu or mig_profile
        _raise_first(
            name, sharing_problems(spec, profile, total, gpus, mig_requests=mig, words=SHARING_WORDS)
        )
