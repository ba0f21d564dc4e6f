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

# More real cards as NVML reports them (names and nvidia-smi totals as public nvidia-smi output shows them;
# MIG-capable cards with MIG off unless said): components/core/cards.py cites the source of each figure.
T4: dict[str, Any] = {"name": "Tesla T4", "memory_mib": 15109, "cc": [7, 5], "mig": None}  # ECC on
V100_PCIE_16: dict[str, Any] = {
    "name": "Tesla V100-PCIE-16GB",
    "memory_mib": 16160,
    "cc": [7, 0],
    "mig": None,
}
V100_SXM2_32: dict[str, Any] = {
    "name": "Tesla V100-SXM2-32GB",
    "memory_mib": 32510,
    "cc": [7, 0],
    "mig": None,
}
A10: dict[str, Any] = {"name": "NVIDIA A10", "memory_mib": 23028, "cc": [8, 6], "mig": None}
A30: dict[str, Any] = {"name": "NVIDIA A30", "memory_mib": 24576, "cc": [8, 0], "mig": [1, 1]}
A100_PCIE_40: dict[str, Any] = {
    "name": "NVIDIA A100-PCIE-40GB",
    "memory_mib": 40960,
    "cc": [8, 0],
    "mig": [0, 0],
}
A100_SXM4_40: dict[str, Any] = {
    "name": "NVIDIA A100-SXM4-40GB",
    "memory_mib": 40960,
    "cc": [8, 0],
    "mig": [1, 1],
}
A100_PCIE_80: dict[str, Any] = {
    "name": "NVIDIA A100 80GB PCIe",
    "memory_mib": 81920,
    "cc": [8, 0],
    "mig": [0, 0],
}
A100_SXM4_80: dict[str, Any] = {
    "name": "NVIDIA A100-SXM4-80GB",
    "memory_mib": 81920,
    "cc": [8, 0],
    "mig": [0, 0],
}
L4: dict[str, Any] = {"name": "NVIDIA L4", "memory_mib": 23034, "cc": [8, 9], "mig": None}
L40S: dict[str, Any] = {"name": "NVIDIA L40S", "memory_mib": 46068, "cc": [8, 9], "mig": None}
RTX_3090: dict[str, Any] = {"name": "NVIDIA GeForce RTX 3090", "memory_mib": 24576, "cc": [8, 6], "mig": None}
RTX_4090: dict[str, Any] = {"name": "NVIDIA GeForce RTX 4090", "memory_mib": 24564, "cc": [8, 9], "mig": None}
RTX_A6000: dict[str, Any] = {"name": "NVIDIA RTX A6000", "memory_mib": 49140, "cc": [8, 6], "mig": None}
RTX_6000_ADA: dict[str, Any] = {
    "name": "NVIDIA RTX 6000 Ada Generation",
    "memory_mib": 49140,
    "cc": [8, 9],
    "mig": None,
}
H100_NVL: dict[str, Any] = {"name": "NVIDIA H100 NVL", "memory_mib": 95830, "cc": [9, 0], "mig": [0, 0]}
H200: dict[str, Any] = {"name": "NVIDIA H200", "memory_mib": 143771, "cc": [9, 0], "mig": [0, 0]}

# Cards outside the named catalog: one the derivation serves, and ones no supported CUDA release serves.
RTX_5090: dict[str, Any] = {
    "name": "NVIDIA GeForce RTX 5090",
    "memory_mib": 32607,
    "cc": [12, 0],
    "mig": None,
}
K80: dict[str, Any] = {"name": "Tesla K80", "memory_mib": 11441, "cc": [3, 7], "mig": None}  # Kepler
M60: dict[str, Any] = {"name": "Tesla M60", "memory_mib": 8129, "cc": [5, 2], "mig": None}  # Maxwell

# Every real card with the named profile it is (the fake NVML's view of the named catalog).
NAMED: list[tuple[str, dict[str, Any]]] = [
    ("p40", P40),
    ("a2", A2),
    ("a4000", A4000),
    ("h100", H100_SXM),
    ("h100", H100_PCIE),
    ("t4", T4),
    ("v100-pcie-16gb", V100_PCIE_16),
    ("v100-sxm2-32gb", V100_SXM2_32),
    ("a10", A10),
    ("a30", A30),
    ("a100-40gb", A100_PCIE_40),
    ("a100-40gb", A100_SXM4_40),
    ("a100-80gb", A100_PCIE_80),
    ("a100-80gb", A100_SXM4_80),
    ("l4", L4),
    ("l40s", L40S),
    ("rtx-3090", RTX_3090),
    ("rtx-4090", RTX_4090),
    ("rtx-a6000", RTX_A6000),
    ("rtx-6000-ada", RTX_6000_ADA),
    ("h100-nvl", H100_NVL),
    ("h200", H200),
]

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
