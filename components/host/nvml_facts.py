"""What NVML says about this host: the driver, the CUDA driver version and each GPU (name, UUID, memory,
compute capability, MIG mode), read once, with NVML's failures turned into the preflight's exit codes.

Standard library only, Python 3.8+: shipped to the GPU host beside preflight.py (by
components/remote/runners.py), which imports it from beside itself; `pynvml` is loaded at run time.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

_MIB = 1024 * 1024
_NVML_ERROR_DRIVER_NOT_LOADED = 9
_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_ERROR_NO_PERMISSION = 4
_NVML_ERROR_LIBRARY_NOT_FOUND = 12


class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    NO_DRIVER = 3
    NO_GPU = 4
    GPU_MISMATCH = 5
    DRIVER_TOO_OLD = 6
    MIG = 7
    NVML_ERROR = 8


@dataclass(frozen=True)
class Problem:
    code: ExitCode
    message: str


@dataclass(frozen=True)
class MigMode:
    current: bool
    pending: bool


@dataclass(frozen=True)
class GpuFacts:
    index: int
    name: str
    uuid: str
    memory_mib: int
    compute_capability: tuple[int, int] | None
    mig: MigMode | None  # None: the card does not support MIG

    @property
    def cc_text(self) -> str | None:
        cc = self.compute_capability
        return None if cc is None else f"{cc[0]}.{cc[1]}"


@dataclass(frozen=True)
class HostFacts:
    driver: str | None = None
    cuda_driver: str | None = None  # '12.8', the newest CUDA the driver supports
    gpus: tuple[GpuFacts, ...] = ()
    nvml_failure: Problem | None = None  # why NVML gave no (or incomplete) answers

    @property
    def no_driver(self) -> bool:
        return self.nvml_failure is not None and self.nvml_failure.code == ExitCode.NO_DRIVER


# --- gathering ---------------------------------------------------------------------------------------


def _text(value: object) -> str:
    """Older bindings return bytes for strings."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").rstrip("\x00")
    return str(value)


def cuda_driver_text(version: int) -> str:
    """nvmlSystemGetCudaDriverVersion's integer as 'major.minor': 12080 -> '12.8'."""
    return f"{version // 1000}.{(version % 1000) // 10}"


def _error_code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _init_failure(exc: BaseException) -> Problem:
    code = _error_code(exc)
    if code == _NVML_ERROR_LIBRARY_NOT_FOUND:
        reason = "NVML library not found (install the driver, or use profile cpu)"
    elif code == _NVML_ERROR_DRIVER_NOT_LOADED:
        reason = "driver not loaded (load the kernel module or reboot after the install, or use profile cpu)"
    elif code == _NVML_ERROR_NO_PERMISSION:
        reason = "no permission to open the GPU device files (run as a user in the video group or root)"
    else:
        reason = f"nvmlInit failed: {exc} (check nvidia-smi, or use profile cpu)"
    return Problem(ExitCode.NO_DRIVER, f"no NVIDIA driver: {reason}")


def _optional(nvml: ModuleType, call: Callable[[], Any]) -> Any:
    """`call()`, or None when NVML says NotSupported (e.g. MIG mode on a card without MIG)."""
    try:
        return call()
    except nvml.NVMLError as exc:
        if _error_code(exc) == _NVML_ERROR_NOT_SUPPORTED:
            return None
        raise


def _cuda_driver(nvml: ModuleType) -> str | None:
    for name in ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"):
        function = getattr(nvml, name, None)
        if function is None:
            continue
        try:
            return cuda_driver_text(int(function()))
        except nvml.NVMLError:
            continue
    return None


def _gpu(nvml: ModuleType, index: int) -> GpuFacts:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    cc = _optional(nvml, lambda: nvml.nvmlDeviceGetCudaComputeCapability(handle))
    mig = _optional(nvml, lambda: nvml.nvmlDeviceGetMigMode(handle))
    return GpuFacts(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        memory_mib=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // _MIB,
        compute_capability=None if cc is None else (int(cc[0]), int(cc[1])),
        mig=None if mig is None else MigMode(current=bool(mig[0]), pending=bool(mig[1])),
    )


def inspect_host(nvml: ModuleType) -> HostFacts:
    """What NVML reports about this host; NVML errors land in `nvml_failure`, never raise."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return HostFacts(nvml_failure=_init_failure(exc))
    driver: str | None = None
    cuda_driver: str | None = None
    gpus: list[GpuFacts] = []
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        cuda_driver = _cuda_driver(nvml)
        for index in range(int(nvml.nvmlDeviceGetCount())):
            gpus.append(_gpu(nvml, index))
    except nvml.NVMLError as exc:
        where = "the driver version" if driver is None else f"GPU {len(gpus)}"
        failure = Problem(ExitCode.NVML_ERROR, f"NVML query failed for {where}: {exc}")
        return HostFacts(driver, cuda_driver, tuple(gpus), failure)
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()
    return HostFacts(driver=driver, cuda_driver=cuda_driver, gpus=tuple(gpus))


# --- checking ----------------------------------------------------------------------------------------


def load_nvml() -> ModuleType | Problem:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        message = "no NVIDIA driver bindings: the pynvml module is missing (pip install nvidia-ml-py)"
        return Problem(ExitCode.NO_DRIVER, message)
