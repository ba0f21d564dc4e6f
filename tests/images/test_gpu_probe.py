"""images/gpu-probe/server.py: the real server in a subprocess, NVML from tests/fake_nvml.

The torch part is unit-tested with a small stand-in module (torch is not installed here); the code
path it drives is the one real torch takes (is_available, get_device_name, get_device_capability,
randn on 'cuda', synchronize).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import random
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fake_nvml import cards
from tests.probe import (
    REQUEST,
    SERVER,
    RunningProbe,
    connect,
    get,
    read_until_closed,
    running_probe,
    seconds_until_closed,
)

ROOT = Path(__file__).resolve().parents[2]

# Two cards with live readings (memory in use, utilisation, temperature, power); the H100's MIG mode
# is on with a reset pending that turns it off.
A4000 = {
    **cards.A4000,
    "uuid": "GPU-a4000000-0000-0000-0000-000000000001",
    "used_mib": 2048,
    "util": 37,
    "temperature": 51,
    "power_mw": 72500,
}
H100 = {
    **cards.H100_PCIE,
    "mig": [1, 0],
    "uuid": "GPU-h1000000-0000-0000-0000-000000000002",
    "used_mib": 0,
    "util": 0,
    "temperature": 33,
    "power_mw": 61000,
}
MACHINE = cards.machine(A4000, H100, cuda=12080)
MIB = 1024 * 1024


def load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


server = load_module("gpu_probe_server", SERVER)


# --- the real server in a subprocess ------------------------------------------------------------


@contextmanager
def probe(tmp_path: Path, machine: dict[str, Any] | None) -> Iterator[str]:
    """Run server.py (see tests/probe.py's running_probe); yield its base URL."""
    with running_probe(tmp_path, machine) as running:
        yield running.base


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


def test_nvml_facts_without_the_bindings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    facts = server.nvml_facts()
    assert facts["available"] is False and "not installed" in facts["reason"]
    assert server.render_metrics(facts).splitlines()[-1] == "gpu_probe_nvml_available 0"


def test_metric_labels_are_escaped(fake_nvml: cards.FakeNvml) -> None:
    odd = {**A4000, "name": 'Odd "GPU"\\x'}
    nvml = fake_nvml({**MACHINE, "gpus": [odd]})
    metrics = parse_metrics(server.render_metrics(server.nvml_facts(nvml)))
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


def test_gpu_report_combines_nvml_and_torch(fake_nvml: cards.FakeNvml) -> None:
    report = server.gpu_report(nvml=fake_nvml(MACHINE), torch=FakeTorch(), matmul_size=8)
    assert [gpu["name"] for gpu in report["gpus"]] == ["NVIDIA RTX A4000", "NVIDIA H100 PCIe"]
    assert report["cuda"] is True and report["reason"] is None
    json.dumps(report)


# --- slow, idle and many clients; escaped logs: the real server over real sockets -----------------
# Each server is a subprocess on 127.0.0.1 with a short PROBE_REQUEST_TIMEOUT; every client socket has
# a timeout and every loop a bound, so nothing here waits on the server for long.

GENERATED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
needs_proc = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")


@pytest.fixture(scope="module")
def quick_probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProbe]:
    """One server with a 0.5 s request timeout, shared by the generated examples."""
    directory = tmp_path_factory.mktemp("quick-probe")
    with running_probe(directory, None, {"PROBE_REQUEST_TIMEOUT": "0.5"}) as running:
        yield running


def test_a_client_that_sends_nothing_is_dropped_after_the_request_timeout(tmp_path: Path) -> None:
    with running_probe(tmp_path, None, {"PROBE_REQUEST_TIMEOUT": "1"}) as running:
        with connect(running.port) as silent:
            seconds, data = seconds_until_closed(silent)
        assert data == b""  # dropped unanswered, within the client's 5 s socket timeout
        assert seconds >= 0.8, seconds  # not before the timeout (how soon after it: `make bench`)
        assert "Request timed out: TimeoutError('request not received within 1s')" in running.log_text()
        assert get(f"{running.base}/health")[0] == 200  # and the probe carries on


def test_a_trickling_client_gets_no_longer_than_a_silent_one(tmp_path: Path) -> None:
    """A header line sent a byte every 0.1 s would take 6 s; the whole request gets 1 s."""
    with running_probe(tmp_path, None, {"PROBE_REQUEST_TIMEOUT": "1"}) as running:
        with connect(running.port) as client:
            started = time.monotonic()
            closed_after = None
            for byte in b"GET /health HTTP/1.0\r\nX-Pad: " + b"p" * 40:
                try:
                    client.send(bytes([byte]))
                except OSError:  # reset: the server has closed it
                    closed_after = time.monotonic() - started
                    break
                readable, _, _ = select.select([client], [], [], 0.1)
                if readable and client.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
        assert closed_after is not None, "the trickle was let run to its end"
        assert closed_after >= 0.8, closed_after  # not before the timeout (how soon after: `make bench`)
        assert "request not received within 1s" in running.log_text()


@settings(GENERATED, max_examples=10)
@given(cut=st.integers(0, len(REQUEST) - 1), junk=st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")))
def test_generated_incomplete_requests_are_dropped(quick_probe: RunningProbe, cut: int, junk: bytes) -> None:
    """Any prefix of a request (plus bytes without a newline) never completes: the server closes the
    connection once the request timeout has passed, without answering."""
    with connect(quick_probe.port) as client:
        client.sendall(REQUEST[:cut] + junk)
        seconds, data = seconds_until_closed(client)
    assert data == b""
    assert seconds >= 0.4, seconds  # not before the timeout (how soon after it: `make bench`)


def wait_for_threads(running: RunningProbe, expected: int, within: float = 3.0) -> int:
    deadline = time.monotonic() + within
    while (count := running.threads()) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return count


class ThreadSampler:
    """Samples the server's thread count every few milliseconds in the background; .peak is the most seen."""

    def __init__(self, running: RunningProbe) -> None:
        self.running = running
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(0.003):
            self.peak = max(self.peak, self.running.threads())

    def stop(self) -> int:
        self.done.set()
        self.thread.join(5)
        return self.peak


@pytest.fixture(scope="module")
def bounded_probes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, RunningProbe]]:
    """Servers allowing 1, 2 and 3 connections at once (request timeout 5 s: held ones stay held)."""
    with contextlib.ExitStack() as stack:
        probes = {
            bound: stack.enter_context(
                running_probe(
                    tmp_path_factory.mktemp(f"bounded-{bound}"),
                    None,
                    {"PROBE_MAX_CONNECTIONS": str(bound), "PROBE_REQUEST_TIMEOUT": "5"},
                )
            )
            for bound in (1, 2, 3)
        }
        yield probes


@needs_proc
@settings(GENERATED, max_examples=12)
@given(bound=st.sampled_from([1, 2, 3]), held=st.integers(0, 10))
def test_handler_threads_are_bounded_and_the_rest_wait(
    bounded_probes: dict[int, RunningProbe], bound: int, held: int
) -> None:
    """`held` clients each hold a connection open (headers never end); a fresh request is answered
    at once while fewer than `bound` are held, else it waits for one of them; the server process
    never has more than 1 + bound threads (without the bound: 1 + held)."""
    running = bounded_probes[bound]
    sampler = ThreadSampler(running)
    clients = [connect(running.port) for _ in range(held)]
    try:
        for client in clients:
            client.sendall(b"GET /health HTTP/1.0\r\n")
        if held >= bound:  # every pool thread busy, and no more of them
            assert wait_for_threads(running, 1 + bound) == 1 + bound
        time.sleep(0.1)
        assert 1 + min(held, bound) <= running.threads() <= 1 + bound
        with connect(running.port) as fresh:
            fresh.sendall(REQUEST)
            fresh.settimeout(0.3)
            if held >= bound:  # queued behind the held ones, not answered
                with pytest.raises(TimeoutError):
                    fresh.recv(1)
            else:
                assert fresh.recv(16).startswith(b"HTTP/1.0 200")
            for client in clients:  # finish the held requests: each is answered, and the queue moves on
                client.sendall(b"\r\n")
            for client in clients:
                assert read_until_closed(client).startswith(b"HTTP/1.0 200 OK")
            fresh.settimeout(5)
            assert held < bound or read_until_closed(fresh).startswith(b"HTTP/1.0 200 OK")
    finally:
        for client in clients:
            client.close()
        peak = sampler.stop()
    assert 1 <= peak <= 1 + bound, peak
    assert running.threads() <= 1 + bound


@needs_proc
def test_many_silent_clients_never_make_many_threads(tmp_path: Path) -> None:
    """12 silent clients, 3 at a time: each group is dropped at the 0.5 s timeout, then the next."""
    extra = {"PROBE_MAX_CONNECTIONS": "3", "PROBE_REQUEST_TIMEOUT": "0.5"}
    with running_probe(tmp_path, None, extra) as running:
        sampler = ThreadSampler(running)
        started = time.monotonic()
        clients = [connect(running.port, timeout=10) for _ in range(12)]
        try:
            assert all(read_until_closed(client) == b"" for client in clients)
        finally:
            for client in clients:
                client.close()
        seconds = time.monotonic() - started
        peak = sampler.stop()
        assert peak <= 4, peak
        assert seconds >= 1.8, seconds  # 4 rounds of 0.5 s, not one (the most it may take: `make bench`)
        assert get(f"{running.base}/health")[0] == 200


def assert_log_is_safe(text: str) -> None:
    """Every line is one log record: the prefix, then printable ASCII only."""
    for line in text.splitlines():
        assert line.startswith("gpu-probe "), line
        assert re.fullmatch(r"[\x20-\x7e]*", line), line


def test_control_characters_in_the_request_are_escaped_in_the_log(tmp_path: Path) -> None:
    with running_probe(tmp_path, None) as running:
        for raw in (
            b"GET /a\x1b[31mred\x1b[0m HTTP/1.0\r\n\r\n",  # terminal escapes
            b"GET /b\rforged HTTP/1.0\r\n\r\n",  # a carriage return inside the line
            b"GET /c\nforged-line HTTP/1.0\r\n\r\n",  # a newline: ends the request line there
            b"GET /d%0A\x00\x7f\x85\xe9\\ HTTP/1.0\r\n\r\n",
            b"GET //[ HTTP/1.0\r\n\r\n",  # not a valid URL: answered, not a crash
        ):
            with connect(running.port) as client:
                client.sendall(raw)
                assert read_until_closed(client), raw  # answered (GET /c as HTTP/0.9: no status line)
        text = running.log_text()
    assert_log_is_safe(text)
    assert r'"GET /a\x1b[31mred\x1b[0m HTTP/1.0" 404' in text
    assert r'"GET /b\rforged HTTP/1.0" 400' in text
    assert '"GET /c" 404' in text and "\nforged-line" not in text
    assert r'"GET /d%0A\x00\x7f\x85\xe9\\ HTTP/1.0" 400' in text  # \x85 splits words: bad syntax
    assert re.search(r'"GET //\[ HTTP/1\.0" (400|404) ', text)  # 404 where http.server folds "//" first


@settings(GENERATED, max_examples=150)
@given(path=st.binary(max_size=40))
def test_generated_request_paths_are_logged_escaped(quick_probe: RunningProbe, path: bytes) -> None:
    marker = f"/m{time.monotonic_ns()}-".encode()
    raw = b"GET " + marker + path + b" HTTP/1.0\r\n\r\n"
    with connect(quick_probe.port) as client:
        client.sendall(raw)
        client.shutdown(socket.SHUT_WR)
        read_until_closed(client)
    # what http.server takes as the request line: up to the first LF, trailing CR/LF stripped
    requestline = raw.split(b"\n", 1)[0].decode("latin-1").rstrip("\r\n")
    expected = server.log_safe(f'"{requestline}"')
    deadline = time.monotonic() + 3
    while expected not in (text := quick_probe.log_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert expected in text
    assert_log_is_safe(text)


@settings(GENERATED, max_examples=500)
@given(text=st.text())
def test_log_safe_is_printable_ascii_and_reversible(text: str) -> None:
    escaped = server.log_safe(text)
    assert re.fullmatch(r"[\x20-\x7e]*", escaped)
    assert escaped.encode("ascii").decode("unicode_escape") == text
