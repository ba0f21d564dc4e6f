"""images/gpu-probe/server.py: the real server in a subprocess, NVML from tests/fake_nvml.

The torch part is unit-tested with a small stand-in module (torch is not installed here); the code
path it drives is the one real torch takes (is_available, get_device_name, get_device_capability,
randn on 'cuda', synchronize).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "images" / "gpu-probe" / "server.py"
FAKE_NVML = ROOT / "tests" / "fake_nvml"

A4000 = {
    "name": "NVIDIA RTX A4000",
    "memory_mib": 16376,
    "cc": [8, 6],
    "uuid": "GPU-a4000000-0000-0000-0000-000000000001",
    "mig": None,
    "used_mib": 2048,
    "util": 37,
    "temperature": 51,
    "power_mw": 72500,
}
H100 = {
    "name": "NVIDIA H100 PCIe",
    "memory_mib": 81559,
    "cc": [9, 0],
    "uuid": "GPU-h1000000-0000-0000-0000-000000000002",
    "mig": [1, 0],
    "used_mib": 0,
    "util": 0,
    "temperature": 33,
    "power_mw": 61000,
}
MACHINE = {"driver": "580.65.06", "cuda": 12080, "gpus": [A4000, H100]}
MIB = 1024 * 1024


def load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


server = load_module("gpu_probe_server", SERVER)


# --- the real server in a subprocess ------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) without raising on 4xx/5xx."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


@contextmanager
def probe(tmp_path: Path, machine: dict[str, Any] | None) -> Iterator[str]:
    """Run server.py on a free port with the fake NVML first on PYTHONPATH; yield its base URL.

    `machine` None leaves FAKE_NVML_JSON unset: the fake's nvmlInit raises NVMLError_LibraryNotFound,
    like a host without the driver. A `torch` package that fails to import is put on the path too,
    so the answer is "torch not installed" even where torch happens to be installed.
    """
    no_torch = tmp_path / "no-torch"
    (no_torch / "torch").mkdir(parents=True, exist_ok=True)
    (no_torch / "torch" / "__init__.py").write_text("raise ImportError('torch hidden by the test')\n")
    env = {k: v for k, v in os.environ.items() if k not in {"FAKE_NVML_JSON", "GPU_PROFILE", "PYTHONPATH"}}
    port = free_port()
    env |= {
        "PYTHONPATH": os.pathsep.join([str(FAKE_NVML), str(no_torch)]),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "GPU_PROFILE": "test-profile",
    }
    if machine is not None:
        env["FAKE_NVML_JSON"] = json.dumps(machine)
    log_path = tmp_path / "server.log"
    with log_path.open("a") as log:
        process = subprocess.Popen([sys.executable, str(SERVER)], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if get(f"{base}/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer /health:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    # SIGTERM ends the server cleanly (it may run as PID 1 in a container).
    assert process.returncode == 0, log_path.read_text()


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format 0.0.4, strictly: every sample after its family's HELP and TYPE."""
    assert text.endswith("\n")
    helped: set[str] = set()
    typed: dict[str, str] = {}
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        assert line, "no blank lines"
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helped, f"second HELP for {name}"
            helped.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"gauge", "counter", "untyped", "histogram", "summary"}
            assert name not in typed, f"second TYPE for {name}"
            assert name not in samples, f"TYPE for {name} after its samples"
            typed[name] = kind
        else:
            assert not line.startswith("#"), line
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, _, label_text, value = match.groups()
            assert name in typed and name in helped, f"{name} has no preceding HELP/TYPE"
            labels = dict(LABEL.findall(label_text or ""))
            if label_text:
                rebuilt = ",".join(f'{k}="{v}"' for k, v in LABEL.findall(label_text))
                assert rebuilt == label_text, f"malformed labels: {label_text!r}"
            number = float(value)  # raises on anything non-numeric
            assert math.isfinite(number)
            samples.setdefault(name, []).append((labels, number))
    return samples


def test_without_nvml_or_torch(tmp_path: Path) -> None:
    with probe(tmp_path, None) as base:
        status, content_type, body = get(f"{base}/health")
        assert (status, content_type, json.loads(body)) == (200, "application/json", {"status": "ok"})

        status, content_type, body = get(f"{base}/gpu")
        assert status == 200 and content_type == "application/json"
        report = json.loads(body)
        assert report["cuda"] is False
        assert report["reason"] == "torch not installed"
        assert report["torch"]["installed"] is False
        assert report["nvml_available"] is False
        assert "NVML" in report["nvml_reason"] and "Not Found" in report["nvml_reason"]
        assert report["gpus"] == []
        assert report["driver_version"] is None and report["cuda_driver_version"] is None
        assert report["profile"] == "test-profile"

        status, content_type, body = get(f"{base}/metrics")
        assert status == 200
        assert content_type.startswith("text/plain; version=0.0.4")
        metrics = parse_metrics(body)
        assert metrics == {"gpu_probe_up": [({}, 1.0)], "gpu_probe_nvml_available": [({}, 0.0)]}

        status, content_type, body = get(f"{base}/nope")
        assert status == 404 and content_type == "application/json"
        assert json.loads(body)["error"] == "not found"


def test_with_nvml(tmp_path: Path) -> None:
    with probe(tmp_path, MACHINE) as base:
        status, _, body = get(f"{base}/gpu?verbose=1")
        assert status == 200
        report = json.loads(body)
        assert report["nvml_available"] is True and report["nvml_reason"] is None
        assert report["driver_version"] == "580.65.06"
        assert report["cuda_driver_version"] == "12.8"
        a4000, h100 = report["gpus"]
        assert a4000["index"] == 0 and h100["index"] == 1
        assert a4000["name"] == "NVIDIA RTX A4000" and a4000["uuid"] == A4000["uuid"]
        assert a4000["memory_total_mib"] == 16376 and a4000["memory_used_mib"] == 2048
        assert a4000["compute_capability"] == "8.6"
        assert a4000["mig_mode"] is None
        assert h100["name"] == "NVIDIA H100 PCIe" and h100["uuid"] == H100["uuid"]
        assert h100["memory_total_mib"] == 81559 and h100["memory_used_mib"] == 0
        assert h100["compute_capability"] == "9.0"
        assert h100["mig_mode"] == {"current": True, "pending": False}
        # NVML works but there is no torch: still 200, cuda false with the reason.
        assert report["cuda"] is False and report["reason"] == "torch not installed"

        status, content_type, body = get(f"{base}/metrics")
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        metrics = parse_metrics(body)
        assert metrics["gpu_probe_up"] == [({}, 1.0)]
        assert metrics["gpu_probe_nvml_available"] == [({}, 1.0)]
        expected = {
            "gpu_memory_used_bytes": (2048 * MIB, 0),
            "gpu_memory_total_bytes": (16376 * MIB, 81559 * MIB),
            "gpu_utilization_percent": (37, 0),
            "gpu_temperature_celsius": (51, 33),
            "gpu_power_watts": (72.5, 61.0),
        }
        for name, values in expected.items():
            assert [value for _, value in metrics[name]] == list(values), name
            assert [labels for labels, _ in metrics[name]] == [
                {"gpu": "0", "name": "NVIDIA RTX A4000", "uuid": A4000["uuid"]},
                {"gpu": "1", "name": "NVIDIA H100 PCIe", "uuid": H100["uuid"]},
            ], name

        assert get(f"{base}/gpu/extra")[0] == 404
        assert get(f"{base}/health")[0] == 200


def test_driver_not_loaded_and_bytes_names(tmp_path: Path) -> None:
    with probe(tmp_path, {"driver_loaded": False}) as base:
        report = json.loads(get(f"{base}/gpu")[2])
        assert report["nvml_available"] is False and "Driver Not Loaded" in report["nvml_reason"]
    with probe(tmp_path, {**MACHINE, "bytes_names": True, "gpus": [A4000]}) as base:
        report = json.loads(get(f"{base}/gpu")[2])
        assert report["driver_version"] == "580.65.06"
        assert report["gpus"][0]["name"] == "NVIDIA RTX A4000"
        assert 'name="NVIDIA RTX A4000"' in get(f"{base}/metrics")[2]


# --- in-process units ---------------------------------------------------------------------------


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_module("fake_pynvml_for_probe", FAKE_NVML / "pynvml.py")


def test_nvml_facts_without_the_bindings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    facts = server.nvml_facts()
    assert facts["available"] is False and "not installed" in facts["reason"]
    assert server.render_metrics(facts).splitlines()[-1] == "gpu_probe_nvml_available 0"


def test_metric_labels_are_escaped(fake_nvml: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    odd = {**A4000, "name": 'Odd "GPU"\\x'}
    monkeypatch.setenv("FAKE_NVML_JSON", json.dumps({**MACHINE, "gpus": [odd]}))
    metrics = parse_metrics(server.render_metrics(server.nvml_facts(fake_nvml)))
    assert metrics["gpu_memory_total_bytes"][0][0]["name"] == 'Odd \\"GPU\\"\\\\x'


class FakeTensor:
    """Just enough of torch.Tensor for the probe: 2-D matmul, sum (all or over a dim), *, item."""

    def __init__(self, data: Any, device: str) -> None:
        self.data = data
        self.device = device

    def sum(self, dim: int | None = None) -> FakeTensor:
        rows = self.data
        if dim is None:
            flat = [x for row in rows for x in row] if rows and isinstance(rows[0], list) else rows
            return FakeTensor(math.fsum(flat), self.device)
        if dim == 0:
            return FakeTensor([math.fsum(column) for column in zip(*rows, strict=True)], self.device)
        return FakeTensor([math.fsum(row) for row in rows], self.device)

    def __mul__(self, other: FakeTensor) -> FakeTensor:
        return FakeTensor([x * y for x, y in zip(self.data, other.data, strict=True)], self.device)

    def item(self) -> float:
        assert isinstance(self.data, float)
        return self.data


class FakeCuda:
    def __init__(self, available: bool, name: str, capability: tuple[int, int]) -> None:
        self.available = available
        self.name = name
        self.capability = capability
        self.synchronised = 0

    def is_available(self) -> bool:
        return self.available

    def current_device(self) -> int:
        return 0

    def get_device_name(self, device: int) -> str:
        assert device == 0
        return self.name

    def get_device_capability(self, device: int) -> tuple[int, int]:
        assert device == 0
        return self.capability

    def get_arch_list(self) -> list[str]:
        return ["sm_60", "sm_61", "sm_86", "sm_90"]

    def synchronize(self) -> None:
        self.synchronised += 1


class FakeTorch:
    """A stand-in for the torch module: randn on a device, matmul, torch.cuda.*."""

    float32 = "float32"

    def __init__(
        self,
        *,
        available: bool = True,
        cuda_build: str | None = "12.6",
        name: str = "NVIDIA RTX A4000",
        capability: tuple[int, int] = (8, 6),
        matmul_error: str | None = None,
        wrong_result: bool = False,
    ) -> None:
        self.__version__ = "2.7.1+cu126"
        self.version = SimpleNamespace(cuda=cuda_build)
        self.cuda = FakeCuda(available, name, capability)
        self.matmul_error = matmul_error
        self.wrong_result = wrong_result
        self.randn_calls: list[tuple[tuple[int, ...], str, str]] = []
        self.rng = random.Random(1234)

    def randn(self, *shape: int, device: str, dtype: str) -> FakeTensor:
        self.randn_calls.append((shape, device, dtype))
        rows, columns = shape
        return FakeTensor([[self.rng.gauss(0, 1) for _ in range(columns)] for _ in range(rows)], device)

    def matmul(self, a: FakeTensor, b: FakeTensor) -> FakeTensor:
        assert a.device == b.device == "cuda"
        if self.matmul_error:
            raise RuntimeError(self.matmul_error)
        columns = list(zip(*b.data, strict=True))
        product = [
            [math.fsum(x * y for x, y in zip(row, col, strict=True)) for col in columns] for row in a.data
        ]
        if self.wrong_result:
            product = [[0.0 for _ in row] for row in product]
        return FakeTensor(product, a.device)


def test_matmul_runs_on_the_device_and_checks_the_sum() -> None:
    torch = FakeTorch()
    facts = server.torch_facts(torch, matmul_size=16)
    assert facts["cuda"] is True and facts["cuda_available"] is True and facts["reason"] is None
    assert facts["installed"] is True and facts["version"] == "2.7.1+cu126" and facts["cuda_build"] == "12.6"
    assert facts["device_name"] == "NVIDIA RTX A4000" and facts["device_capability"] == "8.6"
    assert "sm_86" in facts["arch_list"]
    assert torch.randn_calls == [((16, 16), "cuda", "float32")] * 2
    assert torch.cuda.synchronised >= 2  # the timed region is bracketed by synchronize()
    matmul = facts["matmul"]
    assert matmul["size"] == 16 and matmul["dtype"] == "float32"
    assert matmul["milliseconds"] >= 0 and matmul["checksum_ok"] is True
    assert matmul["checksum"] == pytest.approx(matmul["expected_checksum"], abs=1e-6)
    json.dumps(facts)  # the /gpu document must serialise


def test_wrong_matmul_result_is_reported() -> None:
    facts = server.torch_facts(FakeTorch(wrong_result=True), matmul_size=16)
    assert facts["cuda"] is False and facts["matmul"]["checksum_ok"] is False
    assert "checksum" in facts["reason"]


def test_no_kernel_image_is_reported_not_raised() -> None:
    message = "CUDA error: no kernel image is available for execution on the device"
    facts = server.torch_facts(
        FakeTorch(name="Tesla P40", capability=(6, 1), matmul_error=message), matmul_size=8
    )
    assert facts["cuda"] is False and facts["cuda_available"] is True
    assert facts["device_name"] == "Tesla P40" and facts["device_capability"] == "6.1"
    assert message in facts["reason"] and message in facts["matmul"]["error"]


def test_torch_without_cuda() -> None:
    cpu_build = server.torch_facts(FakeTorch(available=False, cuda_build=None))
    assert cpu_build["cuda"] is False and "CPU-only build" in cpu_build["reason"]
    no_gpu = server.torch_facts(FakeTorch(available=False))
    assert no_gpu["cuda"] is False and "is_available() is False" in no_gpu["reason"]
    assert no_gpu["matmul"] is None


def test_torch_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    facts = server.torch_facts()
    assert facts == {**facts, "installed": False, "cuda": False, "reason": "torch not installed"}


def test_gpu_report_combines_nvml_and_torch(fake_nvml: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NVML_JSON", json.dumps(MACHINE))
    report = server.gpu_report(nvml=fake_nvml, torch=FakeTorch(), matmul_size=8)
    assert [gpu["name"] for gpu in report["gpus"]] == ["NVIDIA RTX A4000", "NVIDIA H100 PCIe"]
    assert report["cuda"] is True and report["reason"] is None
    json.dumps(report)
