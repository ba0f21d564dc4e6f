"""How the NVIDIA device plugin shares each GPU, and the rules a sharing setup must meet.

`SharingSpec` is the device plugin's sharing setup; `gpu_capacity` is what one node can advertise under
it; `sharing_problems` is every rule on a setup and on the GPU requests it must hold, each a `Problem`
naming the spec field (`replicas`, `per_product.<product>`, `mig_strategy`, ..., or `gpu` / `mig_profile`
for what the services ask). The messages name the fields in the caller's words (`words`): a component's
caller reads `sharing.replicas`, a stack's user `gpuSharing.replicas`. Standard library only."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from components.core.catalog import GpuProfile, Sharing
from components.core.problems import Problem, raise_first
from components.core.vocabulary import GPU_RESOURCE, MIG_RESOURCE_PREFIX, SHARED_GPU_RESOURCE

MigStrategy = Literal["none", "single", "mixed"]
SHARED_STRATEGIES: tuple[Sharing, ...] = ("time-slicing", "mps")  # node-wide replicas of each GPU
DEFAULT_CONFIG = "default"  # the device-plugin ConfigMap's config for nodes without a product label
# A data key of the ConfigMap that is also a valid node label value.
_CONFIG_KEY = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")

# How the messages name the spec's fields by default (a direct caller of validate_sharing / GpuCluster).
SPEC_WORDS: Mapping[str, str] = {
    "replicas": "sharing.replicas",
    "per_product": "sharing.per_product",
    "rename_by_default": "sharing.rename_by_default",
    "fail_requests_greater_than_one": "sharing.fail_requests_greater_than_one",
    "mig_strategy": "mig_strategy",
    "gpus_per_node": "gpus_per_node",
}


@dataclass(frozen=True)
class SharingSpec:
    """How the device plugin advertises each physical GPU (time-slicing and MPS are node-wide)."""

    strategy: Sharing = "none"
    replicas: int = 1  # nvidia.com/gpu advertised per physical GPU with time-slicing or MPS
    rename_by_default: bool = False  # advertise nvidia.com/gpu.shared instead of nvidia.com/gpu
    fail_requests_greater_than_one: bool = False  # time-slicing only
    mig_strategy: MigStrategy = "none"
    per_product: Mapping[str, int] = field(default_factory=dict)  # gpu.product -> replicas

    @property
    def resource_name(self) -> str:
        """The extended resource a pod asks for under this spec (the MIG mixed ones aside)."""
        if self.rename_by_default and self.strategy in SHARED_STRATEGIES:
            return SHARED_GPU_RESOURCE
        return GPU_RESOURCE


def gpu_capacity(spec: SharingSpec, profile: GpuProfile, gpus_per_node: int = 1) -> int:
    """The most GPU resources one node can ever advertise under `spec`.

    Time-slicing and MPS multiply each GPU by its replicas (the largest of the default and the
    overrides for this card's products, since a labelled node gets the override); with MIG each GPU
    holds at most as many instances as its smallest profile allows (7 x 1g.10gb on an H100).
    """
    per_gpu = max(profile.mig_profiles.values(), default=1) if spec.mig_strategy != "none" else 1
    if spec.strategy in SHARED_STRATEGIES:
        overrides = [spec.per_product[p] for p in profile.gpu_products if p in spec.per_product]
        per_gpu *= max([spec.replicas, *overrides])
    return gpus_per_node * per_gpu


def sharing_problems(
    spec: SharingSpec,
    profile: GpuProfile,
    gpu_requests_total: int = 0,
    gpus_per_node: int = 1,
    *,
    mig_requests: Mapping[str, int] | None = None,
    words: Mapping[str, str] = SPEC_WORDS,
) -> list[Problem]:
    """Everything that cannot work about `spec` on `profile`'s card, in the order a reader fixes it.

    `gpu_requests_total` is the sum of nvidia.com/gpu the stack's services ask for; `mig_requests`
    counts MIG instances asked for by profile (`1g.10gb` or `nvidia.com/mig-1g.10gb`). What the
    requests get wrong is about field `gpu` or `mig_profile`; the rest names the spec field."""
    problems = _setup_problems(spec, profile, gpus_per_node, gpu_requests_total, words)
    problems += _demand_problems(
        spec, profile, gpu_requests_total, gpus_per_node, mig_requests=mig_requests or {}, words=words
    )
    return problems


def validate_sharing(
    spec: SharingSpec,
    profile: GpuProfile,
    gpu_requests_total: int,
    gpus_per_node: int = 1,
    *,
    mig_requests: Mapping[str, int] | None = None,
) -> None:
    """Raise ValueError for the first of `sharing_problems`."""
    raise_first(sharing_problems(spec, profile, gpu_requests_total, gpus_per_node, mig_requests=mig_requests))


def _setup_problems(
    spec: SharingSpec,
    profile: GpuProfile,
    gpus_per_node: int,
    gpu_requests_total: int,
    words: Mapping[str, str],
) -> list[Problem]:
    card = profile.display_name
    problems: list[Problem] = []
    if gpus_per_node < 1:
        problems.append(
            Problem("gpus_per_node", f"{words['gpus_per_node']} must be at least 1, got {gpus_per_node}")
        )
    if gpu_requests_total < 0:
        problems.append(Problem("gpu", f"gpu_requests_total cannot be negative, got {gpu_requests_total}"))
    if spec.replicas < 1:
        problems.append(
            Problem(
                "replicas",
                f"{words['replicas']} must be at least 1 (GPUs advertised per physical GPU), "
                f"got {spec.replicas}",
            )
        )
    per_product = words["per_product"]
    for product, replicas in spec.per_product.items():
        if not _CONFIG_KEY.match(product) or product == DEFAULT_CONFIG:
            problems.append(
                Problem(
                    f"per_product.{product}",
                    f"{per_product} key {product!r} is not a GPU product label value such as 'NVIDIA-A2'",
                )
            )
        if replicas < 1:
            problems.append(
                Problem(
                    f"per_product.{product}", f"{per_product}[{product!r}] must be at least 1, got {replicas}"
                )
            )

    if spec.strategy in SHARED_STRATEGIES:
        # k8s-device-plugin v0.17.1 api/config/v1/replicas.go (ReplicatedResource.UnmarshalJSON): the plugin
        # and GPU feature discovery exit on "number of replicas must be >= 2", and the node advertises no GPU
        refused = (
            "the NVIDIA device plugin refuses fewer ('number of replicas must be >= 2') and advertises no GPU"
        )
        if spec.replicas < 2:
            problems.append(
                Problem(
                    "replicas",
                    f"{words['replicas']} must be at least 2 with {spec.strategy}, got {spec.replicas}: "
                    f"{refused}; for one pod per GPU use strategy none",
                )
            )
        for product, replicas in spec.per_product.items():
            if replicas < 2:
                problems.append(
                    Problem(
                        f"per_product.{product}",
                        f"{per_product}[{product!r}] must be at least 2 with {spec.strategy}, "
                        f"got {replicas}: {refused}",
                    )
                )
    mig_strategy = words["mig_strategy"]
    if spec.strategy in ("none", "mig"):
        if spec.replicas != 1 or spec.per_product:
            both = f"{words['replicas']}/{per_product.rpartition('.')[2]}"  # sharing.replicas/per_product
            problems.append(
                Problem(
                    "replicas" if spec.replicas != 1 else "per_product",
                    f"{both} only apply to time-slicing or mps; with strategy {spec.strategy!r} each GPU "
                    f"(or MIG instance) is one {GPU_RESOURCE}: set replicas 1 or pick strategy time-slicing",
                )
            )
        if spec.rename_by_default:
            problems.append(
                Problem(
                    "rename_by_default",
                    f"{words['rename_by_default']} needs strategy time-slicing or mps, not {spec.strategy!r}",
                )
            )
    if spec.fail_requests_greater_than_one and spec.strategy != "time-slicing":
        problems.append(
            Problem(
                "fail_requests_greater_than_one",
                f"{words['fail_requests_greater_than_one']} is a time-slicing setting; "
                f"strategy is {spec.strategy!r}",
            )
        )
    if spec.strategy == "mps" and spec.mig_strategy != "none":
        problems.append(
            Problem(
                "mig_strategy",
                f"MPS does not work on MIG devices: strategy mps needs {mig_strategy} none, "
                f"got {spec.mig_strategy!r}",
            )
        )
    if spec.strategy == "mig" and spec.mig_strategy == "none":
        problems.append(Problem("mig_strategy", f"strategy mig needs {mig_strategy} single or mixed"))
    if (spec.strategy == "mig" or spec.mig_strategy != "none") and not profile.mig_capable:
        problems.append(
            Problem(
                "strategy" if spec.strategy == "mig" else "mig_strategy",
                f"a {card} has no MIG (strategy {spec.strategy!r}, {mig_strategy} {spec.mig_strategy!r}); "
                f"share it with time-slicing or mps and {mig_strategy} none",
            )
        )
    if not profile.is_gpu and (spec.strategy != "none" or gpu_requests_total > 0):
        problems.append(
            Problem(
                "strategy" if spec.strategy != "none" else "gpu",
                f"the {card} profile has no GPU: strategy must be none and every service gpu: none "
                f"(asked for {gpu_requests_total})",
            )
        )
    return problems


def _demand_problems(
    spec: SharingSpec,
    profile: GpuProfile,
    gpu_requests_total: int,
    gpus_per_node: int,
    *,
    mig_requests: Mapping[str, int],
    words: Mapping[str, str],
) -> list[Problem]:
    """What the services ask for beyond what a node of `profile`'s card advertises under `spec`."""
    card = profile.display_name
    problems: list[Problem] = []
    capacity = gpu_capacity(spec, profile, gpus_per_node)
    if gpu_requests_total > capacity:
        how = {
            "time-slicing": "time-slicing replicas",
            "mps": "MPS replicas",
            "mig": "MIG instances",
            "none": "whole GPUs",
        }[spec.strategy]
        problems.append(
            Problem(
                "gpu",
                f"the services ask for {gpu_requests_total} {spec.resource_name} in all, but a node with "
                f"{gpus_per_node} x {card} advertises at most {capacity} ({how}); the extra pods would stay "
                f"Pending. Raise {words['replicas']}, add GPUs, or run a service without one (runOn: cpu "
                f"where it has a CPU fallback, else gpu: none)",
            )
        )
    for name, count in mig_requests.items():
        mig_profile = name[len(MIG_RESOURCE_PREFIX) :] if name.startswith(MIG_RESOURCE_PREFIX) else name
        if spec.mig_strategy != "mixed":
            problems.append(
                Problem(
                    "mig_profile",
                    f"MIG resource {name!r} exists only with {words['mig_strategy']} mixed "
                    f"(got {spec.mig_strategy!r}); with single, MIG instances are advertised as "
                    f"{GPU_RESOURCE}",
                )
            )
            continue
        if mig_profile not in profile.mig_profiles:
            known = ", ".join(profile.mig_profiles)
            problems.append(
                Problem("mig_profile", f"a {card} has no MIG profile {mig_profile!r} (known: {known})")
            )
            continue
        # The sharing config names nvidia.com/gpu only, so MIG instances advertised as nvidia.com/mig-*
        # (strategy mixed) are not replicated (k8s-device-plugin v0.17.1 internal/rm/device_map.go).
        most = gpus_per_node * profile.mig_profiles[mig_profile]
        if count > most:
            problems.append(
                Problem("gpu", f"the services ask for {count} x {mig_profile}, but a node has at most {most}")
            )
    return problems
