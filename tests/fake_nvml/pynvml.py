"""A stand-in for NVIDIA's `pynvml` module (nvidia-ml-py) driven by the FAKE_NVML_JSON variable.

Put this folder first on sys.path (or PYTHONPATH for a subprocess) and describe the machine:

    {"driver": "580.65.06", "cuda": 12080,
     "gpus": [{"name": "Tesla P40", "memory_mib": 22919, "cc": [6, 1],
               "uuid": "GPU-...", "mig": null, "used_mib": 0, "util": 0,
               "temperature": 35, "power_mw": 50000}]}

`"library": "missing"` (or no variable at all) behaves like a host without the driver: nvmlInit raises
NVMLError_LibraryNotFound. `"lib_rm_mismatch": true` behaves like a host whose driver packages were replaced
under the loaded kernel module: nvmlInit raises NVMLError_LibRmVersionMismatch (18). `"mig": null` means the card does not support MIG (NotSupported);
`[current, pending]` gives the mode. Names come back as `str`, or as `bytes` with `"bytes_names": true`
(older bindings did that). Only the calls the project uses exist, with the real signatures.
"""

from __future__ import annotations

import json
import os
from typing import Any

NVML_TEMPERATURE_GPU = 0
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1

NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {
            NVML_ERROR_UNINITIALIZED: "Uninitialized",
            NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
            NVML_ERROR_NOT_SUPPORTED: "Not Supported",
            NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
            NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
            NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
        }.get(self.value, f"NVML Error with code {self.value}")


class NVMLError_Uninitialized(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_UNINITIALIZED)


class NVMLError_NotSupported(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_NOT_SUPPORTED)


class NVMLError_DriverNotLoaded(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_DRIVER_NOT_LOADED)


class NVMLError_LibraryNotFound(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_LIBRARY_NOT_FOUND)


class NVMLError_LibRmVersionMismatch(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_LIB_RM_VERSION_MISMATCH)


class c_nvmlMemory_t:
    def __init__(self, total: int, used: int) -> None:
        self.total = total
        self.used = used
        self.free = total - used


class c_nvmlUtilization_t:
    def __init__(self, gpu: int, memory: int) -> None:
        self.gpu = gpu
        self.memory = memory


_state: dict[str, Any] = {"initialised": False, "machine": {}}


def _machine() -> dict[str, Any]:
    if not _state["initialised"]:
        raise NVMLError_Uninitialized()
    machine: dict[str, Any] = _state["machine"]
    return machine


def _gpu(handle: int) -> dict[str, Any]:
    gpus: list[dict[str, Any]] = _machine()["gpus"]
    if not isinstance(handle, int) or not 0 <= handle < len(gpus):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return gpus[handle]


def _text(value: str) -> str | bytes:
    return value.encode() if _machine().get("bytes_names") else value


def nvmlInit() -> None:
    raw = os.environ.get("FAKE_NVML_JSON")
    machine = json.loads(raw) if raw else {"library": "missing"}
    if machine.get("library") == "missing":
        raise NVMLError_LibraryNotFound()
    if machine.get("driver_loaded") is False:
        raise NVMLError_DriverNotLoaded()
    if machine.get("lib_rm_mismatch"):
        raise NVMLError_LibRmVersionMismatch()
    _state["machine"] = machine
    _state["initialised"] = True


def nvmlShutdown() -> None:
    _machine()
    _state["initialised"] = False


def nvmlSystemGetDriverVersion() -> str | bytes:
    return _text(_machine()["driver"])


def nvmlSystemGetCudaDriverVersion_v2() -> int:
    return int(_machine()["cuda"])


def nvmlDeviceGetCount() -> int:
    return len(_machine()["gpus"])


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    _gpu(index)
    return index


def nvmlDeviceGetName(handle: int) -> str | bytes:
    return _text(_gpu(handle)["name"])


def nvmlDeviceGetUUID(handle: int) -> str | bytes:
    gpu = _gpu(handle)
    return _text(gpu.get("uuid", f"GPU-00000000-0000-0000-0000-{handle:012d}"))


def nvmlDeviceGetMemoryInfo(handle: int, version: Any = None) -> c_nvmlMemory_t:
    gpu = _gpu(handle)
    mib = 1024 * 1024
    return c_nvmlMemory_t(gpu["memory_mib"] * mib, gpu.get("used_mib", 0) * mib)


def nvmlDeviceGetCudaComputeCapability(handle: int) -> tuple[int, int]:
    major, minor = _gpu(handle)["cc"]
    return int(major), int(minor)


def nvmlDeviceGetMigMode(device: int) -> list[int]:
    mig = _gpu(device).get("mig")
    if mig is None:
        raise NVMLError_NotSupported()
    return [int(mig[0]), int(mig[1])]


def nvmlDeviceGetUtilizationRates(handle: int) -> c_nvmlUtilization_t:
    gpu = _gpu(handle)
    return c_nvmlUtilization_t(gpu.get("util", 0), gpu.get("mem_util", 0))


def nvmlDeviceGetTemperature(handle: int, sensor: int) -> int:
    if sensor != NVML_TEMPERATURE_GPU:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return int(_gpu(handle).get("temperature", 40))


def nvmlDeviceGetPowerUsage(handle: int) -> int:
    return int(_gpu(handle).get("power_mw", 50000))
