"""The GPU rules: GPU requests fit the profile, MIG only where the card has it, CUDA within the card's limits.

Card facts (which profile has MIG, the newest CUDA a card runs) come from the profile catalog,
components/core/catalog.py, never from a copy here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from components.core.catalog import PROFILES, WHEEL_CUDA, GpuProfile
from components.core.values import is_mig_device
from components.core.vocabulary import MIG_RESOURCE_PREFIX, PRODUCT_LABEL
from policy.context import StackContext
from policy.reading import (
    COMMANDS,
    CONTAINER,
    IMAGE,
    POD_SPEC_PATHS,
    as_list,
    as_map,
    command_assignments,
    container_label,
    dig,
    docker_env,
    is_gpu_resource,
    is_known,
    pod_containers,
    pod_spec,
)

_CUDA_TAG = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?(?:-|$)")
_WHEEL_FLAVOUR = re.compile(r"/(cu(\d+))/?$")


# ---------------------------------------------------------------- rule: GPU requests match the profile
def _docker_gpu_problems(props: Mapping[str, Any], profile: GpuProfile | None) -> list[str]:
    problems: list[str] = []
    device_requests = [r for r in as_list(props.get("deviceRequests")) if isinstance(r, Mapping)]
    visible = docker_env(props).get("NVIDIA_VISIBLE_DEVICES")
    if is_known(props.get("gpus")) and props.get("gpus"):
        problems.append("uses the legacy `gpus` string; request GPUs with deviceRequests (driver nvidia)")
    if profile is not None and not profile.is_gpu:
        if device_requests:
            problems.append(f"profile {profile.key} has no GPU, but the container has device requests")
        if is_known(visible) and visible not in ("", "void", "none"):
            problems.append(f"profile {profile.key} has no GPU, but NVIDIA_VISIBLE_DEVICES={visible}")
    for request in device_requests:
        count, given_ids = request.get("count"), request.get("deviceIds")
        # device ids placed at deploy time (from the host's preflight) are unknown in a preview, yet present
        ids_unknown = given_ids is not None and not is_known(given_ids)
        ids = [] if ids_unknown else as_list(given_ids)
        if request.get("driver") != "nvidia":
            problems.append(f"device request driver is {request.get('driver')!r}, not 'nvidia'")
        capabilities = as_list(request.get("capabilities"))
        if "gpu" not in capabilities and not any("gpu" in as_list(c) for c in capabilities):
            problems.append("device request lacks the 'gpu' capability")
        if (ids or ids_unknown) and count not in (None, 0):
            problems.append("device request sets both a count and device ids")
        elif not (ids or ids_unknown) and not (isinstance(count, int) and (count == -1 or count >= 1)):
            problems.append(f"device request count must be -1 (all) or >= 1, got {count!r}")
        if isinstance(count, int) and count >= 1 and visible == "all":
            problems.append(f"NVIDIA_VISIBLE_DEVICES=all exposes every GPU and defeats count {count}")
        elif (ids or ids_unknown) and visible == "all":
            problems.append("NVIDIA_VISIBLE_DEVICES=all exposes every GPU and defeats the device ids")
        known_ids = [str(i) for i in ids if is_known(i)]
        if known_ids and is_known(visible) and visible != ",".join(known_ids):
            problems.append(f"NVIDIA_VISIBLE_DEVICES={visible} differs from the device ids {known_ids}")
    return problems


def _k8s_gpu_problems(spec: Mapping[str, Any], profile: GpuProfile | None) -> list[str]:
    problems: list[str] = []
    wants_gpu = False
    for container in pod_containers(spec):
        resources = as_map(container.get("resources"))
        limits, asks = as_map(resources.get("limits")), as_map(resources.get("requests"))
        where = container_label(container)
        for key in sorted({str(k) for k in (*limits, *asks)}):
            if not is_gpu_resource(key):
                continue
            wants_gpu = True
            limit = limits.get(key)
            if limit is None:
                problems.append(f"{where}: {key} is requested without a limit (extended resources need one)")
                continue
            if not is_known(limit):
                continue
            if not re.fullmatch(r"[1-9]\d*", str(limit)):
                problems.append(f"{where}: {key} limit must be a whole number >= 1, got {limit!r}")
            if key in asks and is_known(asks[key]) and str(asks[key]) != str(limit):
                problems.append(f"{where}: {key} request {asks[key]!r} differs from its limit {limit!r}")
            if profile is not None and not profile.is_gpu:
                problems.append(f"{where}: profile {profile.key} has no GPU, but it asks for {key}")
    selected = as_map(spec.get("nodeSelector")).get(PRODUCT_LABEL)
    if (
        wants_gpu
        and profile is not None
        and profile.is_gpu
        and is_known(selected)
        and selected
        and not any(_labels_card(str(selected), p) for p in profile.gpu_products)
    ):
        problems.append(
            f"nodeSelector {PRODUCT_LABEL}={selected} is not a {profile.display_name} "
            f"({', '.join(profile.gpu_products)})"
        )
    return problems


def _labels_card(label: str, product: str) -> bool:
    """A GPU feature discovery product label of this card: the product, `-MIG-<profile>` with MIG single,
    `-SHARED` when time-sliced or MPS-shared without renaming (k8s-device-plugin v0.17.1 internal/lm)."""
    base = label.removesuffix("-SHARED")
    return base == product or base.startswith(f"{product}-MIG-")


def check_gpu_requests(type_: str, props: Mapping[str, Any], context: StackContext) -> list[str]:
    """Docker device requests / Kubernetes nvidia.com/gpu limits are well-formed and fit the profile."""
    if type_ == CONTAINER:
        return _docker_gpu_problems(props, context.gpu_profile)
    if type_ in POD_SPEC_PATHS:
        return _k8s_gpu_problems(pod_spec(type_, props), context.gpu_profile)
    return []


# ---------------------------------------------------------------- rule: MIG only where the card has it
def check_mig(type_: str, props: Mapping[str, Any], context: StackContext) -> list[str]:
    """MIG device ids (Docker) and nvidia.com/mig-* resources (Kubernetes) only on a MIG-capable profile."""
    profile = context.gpu_profile
    if profile is None or profile.mig_capable:
        return []
    capable = ", ".join(k for k, p in PROFILES.items() if p.mig_capable)
    found: list[str] = []
    if type_ == CONTAINER:
        for request in as_list(props.get("deviceRequests")):
            ids = as_list(request.get("deviceIds")) if isinstance(request, Mapping) else []
            found += [str(i) for i in ids if is_known(i) and is_mig_device(str(i))]
    elif type_ in POD_SPEC_PATHS:
        for container in pod_containers(pod_spec(type_, props)):
            resources = as_map(container.get("resources"))
            keys = {*as_map(resources.get("limits")), *as_map(resources.get("requests"))}
            found += sorted(k for k in keys if k.startswith(MIG_RESOURCE_PREFIX))
    if not found:
        return []
    where = f"a {profile.display_name} (profile {profile.key})"
    return [f"MIG {', '.join(found)} requested on {where}; MIG exists only on {capable}"]


# ---------------------------------------------------------------- rule: CUDA within the card's limits
def _cuda_major(text: str) -> tuple[int, int] | None:
    match = _CUDA_TAG.match(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _wheel_cuda(url: str) -> tuple[int, int] | None:
    match = _WHEEL_FLAVOUR.search(url)
    if not match:
        return None
    known = WHEEL_CUDA.get(match.group(1))
    if known:
        major, minor = known.split(".")
        return int(major), int(minor)
    digits = match.group(2)
    return (int(digits[:-1]), int(digits[-1])) if len(digits) >= 2 else None


def _cuda_problems(profile: GpuProfile, base_image: Any, cuda_version: Any, index_url: Any) -> list[str]:
    problems: list[str] = []
    card = f"a {profile.display_name} (profile {profile.key})"
    if profile.max_cuda_major is not None:
        limit = profile.max_cuda_major
        if isinstance(base_image, str) and is_known(base_image):
            repository, _, tag = base_image.rpartition(":")
            version = _cuda_major(tag) if repository.endswith("nvidia/cuda") else None
            if version and version[0] > limit:
                cuda = f"{version[0]}.{version[1]}"
                problems.append(f"BASE_IMAGE {base_image} is CUDA {cuda}; {card} needs {limit}.x")
        if isinstance(cuda_version, str) and is_known(cuda_version):
            version = _cuda_major(cuda_version)
            if version and version[0] > limit:
                problems.append(f"CUDA_VERSION {cuda_version} is newer than {card} runs ({limit}.x)")
    if profile.max_wheel_cuda is not None and isinstance(index_url, str) and is_known(index_url):
        wheel = _wheel_cuda(index_url)
        major, minor = (int(p) for p in profile.max_wheel_cuda.split("."))
        if wheel and wheel > (major, minor):
            arch = profile.cuda_arch_list.replace(".", "")
            problems.append(
                f"TORCH_INDEX_URL {index_url} wheels carry no sm_{arch} kernels for {card}; "
                f"use cu{profile.max_wheel_cuda.replace('.', '')} or older"
            )
    return problems


def check_cuda_fits_card(type_: str, props: Mapping[str, Any], context: StackContext) -> list[str]:
    """Images built for a card stay within its CUDA limits (a Tesla P40: CUDA 12.x, cu126 wheels or older)."""
    if type_ == IMAGE:
        args = as_map(dig(props, "build", "args"))
        profile = PROFILES.get(str(args.get("GPU_PROFILE"))) or context.gpu_profile
        if profile is None:
            return []
        return _cuda_problems(
            profile, args.get("BASE_IMAGE"), args.get("CUDA_VERSION"), args.get("TORCH_INDEX_URL")
        )
    if type_ in COMMANDS and context.gpu_profile is not None:
        image = command_assignments(props.get("create")).get("CUDA_IMAGE")
        return _cuda_problems(context.gpu_profile, image, None, None) if image else []
    return []
