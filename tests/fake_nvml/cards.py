"""The GPU cards the tests describe to the fake NVML (pynvml.py beside this file), in one place.

Each card is what NVML reports for it: the name and total memory as nvidia-smi shows them, the compute
capability, and the MIG mode (`None`: the card has no MIG; `[current, pending]` otherwise). `machine()`
makes the FAKE_NVML_JSON description of a host holding some of them.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

# The `fake_nvml` fixture (tests/conftest.py): describe the host (None: no driver), get the module back.
FakeNvml = Callable[[dict[str, Any] | None], ModuleType]

P40: dict[str, Any] = {"name": "Tesla P40", "memory_mib": 22919, "cc": [6, 1], "mig": None}
A2: dict[str, Any] = {"name": "NVIDIA A2", "memory_mib": 15356, "cc": [8, 6], "mig": None}
A4000: dict[str, Any] = {"name": "NVIDIA RTX A4000", "memory_mib": 16376, "cc": [8, 6], "mig": None}
H100_SXM: dict[str, Any] = {"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "cc": [9, 0], "mig": [0, 0]}
H100_PCIE: dict[str, Any] = {"name": "NVIDIA H100 PCIe", "memory_mib": 81559, "cc": [9, 0], "mig": [1, 1]}

# Each catalog profile with a card that satisfies it (the H100 twice: MIG off, MIG on).
BY_PROFILE: list[tuple[str, str, dict[str, Any]]] = [
    ("p40", "p40", P40),
    ("a2", "a2", A2),
    ("a4000", "a4000", A4000),
    ("h100", "h100-sxm-mig-off", H100_SXM),
    ("h100", "h100-pcie-mig-on", H100_PCIE),
]

DRIVER = "580.65.06"
CUDA = 13000  # 13.0, as nvmlSystemGetCudaDriverVersion_v2 reports it


def uuid(index: int) -> str:
    return f"GPU-{index:08d}-aaaa-bbbb-cccc-{index:012d}"


def machine(*gpus: dict[str, Any], driver: str = DRIVER, cuda: int = CUDA, **extra: Any) -> dict[str, Any]:
    """A host with these cards in this order (each given a UUID unless it has one), as FAKE_NVML_JSON."""
    listed = [{"uuid": uuid(index), **gpu} for index, gpu in enumerate(gpus)]
    return {"driver": driver, "cuda": cuda, "gpus": listed, **extra}
