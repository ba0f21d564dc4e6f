"""The GPU profile catalog: everything the program knows about a card, in one place.

Figures come from ../shared/gpu-facts.md (NVIDIA data sheets, CUDA release notes, PyTorch
release notes, GPU feature discovery labels). Nothing here is repeated elsewhere: the config
validator, the image build args, the preflight and the Kubernetes node selectors all read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal

KernelModules = Literal["proprietary", "open", "none"]
Sharing = Literal["none", "time-slicing", "mps", "mig"]

# Minimum Linux driver per CUDA toolkit (major.minor), without forward compatibility.
# Source: CUDA Toolkit release notes, table 3 ("CUDA Toolkit and Minimum Required Driver").
CUDA_MIN_DRIVER: dict[str, str] = {
    "11.8": "520.61.05",
    "12.0": "525.60.13",
    "12.1": "530.30.02",
    "12.2": "535.54.03",
    "12.3": "545.23.06",
    "12.4": "550.54.14",
    "12.5": "555.42.02",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}

# PyTorch wheel indexes and the CUDA release each one bundles.
WHEEL_INDEX_URL = "https://download.pytorch.org/whl/{flavour}"
WHEEL_CUDA: dict[str, str] = {
    "cu118": "11.8",
    "cu121": "12.1",
    "cu124": "12.4",
    "cu126": "12.6",
    "cu128": "12.8",
    "cu129": "12.9",
    "cu130": "13.0",
}

CUDA_IMAGE_REPOSITORY = "nvidia/cuda"
CPU_PYTHON_VERSION = "3.11"
CPU_BASE_IMAGE = "python:3.11.11-slim-bookworm"  # pinned to the patch release
_CUDA_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def parse_version(text: str) -> tuple[int, ...]:
    """'550.54.14' -> (550, 54, 14); raises ValueError on anything else."""
    if not re.fullmatch(r"\d+(\.\d+)*", text):
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(part) for part in text.split("."))


def cuda_major_minor(version: str) -> str:
    """'12.4.1' -> '12.4'."""
    match = _CUDA_VERSION.match(version)
    if not match:
        raise ValueError(f"a CUDA version is X.Y.Z (e.g. 12.4.1), got {version!r}")
    return f"{match.group(1)}.{match.group(2)}"


def min_driver_for_cuda(major_minor: str) -> str:
    try:
        return CUDA_MIN_DRIVER[major_minor]
    except KeyError:
        known = ", ".join(CUDA_MIN_DRIVER)
        raise ValueError(f"no known minimum driver for CUDA {major_minor} (known: {known})") from None


def cuda_base_image(cuda_version: str, ubuntu: str) -> str:
    """The nvidia/cuda runtime tag with cuDNN, spelled the way each release names it.

    The cuDNN token is `cudnn8` up to 12.2.x, `cudnn9` for 12.3.x and plain `cudnn` from 12.4.0.
    """
    major, minor = (int(p) for p in cuda_major_minor(cuda_version).split("."))
    if (major, minor) <= (12, 2):
        cudnn = "cudnn8"
    elif (major, minor) == (12, 3):
        cudnn = "cudnn9"
    else:
        cudnn = "cudnn"
    return f"{CUDA_IMAGE_REPOSITORY}:{cuda_version}-{cudnn}-runtime-ubuntu{ubuntu}"


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

    @property
    def is_gpu(self) -> bool:
        return self.compute_capability is not None

    @property
    def ubuntu(self) -> str:
        """The CUDA image's OS: 24.04 images exist from CUDA 12.5 on, 22.04 before."""
        if self.cuda_version is None:
            return ""
        major, minor = (int(p) for p in cuda_major_minor(self.cuda_version).split("."))
        return "24.04" if (major, minor) >= (12, 5) else "22.04"

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
    def min_driver(self) -> str | None:
        """Lowest driver that runs both the image's CUDA and the wheel's bundled CUDA."""
        if self.cuda_version is None:
            return None
        needed = [min_driver_for_cuda(cuda_major_minor(self.cuda_version))]
        if self.wheel_flavour in WHEEL_CUDA:
            needed.append(min_driver_for_cuda(WHEEL_CUDA[self.wheel_flavour]))
        return max(needed, key=parse_version)

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

    def check_cuda_version(self) -> None:
        if self.cuda_version is None:
            return
        major_minor = cuda_major_minor(self.cuda_version)
        min_driver_for_cuda(major_minor)
        if not self.is_gpu:
            raise ValueError("the cpu profile has no CUDA: drop the CUDA version")
        major = int(major_minor.split(".")[0])
        if self.max_cuda_major is not None and major > self.max_cuda_major:
            raise ValueError(
                f"a {self.display_name} ({self.architecture}, sm_{self.cuda_arch_list.replace('.', '')}) "
                f"cannot run CUDA {major_minor}: CUDA {self.max_cuda_major + 1} dropped "
                f"{self.architecture}; use a {self.max_cuda_major}.x release"
            )

    def check_wheel(self) -> None:
        if self.wheel_flavour == "cpu":
            return
        if self.wheel_flavour not in WHEEL_CUDA:
            known = ", ".join([*WHEEL_CUDA, "cpu"])
            raise ValueError(f"unknown PyTorch wheel index {self.wheel_flavour!r} (known: {known})")
        if not self.is_gpu:
            raise ValueError("the cpu profile takes the cpu wheel index")
        wheel_cuda = parse_version(WHEEL_CUDA[self.wheel_flavour])
        if self.max_wheel_cuda is not None and wheel_cuda > parse_version(self.max_wheel_cuda):
            raise ValueError(
                f"{self.wheel_flavour} wheels carry no sm_{self.cuda_arch_list.replace('.', '')} kernels, "
                f"so a {self.display_name} fails with 'no kernel image is available'; "
                f"use cu{self.max_wheel_cuda.replace('.', '')} or older"
            )

    def check_driver(self, driver: str) -> None:
        """Raise ValueError when `driver` (a version or a branch such as '580') is too old."""
        minimum = self.min_driver
        if minimum is None:
            return
        given = parse_version(driver)
        # A bare branch ('535') means its newest release: compare the branch numbers only.
        floor = parse_version(minimum)[: len(given)] if len(given) == 1 else parse_version(minimum)
        if given < floor:
            raise ValueError(
                f"driver {driver} is below {minimum}, the minimum for CUDA "
                f"{cuda_major_minor(self.cuda_version or '0.0.0')} with {self.wheel_flavour} wheels"
            )


PROFILES: dict[str, GpuProfile] = {
    "p40": GpuProfile(
        key="p40",
        display_name="Tesla P40",
        nvml_names=("Tesla P40",),
        gpu_products=("Tesla-P40",),
        architecture="Pascal",
        compute_capability=(6, 1),
        memory_mib=22919,  # ECC on; 24576 with ECC off
        mig_capable=False,
        kernel_modules="proprietary",  # open modules need Turing or newer
        driver_branch="580",  # R580 is the last branch that supports Pascal
        max_cuda_major=12,  # CUDA 13.0 dropped Maxwell, Pascal and Volta
        max_wheel_cuda="12.6",  # cu128+ wheels dropped sm_50-sm_61 (PyTorch 2.8)
        cuda_version="12.4.1",
        torch_version="2.6.0",
        wheel_flavour="cu124",
        driver_capabilities="compute,utility",
        k8s_sharing="time-slicing",
    ),
    "a2": GpuProfile(
        key="a2",
        display_name="NVIDIA A2",
        nvml_names=("NVIDIA A2",),
        gpu_products=("NVIDIA-A2",),
        architecture="Ampere",
        compute_capability=(8, 6),
        memory_mib=15356,  # 16 GB GDDR6 as nvidia-smi reports it with ECC on
        mig_capable=False,
        kernel_modules="open",
        driver_branch="580",
        max_cuda_major=None,
        max_wheel_cuda=None,
        cuda_version="12.6.3",
        torch_version="2.7.1",
        wheel_flavour="cu126",
        driver_capabilities="compute,utility",
        k8s_sharing="time-slicing",
    ),
    "a4000": GpuProfile(
        key="a4000",
        display_name="NVIDIA RTX A4000",
        nvml_names=("NVIDIA RTX A4000",),
        gpu_products=("NVIDIA-RTX-A4000",),
        architecture="Ampere",
        compute_capability=(8, 6),
        memory_mib=16376,
        mig_capable=False,
        kernel_modules="open",
        driver_branch="580",
        max_cuda_major=None,
        max_wheel_cuda=None,
        cuda_version="12.6.3",
        torch_version="2.7.1",
        wheel_flavour="cu126",
        driver_capabilities="compute,utility",
        k8s_sharing="none",
    ),
    "h100": GpuProfile(
        key="h100",
        display_name="NVIDIA H100",
        nvml_names=("NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM3"),
        gpu_products=("NVIDIA-H100-PCIe", "NVIDIA-H100-80GB-HBM3"),
        architecture="Hopper",
        compute_capability=(9, 0),
        memory_mib=81559,
        mig_capable=True,
        kernel_modules="open",
        driver_branch="580",
        max_cuda_major=None,
        max_wheel_cuda=None,
        cuda_version="12.8.1",
        torch_version="2.8.0",
        wheel_flavour="cu128",
        driver_capabilities="compute,utility",
        k8s_sharing="none",
        mig_profiles={
            "1g.10gb": 7,
            "1g.20gb": 4,
            "2g.20gb": 3,
            "3g.40gb": 2,
            "4g.40gb": 1,
            "7g.80gb": 1,
        },
    ),
    "cpu": GpuProfile(
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
    ),
}


def profile_for_nvml_name(name: str) -> GpuProfile | None:
    """The profile whose card NVML names `name`, or None for a card outside the catalog."""
    for profile in PROFILES.values():
        if name in profile.nvml_names:
            return profile
    return None
