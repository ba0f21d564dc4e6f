"""CUDA facts: the driver each CUDA release asks for, what minor-version compatibility allows instead, the
nvidia/cuda image tags and the PyTorch wheel indexes with the kernels they carry. Data with its sources;
the decisions built on it live in catalog.py (derive_profile) and here (driver_need).

Standard library only, Python 3.8 syntax: it ships to GPU hosts beside catalog.py and the preflight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Tuple

SOURCE_DRIVERS = (
    "https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/index.html#id7 "
    "(Table 3, CUDA Toolkit and Corresponding Driver Versions, Linux x86_64)"
)
SOURCE_MINOR_COMPAT = "https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html"
SOURCE_IMAGES = (
    "https://gitlab.com/nvidia/container-images/cuda/-/blob/master/doc/supported-tags.md "
    "and doc/unsupported-tags.md"
)
SOURCE_WHEELS = (
    "https://github.com/pytorch/pytorch/blob/main/RELEASE.md#pytorch-cuda-support-matrix, "
    "https://github.com/pytorch/pytorch/issues/157517 (2.8: Maxwell/Pascal out of cu128/cu129, Volta back), "
    "https://github.com/pytorch/pytorch/issues/172352 (2.11: Volta out of cu128)"
)

# The toolkit's own minimum Linux driver, per release, updates included (SOURCE_DRIVERS). An update
# release without a row of its own (12.1.1, 12.3.2, ...) asks what the nearest listed release below it asks.
TOOLKIT_MIN_DRIVER: dict[str, str] = {
    "11.8.0": "520.61.05",
    "12.0.0": "525.60.13",
    "12.0.1": "525.85.12",
    "12.1.0": "530.30.02",
    "12.1.1": "530.30.02",
    "12.2.0": "535.54.03",
    "12.2.1": "535.86.09",
    "12.2.2": "535.104.05",
    "12.3.0": "545.23.06",
    "12.3.1": "545.23.08",
    "12.4.0": "550.54.14",
    "12.4.1": "550.54.15",
    "12.5.0": "555.42.02",
    "12.5.1": "555.42.06",
    "12.6.0": "560.28.03",
    "12.6.1": "560.35.03",
    "12.6.2": "560.35.03",
    "12.6.3": "560.35.05",
    "12.8.0": "570.26",
    "12.8.1": "570.124.06",
    "12.9.0": "575.51.03",
    "12.9.1": "575.57.08",
    "13.0.0": "580.65.06",
    "13.0.1": "580.82.07",
    "13.0.2": "580.95.05",
}

# Minor-version compatibility: an application built with any release of a major runs on a driver at
# least this new, with a limited feature set (SOURCE_MINOR_COMPAT, table 1 and its note on 450.80.02).
MINOR_COMPAT_FLOOR: dict[int, str] = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}

_FULL = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def parse_version(text: str) -> tuple[int, ...]:
    """'550.54.14' -> (550, 54, 14); raises ValueError on anything else."""
    if not re.fullmatch(r"\d+(\.\d+)*", text):
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(part) for part in text.split("."))


def cuda_major_minor(version: str) -> str:
    """'12.4.1' -> '12.4'."""
    match = _FULL.match(version)
    if not match:
        raise ValueError(f"a CUDA version is X.Y.Z (e.g. 12.4.1), got {version!r}")
    return f"{match.group(1)}.{match.group(2)}"


def _ga_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for version, driver in TOOLKIT_MIN_DRIVER.items():
        table.setdefault(cuda_major_minor(version), driver)  # the rows are in release order: GA first
    return table


# major.minor -> the first (GA) release's minimum: what a wheel index built for that minor asks at least.
CUDA_MIN_DRIVER: dict[str, str] = _ga_table()


def toolkit_min_driver(version: str) -> str:
    """The driver CUDA `version` ('12.4.1', or '12.4' for its GA release) asks for; ValueError if unknown."""
    full = f"{version}.0" if re.fullmatch(r"\d+\.\d+", version) else version
    major_minor = cuda_major_minor(full)
    same_minor = [v for v in TOOLKIT_MIN_DRIVER if cuda_major_minor(v) == major_minor]
    listed = [v for v in same_minor if parse_version(v) <= parse_version(full)]
    if not listed:
        known = ", ".join(CUDA_MIN_DRIVER)
        raise ValueError(f"no known minimum driver for CUDA {version} (known: {known})")
    return TOOLKIT_MIN_DRIVER[max(listed, key=parse_version)]


def minor_compat_floor(version: str) -> str:
    """The oldest driver any release of `version`'s major runs on through minor-version compatibility."""
    major = parse_version(version)[0]
    try:
        return MINOR_COMPAT_FLOOR[major]
    except KeyError:
        raise ValueError(f"no minor-version compatibility floor known for CUDA {major}.x") from None


@dataclass(frozen=True)
class DriverNeed:
    """What a CUDA image with a wheel index asks of the host driver, on one card.

    `required`: below it the container fails (CUDA reports an insufficient driver). `advised`: the newest
    toolkit's own minimum (image or wheel). Between the two, the container runs through CUDA minor-version
    compatibility only because the wheel carries machine code (SASS) for the card: PTX JIT of code newer
    than the driver fails, and features that need the newer driver return cudaErrorCallRequiresNewerDriver.
    Without SASS for the card both are the advised figure. The nvidia/cuda images also set
    NVIDIA_REQUIRE_CUDA, which lets a driver older than their release start only on the driver branches it
    lists (12.8.1: R470, R535, R550, R560, R565 for data-center and professional brands, not GeForce).
    """

    required: str
    advised: str
    why: str  # one clause: what `required` rests on


def driver_need(cuda_version: str, wheel_flavour: str, sass_for_card: bool) -> DriverNeed:
    """The driver CUDA image `cuda_version` with `wheel_flavour` wheels needs; `sass_for_card`: the wheels
    carry machine code for the card (see wheel_has_sass)."""
    advised_for = [cuda_version]
    if wheel_flavour in WHEEL_CUDA:
        advised_for.append(WHEEL_CUDA[wheel_flavour])
    needs = {v: toolkit_min_driver(v) for v in advised_for}
    newest = max(needs, key=lambda v: parse_version(needs[v]))
    advised = needs[newest]
    if not sass_for_card:
        why = f"the {wheel_flavour} wheels carry no machine code for the card, so CUDA {newest} JIT-compiles"
        return DriverNeed(advised, advised, why)
    floors = {v: minor_compat_floor(v) for v in advised_for}
    floor_for = max(floors, key=lambda v: parse_version(floors[v]))
    required = floors[floor_for]
    major = parse_version(floor_for)[0]
    why = f"CUDA {major}.x minor-version compatibility ({wheel_flavour} wheels carry the card's machine code)"
    return DriverNeed(required, advised, why)


# --- nvidia/cuda images -----------------------------------------------------------------------------------

CUDA_IMAGE_REPOSITORY = "nvidia/cuda"


def cudnn_token(cuda_version: str) -> str:
    """The cuDNN part of a runtime tag (SOURCE_IMAGES): `cudnn8` up to 12.3.1 (12.3.1-cudnn8-runtime-...),
    `cudnn9` for 12.3.2 (12.3.2-cudnn9-runtime-...), plain `cudnn` from 12.4.0 (12.4.1-cudnn-runtime-...)."""
    version = parse_version(cuda_version)
    if version <= (12, 3, 1):
        return "cudnn8"
    if version < (12, 4, 0):
        return "cudnn9"
    return "cudnn"


def ubuntu_for(cuda_version: str) -> str:
    """The image's OS: 24.04 images exist from CUDA 12.5 on, 22.04 before (SOURCE_IMAGES)."""
    major, minor = parse_version(cuda_version)[:2]
    return "24.04" if (major, minor) >= (12, 5) else "22.04"


def cuda_base_image(cuda_version: str, ubuntu: str) -> str:
    """The nvidia/cuda runtime tag with cuDNN, spelled the way each release names it."""
    cuda_major_minor(cuda_version)
    return f"{CUDA_IMAGE_REPOSITORY}:{cuda_version}-{cudnn_token(cuda_version)}-runtime-ubuntu{ubuntu}"


# --- PyTorch wheel indexes ---------------------------------------------------------------------------------

WHEEL_INDEX_URL = "https://download.pytorch.org/whl/{flavour}"
# The CUDA release each index bundles (its name).
WHEEL_CUDA: dict[str, str] = {
    "cu118": "11.8",
    "cu121": "12.1",
    "cu124": "12.4",
    "cu126": "12.6",
    "cu128": "12.8",
    "cu129": "12.9",
    "cu130": "13.0",
}

Arch = Tuple[int, int]
_LEGACY: tuple[Arch, ...] = ((5, 0), (6, 0), (7, 0), (7, 5), (8, 0), (8, 6), (9, 0))
_BLACKWELL: tuple[Arch, ...] = ((7, 0), (7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0))
# The compute capabilities each index's wheels carry machine code for (TORCH_CUDA_ARCH_LIST of PyTorch's
# builds, SOURCE_WHEELS), for the releases 2.6-2.9 the catalog pins; wheel_archs() applies the exceptions.
WHEEL_ARCHS: dict[str, tuple[Arch, ...]] = {
    "cu118": _LEGACY,
    "cu121": _LEGACY,
    "cu124": _LEGACY,
    "cu126": _LEGACY,
    "cu128": _BLACKWELL,
    "cu129": _BLACKWELL,
    "cu130": ((7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (11, 0), (12, 0)),
}


def wheel_archs(flavour: str, torch_version: str = "") -> tuple[Arch, ...]:
    """WHEEL_ARCHS[flavour] for this torch release: 2.7's cu128 started at sm_75, 2.11 drops sm_70 from it."""
    archs = WHEEL_ARCHS.get(flavour, ())
    torch = tuple(parse_version(torch_version)[:2]) if re.fullmatch(r"\d+(\.\d+)+", torch_version) else ()
    if flavour == "cu128" and torch and (torch == (2, 7) or torch >= (2, 11)):
        archs = tuple(a for a in archs if a >= (7, 5))
    return archs


def wheel_has_sass(flavour: str, torch_version: str, capability: Arch) -> bool:
    """The wheels carry machine code that runs on `capability`: code for sm_XY runs on sm_XZ with Z >= Y."""
    return any(a[0] == capability[0] and a[1] <= capability[1] for a in wheel_archs(flavour, torch_version))
