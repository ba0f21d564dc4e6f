"""The GPU probe service (images/gpu-probe/server.py) run for real: a subprocess on a free local port,
NVML from the fake in tests/fake_nvml, and small socket and HTTP helpers to talk to it.

tests/conftest.py's `gpu_probe` fixture is the probe without a driver; tests/images/test_gpu_probe.py
and `make bench` (tests/bench_probe.py) start their own with running_probe().
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "images" / "gpu-probe" / "server.py"
FAKE_NVML = ROOT / "tests" / "fake_nvml"
REQUEST = b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n"


class ProbeFailed(AssertionError):
    """The server did not start, or did not end cleanly: the message holds its log."""


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


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes; a server that keeps it open past the socket's
    timeout raises TimeoutError."""
    data = b""
    while len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def seconds_until_closed(sock: socket.socket) -> tuple[float, bytes]:
    """Wait (bounded by the socket's timeout) for the server to close the connection."""
    started = time.monotonic()
    data = read_until_closed(sock)
    return time.monotonic() - started, data


@dataclass
class RunningProbe:
    """server.py in a subprocess: its URL, process and log (its stderr)."""

    base: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def threads(self) -> int:
        """The server process's threads, as the kernel counts them."""
        return len(os.listdir(f"/proc/{self.process.pid}/task"))

    def log_text(self) -> str:
        return self.log.read_text(encoding="ascii", errors="backslashreplace")


@contextmanager
def running_probe(
    directory: Path, machine: dict[str, Any] | None, extra_env: dict[str, str] | None = None
) -> Iterator[RunningProbe]:
    """Run server.py on a free port with the fake NVML first on PYTHONPATH, wait for /health.

    `machine` None leaves FAKE_NVML_JSON unset: the fake's nvmlInit raises NVMLError_LibraryNotFound,
    like a host without the driver. A `torch` package that fails to import is put on the path too,
    so the answer is "torch not installed" even where torch happens to be installed.
    """
    no_torch = directory / "no-torch"
    (no_torch / "torch").mkdir(parents=True, exist_ok=True)
    (no_torch / "torch" / "__init__.py").write_text("raise ImportError('torch hidden by the test')\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"FAKE_NVML_JSON", "GPU_PROFILE", "PYTHONPATH"} and not k.startswith("PROBE_")
    }
    port = free_port()
    env |= {
        "PYTHONPATH": os.pathsep.join([str(FAKE_NVML), str(no_torch)]),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "GPU_PROFILE": "test-profile",
        **(extra_env or {}),
    }
    if machine is not None:
        env["FAKE_NVML_JSON"] = json.dumps(machine)
    log_path = directory / "server.log"
    with log_path.open("a") as log:
        process = subprocess.Popen([sys.executable, str(SERVER)], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise ProbeFailed(f"server exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if get(f"{base}/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ProbeFailed(f"server did not answer /health:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield RunningProbe(base, port, process, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    # SIGTERM ends the server cleanly (it may run as PID 1 in a container).
    if process.returncode != 0:
        raise ProbeFailed(f"server ended with {process.returncode}:\n{log_path.read_text()}")
