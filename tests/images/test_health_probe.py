"""The HTTP health probe runs with whichever one tool an image has: real tools, a real HTTP server.

Each case runs the planned `CMD-SHELL` string under dash with PATH holding only that one tool, the way
an image that has only bash (the `nvidia/cuda` runtime images), only python3 or only node runs it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from components.docker.healthcheck import NO_PROBE_TOOL, http_probe

TOOLS = {
    "curl": shutil.which("curl"),
    "wget": shutil.which("wget"),
    "python3": sys.executable,
    "node": shutil.which("node"),
    "bash": shutil.which("bash"),
}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = {"/ok": 200, "/moved": 302, "/missing": 404, "/broken": 500}.get(
            self.path.split("?")[0], 404
        )
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/ok")
        self.end_headers()
        self.wfile.write(b"body")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def run_probe(tmp_path: Path, tool: str | None, path: str, port: int) -> subprocess.CompletedProcess[str]:
    only = tmp_path / "bin"
    only.mkdir(exist_ok=True)
    if tool is not None:
        found = TOOLS[tool]
        if found is None:
            pytest.fail(f"{tool} is needed for this test (apt-get install {tool})")
        if not (only / tool).exists():
            (only / tool).symlink_to(found)
    return subprocess.run(
        ["/bin/dash", "-c", http_probe(path, port, timeout_s=5)],
        env={"PATH": str(only)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("tool", list(TOOLS))
def test_probe_passes_on_2xx_and_3xx_with_one_tool(tmp_path: Path, port: int, tool: str) -> None:
    for path in ("/ok", "/moved"):
        result = run_probe(tmp_path, tool, path, port)
        assert result.returncode == 0, (tool, path, result.stdout, result.stderr)


@pytest.mark.parametrize("tool", list(TOOLS))
@pytest.mark.parametrize("path", ["/missing", "/broken"])
def test_probe_fails_on_an_error_status_with_one_tool(
    tmp_path: Path, port: int, tool: str, path: str
) -> None:
    result = run_probe(tmp_path, tool, path, port)
    assert result.returncode != 0, (tool, path, result.stdout)


@pytest.mark.parametrize("tool", list(TOOLS))
def test_probe_fails_when_nothing_listens(tmp_path: Path, tool: str) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as closed:
        free = closed.server_address[1]
    assert run_probe(tmp_path, tool, "/ok", free).returncode != 0


def test_bash_probe_says_the_status(tmp_path: Path, port: int) -> None:
    result = run_probe(tmp_path, "bash", "/missing", port)
    assert "GET /missing answered HTTP status 404" in result.stdout


def test_an_image_without_any_tool_says_what_to_set(tmp_path: Path, port: int) -> None:
    result = run_probe(tmp_path, None, "/ok", port)
    assert result.returncode == 1
    assert result.stdout.strip() == NO_PROBE_TOOL
    assert "healthcheck.command" in NO_PROBE_TOOL


def test_a_path_with_shell_characters_stays_one_argument(tmp_path: Path, port: int) -> None:
    marker = tmp_path / "ran"
    result = run_probe(
        tmp_path,
        "bash",
        f"/ok?x=$(touch${{IFS}}{marker})&y=`touch${{IFS}}{marker}`;touch${{IFS}}{marker}",
        port,
    )
    assert result.returncode == 0 and not marker.exists()
