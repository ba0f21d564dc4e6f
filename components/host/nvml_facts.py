"""What NVML says about this host: the driver, the CUDA driver version and each GPU (name, UUID, memory,
compute capability, MIG mode), read once, with NVML's failures turned into the preflight's exit codes;
and what the host's files say about the driver beside it (the loaded kernel module, the installed NVML
library, DKMS, a pending reboot), so that a driver replaced under the running one is told apart.

Standard library only, Python 3.8+: shipped to the GPU host beside preflight.py (by
components/remote/runners.py), which imports it from beside itself; `pynvml` is loaded at run time.
Files are read under HOST_ROOT (a path prefix, default empty = the real root; only the tests set it, as
for the host scripts: components/host/scripts/common.sh).
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

_MIB = 1024 * 1024
_NVML_ERROR_DRIVER_NOT_LOADED = 9
_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_ERROR_NO_PERMISSION = 4
_NVML_ERROR_LIBRARY_NOT_FOUND = 12
# nvml.h NVML_ERROR_LIB_RM_VERSION_MISMATCH (pynvml: "RM has detected an NVML/RM version mismatch."): the
# user-space library is not the loaded kernel module's version, nvidia-smi's "Driver/library version
# mismatch".
_NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18


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
    DRIVER_DRIFT = 9


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
class DriverFiles:
    """What the host's files say about the NVIDIA driver, NVML aside (see read_driver_files)."""

    loaded_module: str | None = None  # /proc/driver/nvidia/version: the kernel module running now
    nvml_libraries: tuple[str, ...] = ()  # the versions of the installed libnvidia-ml.so.<version> files
    dkms_modules: tuple[str, ...] = ()  # the NVIDIA module versions DKMS holds (/var/lib/dkms/nvidia*/)
    reboot_required_by: tuple[str, ...] = ()  # NVIDIA packages in /var/run/reboot-required.pkgs


@dataclass(frozen=True)
class HostFacts:
    driver: str | None = None
    cuda_driver: str | None = None  # '12.8', the newest CUDA the driver supports
    gpus: tuple[GpuFacts, ...] = ()
    nvml_failure: Problem | None = None  # why NVML gave no (or incomplete) answers
    files: DriverFiles = field(default_factory=DriverFiles)

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
    elif code == _NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        # drift_problems() words it with what the files say; this is the fallback
        message = (
            f"driver/library version mismatch: nvmlInit failed: {exc} (the NVIDIA driver packages were "
            "replaced under the loaded kernel module); reboot the host to load the installed driver, or "
            "reinstall the driver packages of the loaded module; then run pulumi up again"
        )
        return Problem(ExitCode.DRIVER_DRIFT, message)
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


# --- the driver's files -------------------------------------------------------------------------------

_VERSION = re.compile(r"^\d+\.\d+(?:\.\d+)?$")
_LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
_NVML_LIBRARY = "libnvidia-ml.so."
_REBOOT_DIRS = ("/var/run", "/run")  # /var/run links to /run on current systems
_NOT_DRIVER = re.compile(r"^(nvidia-container|libnvidia-container|nvidia-docker)")


def host_root() -> str:
    """The HOST_ROOT prefix for every file read (tests only), without a trailing slash."""
    return os.environ.get("HOST_ROOT", "").rstrip("/")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:
        return None


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def loaded_module_version(text: str) -> str | None:
    """The version in /proc/driver/nvidia/version: 'NVRM version: NVIDIA UNIX x86_64 Kernel Module
    580.65.06  Sun Jul 27 ...' or 'NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06
    Release Build ...' -> '580.65.06'."""
    for line in text.splitlines():
        if line.startswith("NVRM version:"):
            words = line.split("Kernel Module", 1)[-1].split()
            return next((word for word in words if _VERSION.match(word)), None)
    return None


def read_driver_files(root: str = "") -> DriverFiles:
    """The loaded kernel module, the installed NVML libraries, DKMS's NVIDIA modules and the NVIDIA
    packages a pending reboot is for, read under `root`; whatever is missing or unreadable is left out."""
    version_text = _read(f"{root}/proc/driver/nvidia/version")
    libraries = {
        name[len(_NVML_LIBRARY) :]
        for folder in _LIBRARY_DIRS
        for name in _listdir(f"{root}{folder}")
        if name.startswith(_NVML_LIBRARY) and _VERSION.match(name[len(_NVML_LIBRARY) :])
    }
    dkms = {
        version
        for module in _listdir(f"{root}/var/lib/dkms")
        if module.startswith("nvidia")
        for version in _listdir(f"{root}/var/lib/dkms/{module}")
        if _VERSION.match(version)
    }
    reboot_by: list[str] = []
    for folder in _REBOOT_DIRS:
        if os.path.exists(f"{root}{folder}/reboot-required"):
            packages = (_read(f"{root}{folder}/reboot-required.pkgs") or "").split()
            reboot_by = [p for p in packages if "nvidia" in p and not _NOT_DRIVER.match(p)]
            break
    return DriverFiles(
        loaded_module=None if version_text is None else loaded_module_version(version_text),
        nvml_libraries=tuple(sorted(libraries)),
        dkms_modules=tuple(sorted(dkms)),
        reboot_required_by=tuple(dict.fromkeys(reboot_by)),
    )


def drift_problems(facts: HostFacts) -> list[Problem]:
    """A driver replaced under the running one: the loaded kernel module is not the installed library's
    version (NVML then fails with "Driver/library version mismatch"), or a reboot is pending for the
    driver (Debian/Ubuntu's reboot-required naming an NVIDIA package, or DKMS holding only another
    version than the loaded one). One problem at most, exit 9, saying what to do."""
    files = facts.files
    loaded = files.loaded_module
    nvml_mismatch = facts.nvml_failure is not None and facts.nvml_failure.code == ExitCode.DRIVER_DRIFT
    if loaded and files.nvml_libraries and loaded not in files.nvml_libraries:
        installed = ", ".join(_NVML_LIBRARY + version for version in files.nvml_libraries)
        message = (
            f"driver/library version mismatch: the loaded NVIDIA kernel module is {loaded} but the installed "
            f"library is {installed} (the driver packages were replaced under the running driver); reboot "
            f"the host to load the installed driver, or reinstall the {loaded} driver packages; then run "
            "pulumi up again, which holds them"
        )
        return [Problem(ExitCode.DRIVER_DRIFT, message)]
    if nvml_mismatch and facts.nvml_failure is not None:
        return [facts.nvml_failure]
    if files.reboot_required_by:
        running = f" ({loaded})" if loaded else ""
        message = (
            f"a reboot is pending for the NVIDIA driver (reboot-required lists "
            f"{', '.join(files.reboot_required_by)}): until then the running kernel module{running} may not "
            "be the installed one; reboot the host, then run pulumi up again"
        )
        return [Problem(ExitCode.DRIVER_DRIFT, message)]
    if loaded and files.dkms_modules and loaded not in files.dkms_modules:
        message = (
            f"a reboot is pending for the NVIDIA driver: the loaded kernel module is {loaded} but DKMS holds "
            f"{', '.join(files.dkms_modules)}; reboot the host to load it, then run pulumi up again"
        )
        return [Problem(ExitCode.DRIVER_DRIFT, message)]
    return []


# --- checking ----------------------------------------------------------------------------------------


def load_nvml() -> ModuleType | Problem:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        message = "no NVIDIA driver bindings: the pynvml module is missing (pip install nvidia-ml-py)"
        return Problem(ExitCode.NO_DRIVER, message)
