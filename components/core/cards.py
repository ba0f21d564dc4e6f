"""The named cards, as data: what NVML and GPU feature discovery call each one, its compute capability, its
memory as nvidia-smi reports it, its MIG profiles and the defaults a profile takes from it.

Every card cites where its figures come from (`source`). Names and memory figures were checked against
nvidia-smi / NVML output in public repositories and issues (the `source` says so where that was done); MIG
profiles against NVIDIA's MIG user guide. Everything else a profile needs follows from the compute
capability (architectures.py) and is derived in catalog.derive_profile. Standard library only, Python 3.8
syntax: it ships to GPU hosts beside catalog.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

SOURCE_MIG = "https://docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-mig-profiles.html"
SOURCE_MIG_GPUS = "https://docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-gpus.html"
SOURCE_GFD = "NVIDIA/k8s-device-plugin v0.17.1 internal/lm/resource.go (sanitise, getProductName)"
SOURCE_V100 = (
    "https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf"
)
SOURCE_A100 = (
    "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
    "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"
)
NVIDIA_SMI = "nvidia-smi output in public repositories (searched by the exact name)"
SHARING = ("none", "time-slicing", "mps", "mig")
KERNEL_MODULES = ("proprietary", "open")
_KEY = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def gpu_product_label(name: str) -> str:
    """GPU feature discovery's label form of a name (SOURCE_GFD, sanitise): characters other than letters,
    digits, '-', '_', '.' and spaces dropped, runs of spaces as one '-'.
    'NVIDIA H100 PCIe' -> 'NVIDIA-H100-PCIe'."""
    return "-".join(re.sub(r"[^A-Za-z0-9\-_. ]", "", name).split())


def slug(name: str) -> str:
    """A profile key for a card NVML names `name`: 'NVIDIA GeForce RTX 5090' -> 'geforce-rtx-5090'."""
    text = re.sub(r"^nvidia\s+", "", name.strip().lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "gpu"


@dataclass(frozen=True)
class Card:
    """One card model (or a family NVML names several ways, such as the H100 PCIe and SXM5 80GB)."""

    key: str
    display_name: str
    nvml_names: tuple[str, ...]  # what nvmlDeviceGetName returns
    compute_capability: tuple[int, int]
    memory_mib: int  # per GPU, as nvidia-smi reports it
    mig_capable: bool = False
    mig_profiles: dict[str, int] = field(default_factory=dict)  # name -> max instances; empty: no MIG
    k8s_sharing: str = "none"  # default Kubernetes sharing strategy
    kernel_modules: str | None = None  # None: what the architecture allows (open from Turing on)
    source: str = ""

    @property
    def gpu_products(self) -> tuple[str, ...]:
        """The `nvidia.com/gpu.product` label GPU feature discovery gives a node with this card."""
        return tuple(gpu_product_label(name) for name in self.nvml_names)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "display_name": self.display_name,
            "nvml_names": list(self.nvml_names),
            "compute_capability": list(self.compute_capability),
            "memory_mib": self.memory_mib,
            "mig_capable": self.mig_capable,
            "mig_profiles": dict(self.mig_profiles),
            "k8s_sharing": self.k8s_sharing,
            "kernel_modules": self.kernel_modules,
            "source": self.source,
        }


def _problem(field_name: str, message: str) -> ValueError:
    return ValueError(f"card.{field_name}: {message}")


def _capability(value: object) -> tuple[int, int]:
    if isinstance(value, str) and re.fullmatch(r"\d+\.\d+", value):
        major, minor = value.split(".")
        return int(major), int(minor)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return int(value[0]), int(value[1])
    raise _problem("compute_capability", f"a compute capability is 'X.Y' or [X, Y], got {value!r}")


def card_from_json(data: Mapping[str, Any]) -> Card:
    """A Card from its JSON form (Card.to_json, or a stack's own card); ValueError naming the field."""
    if not isinstance(data, Mapping):
        raise ValueError(f"card: a card is a JSON object, got {type(data).__name__}")
    known = set(Card.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise _problem(unknown[0], f"unknown field (known: {', '.join(sorted(known))})")
    for name in ("key", "display_name", "nvml_names", "compute_capability", "memory_mib"):
        if name not in data:
            raise _problem(name, "missing")
    key = data["key"]
    if not isinstance(key, str) or not _KEY.match(key):
        raise _problem("key", f"a key is lowercase letters, digits and single '-', got {key!r}")
    display = data["display_name"]
    if not isinstance(display, str) or not display.strip():
        raise _problem("display_name", "a non-empty string")
    names = data["nvml_names"]
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
        raise _problem("nvml_names", "a non-empty list of the names NVML reports")
    memory = data["memory_mib"]
    if not isinstance(memory, int) or isinstance(memory, bool) or memory <= 0:
        raise _problem("memory_mib", f"a positive number of MiB, got {memory!r}")
    mig_capable = data.get("mig_capable", False)
    if not isinstance(mig_capable, bool):
        raise _problem("mig_capable", f"true or false, got {mig_capable!r}")
    profiles = data.get("mig_profiles") or {}
    if not isinstance(profiles, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0
        for k, v in profiles.items()
    ):
        raise _problem("mig_profiles", "an object of MIG profile name -> max instances (a positive number)")
    if profiles and not mig_capable:
        raise _problem("mig_profiles", "MIG profiles on a card that is not mig_capable")
    sharing = data.get("k8s_sharing", "none")
    if sharing not in SHARING:
        raise _problem("k8s_sharing", f"one of {', '.join(SHARING)}, got {sharing!r}")
    modules = data.get("kernel_modules")
    if modules is not None and modules not in KERNEL_MODULES:
        raise _problem("kernel_modules", f"one of {', '.join(KERNEL_MODULES)}, got {modules!r}")
    source = data.get("source", "")
    return Card(
        key=key,
        display_name=display,
        nvml_names=tuple(names),
        compute_capability=_capability(data["compute_capability"]),
        memory_mib=memory,
        mig_capable=mig_capable,
        mig_profiles=dict(profiles),
        k8s_sharing=sharing,
        kernel_modules=modules,
        source=source if isinstance(source, str) else "",
    )


def _mig(memory_gb: int, slice_gb: int, half_gb: int, full_gb: int) -> dict[str, int]:
    """The seven-slice MIG profile set of the A100/H100/H200 family (SOURCE_MIG): 1g x7, 1g (double memory)
    x4, 2g x3, 3g x2, 4g x1, 7g x1, named by their memory."""
    return {
        f"1g.{slice_gb}gb": 7,
        f"1g.{memory_gb}gb": 4,
        f"2g.{memory_gb}gb": 3,
        f"3g.{half_gb}gb": 2,
        f"4g.{half_gb}gb": 1,
        f"7g.{full_gb}gb": 1,
    }


CARDS: tuple[Card, ...] = (
    Card(
        "p40",
        "Tesla P40",
        ("Tesla P40",),
        (6, 1),
        22919,  # ECC on; 24576 with ECC off
        k8s_sharing="time-slicing",
        source="https://images.nvidia.com/content/pdf/tesla/"
        "184427-Tesla-P40-Datasheet-NV-Final-Letter-Web.pdf; "
        "../shared/gpu-facts.md (NVML name, 22919 MiB)",
    ),
    Card(
        "a2",
        "NVIDIA A2",
        ("NVIDIA A2",),
        (8, 6),
        15356,
        k8s_sharing="time-slicing",
        source="https://www.nvidia.com/content/dam/en-zz/solutions/data-center/a2/pdf/a2-datasheet.pdf; "
        "../shared/gpu-facts.md (NVML name, 15356 MiB with ECC on)",
    ),
    Card(
        "a4000",
        "NVIDIA RTX A4000",
        ("NVIDIA RTX A4000",),
        (8, 6),
        16376,
        source="https://www.nvidia.com/content/dam/en-zz/Solutions/gtcs21/rtx-a4000/"
        "nvidia-rtx-a4000-datasheet.pdf; "
        "../shared/gpu-facts.md (NVML name, 16376 MiB)",
    ),
    Card(
        "h100",
        "NVIDIA H100",
        ("NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM3"),
        (9, 0),
        81559,
        mig_capable=True,
        mig_profiles=_mig(20, 10, 40, 80),
        source="https://www.nvidia.com/en-us/data-center/h100/; "
        "../shared/gpu-facts.md (both names, 81559 MiB); "
        f"MIG: {SOURCE_MIG} (H100 80GB)",
    ),
    Card(
        "t4",
        "NVIDIA T4",
        ("Tesla T4",),
        (7, 5),
        15360,  # ECC off; 15109 with ECC on
        source="https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/"
        "t4-tensor-core-datasheet-951643.pdf; "
        f"{NVIDIA_SMI}: 'Tesla T4' 15360MiB (15109MiB with ECC on)",
    ),
    Card(
        "v100-pcie-16gb",
        "Tesla V100 PCIe 16GB",
        ("Tesla V100-PCIE-16GB",),
        (7, 0),
        16384,
        source=f"{SOURCE_V100}; "
        f"{NVIDIA_SMI}: 'Tesla V100-PCIE-16GB' 16384MiB with ECC off (16160MiB with ECC on)",
    ),
    Card(
        "v100-pcie-32gb",
        "Tesla V100 PCIe 32GB",
        ("Tesla V100-PCIE-32GB",),
        (7, 0),
        32768,
        source=f"{SOURCE_V100}; "
        f"{NVIDIA_SMI}: the name (PyTorch collect_env); 32768 MiB is the data sheet's 32 GB",
    ),
    Card(
        "v100-sxm2-16gb",
        "Tesla V100 SXM2 16GB",
        ("Tesla V100-SXM2-16GB",),
        (7, 0),
        16384,
        source=f"{SOURCE_V100}; "
        f"{NVIDIA_SMI}: the name; 16384 MiB is the data sheet's 16 GB (16160 with ECC on)",
    ),
    Card(
        "v100-sxm2-32gb",
        "Tesla V100 SXM2 32GB",
        ("Tesla V100-SXM2-32GB",),
        (7, 0),
        32768,
        source=f"{SOURCE_V100}; {NVIDIA_SMI}: the name; 32768 MiB is the data sheet's 32 GB",
    ),
    Card(
        "a10",
        "NVIDIA A10",
        ("NVIDIA A10",),
        (8, 6),
        23028,
        source="https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a10/pdf/a10-datasheet.pdf; "
        f"{NVIDIA_SMI}: 'NVIDIA A10' 23028MiB",
    ),
    Card(
        "a30",
        "NVIDIA A30",
        ("NVIDIA A30",),
        (8, 0),
        24576,
        mig_capable=True,
        mig_profiles={"1g.6gb": 4, "2g.12gb": 2, "4g.24gb": 1},
        source="https://www.nvidia.com/content/dam/en-zz/Solutions/data-center/products/a30-gpu/pdf/"
        "a30-datasheet.pdf; "
        f"{NVIDIA_SMI}: 'NVIDIA A30' 24576MiB; MIG: {SOURCE_MIG} (A30-24GB)",
    ),
    Card(
        "a100-40gb",
        "NVIDIA A100 40GB",
        ("NVIDIA A100-PCIE-40GB", "NVIDIA A100-SXM4-40GB"),
        (8, 0),
        40960,
        mig_capable=True,
        mig_profiles={"1g.5gb": 7, "1g.10gb": 4, "2g.10gb": 3, "3g.20gb": 2, "4g.20gb": 1, "7g.40gb": 1},
        source=f"{SOURCE_A100}; {NVIDIA_SMI}: both names, 40960MiB; MIG: {SOURCE_MIG} (A100-SXM4-40GB)",
    ),
    Card(
        "a100-80gb",
        "NVIDIA A100 80GB",
        ("NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"),
        (8, 0),
        81920,
        mig_capable=True,
        mig_profiles=_mig(20, 10, 40, 80),
        source=f"{SOURCE_A100}; {NVIDIA_SMI}: both names, 81920MiB; MIG: {SOURCE_MIG} (A100-SXM4-80GB names)",
    ),
    Card(
        "l4",
        "NVIDIA L4",
        ("NVIDIA L4",),
        (8, 9),
        23034,
        source=f"https://www.nvidia.com/en-us/data-center/l4/; {NVIDIA_SMI}: 'NVIDIA L4' 23034MiB",
    ),
    Card(
        "l40s",
        "NVIDIA L40S",
        ("NVIDIA L40S",),
        (8, 9),
        46068,
        source=f"https://www.nvidia.com/en-us/data-center/l40s/; {NVIDIA_SMI}: 'NVIDIA L40S' 46068MiB",
    ),
    Card(
        "rtx-3090",
        "NVIDIA GeForce RTX 3090",
        ("NVIDIA GeForce RTX 3090",),
        (8, 6),
        24576,
        source="https://www.nvidia.com/en-us/geforce/graphics-cards/30-series/rtx-3090-3090ti/; "
        f"{NVIDIA_SMI}: 'NVIDIA GeForce RTX 3090' 24576MiB",
    ),
    Card(
        "rtx-4090",
        "NVIDIA GeForce RTX 4090",
        ("NVIDIA GeForce RTX 4090",),
        (8, 9),
        24564,
        source="https://www.nvidia.com/en-us/geforce/graphics-cards/40-series/rtx-4090/; "
        f"{NVIDIA_SMI}: 'NVIDIA GeForce RTX 4090' 24564MiB",
    ),
    Card(
        "rtx-a6000",
        "NVIDIA RTX A6000",
        ("NVIDIA RTX A6000",),
        (8, 6),
        49140,
        source="https://www.nvidia.com/en-us/design-visualization/rtx-a6000/; "
        f"{NVIDIA_SMI}: 'NVIDIA RTX A6000' 49140MiB",
    ),
    Card(
        "rtx-6000-ada",
        "NVIDIA RTX 6000 Ada Generation",
        ("NVIDIA RTX 6000 Ada Generation",),
        (8, 9),
        49140,
        source="https://www.nvidia.com/en-us/design-visualization/rtx-6000/; "
        f"{NVIDIA_SMI}: 'NVIDIA RTX 6000 Ada Gene...' 49140MiB (nvidia-smi truncates the name)",
    ),
    Card(
        "h100-nvl",
        "NVIDIA H100 NVL",
        ("NVIDIA H100 NVL",),
        (9, 0),
        95830,
        mig_capable=True,
        mig_profiles=_mig(24, 12, 47, 94),
        source=f"https://www.nvidia.com/en-us/data-center/h100/; {NVIDIA_SMI}: 'NVIDIA H100 NVL' 95830MiB; "
        f"MIG: {SOURCE_MIG} (H100 94GB), {SOURCE_MIG_GPUS}",
    ),
    Card(
        "h200",
        "NVIDIA H200",
        ("NVIDIA H200",),
        (9, 0),
        143771,
        mig_capable=True,
        mig_profiles=_mig(35, 18, 71, 141),
        source=f"https://www.nvidia.com/en-us/data-center/h200/; {NVIDIA_SMI}: 'NVIDIA H200' 143771MiB; "
        f"MIG: {SOURCE_MIG} (H200 141GB), {SOURCE_MIG_GPUS}",
    ),
)


def card_named(name: str) -> Card | None:
    """The named card NVML calls `name`, or None."""
    for card in CARDS:
        if name in card.nvml_names:
            return card
    return None
