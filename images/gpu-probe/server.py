"""gpu-probe: a standard-library HTTP service that reports what NVML and PyTorch see in the container.

    GET /health   200 {"status": "ok"}
    GET /gpu      200 JSON: NVML facts per GPU, driver and CUDA driver versions, whether torch sees CUDA,
                  its device name and capability, and a timed 1024x1024 fp32 matmul on the device.
                  Without NVML or torch it still answers 200, with "cuda": false and the reason.
    GET /metrics  Prometheus text exposition (version 0.0.4): memory, utilisation, temperature and power
                  per GPU, `gpu_probe_up` and `gpu_probe_nvml_available`.

Listens on $HOST:$PORT (default 0.0.0.0:8080). Needs nothing beyond the standard library; `pynvml`
(nvidia-ml-py) and `torch` are used when importable.

Slow or idle clients cannot pile up: a request line and headers not received within
$PROBE_REQUEST_TIMEOUT seconds (default 10, trickled or not) end the connection, as does a send
stalled that long. At most $PROBE_MAX_CONNECTIONS connections (default 16) are handled at once, on
a pool of as many threads; further ones wait to be accepted until a thread is free. Everything
logged to stderr is one line of printable ASCII: control and other non-printable characters in a
request (a path with CR, LF, ESC, ...) are written as \\xNN, \\uNNNN or \\n, \\r, \\t escapes and
a backslash as \\\\.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import FrameType, ModuleType
from typing import Any
from urllib.parse import urlsplit

MIB = 1024 * 1024
MATMUL_SIZE = 1024
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"
DEFAULT_REQUEST_TIMEOUT = 10.0  # seconds to receive a request line and headers; also per stalled send
DEFAULT_MAX_CONNECTIONS = 16  # connections handled at once (a pool of threads); more wait to be accepted
LISTEN_BACKLOG = 64

# NVML's init/shutdown and the CUDA matmul are serialised: requests arrive on several threads.
_NVML_LOCK = threading.Lock()
_TORCH_LOCK = threading.Lock()


def _text(value: str | bytes) -> str:
    """Older NVML bindings return bytes for strings."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _cuda_version_text(version: int) -> str:
    """NVML's 12080 -> '12.8'."""
    return f"{version // 1000}.{(version % 1000) // 10}"


def load_nvml() -> tuple[ModuleType | None, str | None]:
    """The `pynvml` module (from nvidia-ml-py), or None and why not."""
    try:
        return importlib.import_module("pynvml"), None
    except ImportError as err:
        return None, f"pynvml (nvidia-ml-py) not installed: {err}"


def _nvml_call(nvml: ModuleType, func: Callable[..., Any], *args: Any) -> Any:
    """Call an NVML function; None when the card or the driver does not support it."""
    try:
        return func(*args)
    except nvml.NVMLError:
        return None


def _mig_mode(nvml: ModuleType, handle: Any) -> dict[str, bool] | None:
    mode = _nvml_call(nvml, nvml.nvmlDeviceGetMigMode, handle)
    if mode is None:  # NotSupported: a card without MIG
        return None
    current, pending = mode
    return {"current": bool(current), "pending": bool(pending)}


def _gpu_facts(nvml: ModuleType, index: int) -> dict[str, Any]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = _nvml_call(nvml, nvml.nvmlDeviceGetMemoryInfo, handle)
    capability = _nvml_call(nvml, nvml.nvmlDeviceGetCudaComputeCapability, handle)
    utilisation = _nvml_call(nvml, nvml.nvmlDeviceGetUtilizationRates, handle)
    power_mw = _nvml_call(nvml, nvml.nvmlDeviceGetPowerUsage, handle)
    return {
        "index": index,
        "name": _text(nvml.nvmlDeviceGetName(handle)),
        "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
        "memory_total_mib": None if memory is None else int(memory.total) // MIB,
        "memory_used_mib": None if memory is None else int(memory.used) // MIB,
        "memory_total_bytes": None if memory is None else int(memory.total),
        "memory_used_bytes": None if memory is None else int(memory.used),
        "compute_capability": None if capability is None else f"{capability[0]}.{capability[1]}",
        "mig_mode": _mig_mode(nvml, handle),
        "utilization_percent": None if utilisation is None else int(utilisation.gpu),
        "temperature_celsius": _nvml_call(
            nvml, nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
        ),
        "power_watts": None if power_mw is None else int(power_mw) / 1000.0,
    }


def nvml_facts(nvml: ModuleType | None = None) -> dict[str, Any]:
    """What NVML reports: {"available", "reason", "driver_version", "cuda_driver_version", "gpus"}."""
    facts: dict[str, Any] = {
        "available": False,
        "reason": None,
        "driver_version": None,
        "cuda_driver_version": None,
        "gpus": [],
    }
    if nvml is None:
        nvml, reason = load_nvml()
        if nvml is None:
            facts["reason"] = reason
            return facts
    with _NVML_LOCK:
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            # NVMLError_LibraryNotFound: no driver (libnvidia-ml.so.1) in this container or host;
            # in a container that usually means it was started without the NVIDIA runtime / --gpus.
            facts["reason"] = f"NVML unavailable: {err}"
            return facts
        try:
            facts["driver_version"] = _text(nvml.nvmlSystemGetDriverVersion())
            cuda = _nvml_call(nvml, nvml.nvmlSystemGetCudaDriverVersion_v2)
            facts["cuda_driver_version"] = None if cuda is None else _cuda_version_text(int(cuda))
            facts["gpus"] = [_gpu_facts(nvml, index) for index in range(nvml.nvmlDeviceGetCount())]
            facts["available"] = True
        except nvml.NVMLError as err:
            facts["reason"] = f"NVML query failed: {err}"
        finally:
            _nvml_call(nvml, nvml.nvmlShutdown)
    return facts


def load_torch() -> tuple[Any, str | None]:
    """The `torch` module, or None and why not."""
    try:
        return importlib.import_module("torch"), None
    except ImportError:
        return None, "torch not installed"


def matmul_check(torch: Any, size: int = MATMUL_SIZE, device: str = "cuda") -> dict[str, Any]:
    """Time one size x size fp32 matmul on `device` and check its sum.

    sum(A @ B) == sum_k colsum(A)_k * rowsum(B)_k: an O(n^2) reference computed independently, so
    a device that returns garbage (or zeros) fails the check. The tolerance is a small fraction of
    the expected magnitude n^1.5 of the sum for standard normal inputs, loose enough for TF32.
    """
    a = torch.randn(size, size, device=device, dtype=torch.float32)
    b = torch.randn(size, size, device=device, dtype=torch.float32)
    torch.matmul(a, b)  # warm-up: cuBLAS handle and kernel selection
    torch.cuda.synchronize()
    start = time.perf_counter()
    product = torch.matmul(a, b)
    torch.cuda.synchronize()
    milliseconds = (time.perf_counter() - start) * 1000.0
    checksum = float(product.sum().item())
    expected = float((a.sum(dim=0) * b.sum(dim=1)).sum().item())
    tolerance = 1e-2 * size**1.5
    ok = math.isfinite(checksum) and abs(checksum - expected) <= tolerance
    return {
        "size": size,
        "dtype": "float32",
        "milliseconds": round(milliseconds, 3),
        "gflops": round(2 * size**3 / (milliseconds / 1000.0) / 1e9, 1) if milliseconds > 0 else None,
        "checksum": checksum,
        "expected_checksum": expected,
        "checksum_ok": ok,
    }


def torch_facts(torch: Any = None, matmul_size: int = MATMUL_SIZE) -> dict[str, Any]:
    """Whether torch is importable and can use CUDA, its device and a timed matmul on it.

    "cuda_available" is torch.cuda.is_available(); "cuda" is true only when a matmul also ran on the
    device and its checksum held. Pass a module (or a stand-in) to test; by default `torch` is
    imported. Never raises: a CUDA error such as "no kernel image is available" (wheels without this
    card's sm_XY kernels) is reported as the reason.
    """
    facts: dict[str, Any] = {
        "installed": False,
        "version": None,
        "cuda_build": None,
        "cuda_available": False,
        "cuda": False,
        "reason": None,
        "device_name": None,
        "device_capability": None,
        "arch_list": None,
        "matmul": None,
    }
    if torch is None:
        torch, reason = load_torch()
        if torch is None:
            facts["reason"] = reason
            return facts
    facts["installed"] = True
    facts["version"] = str(getattr(torch, "__version__", "unknown"))
    facts["cuda_build"] = getattr(getattr(torch, "version", None), "cuda", None)
    with _TORCH_LOCK:
        try:
            if not torch.cuda.is_available():
                if facts["cuda_build"] is None:
                    facts["reason"] = f"torch {facts['version']} is a CPU-only build"
                else:
                    facts["reason"] = (
                        f"torch.cuda.is_available() is False (built for CUDA {facts['cuda_build']}): "
                        "no GPU visible, or the driver is missing or too old"
                    )
                return facts
            facts["cuda_available"] = True
            device = torch.cuda.current_device()
            facts["device_name"] = str(torch.cuda.get_device_name(device))
            major, minor = torch.cuda.get_device_capability(device)
            facts["device_capability"] = f"{major}.{minor}"
            get_arch_list = getattr(torch.cuda, "get_arch_list", None)
            if get_arch_list is not None:
                facts["arch_list"] = [str(arch) for arch in get_arch_list()]
        except Exception as err:
            facts["reason"] = f"CUDA initialisation failed: {type(err).__name__}: {err}"
            return facts
        try:
            matmul = matmul_check(torch, matmul_size)
        except Exception as err:  # e.g. "no kernel image is available for execution on the device"
            facts["matmul"] = {"error": f"{type(err).__name__}: {err}"}
            facts["reason"] = f"matmul on the device failed: {type(err).__name__}: {err}"
            return facts
    facts["matmul"] = matmul
    if matmul["checksum_ok"]:
        facts["cuda"] = True
    else:
        facts["reason"] = (
            f"matmul checksum {matmul['checksum']} differs from the reference {matmul['expected_checksum']}"
        )
    return facts


def gpu_report(
    nvml: ModuleType | None = None, torch: Any = None, matmul_size: int = MATMUL_SIZE
) -> dict[str, Any]:
    """The /gpu document."""
    nvml_part = nvml_facts(nvml)
    torch_part = torch_facts(torch, matmul_size)
    return {
        "profile": os.environ.get("GPU_PROFILE"),
        "torch_cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST"),
        "nvml_available": nvml_part["available"],
        "nvml_reason": nvml_part["reason"],
        "driver_version": nvml_part["driver_version"],
        "cuda_driver_version": nvml_part["cuda_driver_version"],
        "gpus": nvml_part["gpus"],
        "torch": torch_part,
        "cuda": torch_part["cuda"],
        "reason": torch_part["reason"],
    }


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# (metric, help, key in _gpu_facts)
_GPU_METRICS: tuple[tuple[str, str, str], ...] = (
    ("gpu_memory_used_bytes", "GPU memory in use, in bytes.", "memory_used_bytes"),
    ("gpu_memory_total_bytes", "Total GPU memory, in bytes.", "memory_total_bytes"),
    ("gpu_utilization_percent", "GPU utilisation percent.", "utilization_percent"),
    ("gpu_temperature_celsius", "GPU core temperature, degrees Celsius.", "temperature_celsius"),
    ("gpu_power_watts", "GPU power draw, watts.", "power_watts"),
)


def _family(name: str, help_text: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    lines.extend(f"{name}{labels} {_sample_value(value)}" for labels, value in samples)
    return lines


def render_metrics(facts: dict[str, Any]) -> str:
    """Prometheus text exposition format 0.0.4 for an nvml_facts() result."""
    lines = _family("gpu_probe_up", "1 while the gpu-probe answers.", [("", 1)])
    available = bool(facts["available"])
    lines += _family(
        "gpu_probe_nvml_available",
        "1 when NVML answered, 0 when the NVML library or the driver is missing.",
        [("", 1 if available else 0)],
    )
    if not available:
        return "\n".join(lines) + "\n"
    for metric, help_text, key in _GPU_METRICS:
        samples = []
        for gpu in facts["gpus"]:
            if gpu[key] is None:
                continue
            labels = (
                f'{{gpu="{gpu["index"]}",name="{_label_value(gpu["name"])}",'
                f'uuid="{_label_value(gpu["uuid"])}"}}'
            )
            samples.append((labels, float(gpu[key])))
        lines += _family(metric, help_text, samples)
    return "\n".join(lines) + "\n"


_LOG_UNSAFE = re.compile(r"[^\x20-\x5b\x5d-\x7e]")  # all but printable ASCII; the backslash too
_LOG_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _log_escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _LOG_ESCAPES:
        return _LOG_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def log_safe(text: str) -> str:
    """`text` as printable ASCII on one line: control characters (CR, LF, ESC, ...), other
    non-printable or non-ASCII characters and the backslash itself written as Python escapes, so
    a client cannot forge log lines or send terminal sequences to whoever reads the log."""
    return _LOG_UNSAFE.sub(_log_escape, text)


class _RequestReader(io.RawIOBase):
    """The reading side of a connection with a deadline for the whole request (line and headers):
    each read waits at most until then, so a client trickling a byte at a time gets no longer
    than one that sends nothing."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__()
        self._sock = sock
        self._timeout = timeout
        self.deadline = time.monotonic() + timeout

    def restart(self) -> None:
        self.deadline = time.monotonic() + self._timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            self._sock.settimeout(remaining)
            return self._sock.recv_into(buffer)
        except TimeoutError:
            raise TimeoutError(f"request not received within {self._timeout:g}s") from None


class ProbeHandler(BaseHTTPRequestHandler):
    server_version = "gpu-probe/1.0"
    sys_version = ""
    request_timeout = DEFAULT_REQUEST_TIMEOUT  # ProbeServer's, when it runs there
    _reader: _RequestReader

    def setup(self) -> None:
        self.request_timeout = getattr(self.server, "request_timeout", self.request_timeout)
        super().setup()
        self.connection.settimeout(self.request_timeout)  # a stalled send ends the connection too
        self.rfile.close()
        self._reader = _RequestReader(self.connection, self.request_timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # A read past the deadline raises TimeoutError, which the base class logs and ends the
        # connection on, as it does for the socket timeout.
        self._reader.restart()
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self.connection.settimeout(self.request_timeout)  # the request is in: each send gets it all
        return parsed

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: HTTPStatus, document: dict[str, Any]) -> None:
        self._send(status, json.dumps(document).encode(), JSON_CONTENT_TYPE)

    def do_GET(self) -> None:
        try:
            path = urlsplit(self.path).path
        except ValueError:  # e.g. "//[" (an unclosed IPv6 host)
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": "malformed request target"})
            return
        try:
            if path == "/health":
                self._send_json(HTTPStatus.OK, {"status": "ok"})
            elif path == "/gpu":
                self._send_json(HTTPStatus.OK, gpu_report())
            elif path == "/metrics":
                self._send(HTTPStatus.OK, render_metrics(nvml_facts()).encode(), PROMETHEUS_CONTENT_TYPE)
            else:
                self._send_json(HTTPStatus.NOT_FOUND, {"error": "not found", "path": path})
        except Exception as err:  # never let one request take the probe down
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(err).__name__}: {err}"})

    def log_message(self, format: str, *args: Any) -> None:
        line = f"gpu-probe {log_safe(self.address_string())} {log_safe(format % args)}\n"
        sys.stderr.write(line)
        sys.stderr.flush()


class ProbeServer(HTTPServer):
    """An HTTPServer handling connections on a fixed pool of `max_connections` threads: a
    connection accepted while every thread is busy waits until one is free (further ones wait in
    the listen queue), so the process never has more than 1 + max_connections threads however
    many clients connect. Threads are started as needed, up to the pool's size, and then kept."""

    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        if max_connections < 1 or request_timeout <= 0:
            raise ValueError("max_connections must be at least 1 and request_timeout above 0")
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self._work: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._free = threading.Semaphore(0)  # pool threads waiting for a connection
        self._workers: list[threading.Thread] = []
        self._stopping = threading.Event()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._free.acquire(blocking=False):
            if len(self._workers) < self.max_connections:
                worker = threading.Thread(target=self._work_loop, name="gpu-probe-handler", daemon=True)
                worker.start()
                self._workers.append(worker)
            while not self._free.acquire(timeout=0.2):  # every thread busy: wait for one
                if self._stopping.is_set():
                    self.shutdown_request(request)
                    return
        self._work.put((request, client_address))

    def _work_loop(self) -> None:
        while True:
            self._free.release()  # ready for the next connection
            item = self._work.get()
            if item is None:
                return
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        for _ in self._workers:
            self._work.put(None)

    def shutdown(self) -> None:
        self._stopping.set()
        super().shutdown()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One escaped log line instead of socketserver's multi-line dump: a broken connection as
        its error, anything else with its traceback (newlines escaped too)."""
        error = sys.exc_info()[1]
        detail = f"{type(error).__name__}: {error}" if isinstance(error, OSError) else traceback.format_exc()
        host = client_address[0] if isinstance(client_address, tuple) else client_address
        sys.stderr.write(f"gpu-probe {log_safe(str(host))} error: {log_safe(detail.strip())}\n")
        sys.stderr.flush()


def make_server(
    host: str,
    port: int,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
) -> ProbeServer:
    return ProbeServer(
        (host, port), ProbeHandler, max_connections=max_connections, request_timeout=request_timeout
    )


def _env_number(name: str, default: float, convert: Callable[[str], float]) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = convert(raw)
    except ValueError:
        value = 0
    if not (value > 0 and math.isfinite(value)):
        raise SystemExit(f"gpu-probe: {name} must be a positive number, got {log_safe(raw)!r}")
    return value


def main() -> None:
    # A container service listens on every interface; HOST narrows it.
    host = os.environ.get("HOST", "0.0.0.0")  # noqa: S104
    port = int(os.environ.get("PORT", "8080"))
    server = make_server(
        host,
        port,
        max_connections=int(_env_number("PROBE_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS, int)),
        request_timeout=_env_number("PROBE_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT, float),
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        # As PID 1 in a container, SIGTERM has no default action: exit on it so `docker stop` is quick.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    bound_host, bound_port = server.server_address[:2]
    sys.stderr.write(
        f"gpu-probe listening on {log_safe(str(bound_host))}:{bound_port} (at most "
        f"{server.max_connections} connections at once, request timeout {server.request_timeout:g}s)\n"
    )
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
