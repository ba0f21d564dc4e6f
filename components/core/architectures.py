"""Compute capability -> architecture facts and the default software stack for each architecture.

The defaults reproduce the catalog's profiles as they shipped before derivation (Pascal: CUDA 12.4.1, cu124,
torch 2.6.0; Ampere: 12.6.3, cu126, torch 2.7.1; Hopper: 12.8.1, cu128, torch 2.8.0) and pick, for the other
architectures, the stack of the nearest of those that the architecture can run. Standard library only,
Python 3.8 syntax: it ships to GPU hosts beside catalog.py.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE_CC = "https://developer.nvidia.com/cuda-gpus (compute capability per product)"
SOURCE_CUDA13 = (
    "https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/index.html (CUDA 13.0: Maxwell, Pascal "
    "and Volta removed from the toolkit; R580 is the last driver branch that supports them)"
)
SOURCE_CUDA12 = "https://docs.nvidia.com/cuda/archive/12.0.0/cuda-toolkit-release-notes/ (Kepler removed)"
SOURCE_OPEN = "https://github.com/NVIDIA/open-gpu-kernel-modules (supported on Turing and later GPUs)"
SOURCE_BLACKWELL = "https://docs.nvidia.com/cuda/archive/12.8.0/cuda-toolkit-release-notes/ (sm_100, sm_120)"
SOURCE_STACKS = "components/core/catalog.py PROFILES before derivation (p40, a2, a4000, h100)"

OLDEST_SUPPORTED = (5, 0)  # the oldest capability any CUDA release of the catalog (11.8+) with wheels serves


@dataclass(frozen=True)
class Stack:
    """A default software stack: the CUDA image release, the wheel index and the torch release."""

    cuda_version: str
    wheel_flavour: str
    torch_version: str


PASCAL_STACK = Stack("12.4.1", "cu124", "2.6.0")
AMPERE_STACK = Stack("12.6.3", "cu126", "2.7.1")
HOPPER_STACK = Stack("12.8.1", "cu128", "2.8.0")


@dataclass(frozen=True)
class Architecture:
    name: str
    majors_minors: tuple[tuple[int, int], ...]  # the compute capabilities it covers
    min_cuda: str  # the first CUDA release that builds for it
    max_cuda_major: int | None  # the newest CUDA major that still supports it; None: current
    open_kernel_modules: bool  # NVIDIA's open kernel modules drive it
    last_driver_branch: str | None  # the last driver branch that supports it; None: current branches do
    stack: Stack  # the default stack
    source: str


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        "Maxwell",
        ((5, 0), (5, 2), (5, 3)),
        "11.8.0",
        12,
        False,
        "580",
        PASCAL_STACK,
        f"{SOURCE_CC}; {SOURCE_CUDA13}; {SOURCE_OPEN}; stack as Pascal (cu124 carries sm_50)",
    ),
    Architecture(
        "Pascal",
        ((6, 0), (6, 1), (6, 2)),
        "11.8.0",
        12,
        False,
        "580",
        PASCAL_STACK,
        f"{SOURCE_CC}; {SOURCE_CUDA13}; {SOURCE_OPEN}; stack: {SOURCE_STACKS} (p40)",
    ),
    Architecture(
        "Volta",
        ((7, 0), (7, 2)),
        "11.8.0",
        12,
        False,
        "580",
        AMPERE_STACK,
        f"{SOURCE_CC}; {SOURCE_CUDA13}; {SOURCE_OPEN}; stack as Ampere (cu126 carries sm_70)",
    ),
    Architecture(
        "Turing",
        ((7, 5),),
        "11.8.0",
        None,
        True,
        None,
        AMPERE_STACK,
        f"{SOURCE_CC}; {SOURCE_OPEN}; stack as Ampere (cu126 carries sm_75)",
    ),
    Architecture(
        "Ampere",
        ((8, 0), (8, 6), (8, 7)),
        "11.8.0",
        None,
        True,
        None,
        AMPERE_STACK,
        f"{SOURCE_CC}; {SOURCE_OPEN}; stack: {SOURCE_STACKS} (a2, a4000)",
    ),
    Architecture(
        "Ada",
        ((8, 9),),
        "11.8.0",
        None,
        True,
        None,
        AMPERE_STACK,
        f"{SOURCE_CC}; {SOURCE_OPEN}; CUDA 11.8 added sm_89; stack as Ampere (sm_86 code runs on sm_89)",
    ),
    Architecture(
        "Hopper",
        ((9, 0),),
        "11.8.0",
        None,
        True,
        None,
        HOPPER_STACK,
        f"{SOURCE_CC}; {SOURCE_OPEN}; CUDA 11.8 added sm_90; stack: {SOURCE_STACKS} (h100)",
    ),
    Architecture(
        "Blackwell",
        ((10, 0), (10, 3), (11, 0), (12, 0), (12, 1)),
        "12.8.0",
        None,
        True,
        None,
        HOPPER_STACK,
        f"{SOURCE_CC}; {SOURCE_BLACKWELL}; {SOURCE_OPEN}; stack as Hopper (cu128 carries sm_100 and sm_120)",
    ),
)


def capability_text(capability: tuple[int, int]) -> str:
    return f"{capability[0]}.{capability[1]}"


def architecture_for(capability: tuple[int, int]) -> Architecture:
    """The architecture of a card with this compute capability; ValueError with the exact reason when no
    supported CUDA release serves it."""
    for architecture in ARCHITECTURES:
        if capability in architecture.majors_minors:
            return architecture
    cc = capability_text(capability)
    if capability < OLDEST_SUPPORTED:
        kepler = capability[0] == 3
        why = (
            f"CUDA 12.0 removed Kepler, no PyTorch wheel index (cu118 or newer) carries sm_{capability[0]}"
            f"{capability[1]} kernels, and R470 is Kepler's last driver branch"
            if kepler
            else "CUDA 11.8, the oldest release here, no longer builds for it"
        )
        raise ValueError(
            f"compute capability {cc} ({'Kepler' if kepler else 'pre-Kepler'}) is older than any supported "
            f"CUDA release serves: {why}; the oldest supported is 5.0 (Maxwell)"
        )
    for architecture in ARCHITECTURES:  # a minor this table does not list, within a known major
        if any(major == capability[0] for major, _ in architecture.majors_minors):
            return architecture
    newest = capability_text(ARCHITECTURES[-1].majors_minors[-1])
    raise ValueError(
        f"compute capability {cc} is newer than any architecture this catalog knows (newest: {newest}): "
        "no CUDA release or wheel index here is known to carry code for it; define the card in the stack"
    )
