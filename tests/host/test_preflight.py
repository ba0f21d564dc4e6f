"""The GPU preflight against fake NVML hosts: the real CLI in subprocesses, main() in-process, the bundle."""

from __future__ import annotations

import ast
import ctypes
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from components.core import catalog
from components.core.catalog import PROFILES
from components.host import PREFLIGHT, SMOKE_RUNNER, nvml_facts, preflight
from components.host.nvml_facts import ExitCode, GpuFacts, HostFacts, MigMode, cuda_driver_text, inspect_host
from components.host.preflight import check
from components.remote.runners import IMPORTS, runner_files
from tests.fake_nvml.cards import A2, A4000, BY_PROFILE, H100_PCIE, H100_SXM, K80, M60, NAMED, P40, RTX_5090
from tests.fake_nvml.cards import machine as host

REPO = Path(__file__).resolve().parents[2]
FAKE_NVML = REPO / "tests" / "fake_nvml"
NO_DRIVER = "no NVIDIA driver: NVML library not found (install the driver, or use profile cpu)"

CARDS = [pytest.param(key, card, id=name) for key, name, card in BY_PROFILE]


@pytest.fixture(autouse=True)
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOST_ROOT for every test (in-process and the subprocesses, which inherit it), so that the
    driver files of the machine running the tests never leak in; a test fills it to describe a host."""
    root = tmp_path / "host-root"
    root.mkdir()
    monkeypatch.setenv("HOST_ROOT", str(root))
    return root


def cli(
    *args: str, machine: dict[str, Any] | None, cwd: Path = REPO, pythonpath: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FAKE_NVML_JSON", "PYTHONPATH")}
    if machine is not None:
        env["FAKE_NVML_JSON"] = json.dumps(machine)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    command = [sys.executable, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


def repo_cli(*args: str, machine: dict[str, Any] | None) -> subprocess.CompletedProcess[str]:
    """`python -m components.host.preflight ...` with the fake pynvml first on PYTHONPATH."""
    return cli(
        "-m", "components.host.preflight", *args, machine=machine, pythonpath=f"{FAKE_NVML}{os.pathsep}{REPO}"
    )


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = preflight.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- the real CLI in a subprocess --------------------------------------------------------------------


@pytest.mark.parametrize(("key", "card"), CARDS)
def test_each_card_passes_its_profile_json(key: str, card: dict[str, Any]) -> None:
    result = repo_cli("--profile", key, "--json", machine=host(card, card))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["profile"] == key
    assert report["driver"] == "580.65.06"
    assert report["cuda_driver"] == "13.0"
    assert report["problems"] == []
    cc = f"{card['cc'][0]}.{card['cc'][1]}"
    mig = None if card["mig"] is None else {"current": bool(card["mig"][0]), "pending": bool(card["mig"][1])}
    assert report["gpus"] == [
        {
            "index": index,
            "name": card["name"],
            "uuid": f"GPU-{index:08d}-aaaa-bbbb-cccc-{index:012d}",
            "memory_mib": card["memory_mib"],
            "compute_capability": cc,
            "mig": mig,
        }
        for index in (0, 1)
    ]


@pytest.mark.parametrize(("key", "card"), CARDS)
def test_each_card_passes_its_profile_human(key: str, card: dict[str, Any]) -> None:
    result = repo_cli("--profile", key, machine=host(card, cuda=12080))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "driver 580.65.06, CUDA 12.8 (driver API)"
    assert lines[1].startswith(f"GPU 0: {card['name']} (GPU-")
    assert f"memory {card['memory_mib']} MiB" in lines[2]
    assert lines[-1].startswith(f"OK: 1 x {card['name']} fit profile {key}; driver 580.65.06 >= ")


@pytest.mark.parametrize(("key", "card"), CARDS)
def test_auto_detects_each_card(key: str, card: dict[str, Any]) -> None:
    result = repo_cli("--profile", "auto", machine=host(card))
    assert result.returncode == 0, result.stderr
    assert f"profile: {key}" in result.stdout.splitlines()
    assert json.loads(repo_cli("--profile", "auto", "--json", machine=host(card)).stdout)["profile"] == key


def test_wrong_card_for_the_profile_fails() -> None:
    result = repo_cli("--profile", "p40", machine=host(A4000))
    assert result.returncode == 5
    line = one_error_line(result.stderr)
    assert line.startswith("FAIL (exit 5): GPU 0 is a 'NVIDIA RTX A4000', not a Tesla P40")
    assert "GPU 0: NVIDIA RTX A4000" in result.stdout  # the report still shows what is there


def test_json_is_printed_on_failure_too() -> None:
    result = repo_cli("--profile", "p40", "--json", machine=host(A4000, driver="520.61.05"))
    assert result.returncode == ExitCode.GPU_MISMATCH  # the lowest code wins
    report = json.loads(result.stdout)  # exactly one object: loads() rejects trailing text
    assert report["ok"] is False
    assert report["profile"] == "p40"
    assert report["card"] == catalog.card_json(PROFILES["p40"])
    assert len(report["problems"]) == 2
    assert report["problems"][1].startswith("driver 520.61.05 is below 525.60.13 (required for CUDA 12.4.1")
    one_error_line(result.stderr)


def test_old_driver_fails() -> None:
    """Below the CUDA 12 minor-version compatibility floor nothing runs: exit 6, the reason named."""
    result = repo_cli("--profile", "h100", machine=host(H100_SXM, driver="520.61.05", cuda=11080))
    assert result.returncode == 6
    need = PROFILES["h100"].driver_need
    assert need is not None
    assert one_error_line(result.stderr) == (
        f"FAIL (exit 6): driver 520.61.05 is below {need.required} (required for CUDA 12.8.1 with cu128 "
        f"wheels, profile h100: {need.why}); install the 580 branch"
    )


def test_missing_nvml_library() -> None:
    result = repo_cli("--profile", "h100", machine=None)
    assert result.returncode == 3
    assert one_error_line(result.stderr) == f"FAIL (exit 3): {NO_DRIVER}"
    assert result.stdout == ""


def test_missing_nvml_library_json() -> None:
    result = repo_cli("--profile", "a2", "--json", machine={"library": "missing"})
    assert result.returncode == ExitCode.NO_DRIVER
    assert json.loads(result.stdout) == {
        "ok": False,
        "profile": "a2",
        "driver": None,
        "cuda_driver": None,
        "gpus": [],
        "problems": [NO_DRIVER],
        "card": catalog.card_json(PROFILES["a2"]),
        "driver_files": {
            "loaded_module": None,
            "nvml_libraries": [],
            "dkms_modules": [],
            "reboot_required_by": [],
        },
    }
    one_error_line(result.stderr)


def test_no_gpu_found() -> None:
    result = repo_cli("--profile", "a4000", machine=host())
    assert result.returncode == 4
    assert "no GPU found" in one_error_line(result.stderr)


def test_mig_required_but_off() -> None:
    result = repo_cli("--profile", "h100", "--require-mig", machine=host(H100_SXM))
    assert result.returncode == 7
    assert "MIG required but off on GPU 0" in one_error_line(result.stderr)


def test_mig_required_on_a_card_without_mig() -> None:
    result = repo_cli("--profile", "a2", "--require-mig", machine=host(A2))
    assert result.returncode == ExitCode.MIG
    assert one_error_line(result.stderr) == "FAIL (exit 7): MIG required but a NVIDIA A2 has no MIG"


def test_auto_without_a_driver_resolves_to_cpu() -> None:
    result = repo_cli("--profile", "auto", "--json", machine=None)
    assert result.returncode == 0
    assert json.loads(result.stdout)["profile"] == "cpu"
    assert one_error_line(result.stderr) == f"warning: --profile auto resolves to cpu: {NO_DRIVER}"


def test_auto_with_mixed_models_fails() -> None:
    result = repo_cli("--profile", "auto", "--json", machine=host(A4000, P40))
    assert result.returncode == ExitCode.GPU_MISMATCH
    report = json.loads(result.stdout)
    assert report["profile"] == "a4000"  # from GPU 0
    assert any("mixed GPU models (NVIDIA RTX A4000, Tesla P40)" in p for p in report["problems"])
    one_error_line(result.stderr)


def test_exit_codes_are_distinct_and_documented() -> None:
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "INTERNAL": 1,
        "USAGE": 2,
        "NO_DRIVER": 3,
        "NO_GPU": 4,
        "GPU_MISMATCH": 5,
        "DRIVER_TOO_OLD": 6,
        "MIG": 7,
        "NVML_ERROR": 8,
        "DRIVER_DRIFT": 9,
    }
    documented = re.findall(r"^(\d)  ", preflight.__doc__ or "", flags=re.MULTILINE)
    assert documented == [str(int(code)) for code in ExitCode]


# --- main() in-process ---------------------------------------------------------------------------------


def test_bytes_names_are_decoded(fake_nvml, capsys) -> None:
    fake_nvml(host(P40, bytes_names=True, driver="550.163.01", cuda=12040))
    code, out, _ = run_main(capsys, "--profile", "p40", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["driver"] == "550.163.01"
    assert report["cuda_driver"] == "12.4"
    assert report["gpus"][0]["name"] == "Tesla P40"
    assert report["gpus"][0]["uuid"].startswith("GPU-")


def test_inspect_host_reads_every_field(fake_nvml) -> None:
    nvml = fake_nvml(host(H100_PCIE, H100_PCIE, cuda=12080))
    facts = inspect_host(nvml)
    assert facts.driver == "580.65.06"
    assert facts.cuda_driver == "12.8"
    assert facts.nvml_failure is None
    assert [gpu.index for gpu in facts.gpus] == [0, 1]
    assert facts.gpus[1] == GpuFacts(
        index=1,
        name="NVIDIA H100 PCIe",
        uuid="GPU-00000001-aaaa-bbbb-cccc-000000000001",
        memory_mib=81559,
        compute_capability=(9, 0),
        mig=MigMode(current=True, pending=True),
    )
    # nvmlShutdown ran: the fake is uninitialised again
    with pytest.raises(nvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()


def test_inspect_host_shuts_down_after_a_failed_query(fake_nvml) -> None:
    nvml = fake_nvml(host(P40))
    nvml.nvmlDeviceGetUUID = lambda handle: (_ for _ in ()).throw(nvml.NVMLError(999))
    facts = inspect_host(nvml)
    assert facts.nvml_failure is not None
    assert facts.nvml_failure.code == ExitCode.NVML_ERROR
    assert facts.nvml_failure.message == "NVML query failed for GPU 0: NVML Error with code 999"
    with pytest.raises(nvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()


def test_driver_not_loaded(fake_nvml, capsys) -> None:
    fake_nvml({"driver_loaded": False})
    code, out, err = run_main(capsys, "--profile", "a2")
    assert code == ExitCode.NO_DRIVER
    assert out == ""
    assert one_error_line(err).startswith("FAIL (exit 3): no NVIDIA driver: driver not loaded")


def test_missing_pynvml_module(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    code, _, err = run_main(capsys, "--profile", "h100")
    assert code == ExitCode.NO_DRIVER
    assert "the pynvml module is missing" in one_error_line(err)
    code, _, err = run_main(capsys, "--profile", "auto")
    assert code == 0
    assert err.startswith("warning: --profile auto resolves to cpu")


def test_auto_with_no_gpus_resolves_to_cpu(fake_nvml, capsys) -> None:
    fake_nvml(host())
    code, out, err = run_main(capsys, "--profile", "auto")
    assert code == 0
    assert out.splitlines()[-2:] == ["profile: cpu", "OK: profile cpu (no GPU required)"]
    assert err == "warning: --profile auto resolves to cpu: NVML finds no GPU\n"


def test_auto_derives_a_card_outside_the_catalog(fake_nvml, capsys) -> None:
    fake_nvml(host(RTX_5090, RTX_5090))
    code, out, err = run_main(capsys, "--profile", "auto", "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    derived = catalog.profile_for_gpu(RTX_5090["name"], RTX_5090["memory_mib"], (12, 0), False)
    assert report["profile"] == derived.key == "geforce-rtx-5090"
    assert catalog.profile_from_card_json(report["card"]) == derived  # the deploy rebuilds the same profile
    assert derived.architecture == "Blackwell"
    assert derived.build_args()["TORCH_CUDA_ARCH_LIST"] == "12.0"


@pytest.mark.parametrize(("key", "card"), [pytest.param(k, c, id=c["name"]) for k, c in NAMED])
def test_auto_matches_each_named_card(fake_nvml, capsys, key: str, card: dict[str, Any]) -> None:
    """Every real card NVML reports is its named profile under auto, and the report rebuilds it."""
    fake_nvml(host(card, card))
    code, out, err = run_main(capsys, "--profile", "auto", "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["profile"] == key
    assert report["card"]["nvml_names"] == list(PROFILES[key].nvml_names)
    assert card["name"] in report["card"]["nvml_names"]
    assert catalog.profile_from_card_json(report["card"]) == PROFILES[key]
    assert run_main(capsys, "--profile", key)[0] == 0  # and by name


def test_auto_refuses_a_card_no_supported_cuda_serves(fake_nvml, capsys) -> None:
    fake_nvml(host(K80))
    code, out, err = run_main(capsys, "--profile", "auto", "--json")
    assert code == ExitCode.GPU_MISMATCH
    report = json.loads(out)
    assert (report["profile"], report["card"]) == (None, None)
    [problem] = report["problems"]
    assert problem.startswith("GPU 0: a 'Tesla K80' cannot be served: compute capability 3.7 (Kepler)")
    assert "CUDA 12.0 removed Kepler" in problem
    assert "not in the profile catalog" not in problem
    one_error_line(err)


def test_auto_maxwell_card_refuses_cuda_13(fake_nvml, capsys) -> None:
    fake_nvml(host(M60))
    assert run_main(capsys, "--profile", "auto")[0] == 0  # derived: the 12.x stack
    code, _, err = run_main(capsys, "--profile", "auto", "--cuda-version", "13.0.1")
    assert code == ExitCode.USAGE
    assert "(Maxwell, sm_52) cannot run CUDA 13.0: CUDA 13 dropped Maxwell; use a 12.x release" in err


CUSTOM = {
    "key": "rtx-5090",
    "display_name": "GeForce RTX 5090 (team box)",
    "nvml_names": ["NVIDIA GeForce RTX 5090"],
    "compute_capability": [12, 0],
    "memory_mib": 32607,
}


def test_card_option_checks_the_host_against_a_stacks_own_card(fake_nvml, capsys) -> None:
    fake_nvml(host(RTX_5090))
    code, out, err = run_main(capsys, "--card", json.dumps(CUSTOM), "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["profile"] == "rtx-5090"
    assert catalog.profile_from_card_json(report["card"]) == catalog.profile_from_card_json(CUSTOM)
    fake_nvml(host(A2))
    code, _, err = run_main(capsys, "--card", json.dumps(CUSTOM))
    assert code == ExitCode.GPU_MISMATCH
    assert "GPU 0 is a 'NVIDIA A2', not a GeForce RTX 5090 (team box)" in err


def test_card_option_refuses_a_card_no_supported_cuda_serves(fake_nvml, capsys) -> None:
    fake_nvml(host(K80))
    kepler = {**CUSTOM, "key": "k80", "nvml_names": ["Tesla K80"], "compute_capability": "3.7"}
    code, _, err = run_main(capsys, "--card", json.dumps(kepler))
    assert code == ExitCode.GPU_MISMATCH
    assert one_error_line(err).startswith("FAIL (exit 5): --card: compute capability 3.7 (Kepler)")


@pytest.mark.parametrize(
    "args",
    [
        ["--card", "{not json"],
        ["--card", json.dumps({**CUSTOM, "key": "Bad Key"})],
        ["--card", json.dumps({**CUSTOM, "memory_mib": 0})],
        ["--card", json.dumps(CUSTOM), "--profile", "h100"],
        [],
    ],
)
def test_card_option_usage_errors_exit_2(fake_nvml, capsys, args: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        preflight.main(args)
    assert exited.value.code == ExitCode.USAGE
    assert "Traceback" not in capsys.readouterr().err


def test_a_driver_below_the_advised_one_warns(fake_nvml, capsys) -> None:
    """Between the required and the advised driver the host passes, with the reason on stderr."""
    need = PROFILES["h100"].driver_need
    assert need is not None
    assert catalog.parse_version(need.required) < (560, 35, 3) < catalog.parse_version(need.advised)
    fake_nvml(host(H100_SXM, driver="560.35.03"))
    code, out, err = run_main(capsys, "--profile", "h100")
    assert code == 0
    assert out.splitlines()[-1].endswith(f"driver 560.35.03 >= {need.required}")
    assert one_error_line(err).startswith(
        f"warning: driver 560.35.03 is below {need.advised}, the minimum CUDA"
    )
    assert "minor-version compatibility" in err


def test_auto_with_two_h100_variants_is_mixed(fake_nvml, capsys) -> None:
    fake_nvml(host(H100_SXM, H100_PCIE))
    code, _, err = run_main(capsys, "--profile", "auto")
    assert code == ExitCode.GPU_MISMATCH
    assert "mixed GPU models" in one_error_line(err)
    code, _, _ = run_main(capsys, "--profile", "h100")  # an explicit profile accepts both
    assert code == 0


def test_auto_with_several_gpus_of_one_model(fake_nvml, capsys) -> None:
    fake_nvml(host(A2, A2, A2, A2))
    code, out, err = run_main(capsys, "--profile", "auto")
    assert code == 0
    assert err == ""
    assert out.splitlines()[-1].startswith("OK: 4 x NVIDIA A2 fit profile a2")


def test_cpu_profile_passes_and_reports_what_is_there(fake_nvml, capsys) -> None:
    fake_nvml(None)
    assert run_main(capsys, "--profile", "cpu") == (0, "OK: profile cpu (no GPU required)\n", "")
    fake_nvml(host(P40, driver="470.256.02"))
    code, out, err = run_main(capsys, "--profile", "cpu", "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["profile"] == "cpu"
    assert report["gpus"][0]["name"] == "Tesla P40"


def test_cpu_profile_cannot_satisfy_require_mig(fake_nvml, capsys) -> None:
    fake_nvml(None)
    code, _, err = run_main(capsys, "--profile", "auto", "--require-mig")
    assert code == ExitCode.MIG
    assert one_error_line(err) == "FAIL (exit 7): MIG required but the cpu profile has no GPU"


def test_mig_pending_a_reset(fake_nvml, capsys) -> None:
    fake_nvml(host({**H100_SXM, "mig": [0, 1]}))
    code, out, err = run_main(capsys, "--profile", "h100", "--require-mig")
    assert code == ExitCode.MIG
    assert "MIG off (pending on)" in out
    assert "pending a GPU reset (nvidia-smi -i 0 -r)" in one_error_line(err)


def test_mig_required_and_on(fake_nvml, capsys) -> None:
    fake_nvml(host(H100_PCIE, H100_PCIE))
    code, out, _ = run_main(capsys, "--profile", "auto", "--require-mig")
    assert code == 0
    assert "MIG on" in out


def test_min_driver_override(fake_nvml, capsys) -> None:
    fake_nvml(host(H100_SXM, driver="520.61.05"))
    assert run_main(capsys, "--profile", "h100")[0] == ExitCode.DRIVER_TOO_OLD
    code, out, err = run_main(capsys, "--profile", "h100", "--min-driver", "515.43.04")
    assert (code, err) == (0, "")  # the override replaces the required driver, and its advice
    assert out.splitlines()[-1].endswith("driver 520.61.05 >= 515.43.04")
    code, _, err = run_main(capsys, "--profile", "h100", "--min-driver", "580")  # a branch works too
    assert code == ExitCode.DRIVER_TOO_OLD
    assert "(set by --min-driver)" in err


def test_cuda_version_override_sets_the_minimum(fake_nvml, capsys) -> None:
    fake_nvml(host(H100_SXM, driver="575.57.08"))
    assert run_main(capsys, "--profile", "h100")[0] == 0  # default CUDA 12.8.1: 570.124.06 is enough
    code, _, err = run_main(capsys, "--profile", "h100", "--cuda-version", "13.0.1")
    assert code == ExitCode.DRIVER_TOO_OLD  # CUDA 13 has its own floor: 12.x drivers cannot run it
    assert "below 580.65.06 (required for CUDA 13.0.1 with cu128 wheels" in err


def test_cuda_version_the_card_cannot_run(fake_nvml, capsys) -> None:
    fake_nvml(host(P40))
    code, out, err = run_main(capsys, "--profile", "auto", "--cuda-version", "13.0.1", "--json")
    assert code == ExitCode.USAGE
    assert json.loads(out)["profile"] is None
    assert "cannot run CUDA 13.0" in one_error_line(err)


@pytest.mark.parametrize("args", [["--profile", "v100"], ["--profile", "h100", "--min-driver", "latest"]])
def test_bad_arguments_exit_2(fake_nvml, capsys, args: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        preflight.main(args)
    assert exited.value.code == ExitCode.USAGE
    assert "Traceback" not in capsys.readouterr().err


def test_an_unexpected_error_is_one_line(fake_nvml, capsys, monkeypatch) -> None:
    fake_nvml(host(P40))

    def explode(nvml: Any) -> HostFacts:
        raise KeyError("boom")

    monkeypatch.setattr(nvml_facts, "inspect_host", explode)
    code, _, err = run_main(capsys, "--profile", "p40")
    assert code == ExitCode.INTERNAL
    assert one_error_line(err) == "FAIL (exit 1): preflight crashed: KeyError('boom')"


# --- driver drift: a driver replaced under the running one ---------------------------------------------

PROPRIETARY = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {}  Sun Jul 27 07:09:25 UTC 2025\nGCC version:  gcc 12.3.0\n"
OPEN = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {}  Release Build  "
    "(dvs-builder@U22-I3-AM02-24-3)  Sun Jul 27 06:54:41 UTC 2025\nGCC version:  gcc version 13.3.0\n"
)
MISMATCH = (
    "driver/library version mismatch: the loaded NVIDIA kernel module is 580.65.06 but the installed library "
    "is libnvidia-ml.so.580.82.07 (the driver packages were replaced under the running driver); reboot the "
    "host to load the installed driver, or reinstall the 580.65.06 driver packages; then run pulumi up "
    "again, which holds them"
)
UBUNTU_LIBS = "usr/lib/x86_64-linux-gnu"


def driver_files(
    root: Path,
    loaded: str | None = None,
    libraries: tuple[str, ...] = (),
    *,
    libdir: str = UBUNTU_LIBS,
    template: str = PROPRIETARY,
    dkms: tuple[str, ...] = (),
    reboot_for: tuple[str, ...] | None = None,
) -> None:
    """Describe the host's driver files under the fake root."""
    if loaded is not None:
        (root / "proc/driver/nvidia").mkdir(parents=True, exist_ok=True)
        (root / "proc/driver/nvidia/version").write_text(template.format(loaded))
    (root / libdir).mkdir(parents=True, exist_ok=True)
    for version in libraries:
        (root / libdir / f"libnvidia-ml.so.{version}").touch()
    if libraries:
        (root / libdir / "libnvidia-ml.so.1").touch()  # the SONAME link is no version
    for version in dkms:
        (root / "var/lib/dkms/nvidia" / version / "source").mkdir(parents=True)
    if dkms:
        (root / "var/lib/dkms/nvidia/kernel-5.14.0-427.el9.x86_64-x86_64").mkdir()
    if reboot_for is not None:
        (root / "var/run").mkdir(parents=True, exist_ok=True)
        (root / "var/run/reboot-required").write_text("*** System restart required ***\n")
        (root / "var/run/reboot-required.pkgs").write_text("".join(f"{p}\n" for p in reboot_for))


@pytest.mark.parametrize("template", [PROPRIETARY, OPEN], ids=["proprietary", "open"])
def test_driver_library_mismatch_fails_with_what_to_do(fake_root: Path, template: str) -> None:
    """The classic: unattended-upgrades replaced the library under the loaded module; NVML refuses
    (NVML_ERROR_LIB_RM_VERSION_MISMATCH) and the files say which versions."""
    driver_files(fake_root, "580.65.06", ("580.82.07",), template=template)
    result = repo_cli("--profile", "a4000", "--json", machine={"lib_rm_mismatch": True})
    assert result.returncode == 9 and ExitCode.DRIVER_DRIFT.value == 9
    assert one_error_line(result.stderr) == f"FAIL (exit 9): {MISMATCH}"
    report = json.loads(result.stdout)
    assert (report["ok"], report["driver"], report["gpus"], report["problems"]) == (
        False,
        None,
        [],
        [MISMATCH],
    )
    assert report["driver_files"] == {
        "loaded_module": "580.65.06",
        "nvml_libraries": ["580.82.07"],
        "dkms_modules": [],
        "reboot_required_by": [],
    }


def test_mismatch_when_nvml_only_says_so(fake_nvml, capsys) -> None:
    """No readable module or library files (a container, say): NVML's own error, still exit 9."""
    fake_nvml({"lib_rm_mismatch": True})
    code, out, err = run_main(capsys, "--profile", "p40")
    assert (code, out) == (ExitCode.DRIVER_DRIFT, "")
    assert one_error_line(err) == (
        "FAIL (exit 9): driver/library version mismatch: nvmlInit failed: RM has detected an NVML/RM version "
        "mismatch. (the NVIDIA driver packages were replaced under the loaded kernel module); reboot the host "
        "to load the installed driver, or reinstall the driver packages of the loaded module; then run pulumi "
        "up again"
    )


def test_mismatch_from_the_files_alone(fake_nvml, capsys, fake_root: Path) -> None:
    """NVML answering (an NVML loaded before the packages changed) does not hide what the files say."""
    driver_files(fake_root, "580.65.06", ("580.82.07",), libdir="usr/lib64")
    fake_nvml(host(P40))
    code, out, err = run_main(capsys, "--profile", "p40")
    assert code == ExitCode.DRIVER_DRIFT
    assert one_error_line(err) == f"FAIL (exit 9): {MISMATCH}"
    assert "kernel module 580.65.06, NVML library 580.82.07" in out.splitlines()


def test_auto_with_a_mismatch_fails_instead_of_falling_back_to_cpu(fake_root: Path) -> None:
    driver_files(fake_root, "580.65.06", ("580.82.07",))
    result = repo_cli("--profile", "auto", "--json", machine={"lib_rm_mismatch": True})
    assert result.returncode == ExitCode.DRIVER_DRIFT
    assert json.loads(result.stdout)["profile"] is None
    assert one_error_line(result.stderr) == f"FAIL (exit 9): {MISMATCH}"


def test_pending_reboot_for_an_nvidia_package(fake_nvml, capsys, fake_root: Path) -> None:
    driver_files(
        fake_root,
        "580.65.06",
        ("580.65.06",),
        reboot_for=("linux-image-6.8.0-60-generic", "nvidia-dkms-580-server", "libnvidia-compute-580-server"),
    )
    fake_nvml(host(A4000))
    code, out, err = run_main(capsys, "--profile", "a4000", "--json")
    assert code == ExitCode.DRIVER_DRIFT
    message = (
        "a reboot is pending for the NVIDIA driver (reboot-required lists nvidia-dkms-580-server, "
        "libnvidia-compute-580-server): until then the running kernel module (580.65.06) may not be the "
        "installed one; reboot the host, then run pulumi up again"
    )
    assert one_error_line(err) == f"FAIL (exit 9): {message}"
    report = json.loads(out)
    assert report["problems"] == [message]
    assert report["driver_files"]["reboot_required_by"] == [
        "nvidia-dkms-580-server",
        "libnvidia-compute-580-server",
    ]


@pytest.mark.parametrize(
    "packages",
    [("linux-image-6.8.0-60-generic", "nvidia-container-toolkit"), None],
    ids=["other-packages", "no-reboot-required"],
)
def test_a_reboot_for_other_packages_is_not_the_drivers(
    fake_nvml, capsys, fake_root: Path, packages: tuple[str, ...] | None
) -> None:
    driver_files(fake_root, "580.65.06", ("580.65.06",), dkms=("580.65.06",), reboot_for=packages)
    if packages is None:  # reboot-required.pkgs alone, without the flag file, is stale
        (fake_root / "var/run").mkdir(parents=True)
        (fake_root / "var/run/reboot-required.pkgs").write_text("nvidia-dkms-580-server\n")
    fake_nvml(host(A4000))
    code, out, err = run_main(capsys, "--profile", "a4000")
    assert (code, err) == (0, "")
    assert out.splitlines()[-2] == "kernel module 580.65.06, NVML library 580.65.06"


def test_pending_reboot_after_a_dkms_update(fake_nvml, capsys, fake_root: Path) -> None:
    """dnf (or apt) updated the DKMS module under the loaded one; the library is where this host keeps
    it, outside the folders read."""
    driver_files(fake_root, "580.65.06", (), libdir="usr/lib64", dkms=("580.82.07",))
    fake_nvml(host(A4000))
    code, _, err = run_main(capsys, "--profile", "a4000")
    assert code == ExitCode.DRIVER_DRIFT
    assert one_error_line(err) == (
        "FAIL (exit 9): a reboot is pending for the NVIDIA driver: the loaded kernel module is 580.65.06 "
        "but DKMS holds 580.82.07; reboot the host to load it, then run pulumi up again"
    )


def test_the_lowest_code_wins_over_drift(fake_nvml, capsys, fake_root: Path) -> None:
    driver_files(fake_root, "580.65.06", ("580.65.06",), reboot_for=("nvidia-dkms-580-server",))
    fake_nvml(host(A4000))
    code, _, err = run_main(capsys, "--profile", "p40")
    assert code == ExitCode.GPU_MISMATCH
    line = one_error_line(err)
    assert line.startswith("FAIL (exit 5): GPU 0 is a 'NVIDIA RTX A4000', not a Tesla P40")
    assert line.endswith("; reboot the host, then run pulumi up again")


def test_the_cpu_profile_ignores_drift(fake_nvml, capsys, fake_root: Path) -> None:
    driver_files(fake_root, "580.65.06", ("580.82.07",))
    fake_nvml({"lib_rm_mismatch": True})
    code, _, err = run_main(capsys, "--profile", "cpu")
    assert (code, err) == (0, "")


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (PROPRIETARY.format("550.54.14"), "550.54.14"),
        (OPEN.format("570.86.15"), "570.86.15"),
        (OPEN.replace("x86_64", "aarch64").format("580.65.06"), "580.65.06"),
        ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  390.157\n", "390.157"),
        ("GCC version:  gcc version 12.3.0\n", None),
        ("", None),
    ],
)
def test_loaded_module_version(text: str, version: str | None) -> None:
    assert nvml_facts.loaded_module_version(text) == version


def test_driver_files_unreadable_or_absent_are_left_out(tmp_path: Path) -> None:
    assert nvml_facts.read_driver_files(str(tmp_path / "nowhere")) == nvml_facts.DriverFiles()


def test_bundle_reports_drift_standalone(tmp_path: Path, fake_root: Path) -> None:
    write_bundle(tmp_path, fake=True)
    driver_files(fake_root, "580.65.06", ("580.82.07",))
    result = cli("-S", "preflight.py", "--profile", "a2", machine={"lib_rm_mismatch": True}, cwd=tmp_path)
    assert result.returncode == ExitCode.DRIVER_DRIFT
    assert one_error_line(result.stderr) == f"FAIL (exit 9): {MISMATCH}"


# --- check() on its own ----------------------------------------------------------------------------------


def gpu(name: str, memory_mib: int, cc: tuple[int, int], index: int = 0) -> GpuFacts:
    return GpuFacts(index, name, f"GPU-{index}", memory_mib, cc, None)


@pytest.mark.parametrize(
    ("memory_mib", "fits"),
    [(22919, True), (24576, True), (20628, True), (20627, False), (25210, True), (25211, False)],
)
def test_memory_within_ten_percent(memory_mib: int, fits: bool) -> None:
    facts = HostFacts(driver="580.65.06", gpus=(gpu("Tesla P40", memory_mib, (6, 1)),))
    problems = check(facts, PROFILES["p40"])
    assert (problems == []) is fits
    if not fits:
        assert problems[0].message == f"GPU 0 has {memory_mib} MiB, profile p40 expects 22919 MiB +-10%"


def test_compute_capability_must_match() -> None:
    facts = HostFacts(driver="580.65.06", gpus=(gpu("NVIDIA A2", 15356, (8, 0)),))
    [problem] = check(facts, PROFILES["a2"])
    assert problem.code == ExitCode.GPU_MISMATCH
    assert problem.message == "GPU 0 reports compute capability 8.0, profile a2 expects 8.6"


def test_cuda_driver_text() -> None:
    assert cuda_driver_text(12080) == "12.8"
    assert cuda_driver_text(13000) == "13.0"
    assert cuda_driver_text(11040) == "11.4"


# --- the standalone bundle --------------------------------------------------------------------------------


def _beside(path: Path) -> set[str]:
    """The files a shipped program imports from beside itself: its `except ImportError` fallbacks."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers
        ):
            for handler in node.handlers:
                for statement in ast.walk(handler):
                    if isinstance(statement, ast.Import):
                        found.update(f"{alias.name}.py" for alias in statement.names)
    return found


def test_bundle_is_the_runners_and_what_they_import_beside_themselves() -> None:
    """What ships is exactly the two programs, everything they import from beside themselves (followed
    through), and the NVML bindings the preflight loads at run time; each program is verified with
    exactly those it imports (runners.IMPORTS)."""
    files = runner_files()
    assert files[PREFLIGHT.name] == PREFLIGHT
    assert files[SMOKE_RUNNER.name] == SMOKE_RUNNER
    shipped: set[str] = set()
    for program in (PREFLIGHT.name, SMOKE_RUNNER.name):
        closure, todo = set(), [program]
        while todo:
            name = todo.pop()
            if name not in closure:
                closure.add(name)
                todo.extend(_beside(files[name]))
        assert set(IMPORTS[program]) >= closure - {program}, program
        shipped |= closure
    assert set(files) == shipped | {"pynvml.py"}
    assert set(IMPORTS[PREFLIGHT.name]) - shipped == {"pynvml.py"}
    spec = importlib.util.find_spec("pynvml")
    assert spec is not None
    assert spec.origin is not None
    assert files["pynvml.py"] == Path(spec.origin)
    assert "def nvmlInit" in files["pynvml.py"].read_text()


def write_bundle(folder: Path, fake: bool) -> None:
    for name, path in runner_files().items():
        (folder / name).write_text(path.read_text())
    if fake:
        (folder / "pynvml.py").write_text((FAKE_NVML / "pynvml.py").read_text())


@pytest.mark.parametrize(("key", "card"), CARDS)
def test_bundle_runs_standalone(tmp_path: Path, key: str, card: dict[str, Any]) -> None:
    write_bundle(tmp_path, fake=True)
    # -S: no site-packages, so neither the installed pynvml nor the repo can leak in.
    result = cli("-S", "preflight.py", "--profile", key, "--json", machine=host(card), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["ok"], report["profile"], report["gpus"][0]["name"]) == (True, key, card["name"])
    result = cli("-S", "preflight.py", "--profile", "p40", machine=host(A2), cwd=tmp_path)
    assert result.returncode == ExitCode.GPU_MISMATCH
    assert "Traceback" not in result.stderr


def _nvml_loadable() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_nvml_loadable(), reason="this machine has an NVIDIA driver")
def test_bundle_with_the_real_bindings_and_no_driver(tmp_path: Path) -> None:
    write_bundle(tmp_path, fake=False)
    result = cli("-S", "preflight.py", "--profile", "h100", cwd=tmp_path, machine=None)
    assert result.returncode == ExitCode.NO_DRIVER
    assert one_error_line(result.stderr) == f"FAIL (exit 3): {NO_DRIVER}"
    result = cli("-S", "preflight.py", "--profile", "auto", "--json", cwd=tmp_path, machine=None)
    assert result.returncode == 0
    assert json.loads(result.stdout)["profile"] == "cpu"
