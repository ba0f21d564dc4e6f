"""`make bench`: how promptly the GPU probe service (images/gpu-probe/server.py) drops clients that do
not finish their request, measured against the real server over real sockets.

The unit suite (tests/images/test_gpu_probe.py) checks what does not depend on the machine's speed:
each such client is dropped, not before the request timeout, with the reason in the log. This checks
the upper bounds: a timeout of T drops a silent or trickling client soon after T, and clients beyond
PROBE_MAX_CONNECTIONS wait their turn in rounds of T. Fails (exit 1) when one takes too long.
"""

from __future__ import annotations

import select
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.probe import REQUEST, connect, read_until_closed, running_probe  # noqa: E402 - after the path


def silent(port: int) -> float:
    """One client that connects and sends nothing; seconds until the server closes it."""
    with connect(port) as client:
        started = time.monotonic()
        if read_until_closed(client) != b"":
            raise SystemExit("a silent client was answered")
        return time.monotonic() - started


def trickling(port: int) -> float:
    """A header line sent a byte every 0.1 s (it would take 6 s); seconds until the server closes it."""
    with connect(port) as client:
        started = time.monotonic()
        for byte in b"GET /health HTTP/1.0\r\nX-Pad: " + b"p" * 40:
            try:
                client.send(bytes([byte]))
            except OSError:  # reset: the server has closed it
                return time.monotonic() - started
            readable, _, _ = select.select([client], [], [], 0.1)
            if readable and client.recv(1) == b"":
                return time.monotonic() - started
    raise SystemExit("a trickling client was let run to its end")


def incomplete(port: int) -> float:
    """Half a request; seconds until the server closes it."""
    with connect(port) as client:
        client.sendall(REQUEST[: len(REQUEST) // 2])
        started = time.monotonic()
        read_until_closed(client)
        return time.monotonic() - started


def many_silent(port: int) -> float:
    """12 silent clients at once; seconds until the server has closed them all."""
    started = time.monotonic()
    clients = [connect(port, timeout=10) for _ in range(12)]
    try:
        for client in clients:
            read_until_closed(client)
    finally:
        for client in clients:
            client.close()
    return time.monotonic() - started


# (what, the server's environment, the client, the most seconds it may take)
CASES: list[tuple[str, dict[str, str], Callable[[int], float], float]] = [
    ("silent, timeout 1 s", {"PROBE_REQUEST_TIMEOUT": "1"}, silent, 2.5),
    ("trickling, timeout 1 s", {"PROBE_REQUEST_TIMEOUT": "1"}, trickling, 2.0),
    ("half a request, timeout 0.5 s", {"PROBE_REQUEST_TIMEOUT": "0.5"}, incomplete, 1.5),
    (
        "12 silent, 3 at a time, timeout 0.5 s",  # 4 rounds of 0.5 s
        {"PROBE_MAX_CONNECTIONS": "3", "PROBE_REQUEST_TIMEOUT": "0.5"},
        many_silent,
        5.0,
    ),
]


def main() -> int:
    failures = []
    print(f"{'probe client':<40}{'seconds':>10}{'limit':>8}")
    with tempfile.TemporaryDirectory() as folder:
        for index, (what, env, client, limit) in enumerate(CASES):
            directory = Path(folder) / str(index)
            directory.mkdir()
            with running_probe(directory, None, env) as running:
                seconds = client(running.port)
            print(f"{what:<40}{seconds:>10.3f}{limit:>8.1f}")
            if seconds >= limit:
                failures.append(f"{what}: dropped after {seconds:.2f} s >= {limit} s")
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
