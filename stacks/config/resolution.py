"""A validated stack resolved: its GPU profile with the stack's CUDA choices checked against the card, and
on Kubernetes the device plugin's sharing spec and what each service asks of the GPUs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from components.core.catalog import PROFILES, GpuProfile
from components.core.sharing import SHARED_STRATEGIES, SharingSpec
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


def resolve_profile(config: StackConfig, detected: str | None) -> tuple[GpuProfile | None, list[str]]:
    """The stack's profile with its CUDA overrides applied and checked against the card: the one place a
    profile is resolved, named (`profile: a2`) or detected (`auto`, by this machine's or the host's
    preflight: `detected` is the profile key it matched; ignored for a named profile).

    `auto` without a detection (an SSH host) stays None: the host's preflight decides at deploy time,
    with the same checks (it is given the CUDA override and the MIG requirement). The cpu profile, named
    or what `auto` falls back to without a GPU, takes no CUDA release or wheel index: the stack's are for
    a GPU and are left out."""
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
    return profile, warnings


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


def _check_cuda_for_some_card(cuda: CudaOverrides) -> None:
    """`auto` on an SSH host: the card is known only at deploy time, but a CUDA choice no card can run
    (an unknown release, a wheel index or driver that does not exist) is refused now, naming the key."""
    refusals: list[ConfigError] = []
    for card in (p for p in PROFILES.values() if p.is_gpu):
        try:
            _with_cuda(card, cuda)
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
