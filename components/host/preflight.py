"""GPU preflight: does this host have the card, the driver and the MIG mode a profile needs?

Runs in the repo as ``python -m components.host.preflight --profile h100 [--json]`` and standalone on a GPU
host, copied beside ``catalog.py`` (with ``cards.py``, ``architectures.py`` and ``cuda.py``, which it
imports) and ``pynvml.py`` (by components/remote/runners.py), as
``python3 preflight.py --profile h100``. It needs only the standard library and ``pynvml``
(nvidia-ml-py), and keeps to Python 3.8+ syntax at runtime so an older host interpreter runs it.

Options: ``--profile KEY|cpu|auto`` (a key of the catalog's named profiles) or ``--card JSON`` (a stack's
own card, the JSON form of components/core/cards.py ``Card``: ``{"key": "my-card", "display_name": ...,
"nvml_names": [...], "compute_capability": [8, 9], "memory_mib": 49140, "mig_capable": false}``; the host
is checked against the profile derived from it), ``--json``, ``--min-driver X`` (replaces the profile's
required driver), ``--cuda-version X.Y.Z`` (the stack's CUDA override: the driver follows from it),
``--require-mig``.

``--profile auto`` picks the profile for GPU 0 (every GPU must be that model): the named profile whose
NVML names include GPU 0's name, else one derived from what NVML reports (name, memory, compute
capability, MIG support), keyed by a slug of the name (``geforce-rtx-5090``); it prints the key. A card no
supported CUDA release serves (Kepler, say) fails with exit 5 and the reason. With no driver or no GPU it
resolves to ``cpu`` with a warning and exits 0. ``--profile cpu`` always passes and reports whatever NVML
shows.

The driver: below the profile's required driver (components/core/cuda.py ``DriverNeed``: the CUDA major's
minor-version compatibility floor when the wheels carry machine code for the card, else the toolkit's own
minimum) fails with exit 6; below the advised one (the toolkit's own minimum) passes with a warning.

Driver drift (a GPU profile only): the driver replaced under the running one fails with exit 9, one line
that says what to do: the loaded kernel module (/proc/driver/nvidia/version) is not the installed NVML
library's version (libnvidia-ml.so.<version>; NVML itself then fails with NVML_ERROR_LIB_RM_VERSION_MISMATCH,
nvidia-smi's "Driver/library version mismatch"): reboot, or reinstall the loaded version's packages; or a
reboot is pending for the driver (/var/run/reboot-required with an NVIDIA package in reboot-required.pkgs,
or DKMS holding only another version than the loaded module, as after a dnf update): reboot. Files are read
under HOST_ROOT (tests only), as the host scripts do.

Exit codes (with several problems, the lowest code wins; stderr gets exactly one line on failure):

====  ======================================================================================
0     OK
1     unexpected internal error
2     usage or configuration error (bad option value, a CUDA override the card cannot run)
3     NVML unusable: no NVIDIA driver, NVML library not found, driver not loaded, no pynvml
4     NVML works but finds no GPU
5     GPU model does not match the profile (name, compute capability, memory +-10%),
      mixed models under ``auto``, or a card no supported CUDA release serves
6     driver older than the profile's required driver (or ``--min-driver``)
7     MIG required but off, pending a reset, or the card has no MIG
8     an NVML query failed after nvmlInit
9     driver drift: the loaded kernel module differs from the installed library, or a reboot
      is pending for the driver (reboot, or reinstall the loaded version's packages)
====  ======================================================================================

``--json`` prints exactly one object on stdout, failures included::

    {"ok": bool, "profile": "h100" | null, "driver": "580.65.06" | null, "cuda_driver": "12.8" | null,
     "gpus": [{"index": 0, "name": "...", "uuid": "GPU-...", "memory_mib": 81559,
               "compute_capability": "9.0", "mig": {"current": bool, "pending": bool} | null}],
     "problems": ["..."],
     "card": {"key": "h100", "display_name": "NVIDIA H100", "nvml_names": ["..."],
              "compute_capability": [9, 0], "memory_mib": 81559, "mig_capable": true,
              "mig_profiles": {"1g.10gb": 7, ...}, "k8s_sharing": "none"} | null,
     "driver_files": {"loaded_module": "580.65.06" | null, "nvml_libraries": ["580.65.06"],
                      "dkms_modules": ["580.65.06"], "reboot_required_by": ["nvidia-dkms-580-server"]}}

``profile`` is null only when no profile could be picked (a card no supported CUDA serves, a CUDA override
the card cannot run). ``card`` is the picked GPU profile's card (null for cpu or none): the deploy rebuilds
the same profile from it (catalog.profile_from_card_json), derived profiles included.

One file on purpose (about 550 lines, 60 of them this contract): NVML facts, checks and CLI split apart
would be one more file to copy, verify and import-fallback on every host, for no reader who needs one alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.core import catalog
    from components.host import nvml_facts
    from components.host.nvml_facts import ExitCode, GpuFacts, HostFacts, MigMode, Problem
else:
    try:  # in the repo
        from components.core import catalog
        from components.host import nvml_facts
    except ImportError:  # standalone, copied beside catalog.py and nvml_facts.py
        import catalog

        import nvml_facts
    ExitCode, GpuFacts, HostFacts = nvml_facts.ExitCode, nvml_facts.GpuFacts, nvml_facts.HostFacts
    MigMode, Problem = nvml_facts.MigMode, nvml_facts.Problem

MEMORY_TOLERANCE = 0.10  # a card's NVML total may differ from the catalog's figure by ECC and firmware


def detect_profile(facts: HostFacts) -> tuple[catalog.GpuProfile | None, list[Problem], list[str]]:
    """`--profile auto`: (profile or None, problems, warnings)."""
    if facts.nvml_failure is not None and not facts.no_driver:
        return None, nvml_facts.drift_problems(facts) or [facts.nvml_failure], []
    if facts.no_driver or not facts.gpus:
        why = facts.nvml_failure.message if facts.nvml_failure else "NVML finds no GPU"
        return catalog.PROFILES["cpu"], [], [f"--profile auto resolves to cpu: {why}"]
    first = facts.gpus[0]
    if first.compute_capability is None:
        message = (
            f"GPU 0 is a {first.name!r} and NVML reports no compute capability; pass --profile or --card"
        )
        return None, [Problem(ExitCode.GPU_MISMATCH, message)], []
    try:
        profile = catalog.profile_for_gpu(
            first.name, first.memory_mib, first.compute_capability, first.mig is not None
        )
    except ValueError as err:
        return None, [Problem(ExitCode.GPU_MISMATCH, f"GPU 0: {err}")], []
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
    """Exit 6 below the required driver (or --min-driver)."""
    minimum = min_driver or profile.required_driver
    if minimum is None or driver is None:
        return []
    try:
        too_old = catalog.parse_version(driver) < catalog.parse_version(minimum)
    except ValueError:
        return [Problem(ExitCode.DRIVER_TOO_OLD, f"cannot read the driver version {driver!r}")]
    if not too_old:
        return []
    need = profile.driver_need
    if min_driver or need is None:
        why = "set by --min-driver"
    else:
        why = (
            f"required for CUDA {profile.cuda_version} with {profile.wheel_flavour} wheels, "
            f"profile {profile.key}: {need.why}"
        )
    message = f"driver {driver} is below {minimum} ({why}); install the {profile.driver_branch} branch"
    return [Problem(ExitCode.DRIVER_TOO_OLD, message)]


def driver_advice(driver: str | None, profile: catalog.GpuProfile, min_driver: str | None) -> list[str]:
    """Warnings for a driver at or above the required one but below the advised one."""
    need = profile.driver_need
    if min_driver or need is None or driver is None or need.required == need.advised:
        return []
    try:
        below = catalog.parse_version(driver) < catalog.parse_version(need.advised)
    except ValueError:
        return []
    if not below:
        return []
    return [
        f"driver {driver} is below {need.advised}, the minimum CUDA {profile.cuda_version} with "
        f"{profile.wheel_flavour} wheels asks for; it runs through minor-version compatibility because "
        f"the wheels carry {profile.cuda_arch_list} machine code, but PTX JIT of newer code fails, and an "
        f"nvidia/cuda base image starts on an older driver only on the branches its NVIDIA_REQUIRE_CUDA "
        f"lists; advised: the {profile.driver_branch} branch"
    ]


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
    drift = nvml_facts.drift_problems(facts)
    if facts.nvml_failure is not None:
        if facts.nvml_failure.code == ExitCode.DRIVER_DRIFT:
            return drift
        return [facts.nvml_failure, *drift]
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
    problems.extend(drift)
    return problems


# --- output ------------------------------------------------------------------------------------------


def facts_json(
    facts: HostFacts,
    profile_key: str | None,
    problems: Sequence[Problem],
    card: dict[str, Any] | None = None,
) -> dict[str, Any]:
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
        "card": card,
        "driver_files": dataclasses.asdict(facts.files),
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
    files = facts.files
    if files.loaded_module or files.nvml_libraries:
        libraries = ", ".join(files.nvml_libraries) or "not found"
        lines.append(f"kernel module {files.loaded_module or 'not loaded'}, NVML library {libraries}")
    return lines


def _ok_line(facts: HostFacts, profile: catalog.GpuProfile, min_driver: str | None) -> str:
    if not profile.is_gpu:
        return "OK: profile cpu (no GPU required)"
    minimum = min_driver or profile.required_driver
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


def _card(text: str) -> catalog.Card:
    try:
        return catalog.card_from_json(json.loads(text))
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preflight",
        description="Check that this host's GPUs, driver and MIG mode fit a gpu-deploy profile.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--profile", choices=[*catalog.PROFILES, "auto"], help="a named profile, cpu or auto")
    which.add_argument(
        "--card", type=_card, help="a stack's own card as JSON (components/core/cards.py Card.to_json)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--min-driver", type=_version, help="minimum driver, replacing the profile's")
    parser.add_argument(
        "--cuda-version",
        type=_cuda_version,
        help="the stack's CUDA override (X.Y.Z); sets the minimum driver",
    )
    parser.add_argument("--require-mig", action="store_true", help="fail unless MIG mode is on")
    return parser


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
    nvml = nvml_facts.load_nvml()
    facts = HostFacts(nvml_failure=nvml) if isinstance(nvml, Problem) else nvml_facts.inspect_host(nvml)
    facts = dataclasses.replace(facts, files=nvml_facts.read_driver_files(nvml_facts.host_root()))
    auto = args.profile == "auto"
    profile: catalog.GpuProfile | Problem | None
    warnings: list[str]
    if auto:
        profile, problems, warnings = detect_profile(facts)
    elif args.card is not None:
        try:
            profile, problems, warnings = catalog.derive_profile(args.card), [], []
        except ValueError as err:
            profile, problems, warnings = None, [Problem(ExitCode.GPU_MISMATCH, f"--card: {err}")], []
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
    card = None if profile is None else catalog.card_json(profile)
    report = facts_json(facts, None if profile is None else profile.key, problems, card)
    if problems or profile is None:
        code = min(problem.code for problem in problems)
        failure = f"FAIL (exit {int(code)}): " + "; ".join(problem.message for problem in problems)
        return Outcome(int(code), stdout, [failure], report)
    if profile.is_gpu and facts.gpus:
        warnings = [*warnings, *driver_advice(facts.driver, profile, args.min_driver)]
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
