"""A validated stack resolved: its GPU profile with the stack's CUDA choices checked against the card, and
on Kubernetes the device plugin's sharing spec and what each service asks of the GPUs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.core.catalog import PROFILES, GpuProfile, parse_version, profile_for_gpu
from components.core.sharing import SHARED_STRATEGIES, SharingSpec
from stacks.config.builds import ImageBuild, image_builds
from stacks.config.cards import card_profile, own_card_for_gpu
from stacks.config.errors import ConfigError
from stacks.config.sections import CudaOverrides, GpuSharingConfig

if TYPE_CHECKING:
    from stacks.config.stack import StackConfig


@dataclass(frozen=True)
class ResolvedStack:
    """A validated stack with its GPU profile resolved and checked."""

    stack: str
    config: StackConfig
    profile: GpuProfile | None  # None: `auto` on an SSH host, detected there by the preflight
    secret_keys: frozenset[str]
    warnings: tuple[str, ...] = ()

    def card(self, key: str) -> GpuProfile:
        """The profile a card key names (a node's, a service's): the stack's own card first, else the
        catalog's; without the stack's `cuda` choices (those are the stack profile's)."""
        return card_profile(self.config, key)

    def start_order(self) -> list[str]:
        """Enabled services, each after what it depends on (ties in declaration order)."""
        return start_order(self.config)


def start_order(config: StackConfig) -> list[str]:
    """Enabled services, each after what it depends on (ties in declaration order)."""
    services = {n: s for n, s in config.services.items() if s.enabled}
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


def resolve_profile(
    config: StackConfig, detected: str | Mapping[str, Any] | None
) -> tuple[GpuProfile | None, list[str]]:
    """The stack's profile with its CUDA overrides applied and checked against the card: the one place a
    profile is resolved, named (`profile: a2`), the stack's own (`profile: h100-16c`, from `cards`) or
    detected (`auto`, by this machine's or the host's preflight: `detected` is the profile key it matched
    or its JSON report; ignored for a named profile). Under `auto` a stack card NVML names as GPU 0 is
    matched before the catalog; a card the catalog lacks is derived from what NVML reports.

    `auto` without a detection (an SSH host) stays None: the host's preflight decides at deploy time,
    with the same checks (it is given the CUDA override and the MIG requirement). The cpu profile, named
    or what `auto` falls back to without a GPU, takes no CUDA release or wheel index: the stack's are for
    a GPU and are left out. Every image's version matrix (its build args) is checked against the card."""
    warnings: list[str] = []
    key: str = config.profile
    if key == "auto":
        if detected is None:
            _check_for_some_card(config)
            return None, warnings
        base = detected_profile(config, detected)
        if not base.is_gpu:
            warnings.append("profile auto: no NVIDIA GPU found on the target, falling back to cpu")
    else:
        base = card_profile(config, key) if key != "cpu" else PROFILES["cpu"]
    cuda = config.cuda
    profile = _with_cuda(base, cuda)
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
    check_image_matrices(config, profile)
    if key == "auto":  # a named card's budgets were checked with the stack (stacks/config/stack.py)
        from stacks.config.budgets import check_budgets  # noqa: PLC0415 (budgets imports this module)

        check_budgets(config, profile)
    return profile, warnings


def detected_profile(config: StackConfig, detected: str | Mapping[str, Any]) -> GpuProfile:
    """What `auto` found: a profile key (the preflight's `profile`), or the preflight's JSON report, whose GPU
    0 is matched by NVML name to the stack's own cards first, then to the catalog or derived from its
    facts (catalog.profile_for_gpu). A card no supported CUDA serves is refused with the exact reason."""
    if isinstance(detected, str):
        if detected in config.cards or detected in PROFILES:
            return card_profile(config, detected)
        raise ConfigError("profile", f"auto: the preflight matched {detected!r}, which is no known card")
    gpus = detected.get("gpus") or []
    if not gpus:
        return PROFILES["cpu"]
    first = gpus[0]
    name = str(first.get("name", ""))
    own = own_card_for_gpu(config, name)
    if own is not None:
        return card_profile(config, own)
    capability = str(first.get("compute_capability") or "")
    major, _, minor = capability.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise ConfigError("profile", f"auto: GPU 0 ({name}) reports no compute capability")
    try:
        return profile_for_gpu(
            name, int(first.get("memory_mib", 0)), (int(major), int(minor)), first.get("mig") is not None
        )
    except ValueError as err:
        raise ConfigError("profile", f"auto: {err}") from None


def _with_cuda(base: GpuProfile, cuda: CudaOverrides) -> GpuProfile:
    """`base` with the stack's CUDA choices, each refusal under its own key: the release first, then the
    wheel index with it, then the driver against both. A CPU profile takes the torch version only."""
    version = cuda.version if base.is_gpu else None
    wheel = cuda.wheel_index if base.is_gpu else None
    try:
        base.with_overrides(cuda_version=version)
    except ValueError as err:
        raise ConfigError("cuda.version", str(err)) from None
    try:
        profile = base.with_overrides(
            cuda_version=version, wheel_flavour=wheel, torch_version=cuda.torch_version
        )
    except ValueError as err:
        raise ConfigError("cuda.wheelIndex", str(err)) from None
    if cuda.driver is not None:
        try:
            profile.check_driver(cuda.driver)
        except ValueError as err:
            raise ConfigError("cuda.driver", str(err)) from None
    return profile


# A team's BASE_IMAGE that is an NVIDIA CUDA image names its CUDA release in the tag.
_CUDA_IMAGE = re.compile(r"^(?:docker\.io/)?nvidia/cuda:(\d+\.\d+\.\d+)-")
# TORCH_CUDA_ARCH_LIST entries: 8.6, 9.0a, 8.9+PTX (separated by ';' or spaces, as PyTorch reads them).
_ARCH = re.compile(r"^(\d+)\.(\d+)([af]?)(\+PTX)?$")


def image_profile(profile: GpuProfile, build: ImageBuild, cuda: CudaOverrides) -> GpuProfile:
    """The profile one image is built with: the stack's (card and `cuda` keys) with the team's own version
    matrix from its build args (CUDA_VERSION or an nvidia/cuda BASE_IMAGE, TORCH_INDEX_URL, TORCH_VERSION,
    TORCH_CUDA_ARCH_LIST) checked against the card as the `cuda` keys are; each refusal names the build
    arg's key. An image no GPU service runs is the cpu profile's (with the stack's torch version): no CUDA
    base image or wheel index."""
    if not (build.uses_gpu and profile.is_gpu):
        return PROFILES["cpu"].with_overrides(torch_version=cuda.torch_version)
    args, keys = build.args, build.arg_keys
    version, version_key = args.get("CUDA_VERSION"), keys.get("CUDA_VERSION", "")
    base = _CUDA_IMAGE.match(args.get("BASE_IMAGE", ""))
    if base is not None:
        if version is not None and version != base.group(1):
            raise ConfigError(
                keys["BASE_IMAGE"], f"is a CUDA {base.group(1)} image, but CUDA_VERSION says {version}"
            )
        version, version_key = base.group(1), keys["BASE_IMAGE"]
    wheel_key = keys.get("TORCH_INDEX_URL") or keys.get("TORCH_VERSION", "")
    index = args.get("TORCH_INDEX_URL")
    flavour = index.rstrip("/").rsplit("/", 1)[-1] if index else None
    try:
        profile.with_overrides(cuda_version=version)
    except ValueError as err:
        raise ConfigError(version_key, str(err)) from None
    try:
        image = profile.with_overrides(
            cuda_version=version, wheel_flavour=flavour, torch_version=args.get("TORCH_VERSION")
        )
    except ValueError as err:
        raise ConfigError(wheel_key, str(err)) from None
    if "TORCH_CUDA_ARCH_LIST" in args:
        _check_arch_list(args["TORCH_CUDA_ARCH_LIST"], image, keys["TORCH_CUDA_ARCH_LIST"])
    stack_min, image_min = profile.min_driver, image.min_driver
    if stack_min and image_min and parse_version(image_min) > parse_version(stack_min):
        raise ConfigError(
            version_key if version is not None else wheel_key,
            f"needs driver {image_min}, above the stack's {stack_min} that the host's preflight checks: "
            "raise the stack's cuda.version or cuda.wheelIndex instead",
        )
    return image


def _check_arch_list(value: str, card: GpuProfile, key: str) -> None:
    """TORCH_CUDA_ARCH_LIST must hold code the card runs: machine code for the same major compute capability
    and a lower or equal minor (an `a`/`f` variant only on its own one), or PTX of an equal or lower one,
    which the driver compiles (CUDA C++ Programming Guide, "Binary Compatibility" and "PTX
    Compatibility"). A list with a named architecture ("Ampere") is PyTorch's to expand: not checked."""
    entries = [_ARCH.match(e) for e in re.split(r"[;\s]+", value.strip()) if e]
    if card.compute_capability is None or not entries or any(e is None for e in entries):
        return
    major, minor = card.compute_capability
    for entry in entries:
        assert entry is not None
        code = (int(entry.group(1)), int(entry.group(2)))
        if entry.group(4) and code <= (major, minor):
            return
        if entry.group(3) and code == (major, minor):
            return
        if not entry.group(3) and code[0] == major and code[1] <= minor:
            return
    raise ConfigError(
        key,
        f"{value!r} holds no code a {card.display_name} (compute capability {major}.{minor}) runs; "
        f"add {major}.{minor}",
    )


def check_image_matrices(config: StackConfig, profile: GpuProfile) -> None:
    """Every image's version matrix against the stack's card (a Docker stack's builds; none elsewhere)."""
    for build in image_builds(config):
        image_profile(profile, build, config.cuda)


def _check_for_some_card(config: StackConfig) -> None:
    """`auto` on an SSH host: the card is known only at deploy time, but a CUDA choice or an image's version
    matrix no card can run (an unknown release, a wheel index or driver that does not exist) is refused
    now, naming the key."""
    refusals: list[ConfigError] = []
    for card in (p for p in PROFILES.values() if p.is_gpu):
        try:
            check_image_matrices(config, _with_cuda(card, config.cuda))
            return
        except ConfigError as err:
            refusals.append(err)
    first = refusals[0]
    raise ConfigError(first.key, f"no supported card can use this: {first.problem}")


def kubernetes_sharing(config: StackConfig, profile: GpuProfile) -> SharingSpec:
    """The device plugin's sharing spec: `gpuSharing` over the profile's default strategy."""
    wanted = config.gpu_sharing or GpuSharingConfig()
    strategy = wanted.strategy or profile.k8s_sharing
    replicas = wanted.replicas
    if replicas is None:
        replicas = 2 if strategy in SHARED_STRATEGIES else 1
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
