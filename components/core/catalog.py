"""The GPU profile catalog: everything the program knows about a card, in one place.

A profile is derived from a card (`derive_profile`): the card's facts (cards.py: the named catalog, or what
NVML reports about a card the catalog lacks, or a stack's own card) and the facts of its architecture
(architectures.py) and of CUDA and the PyTorch wheels (cuda.py) give every choice. `PROFILES` holds the
derived profile of every named card and the CPU fallback; `profile_for_gpu` gives the named or derived
profile for whatever NVML reports. Nothing here is repeated elsewhere: the config validator, the image build
args, the preflight and the Kubernetes node selectors all read it.

This module and the three it imports ship to GPU hosts beside the preflight (components/remote/runners.py):
standard library only, Python 3.8 syntax, imported repo-first and then from beside itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Mapping, cast

if TYPE_CHECKING:
    from components.core import architectures, cards, cuda
else:
    try:  # in the repo
        from components.core import architectures, cards, cuda
    except ImportError:  # on a GPU host, copied beside this file
        import architectures
        import cards
        import cuda

KernelModules = Literal["proprietary", "open", "none"]
Sharing = Literal["none", "time-slicing", "mps", "mig"]
Card = cards.Card
CARDS = cards.CARDS
card_from_json = cards.card_from_json

# The CUDA facts, under the names everything imports (their owner is cuda.py).
CUDA_MIN_DRIVER = cuda.CUDA_MIN_DRIVER  # major.minor -> the GA release's minimum driver
WHEEL_INDEX_URL = cuda.WHEEL_INDEX_URL
WHEEL_CUDA = cuda.WHEEL_CUDA
CUDA_IMAGE_REPOSITORY = cuda.CUDA_IMAGE_REPOSITORY
parse_version = cuda.parse_version
cuda_major_minor = cuda.cuda_major_minor
cuda_base_image = cuda.cuda_base_image

CPU_PYTHON_VERSION = "3.11"
CPU_BASE_IMAGE = "python:3.11.11-slim-bookworm"  # pinned to the patch release
DRIVER_BRANCH = "580"  # the branch a driver install gets: the newest LTS branch, the last for Maxwell-Volta
DRIVER_CAPABILITIES = "compute,utility"  # NVIDIA_DRIVER_CAPABILITIES for a GPU profile


def min_driver_for_cuda(version: str) -> str:
    """The driver CUDA `version` asks for: '12.4' (its GA release) or '12.4.1' (that update)."""
    return cuda.toolkit_min_driver(version)


@dataclass(frozen=True)
class GpuProfile:
    """One card (or the CPU fallback) and the choices that follow from it."""

    key: str
    display_name: str
    nvml_names: tuple[str, ...]  # what nvmlDeviceGetName returns
    gpu_products: tuple[str, ...]  # GPU feature discovery label nvidia.com/gpu.product
    architecture: str
    compute_capability: tuple[int, int] | None
    memory_mib: int  # per GPU, as nvidia-smi reports it (lowest accepted configuration)
    mig_capable: bool
    kernel_modules: KernelModules
    driver_branch: str  # branch a driver install gets
    max_cuda_major: int | None  # newest CUDA major the architecture supports
    max_wheel_cuda: str | None  # newest wheel CUDA that still ships kernels for this arch
    cuda_version: str | None  # default CUDA toolkit of the image
    torch_version: str
    wheel_flavour: str  # cu124, cu126, ..., or cpu
    driver_capabilities: str  # default NVIDIA_DRIVER_CAPABILITIES
    k8s_sharing: Sharing  # default Kubernetes sharing strategy
    mig_profiles: dict[str, int] = field(default_factory=dict)  # name -> max instances
    min_cuda: str | None = None  # the first CUDA release that builds for the architecture

    @property
    def is_gpu(self) -> bool:
        return self.compute_capability is not None

    @property
    def ubuntu(self) -> str:
        """The CUDA image's OS: 24.04 images exist from CUDA 12.5 on, 22.04 before."""
        if self.cuda_version is None:
            return ""
        return cuda.ubuntu_for(self.cuda_version)

    @property
    def python_version(self) -> str:
        """The interpreter the base image's OS ships (the CUDA image installs it from apt)."""
        return {"24.04": "3.12", "22.04": "3.10"}.get(self.ubuntu, CPU_PYTHON_VERSION)

    @property
    def cuda_arch_list(self) -> str:
        """TORCH_CUDA_ARCH_LIST: '6.1', '8.6', '9.0'; empty for the CPU profile."""
        if self.compute_capability is None:
            return ""
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    @property
    def base_image(self) -> str:
        if self.cuda_version is None:
            return CPU_BASE_IMAGE
        return cuda_base_image(self.cuda_version, self.ubuntu)

    @property
    def wheel_index(self) -> str:
        return WHEEL_INDEX_URL.format(flavour=self.wheel_flavour)

    @property
    def sass_in_wheel(self) -> bool:
        """The wheel index carries machine code for this card (no PTX JIT needed)."""
        if self.compute_capability is None:
            return False
        return cuda.wheel_has_sass(self.wheel_flavour, self.torch_version, self.compute_capability)

    @property
    def driver_need(self) -> cuda.DriverNeed | None:
        """The driver the image and wheels require and the one they advise (cuda.DriverNeed); None for cpu."""
        if self.cuda_version is None:
            return None
        return cuda.driver_need(self.cuda_version, self.wheel_flavour, self.sass_in_wheel)

    @property
    def min_driver(self) -> str | None:
        """The advised driver: the newest minimum of the image's CUDA release and the wheel's bundled CUDA."""
        need = self.driver_need
        return None if need is None else need.advised

    @property
    def required_driver(self) -> str | None:
        """The driver below which the image fails on this card (see cuda.DriverNeed)."""
        need = self.driver_need
        return None if need is None else need.required

    def build_args(self, app_uid: int = 1001) -> dict[str, str]:
        """The build args of images/cuda-python/Dockerfile, exactly."""
        return {
            "APP_UID": str(app_uid),
            "BASE_IMAGE": self.base_image,
            "PYTHON_VERSION": self.python_version,
            "TORCH_VERSION": self.torch_version,
            "TORCH_INDEX_URL": self.wheel_index,
            "TORCH_CUDA_ARCH_LIST": self.cuda_arch_list,
            "CUDA_VERSION": self.cuda_version or "none",
            "GPU_PROFILE": self.key,
        }

    def with_overrides(
        self,
        *,
        cuda_version: str | None = None,
        wheel_flavour: str | None = None,
        torch_version: str | None = None,
    ) -> GpuProfile:
        """A copy with the stack's CUDA/wheel choices; raises ValueError when the card cannot run them."""
        candidate = replace(
            self,
            cuda_version=cuda_version or self.cuda_version,
            wheel_flavour=wheel_flavour or self.wheel_flavour,
            torch_version=torch_version or self.torch_version,
        )
        candidate.check_cuda_version()
        candidate.check_wheel()
        return candidate

    @property
    def _sm(self) -> str:
        return f"sm_{self.cuda_arch_list.replace('.', '')}"

    def check_cuda_version(self) -> None:
        if self.cuda_version is None:
            return
        major_minor = cuda_major_minor(self.cuda_version)
        min_driver_for_cuda(self.cuda_version)
        if not self.is_gpu:
            raise ValueError("the cpu profile has no CUDA: drop the CUDA version")
        major = int(major_minor.split(".")[0])
        if self.max_cuda_major is not None and major > self.max_cuda_major:
            raise ValueError(
                f"a {self.display_name} ({self.architecture}, {self._sm}) "
                f"cannot run CUDA {major_minor}: CUDA {self.max_cuda_major + 1} dropped "
                f"{self.architecture}; use a {self.max_cuda_major}.x release"
            )
        if self.min_cuda is not None and parse_version(self.cuda_version) < parse_version(self.min_cuda):
            raise ValueError(
                f"a {self.display_name} ({self.architecture}, {self._sm}) cannot run CUDA {major_minor}: "
                f"CUDA {cuda_major_minor(self.min_cuda)} is the first release for {self.architecture}; "
                f"use {cuda_major_minor(self.min_cuda)} or newer"
            )

    def check_wheel(self) -> None:
        if self.wheel_flavour == "cpu":
            return
        if self.wheel_flavour not in WHEEL_CUDA:
            known = ", ".join([*WHEEL_CUDA, "cpu"])
            raise ValueError(f"unknown PyTorch wheel index {self.wheel_flavour!r} (known: {known})")
        if not self.is_gpu:
            raise ValueError("the cpu profile takes the cpu wheel index")
        if self.sass_in_wheel:
            return
        carrying = [
            f
            for f in WHEEL_CUDA
            if self.compute_capability and cuda.wheel_has_sass(f, self.torch_version, self.compute_capability)
        ]
        wheel_cuda = parse_version(WHEEL_CUDA[self.wheel_flavour])
        newer = [f for f in carrying if parse_version(WHEEL_CUDA[f]) > wheel_cuda]
        if self.max_wheel_cuda is not None and not newer:
            hint = f"use cu{self.max_wheel_cuda.replace('.', '')} or older"
        elif newer:
            hint = f"use {newer[0]} or newer"
        else:
            hint = f"no index carries them with torch {self.torch_version}"
        depends = cuda.wheel_archs(self.wheel_flavour) != cuda.wheel_archs(
            self.wheel_flavour, self.torch_version
        )
        release = f" (torch {self.torch_version})" if depends else ""
        raise ValueError(
            f"{self.wheel_flavour} wheels{release} carry no {self._sm} kernels, "
            f"so a {self.display_name} fails with 'no kernel image is available'; {hint}"
        )

    def check_driver(self, driver: str, *, required_only: bool = False) -> None:
        """Raise ValueError when `driver` (a version or a branch such as '580') is below the advised minimum
        (`required_only`: below the required one; see cuda.DriverNeed)."""
        need = self.driver_need
        if need is None:
            return
        minimum = need.required if required_only else need.advised
        given = parse_version(driver)
        # A bare branch ('535') means its newest release: compare the branch numbers only.
        floor = parse_version(minimum)[: len(given)] if len(given) == 1 else parse_version(minimum)
        if given < floor:
            what = f"required ({need.why})" if required_only else "the minimum"
            raise ValueError(
                f"driver {driver} is below {minimum}, {what} for CUDA {self.cuda_version} "
                f"with {self.wheel_flavour} wheels"
            )


def _max_wheel_cuda(card: Card) -> str | None:
    """The newest wheel CUDA with kernels for the card; None when the newest index still carries them."""
    carrying = [f for f in WHEEL_CUDA if cuda.wheel_has_sass(f, "", card.compute_capability)]
    newest = max(WHEEL_CUDA, key=lambda f: parse_version(WHEEL_CUDA[f]))
    if not carrying or newest in carrying:
        return None
    return max((WHEEL_CUDA[f] for f in carrying), key=parse_version)


def derive_profile(card: Card) -> GpuProfile:
    """The profile of `card`: the one derivation, for named, detected and a stack's own cards alike.
    Raises ValueError with the exact reason when no supported CUDA release serves the card."""
    architecture = architectures.architecture_for(card.compute_capability)
    stack = architecture.stack
    modules: KernelModules = "open" if architecture.open_kernel_modules else "proprietary"
    if card.kernel_modules == "proprietary":
        modules = "proprietary"
    elif card.kernel_modules == "open" and modules != "open":
        raise ValueError(
            f"card {card.key}: a {architecture.name} card cannot use the open kernel modules "
            "(they need Turing or newer)"
        )
    if card.k8s_sharing not in cards.SHARING:
        raise ValueError(f"card {card.key}: unknown sharing strategy {card.k8s_sharing!r}")
    sharing = cast(Sharing, card.k8s_sharing)
    return GpuProfile(
        key=card.key,
        display_name=card.display_name,
        nvml_names=card.nvml_names,
        gpu_products=card.gpu_products,
        architecture=architecture.name,
        compute_capability=card.compute_capability,
        memory_mib=card.memory_mib,
        mig_capable=card.mig_capable,
        kernel_modules=modules,
        driver_branch=DRIVER_BRANCH,
        max_cuda_major=architecture.max_cuda_major,
        max_wheel_cuda=_max_wheel_cuda(card),
        cuda_version=stack.cuda_version,
        torch_version=stack.torch_version,
        wheel_flavour=stack.wheel_flavour,
        driver_capabilities=DRIVER_CAPABILITIES,
        k8s_sharing=sharing,
        mig_profiles=dict(card.mig_profiles),
        min_cuda=architecture.min_cuda,
    )


CPU_PROFILE = GpuProfile(
    key="cpu",
    display_name="CPU only",
    nvml_names=(),
    gpu_products=(),
    architecture="none",
    compute_capability=None,
    memory_mib=0,
    mig_capable=False,
    kernel_modules="none",
    driver_branch="",
    max_cuda_major=None,
    max_wheel_cuda=None,
    cuda_version=None,
    torch_version="2.8.0",
    wheel_flavour="cpu",
    driver_capabilities="",
    k8s_sharing="none",
)

PROFILES: dict[str, GpuProfile] = {**{card.key: derive_profile(card) for card in CARDS}, "cpu": CPU_PROFILE}


def profile_for_nvml_name(name: str) -> GpuProfile | None:
    """The named profile whose card NVML names `name`, or None for a card outside the catalog."""
    for profile in PROFILES.values():
        if name in profile.nvml_names:
            return profile
    return None


def profile_for_gpu(
    name: str, memory_mib: int, compute_capability: tuple[int, int], mig_capable: bool
) -> GpuProfile:
    """The profile for a card NVML reports: the named one whose nvml_names has `name`, else one derived from
    these facts (key: a slug of the name, such as 'geforce-rtx-5090'). Raises ValueError with the exact
    reason for a card no supported CUDA release serves."""
    named = profile_for_nvml_name(name)
    if named is not None:
        return named
    key = cards.slug(name)
    if key in PROFILES:  # a new name whose slug a named card already uses
        key = f"{key}-detected"
    card = Card(
        key=key,
        display_name=name,
        nvml_names=(name,),
        compute_capability=(int(compute_capability[0]), int(compute_capability[1])),
        memory_mib=int(memory_mib),
        mig_capable=bool(mig_capable),
        source="NVML on the host",
    )
    try:
        return derive_profile(card)
    except ValueError as err:
        raise ValueError(f"a {name!r} cannot be served: {err}") from None


def card_json(profile: GpuProfile) -> dict[str, Any] | None:
    """The card facts of a GPU profile, as cards.card_from_json reads them back (None for cpu): what the
    preflight reports so the deploy can rebuild the same profile."""
    if profile.compute_capability is None:
        return None
    return {
        "key": profile.key,
        "display_name": profile.display_name,
        "nvml_names": list(profile.nvml_names),
        "compute_capability": list(profile.compute_capability),
        "memory_mib": profile.memory_mib,
        "mig_capable": profile.mig_capable,
        "mig_profiles": dict(profile.mig_profiles),
        "k8s_sharing": profile.k8s_sharing,
    }


def profile_from_card_json(data: Mapping[str, Any]) -> GpuProfile:
    """derive_profile of a card in its JSON form (card_json, or a stack's own card); ValueError on a
    malformed card or one no supported CUDA release serves."""
    return derive_profile(card_from_json(data))
