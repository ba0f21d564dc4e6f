"""GPU preflight: does this host have the card, the driver and the MIG mode a profile needs?

Runs in the repo as ``python -m components.host.preflight --profile h100 [--json]`` and standalone on a GPU
host, copied beside ``catalog.py`` and ``pynvml.py`` (by components/remote/runners.py), as
``python3 preflight.py --profile h100``. It needs only the standard library and ``pynvml``
(nvidia-ml-py), and keeps to Python 3.8+ syntax at runtime so an older host interpreter runs it.

Options: ``--profile p40|a2|a4000|h100|cpu|auto``, ``--json``, ``--min-driver X`` (replaces the
profile's minimum), ``--cuda-version X.Y.Z`` (the stack's CUDA override: the minimum driver follows
from it), ``--require-mig``.

``--profile auto`` picks the profile from GPU 0's NVML name (every GPU must be that model) and prints
the key; with no driver or no GPU it resolves to ``cpu`` with a warning and exits 0. ``--profile cpu``
always passes and reports whatever NVML shows.

Exit codes (with several problems, the lowest code wins; stderr gets exactly one line on failure):

====  ======================================================================================
0     OK
1     unexpected internal error
2     usage or configuration error (bad option value, a CUDA override the card cannot run)
3     NVML unusable: no NVIDIA driver, NVML library not found, driver not loaded, no pynvml
4     NVML works but finds no GPU
5     GPU model does not match the profile (name, compute capability, memory +-10%),
      mixed models under ``auto``, or a card outside the catalog under ``auto``
6     driver older than the profile's (or ``--min-driver``'s) minimum
7     MIG required but off, pending a reset, or the card has no MIG
8     an NVML query failed after nvmlInit
====  ======================================================================================

``--json`` prints exactly one object on stdout, failures included::

    {"ok": bool, "profile": "h100" | null, "driver": "580.65.06" | null, "cuda_driver": "12.8" | null,
     "gpus": [{"index": 0, "name": "...", "uuid": "GPU-...", "memory_mib": 81559,
               "compute_capability": "9.0", "mig": {"current": bool, "pending": bool} | null}],
     "problems": ["..."]}

``profile`` is null only when ``auto`` could not pick one (an unknown card).

One file on purpose (about 500 lines, 45 of them this contract): NVML facts, checks and CLI split apart
would be one more file to copy, verify and import-fallback on every host, for no reader who needs one alone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.core import catalog
else:
    try:  # in the repo
        from components.core import catalog
    except ImportError:  # standalone, copied beside catalog.py
        import catalog

MEMORY_TOLERANCE = 0.10  # a card's NVML total may differ from the catalog's figure by ECC and firmware
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


def detect_profile(facts: HostFacts) -> tuple[catalog.GpuProfile | None, list[Problem], list[str]]:
    """`--profile auto`: (profile or None, problems, warnings)."""
    if facts.nvml_failure is not None and not facts.no_driver:
        return None, [facts.nvml_failure], []
    if facts.no_driver or not facts.gpus:
        why = facts.nvml_failure.message if facts.nvml_failure else "NVML finds no GPU"
        return catalog.PROFILES["cpu"], [], [f"--profile auto resolves to cpu: {why}"]
    first = facts.gpus[0]
    profile = catalog.profile_for_nvml_name(first.name)
    if profile is None:
        known = ", ".join(name for p in catalog.PROFILES.values() for name in p.nvml_names)
        message = f"GPU 0 is a {first.name!r}, not in the profile catalog (known: {known}); pass --profile"
        return None, [Problem(ExitCode.GPU_MISMATCH, message)], []
    return profile, [], []


def _model_problems(gpu: GpuFacts, profile: catalog.GpuProfile) -> list[Problem]:
    expected = " or ".join(repr(name) for name in profile.nvml_names)
    if gpu.name not in profile.nvml_names:
        message = (
            f"GPU {gpu.index} is a {gpu.name!r}, not a {profile.display_name} "
            f"(profile {profile.key} expects {expected})"
        )
        return [Problem(ExitCode.GPU_MISMATCH, message)]
    problems = []
    if gpu.compute_capability != profile.compute_capability:
        problems.append(
            Problem(
                ExitCode.GPU_MISMATCH,
                f"GPU {gpu.index} reports compute capability {gpu.cc_text}, "
                f"profile {profile.key} expects {profile.cuda_arch_list}",
            )
        )
    if abs(gpu.memory_mib - profile.memory_mib) > MEMORY_TOLERANCE * profile.memory_mib:
        problems.append(
            Problem(
                ExitCode.GPU_MISMATCH,
                f"GPU {gpu.index} has {gpu.memory_mib} MiB, profile {profile.key} expects "
                f"{profile.memory_mib} MiB +-{MEMORY_TOLERANCE:.0%}",
            )
        )
    return problems


def _driver_problems(
    driver: str | None, profile: catalog.GpuProfile, min_driver: str | None
) -> list[Problem]:
    minimum = min_driver or profile.min_driver
    if minimum is None or driver is None:
        return []
    try:
        too_old = catalog.parse_version(driver) < catalog.parse_version(minimum)
    except ValueError:
        return [Problem(ExitCode.DRIVER_TOO_OLD, f"cannot read the driver version {driver!r}")]
    if not too_old:
        return []
    if min_driver:
        why = "set by --min-driver"
    else:
        cuda = catalog.cuda_major_minor(profile.cuda_version or "0.0.0")
        why = f"for CUDA {cuda} with {profile.wheel_flavour} wheels, profile {profile.key}"
    message = f"driver {driver} is below {minimum} ({why}); install the {profile.driver_branch} branch"
    return [Problem(ExitCode.DRIVER_TOO_OLD, message)]


def _mig_problems(facts: HostFacts, profile: catalog.GpuProfile) -> list[Problem]:
    if not profile.is_gpu:
        return [Problem(ExitCode.MIG, "MIG required but the cpu profile has no GPU")]
    if not profile.mig_capable:
        return [Problem(ExitCode.MIG, f"MIG required but a {profile.display_name} has no MIG")]
    problems = []
    for gpu in facts.gpus:
        where = f"GPU {gpu.index} ({gpu.name})"
        if gpu.mig is None:
            problems.append(Problem(ExitCode.MIG, f"MIG required but {where} does not support MIG"))
        elif not gpu.mig.current and gpu.mig.pending:
            message = (
                f"MIG required but not active yet on {where}: enabled, pending a GPU reset "
                f"(nvidia-smi -i {gpu.index} -r) or a reboot"
            )
            problems.append(Problem(ExitCode.MIG, message))
        elif not gpu.mig.current:
            message = f"MIG required but off on {where}; enable it: nvidia-smi -i {gpu.index} -mig 1"
            problems.append(Problem(ExitCode.MIG, message))
    return problems


def check(
    facts: HostFacts,
    profile: catalog.GpuProfile,
    *,
    min_driver: str | None = None,
    require_mig: bool = False,
    same_model: bool = False,
) -> list[Problem]:
    """Everything that keeps `profile` from running on the host `facts` describes; [] when it fits.

    `min_driver` replaces the profile's minimum; `same_model` (for auto) wants one GPU model throughout.
    """
    if not profile.is_gpu:
        return _mig_problems(facts, profile) if require_mig else []
    if facts.nvml_failure is not None:
        return [facts.nvml_failure]
    if not facts.gpus:
        message = f"no GPU found: NVML sees 0 devices, profile {profile.key} needs a {profile.display_name}"
        return [Problem(ExitCode.NO_GPU, message)]
    problems: list[Problem] = []
    for gpu in facts.gpus:
        problems.extend(_model_problems(gpu, profile))
    models = sorted({gpu.name for gpu in facts.gpus})
    if same_model and len(models) > 1:
        message = f"mixed GPU models ({', '.join(models)}); --profile auto needs one model throughout"
        problems.append(Problem(ExitCode.GPU_MISMATCH, message))
    problems.extend(_driver_problems(facts.driver, profile, min_driver))
    if require_mig:
        problems.extend(_mig_problems(facts, profile))
    return problems


# --- output ------------------------------------------------------------------------------------------


def facts_json(facts: HostFacts, profile_key: str | None, problems: Sequence[Problem]) -> dict[str, Any]:
    return {
        "ok": not problems,
        "profile": profile_key,
        "driver": facts.driver,
        "cuda_driver": facts.cuda_driver,
        "gpus": [
            {
                "index": gpu.index,
                "name": gpu.name,
                "uuid": gpu.uuid,
                "memory_mib": gpu.memory_mib,
                "compute_capability": gpu.cc_text,
                "mig": None if gpu.mig is None else dataclasses.asdict(gpu.mig),
            }
            for gpu in facts.gpus
        ],
        "problems": [problem.message for problem in problems],
    }


def _mig_text(mig: MigMode | None) -> str:
    if mig is None:
        return "MIG not supported"
    state = "on" if mig.current else "off"
    return (
        f"MIG {state}"
        if mig.current == mig.pending
        else f"MIG {state} (pending {'on' if mig.pending else 'off'})"
    )


def facts_lines(facts: HostFacts) -> list[str]:
    """Readable lines about the host (NVML failures are reported by the caller, on stderr)."""
    lines = []
    if facts.driver is not None:
        lines.append(f"driver {facts.driver}, CUDA {facts.cuda_driver or 'unknown'} (driver API)")
        if not facts.gpus and facts.nvml_failure is None:
            lines.append("no GPU visible to NVML")
    for gpu in facts.gpus:
        lines.append(f"GPU {gpu.index}: {gpu.name} ({gpu.uuid})")
        cc = gpu.cc_text or "unknown"
        lines.append(f"  memory {gpu.memory_mib} MiB, compute capability {cc}, {_mig_text(gpu.mig)}")
    return lines


def _ok_line(facts: HostFacts, profile: catalog.GpuProfile, min_driver: str | None) -> str:
    if not profile.is_gpu:
        return "OK: profile cpu (no GPU required)"
    minimum = min_driver or profile.min_driver
    driver = f"driver {facts.driver} >= {minimum}" if minimum else f"driver {facts.driver}"
    return f"OK: {len(facts.gpus)} x {facts.gpus[0].name} fit profile {profile.key}; {driver}"


# --- command line ------------------------------------------------------------------------------------


def _version(text: str) -> str:
    try:
        catalog.parse_version(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _cuda_version(text: str) -> str:
    try:
        catalog.cuda_major_minor(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preflight",
        description="Check that this host's GPUs, driver and MIG mode fit a gpu-deploy profile.",
    )
    parser.add_argument("--profile", required=True, choices=[*catalog.PROFILES, "auto"])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--min-driver", type=_version, help="minimum driver, replacing the profile's")
    parser.add_argument(
        "--cuda-version",
        type=_cuda_version,
        help="the stack's CUDA override (X.Y.Z); sets the minimum driver",
    )
    parser.add_argument("--require-mig", action="store_true", help="fail unless MIG mode is on")
    return parser


def _load_nvml() -> ModuleType | Problem:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        message = "no NVIDIA driver bindings: the pynvml module is missing (pip install nvidia-ml-py)"
        return Problem(ExitCode.NO_DRIVER, message)


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: list[str]  # human output
    stderr: list[str]  # one FAIL line, or warnings
    report: dict[str, Any]  # the --json object


def _with_cuda_override(
    profile: catalog.GpuProfile, cuda_version: str | None
) -> catalog.GpuProfile | Problem:
    if not cuda_version or not profile.is_gpu:
        return profile
    try:
        return profile.with_overrides(cuda_version=cuda_version)
    except ValueError as exc:
        return Problem(ExitCode.USAGE, f"--cuda-version {cuda_version}: {exc}")


def run(args: argparse.Namespace) -> Outcome:
    """Inspect the host and check it against the profile the parsed arguments name."""
    nvml = _load_nvml()
    facts = HostFacts(nvml_failure=nvml) if isinstance(nvml, Problem) else inspect_host(nvml)
    auto = args.profile == "auto"
    profile: catalog.GpuProfile | Problem | None
    if auto:
        profile, problems, warnings = detect_profile(facts)
    else:
        profile, problems, warnings = catalog.PROFILES[args.profile], [], []
    if profile is not None:
        profile = _with_cuda_override(profile, args.cuda_version)
    if isinstance(profile, Problem):
        problems, profile = [profile], None
    elif profile is not None:
        problems = check(
            facts, profile, min_driver=args.min_driver, require_mig=args.require_mig, same_model=auto
        )
    stdout = facts_lines(facts)
    if auto and profile is not None:
        stdout.append(f"profile: {profile.key}")
    report = facts_json(facts, None if profile is None else profile.key, problems)
    if problems or profile is None:
        code = min(problem.code for problem in problems)
        failure = f"FAIL (exit {int(code)}): " + "; ".join(problem.message for problem in problems)
        return Outcome(int(code), stdout, [failure], report)
    stdout.append(_ok_line(facts, profile, args.min_driver))
    return Outcome(int(ExitCode.OK), stdout, [f"warning: {warning}" for warning in warnings], report)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        outcome = run(args)
    except Exception as exc:  # last resort: one line, never a traceback
        print(f"FAIL (exit {int(ExitCode.INTERNAL)}): preflight crashed: {exc!r}", file=sys.stderr)
        return int(ExitCode.INTERNAL)
    if args.json:
        print(json.dumps(outcome.report, indent=2))
    else:
        for line in outcome.stdout:
            print(line)
    for line in outcome.stderr:
        print(line, file=sys.stderr)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
