"""Tests for components/host/smoke.py (and smoke_checklist.py, smoke_io.py) against real HTTP servers on 127.0.0.1 and a stub docker."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import stat
import string
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from components.host import smoke, smoke_checklist, smoke_io

SMOKE_PY = Path(smoke.__file__).resolve()

TTS_BODY = {"audioUrl": "/audio/tts_123.wav", "duration": 1.5, "data": {"items": [{"id": 7}]}}
SECRET_BODY = {
    "error": "unauthorised",
    "token": "s3cr3t-token",
    "nested": {"api_key": "AKIA-SECRET", "hint": "visible"},
    "Authorization": "Bearer abc.def",
}


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay silent: a slow handler writing to a client that gave up would print to stderr
        while a later test captures it."""


class Server:
    """A ThreadingHTTPServer whose answers are chosen by path."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.warm_after = 3
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.handle(self)

            def do_POST(self) -> None:
                server.handle(self)

        self.httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        self.hits[path] = self.hits.get(path, 0) + 1
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        self.requests.append(
            {"method": req.command, "path": req.path, "headers": dict(req.headers), "body": body}
        )
        status, payload, ctype = self.answer(path, self.hits[path])
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        req.send_response(status)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def answer(self, path: str, hit: int) -> tuple[int, Any, str]:
        js = "application/json"
        if path == "/api/health":
            return 200, {"status": "ok"}, js
        if path == "/api/tts":
            return 200, TTS_BODY, js
        if path == "/bad-status":
            return 404, {"error": "no such route"}, js
        if path == "/not-json":
            return 200, b"<html>Internal oops</html>", "text/html"
        if path == "/missing-field":
            return 200, {"audioUrl": "/audio/x.wav"}, js
        if path == "/wrong-type":
            return 200, {"audioUrl": "/audio/x.wav", "duration": "1.5"}, js
        if path == "/slow":
            self.release.wait(5)
            return 200, TTS_BODY, js
        if path == "/warm":
            if hit <= self.warm_after:
                return 503, {"error": "GPU TTS service not ready"}, js
            return 200, TTS_BODY, js
        if path == "/always-503":
            return 503, {"error": "GPU TTS service not ready"}, js
        if path == "/secret":
            return 401, SECRET_BODY, js
        if path == "/secret-text":
            return 400, b"bad form: user=bob&password=hunter2&api_key=AKIA-SECRET", "text/plain"
        if path == "/long":
            return 400, b"x" * 1000, "text/plain"
        return 404, {"error": "unknown"}, js


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def dead_url() -> str:
    """A 127.0.0.1 port with nothing listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


STUB_DOCKER = """#!{python}
import json, os, sys
with open(os.environ["DOCKER_STUB_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if len(sys.argv) > 3 and sys.argv[3] == "test":
    rc = int(os.environ.get("DOCKER_STUB_TEST_RC", "0"))
else:
    rc = int(os.environ.get("DOCKER_STUB_RC", "0"))
if rc:
    sys.stderr.write("stub failure secret=hunter2\\n")
sys.exit(rc)
"""


@pytest.fixture
def docker_stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[list[str]]]:
    """Put a stub `docker` first on PATH; returns a reader of the recorded argv lists."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub = bindir / "docker"
    stub.write_text(STUB_DOCKER.format(python=sys.executable))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "docker.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("DOCKER_STUB_LOG", str(log))

    def calls() -> list[list[str]]:
        return [json.loads(line) for line in log.read_text().splitlines()]

    return calls


def run_main(
    capsys: pytest.CaptureFixture[str], url: str, checks: list[Any], *extra: str, deadline: float = 0.3
) -> tuple[int, str, str]:
    argv = [
        "--base-url",
        url,
        "--checks",
        json.dumps(checks),
        "--deadline",
        str(deadline),
        "--interval",
        "0.05",
        *extra,
    ]
    code = smoke.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


TTS_CHECK = {
    "http": {
        "method": "POST",
        "path": "/api/tts",
        "body": {"text": "Hello world"},
        "status": 200,
        "json": {"audioUrl": "string", "duration": "number", "data.items": "array"},
        "saveAs": "tts",
    }
}


# --------------------------------------------------------------------------- real servers


def test_all_pass(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    checks = [{"http": {"path": "/api/health", "json": {"status": "string"}}}, TTS_CHECK]
    code, out, err = run_main(capsys, server.url, checks)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("PASS http GET /api/health 200 in ")
    assert lines[1].startswith("PASS http POST /api/tts 200 in ")
    assert err == ""
    post = server.requests[-1]
    assert post["method"] == "POST"
    assert json.loads(post["body"]) == {"text": "Hello world"}
    assert post["headers"]["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/bad-status", "expected status 200, got 404"),
        ("/not-json", "body is not JSON"),
        ("/missing-field", "missing field 'duration'"),
        ("/wrong-type", "field 'duration' is string, expected number"),
    ],
)
def test_malformed_answers_exit_3(
    server: Server, capsys: pytest.CaptureFixture[str], path: str, needle: str
) -> None:
    checks = [{"http": {"path": path, "json": {"audioUrl": "string", "duration": "number"}}}]
    code, out, err = run_main(capsys, server.url, checks, deadline=1.0)  # room for a retry under load
    assert code == smoke.EXIT_MALFORMED
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(f"FAIL http GET {path}: ")
    assert needle in err
    assert "status " in err
    assert "(exit 3)" in err
    assert server.hits[path] > 1  # retried until the deadline


def test_malformed_line_shows_body(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, server.url, [{"http": {"path": "/not-json", "json": {}}}])
    assert code == 3
    assert "status 200; body: <html>Internal oops</html>" in err


def test_slow_server_times_out_exit_2(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code, out, err = run_main(capsys, server.url, [{"http": {"path": "/slow"}}], deadline=1)
    assert code == smoke.EXIT_TIMEOUT
    assert time.monotonic() - started < 5  # the handler holds the answer 5 s: the 1 s deadline ended it
    assert out == ""
    assert err.startswith("FAIL http GET /slow: no answer (timed out")
    assert "deadline 1s reached" in err


def test_nothing_listening_exit_2(dead_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, dead_url, [{"http": {"path": "/api/health"}}])
    assert code == smoke.EXIT_TIMEOUT
    assert out == ""
    assert err.startswith("FAIL http GET /api/health: no answer (")
    assert "refused" in err.lower()
    assert len(err.splitlines()) == 1


def test_warm_up_503_then_ok(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    warm = {"http": {**TTS_CHECK["http"], "path": "/warm"}}
    code, out, err = run_main(capsys, server.url, [warm], deadline=3)
    assert code == 0, err
    assert server.hits["/warm"] == server.warm_after + 1
    assert out.startswith("PASS http POST /warm 200 in ")
    assert "(4 attempts)" in out


def test_503_until_deadline_is_a_timeout(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, server.url, [{"http": {"path": "/always-503"}}])
    assert code == smoke.EXIT_TIMEOUT
    assert "expected status 200, got 503; status 503" in err
    assert "GPU TTS service not ready" in err


def test_secret_values_masked_in_json_body(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    checks = [
        {"http": {"path": "/secret?token=qs-secret", "headers": {"Authorization": "Bearer hdr-secret"}}}
    ]
    code, _, err = run_main(capsys, server.url, checks)
    assert code == 3
    for secret in ("s3cr3t-token", "AKIA-SECRET", "abc.def", "qs-secret", "hdr-secret"):
        assert secret not in err
    assert '"token": "***"' in err
    assert '"api_key": "***"' in err
    assert '"Authorization": "***"' in err
    assert '"hint": "visible"' in err
    assert "/secret?token=***" in err
    # the header really was sent
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer hdr-secret"


def test_secret_values_masked_in_text_body(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, server.url, [{"http": {"path": "/secret-text"}}])
    assert code == 3
    assert "hunter2" not in err
    assert "AKIA-SECRET" not in err
    assert "user=bob&password=***&api_key=***" in err


def test_body_snippet_is_300_chars(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, server.url, [{"http": {"path": "/long"}}])
    assert code == 3
    assert "x" * 300 in err
    assert "x" * 301 not in err


# --------------------------------------------------------------------------- docker exec checks


def test_file_and_gpu_checks_via_stub_docker(
    server: Server, capsys: pytest.CaptureFixture[str], docker_stub: Callable[[], list[list[str]]]
) -> None:
    checks = [
        TTS_CHECK,
        {"file": {"path": "/app/public{tts.audioUrl}"}},
        {"file": {"path": "/app/public/audio/{tts.audioUrl|basename}"}},
        {"gpu": {}},
        {"gpu": {"command": ["python3", "-c", "import torch; assert torch.cuda.is_available()"]}},
    ]
    code, out, err = run_main(capsys, server.url, checks, "--container", "app")
    assert code == 0, err
    assert docker_stub() == [
        ["exec", "app", "test", "-f", "/app/public/audio/tts_123.wav"],
        ["exec", "app", "test", "-f", "/app/public/audio/tts_123.wav"],
        ["exec", "app", "nvidia-smi"],
        ["exec", "app", "python3", "-c", "import torch; assert torch.cuda.is_available()"],
    ]
    lines = out.splitlines()
    assert lines[1].startswith("PASS file /app/public/audio/tts_123.wav in ")
    assert lines[3].startswith("PASS gpu nvidia-smi in ")


def test_file_absent_exit_4(
    server: Server,
    capsys: pytest.CaptureFixture[str],
    docker_stub: Callable[[], list[list[str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_STUB_TEST_RC", "1")
    checks = [TTS_CHECK, {"file": {"path": "/app/public{tts.audioUrl}"}}, {"gpu": {}}]
    code, out, err = run_main(capsys, server.url, checks, "--container", "app")
    assert code == smoke.EXIT_FILE_ABSENT
    assert out.startswith("PASS http POST /api/tts")
    assert err.startswith("FAIL file /app/public/audio/tts_123.wav: file not found in container app")
    assert "hunter2" not in err
    assert ["exec", "app", "nvidia-smi"] not in docker_stub()


def test_gpu_failure_exit_5(
    server: Server,
    capsys: pytest.CaptureFixture[str],
    docker_stub: Callable[[], list[list[str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_STUB_RC", "9")
    # a deadline with room for two stub runs on a loaded machine (each starts a shell)
    code, _, err = run_main(capsys, server.url, [{"gpu": {}}], "--container", "app", deadline=1.5)
    assert code == smoke.EXIT_GPU_FAILED
    assert err.startswith("FAIL gpu nvidia-smi: command failed in container app (exit 9)")
    assert "stub failure secret=***" in err
    assert len(docker_stub()) > 1  # retried


def test_missing_docker_exit_1(
    server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    checks = [TTS_CHECK, {"file": {"path": "/app/public{tts.audioUrl}"}}]
    code, out, err = run_main(capsys, server.url, checks, "--container", "app")
    assert code == smoke.EXIT_MISSING_TOOL
    assert out == ""  # checked before anything runs
    assert err.startswith("FAIL preflight: 'docker' not found on PATH")


def test_docker_command_split_and_missing(
    server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-docker"
    code, _, err = run_main(
        capsys, server.url, [{"gpu": {}}], "--container", "app", "--docker", f"{missing} -H x"
    )
    assert code == 1
    assert str(missing) in err


def test_http_only_checks_do_not_need_docker(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _, _ = run_main(capsys, server.url, [{"http": {"path": "/api/health"}}])
    assert code == 0


# --------------------------------------------------------------------------- real CLI


def test_cli_subprocess(server: Server, tmp_path: Path) -> None:
    checks_file = tmp_path / "checks.json"
    checks_file.write_text(json.dumps([{"http": {"path": "/warm", "json": {"duration": "number"}}}]))
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    proc = subprocess.run(
        [sys.executable, str(SMOKE_PY), "--base-url", server.url, "--checks-file", str(checks_file),
         "--deadline", "5", "--interval", "0.05"],
        capture_output=True, text=True, timeout=30, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("PASS http GET /warm 200 in ")

    proc = subprocess.run(
        [sys.executable, str(SMOKE_PY), "--base-url", server.url, "--deadline", "0.2",
         "--checks", '[{"http": {"path": "/wrong-type", "json": {"duration": "number"}}}]'],
        capture_output=True, text=True, timeout=30, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert "field 'duration' is string, expected number" in proc.stderr


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--checks", "[]"], "--base-url"),
        (["--base-url", "http://127.0.0.1:1", "--checks", "{not json"], "not valid JSON"),
        (["--base-url", "ftp://127.0.0.1", "--checks", "[]"], "http(s) URL"),
        (["--base-url", "http://127.0.0.1:1", "--checks", '[{"http": {"path": "/", "json": {"a": "str"}}}]'],
         "type must be one of"),
        (["--base-url", "http://127.0.0.1:1", "--checks", '[{"file": {"path": "/x{tts.audioUrl}"}}]'],
         "no earlier check saves"),
        (["--base-url", "http://127.0.0.1:1", "--checks", '[{"gpu": {}}]'], "need --container"),
        (["--base-url", "http://127.0.0.1:1", "--checks", '[{"http": {"path": "/"}, "gpu": {}}]'],
         "exactly one of"),
        (["--base-url", "http://127.0.0.1:1", "--checks-file", "/nonexistent/checks.json"], "cannot read"),
    ],
)  # fmt: skip
def test_usage_errors_exit_64(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    assert smoke.main(argv) == smoke.EXIT_USAGE
    assert needle in capsys.readouterr().err


def test_python_too_old(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert smoke.python_supported((3, 8, 0))
    assert not smoke.python_supported((3, 7, 16))
    monkeypatch.setattr(smoke, "python_supported", lambda version: False)
    assert smoke.main(["--base-url", "http://127.0.0.1:1", "--checks", "[]"]) == 1
    assert "too old" in capsys.readouterr().err


# --------------------------------------------------------------------------- pure functions


def test_validate_json_types() -> None:
    body = {"s": "x", "i": 3, "f": 1.5, "b": True, "o": {"k": [1, {"id": 2}]}, "n": None, "a": []}
    assert (
        smoke_checklist.validate_json(body, {"s": "string", "i": "number", "f": "number", "b": "boolean"})
        == []
    )
    assert (
        smoke_checklist.validate_json(body, {"i": "integer", "o": "object", "a": "array", "n": "any"}) == []
    )
    assert smoke_checklist.validate_json(body, {"o.k": "array", "o.k.1.id": "integer"}) == []
    assert smoke_checklist.validate_json(body, {"b": "number", "f": "integer", "n": "string"}) == [
        "field 'b' is boolean, expected number",
        "field 'f' is number, expected integer",
        "field 'n' is null, expected string",
    ]
    assert smoke_checklist.validate_json(body, {"o.missing": "any", "o.k.5": "any", "s.x": "any"}) == [
        "missing field 'o.missing'",
        "missing field 'o.k.5'",
        "missing field 's.x'",
    ]
    assert smoke_checklist.validate_json([1], {"a": "any"}) == ["missing field 'a'"]


def test_render_template() -> None:
    saved = {"tts": {"audioUrl": "http://h/audio/a.wav?x=1", "n": 3, "ok": True}}
    assert smoke_checklist.render_template("/p{tts.audioUrl|basename}", saved) == "/pa.wav"
    assert smoke_checklist.render_template("{tts.n}-{tts.ok}-{{lit}}", saved) == "3-true-{lit}"
    with pytest.raises(KeyError):
        smoke_checklist.render_template("{tts.nope}", saved)
    with pytest.raises(KeyError):
        smoke_checklist.render_template("{other.x}", saved)


def test_mask_text() -> None:
    assert smoke_checklist.mask_text('{"password": "p", "list": [{"secretValue": 1}]}') == (
        '{"password": "***", "list": [{"secretValue": "***"}]}'
    )
    assert smoke_checklist.mask_text('{"token": "abc", "trunc') == '{"token": "***", "trunc'
    assert smoke_checklist.mask_text("Authorization: Bearer abc123 next") == "Authorization: *** next"
    assert smoke_checklist.mask_url("http://user:pw@h/x?api_key=1&a=2") == "http://***@h/x?api_key=***&a=2"


# --------------------------------------------------------------------------- runner with fake time


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def fake_runner(
    fake: FakeTime, answers: list[Any], *, deadline: float = 10, interval: float = 2
) -> tuple[smoke.SmokeRunner, list[float], Any, Any]:
    import io

    timeouts: list[float] = []

    def http(url: str, method: str, body: bytes | None, headers: dict[str, str], timeout: float):
        timeouts.append(timeout)
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    out, err = io.StringIO(), io.StringIO()
    checks = smoke_checklist.parse_checks([{"http": {"path": "/h", "json": {"ok": "boolean"}}}])
    runner = smoke.SmokeRunner(
        checks, "http://127.0.0.1:1", deadline=deadline, interval=interval,
        clock=fake.clock, sleep=fake.sleep, http=http, out=out, err=err,
    )  # fmt: skip
    return runner, timeouts, out, err


def test_runner_retries_on_interval_until_deadline() -> None:
    fake = FakeTime()
    runner, timeouts, _, err = fake_runner(fake, [smoke_io.Unreachable("refused")])
    assert runner.run() == 2
    assert fake.sleeps == [2, 2, 2, 2]
    assert timeouts == [10, 8, 6, 4, 2]
    assert "after 5 attempt(s)" in err.getvalue()


def test_runner_request_timeout_capped_at_10() -> None:
    fake = FakeTime()
    ok = smoke_io.HttpResponse(200, b'{"ok": true}')
    runner, timeouts, out, _ = fake_runner(fake, [ok], deadline=180)
    assert runner.run() == 0
    assert timeouts == [10]
    assert out.getvalue() == "PASS http GET /h 200 in 0.0s\n"


def test_runner_last_answer_decides() -> None:
    bad = smoke_io.HttpResponse(200, b"{}")
    fake = FakeTime()
    runner, _, _, err = fake_runner(fake, [bad, bad, smoke_io.Unreachable("refused")], deadline=6)
    assert runner.run() == 2
    fake = FakeTime()
    runner, _, _, err = fake_runner(fake, [smoke_io.Unreachable("refused"), bad], deadline=6)
    assert runner.run() == 3
    assert "missing field 'ok'" in err.getvalue()


def test_runner_gives_late_check_one_attempt() -> None:
    fake = FakeTime()
    runner, timeouts, _, _ = fake_runner(fake, [smoke_io.HttpResponse(200, b'{"ok": false}')], deadline=0.01)
    assert runner.run() == 0
    assert timeouts == [smoke.MIN_ATTEMPT_TIMEOUT]


def test_validate_equals_exact_values() -> None:
    body = {"cuda": True, "gpus": [{"name": "NVIDIA A2"}], "count": 1}
    assert smoke_checklist.validate_equals(body, {"cuda": True, "gpus.0.name": "NVIDIA A2", "count": 1}) == []
    assert smoke_checklist.validate_equals(body, {"cuda": False, "count": True, "nope": 1}) == [
        "field 'cuda' is true, expected false",
        "field 'count' is 1, expected true",
        "missing field 'nope'",
    ]


def test_equals_check_against_a_real_server(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(
        capsys, server.url, [{"http": {"path": "/api/health", "equals": {"status": "ok"}}}]
    )
    assert code == 0, err
    code, _, err = run_main(
        capsys, server.url, [{"http": {"path": "/api/health", "equals": {"status": "up"}}}]
    )
    assert code == smoke.EXIT_MALFORMED
    assert 'field \'status\' is "ok", expected "up"' in err


def test_checks_from_stdin_in_a_real_subprocess(server: Server) -> None:
    import subprocess
    import sys

    checks = json.dumps([{"http": {"path": "/api/health", "headers": {"Authorization": "Bearer s3cret"}}}])
    result = subprocess.run(
        [
            sys.executable,
            str(Path(smoke.__file__)),
            "--base-url",
            server.url,
            "--checks-file",
            "-",
            "--deadline",
            "5",
        ],
        input=checks,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("PASS http GET /api/health 200")
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer s3cret"


# =========================================================================== requests stay on the origin,
# the deadline bounds a trickled answer, credentials are masked: real servers on loopback and generated
# inputs. Servers are module-scoped (one per test module, shared by the generated examples); every route
# answers by itself or stops when the module's servers close.

Route = Callable[[BaseHTTPRequestHandler], None]
GENERATED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


class Scripted:
    """A real HTTP server whose answers are set per path in `routes`; it counts connections (a
    redirect followed to it shows up there even when no request parses) and records requests."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                scripted.handle(self)

            do_POST = do_PUT = do_DELETE = do_GET

        class Counting(QuietHTTPServer):
            def verify_request(self, request: Any, client_address: Any) -> bool:
                with scripted.lock:
                    scripted.connections += 1
                return True

        self.httpd = Counting((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        with self.lock:
            self.requests.append(
                {"method": req.command, "path": req.path, "headers": dict(req.headers), "body": body}
            )
        route = self.routes.get(req.path.split("?", 1)[0])
        (route or reply(404, {"error": "no such route"}))(req)


def reply(status: int, payload: Any, ctype: str = "application/json") -> Route:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()

    def route(req: BaseHTTPRequestHandler) -> None:
        req.send_response(status)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    return route


def redirect(code: int, location: str) -> Route:
    def route(req: BaseHTTPRequestHandler) -> None:
        req.send_response(code)
        req.send_header("Location", location)
        req.send_header("Content-Length", "0")
        req.end_headers()

    return route


TRICKLE_PHASES = ("status line", "headers", "body", "chunked body")


def trickle(phase: str, gap: float, stop: threading.Event, sent: list[int]) -> Route:
    """Send the answer one byte every `gap` seconds from `phase` on; it never completes before the
    client gives up (at most 200 bytes), and stops when `stop` is set."""
    status = b"HTTP/1.0 200 OK\r\n"
    if phase == "chunked body":
        status = b"HTTP/1.1 200 OK\r\n"
        headers = b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = b"".join(b"1\r\n" + bytes([c]) + b"\r\n" for c in b'{"ok": true, "pad": "' + b"x" * 60)
    else:
        headers = (
            b"Content-Type: application/json\r\nContent-Length: 200\r\nX-Pad: " + b"p" * 60 + b"\r\n\r\n"
        )
        body = b"x" * 200
    at_once, dripped = {
        "status line": (b"", status + headers + body),
        "headers": (status, headers + body),
        "body": (status + headers, body),
        "chunked body": (status + headers, body),
    }[phase]

    def route(req: BaseHTTPRequestHandler) -> None:
        req.wfile.write(at_once)
        for index in range(min(len(dripped), 200)):
            if stop.wait(gap):
                return
            req.wfile.write(dripped[index : index + 1])  # raises once the client has hung up
            sent[0] += 1

    return route


@pytest.fixture(scope="module")
def origin() -> Iterator[Scripted]:
    srv = Scripted()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def elsewhere(origin: Scripted) -> Iterator[list[Scripted]]:
    """Servers a redirect must never reach: another port on 127.0.0.1, and 127.0.0.2 on the origin's
    own port (same port, other host) where the system lets us bind it."""
    servers = [Scripted()]
    with contextlib.suppress(OSError):
        servers.append(Scripted("127.0.0.2", origin.port))
    yield servers
    for srv in servers:
        srv.close()


_ROUTE_IDS = iter(range(10**9))


def new_path(prefix: str) -> str:
    return f"/{prefix}-{next(_ROUTE_IDS)}"


def run_runner(
    base_url: str, checks: list[Any], *, deadline: float, interval: float = 0.05
) -> tuple[int, str, str, float]:
    """The real runner (real urllib, real sockets) in this process: (exit code, stdout, stderr, seconds)."""
    out, err = io.StringIO(), io.StringIO()
    runner = smoke.SmokeRunner(
        smoke_checklist.parse_checks(checks), base_url, deadline=deadline, interval=interval, out=out, err=err
    )
    started = time.monotonic()
    code = runner.run()
    return code, out.getvalue(), err.getvalue(), time.monotonic() - started


def same_origin_oracle(url: str, port: int) -> bool:
    """Independent of smoke_io.url_origin: http, host 127.0.0.1, the origin's port, no user info."""
    parts = urllib.parse.urlsplit(url)
    try:
        url_port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme.lower() == "http"
        and parts.hostname == "127.0.0.1"
        and url_port == port
        and "@" not in parts.netloc
    )


CREDENTIALS = {"Authorization": "Bearer origin-only-token", "X-Api-Key": "origin-only-key"}

OTHER_HOSTS = ["localhost", "LOCALHOST", "localhost.", "127.0.0.2", "127.1", "0.0.0.0", "[::1]", "127.0.0.1"]
SCHEMES = ["http", "HTTP", "https", "ftp", "file", "ws", "gopher"]
ODD_TARGETS = ["file:///etc/passwd", "javascript:alert(1)", "data:text/plain,hi", "mailto:a@b.example"]


@st.composite
def other_targets(draw: st.DrawFn, origin_port: int, other_ports: list[int]) -> str:
    """A redirect target or an absolute URL that is NOT on http://127.0.0.1:<origin_port>."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(ODD_TARGETS))
    host = draw(st.sampled_from(OTHER_HOSTS))
    port = draw(st.sampled_from([origin_port, *other_ports, None]))
    userinfo = draw(st.sampled_from(["", "user:pw@", "admin@", "origin-only-token@"]))
    path = draw(st.text(alphabet=string.ascii_letters + string.digits + "/-_.", max_size=12))
    query = draw(st.sampled_from(["", "?x=1", "?token=leak"]))
    authority = f"{userinfo}{host}" + (f":{port}" if port is not None else "")
    if draw(st.booleans()):
        target = f"{draw(st.sampled_from(SCHEMES))}://{authority}/{path}{query}"
    else:
        target = f"//{authority}/{path}{query}"  # network-path reference: the request's scheme
    url = urllib.parse.urljoin(f"http://127.0.0.1:{origin_port}/", target)
    assume(not same_origin_oracle(url, origin_port))
    return target


@settings(GENERATED, max_examples=150)
@given(
    data=st.data(),
    code=st.sampled_from([301, 302, 303, 307, 308]),
    method=st.sampled_from(["GET", "POST"]),
)
def test_redirects_elsewhere_are_refused_and_never_followed(
    origin: Scripted, elsewhere: list[Scripted], data: st.DataObject, code: int, method: str
) -> None:
    target = data.draw(other_targets(origin.port, [s.port for s in elsewhere if s.port != origin.port]))
    path = new_path("redirect")
    origin.routes[path] = redirect(code, target)
    before = origin.connections, [srv.connections for srv in elsewhere]
    check: dict[str, Any] = {"method": method, "path": path, "headers": CREDENTIALS}
    if method == "POST":
        check["body"] = {"text": "hello"}
    exit_code, out, err, seconds = run_runner(origin.url, [{"http": check}], deadline=5)
    assert exit_code == smoke.EXIT_MALFORMED, err
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith(
        f"FAIL http {method} {path}: refused redirect ({code}) off the service's origin "
        f"http://127.0.0.1:{origin.port}, not followed: "
    ), line
    assert line.endswith(f"; status {code} (exit 3)")
    assert seconds < 5, "refused at once, not retried until the 5 s deadline"
    # one connection, to the origin: the redirect was never followed anywhere, the origin included
    assert (origin.connections, [srv.connections for srv in elsewhere]) == (before[0] + 1, before[1])
    assert all(srv.requests == [] for srv in elsewhere)  # so no credential ever went there
    assert {r["headers"].get("Host") for r in origin.requests} == {f"127.0.0.1:{origin.port}"}
    assert "origin-only-token" not in line and "user:pw" not in line


@settings(GENERATED, max_examples=40)
@given(
    form=st.sampled_from(["/{p}", "{p}", "./{p}", "http://127.0.0.1:{port}/{p}",
                          "HTTP://127.0.0.1:{port}/{p}", "//127.0.0.1:{port}/{p}"]),
    code=st.sampled_from([301, 302, 303, 307, 308]),
    query=st.sampled_from(["", "?a=1"]),
)  # fmt: skip
def test_redirects_within_the_origin_are_followed_with_the_headers(
    origin: Scripted, form: str, code: int, query: str
) -> None:
    start, target = new_path("hop"), new_path("landed")
    origin.routes[start] = redirect(code, form.format(p=target.lstrip("/"), port=origin.port) + query)
    origin.routes[target] = reply(200, {"ok": True})
    exit_code, out, err, _ = run_runner(
        origin.url,
        [{"http": {"path": start, "headers": CREDENTIALS, "json": {"ok": "boolean"}}}],
        deadline=5,
    )
    assert exit_code == 0, err
    assert out.startswith(f"PASS http GET {start} 200")
    landed = [r for r in origin.requests if r["path"].split("?")[0] == target]
    assert len(landed) == 1
    assert landed[0]["headers"]["Authorization"] == CREDENTIALS["Authorization"]
    assert landed[0]["headers"]["X-Api-Key"] == CREDENTIALS["X-Api-Key"]


@settings(GENERATED, max_examples=100)
@given(data=st.data())
def test_absolute_urls_from_a_response_are_refused(
    origin: Scripted, elsewhere: list[Scripted], data: st.DataObject
) -> None:
    target = data.draw(other_targets(origin.port, [s.port for s in elsewhere if s.port != origin.port]))
    give = new_path("give")
    origin.routes[give] = reply(200, {"next": target})
    before = origin.connections, [srv.connections for srv in elsewhere]
    checks = [
        {"http": {"path": give, "json": {"next": "string"}, "saveAs": "s"}},
        {"http": {"path": "{s.next}", "headers": CREDENTIALS}},
    ]
    exit_code, out, err, seconds = run_runner(origin.url, checks, deadline=5)
    assert exit_code == smoke.EXIT_MALFORMED, err
    assert out.startswith(f"PASS http GET {give} 200")
    (line,) = err.splitlines()
    assert line.startswith("FAIL http GET "), line
    assert f": refused to request a URL off the service's origin http://127.0.0.1:{origin.port}: " in line
    assert seconds < 5  # refused at once, not retried until the 5 s deadline
    assert (origin.connections, [srv.connections for srv in elsewhere]) == (before[0] + 1, before[1])
    assert all(srv.requests == [] for srv in elsewhere)
    assert "origin-only-token" not in line and "user:pw" not in line


def test_absolute_urls_on_the_origin_and_in_the_checks(origin: Scripted, elsewhere: list[Scripted]) -> None:
    origin.routes["/give-same"] = reply(200, {"next": f"http://127.0.0.1:{origin.port}/landed-same?x=1"})
    origin.routes["/landed-same"] = reply(200, {"ok": True})
    checks = [
        {"http": {"path": "/give-same", "saveAs": "s"}},
        {"http": {"path": "{s.next}", "headers": CREDENTIALS, "equals": {"ok": True}}},
    ]
    code, out, err, _ = run_runner(origin.url, checks, deadline=5)
    assert code == 0, err
    assert out.splitlines()[1].startswith("PASS http GET http://127.0.0.1:")
    # written into the checks file: refused the same way, before any connection
    other = elsewhere[0]
    before = other.connections
    code, _, err, _ = run_runner(origin.url, [{"http": {"path": f"{other.url}/x"}}], deadline=5)
    assert code == smoke.EXIT_MALFORMED
    assert err == (
        f"FAIL http GET {other.url}/x: refused to request a URL off the service's origin "
        f"http://127.0.0.1:{origin.port}: {other.url}/x (exit 3)\n"
    )
    assert other.connections == before


def test_file_check_path_from_an_absolute_url_never_fetches(
    origin: Scripted,
    elsewhere: list[Scripted],
    capsys: pytest.CaptureFixture[str],
    docker_stub: Callable[[], list[list[str]]],
) -> None:
    """A file check only runs `docker exec test -f`; an absolute URL saved from a response fills its
    path (basename) but is never requested, while an http check on it is refused."""
    other = elsewhere[0]
    origin.routes["/give-file"] = reply(200, {"audioUrl": f"{other.url}/audio/a.wav?token=t0k"})
    before = other.connections
    checks = [
        {"http": {"path": "/give-file", "saveAs": "tts"}},
        {"file": {"path": "/app/public/audio/{tts.audioUrl|basename}"}},
        {"http": {"path": "{tts.audioUrl}", "headers": CREDENTIALS}},
    ]
    code, out, err = run_main(capsys, origin.url, checks, "--container", "app", deadline=5)
    assert code == smoke.EXIT_MALFORMED
    assert docker_stub() == [["exec", "app", "test", "-f", "/app/public/audio/a.wav"]]
    assert out.splitlines()[1].startswith("PASS file /app/public/audio/a.wav")
    assert err.startswith(f"FAIL http GET {other.url}/audio/a.wav?token=***: refused to request a URL off ")
    assert "t0k" not in err
    assert other.connections == before


def test_base_url_must_be_an_origin(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("http://user:pw@127.0.0.1:1", "http://127.0.0.1:1x", "ftp://127.0.0.1", "http:///x"):
        assert smoke.main(["--base-url", bad, "--checks", "[]"]) == smoke.EXIT_USAGE
        err = capsys.readouterr().err
        assert "http(s) URL" in err and "pw" not in err
    assert smoke_io.url_origin("HTTP://Example.COM/x") == ("http", "example.com", 80)
    assert smoke_io.url_origin("https://[::1]:8443?q") == ("https", "[::1]", 8443)
    for no_origin in ("http://u@h/", "http://h:/", "http://h%2e/", "//h/x", "/x", "ftp://h/", " http://h/"):
        assert smoke_io.url_origin(no_origin) is None, no_origin


# --------------------------------------------------------------------------- the deadline bounds a trickle


@pytest.fixture(scope="module")
def trickler() -> Iterator[Scripted]:
    srv = Scripted()
    yield srv
    srv.close()


def test_one_byte_per_second_body_is_cut_off_at_the_deadline(trickler: Scripted) -> None:
    sent = [0]
    trickler.routes["/trickle"] = trickle("body", 1.0, trickler.stop, sent)
    code, out, err, seconds = run_runner(
        trickler.url, [{"http": {"path": "/trickle", "json": {}}}], deadline=2.0
    )
    print(f"1 byte/s body, deadline 2.0s: the check ended after {seconds:.3f}s ({sent[0]} body bytes came)")
    assert code == smoke.EXIT_TIMEOUT
    assert 1.9 <= seconds < 20, (
        seconds
    )  # 200 bytes at 1 byte/s would take 200 s (make bench: the upper bound)
    assert 1 <= sent[0] <= 3
    assert out == ""
    assert err.startswith(
        "FAIL http GET /trickle: no answer (timed out after 2.0s: status 200 came, the body did not finish)"
    )
    assert "deadline 2s reached after 1 attempt(s)" in err


def test_one_byte_per_second_through_the_cli(trickler: Scripted) -> None:
    """The same with the runner as it runs on a host: a subprocess, its wall time measured outside."""
    sent = [0]
    trickler.routes["/trickle-cli"] = trickle("body", 1.0, trickler.stop, sent)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(SMOKE_PY), "--base-url", trickler.url, "--deadline", "2", "--interval", "0.05",
         "--checks", '[{"http": {"path": "/trickle-cli"}}]'],
        capture_output=True, text=True, timeout=30, env=env, check=False,
    )  # fmt: skip
    seconds = time.monotonic() - started
    print(f"1 byte/s body through the CLI, deadline 2s: the process ran {seconds:.3f}s")
    assert proc.returncode == smoke.EXIT_TIMEOUT, proc.stderr
    assert seconds < 20, seconds  # the body would take 200 s
    assert "status 200 came, the body did not finish" in proc.stderr


def test_trickled_headers_are_cut_off_too(trickler: Scripted) -> None:
    sent = [0]
    trickler.routes["/trickle-headers"] = trickle("headers", 0.2, trickler.stop, sent)
    code, _, err, seconds = run_runner(trickler.url, [{"http": {"path": "/trickle-headers"}}], deadline=1.5)
    assert code == smoke.EXIT_TIMEOUT
    assert 1.4 <= seconds < 10, seconds  # the trickle runs until the server stops
    # cut off while the headers trickle in; on a loaded machine they may all arrive just before the deadline,
    # and then it is the body that did not finish: either way the deadline ends the check
    assert err.startswith("FAIL http GET /trickle-headers: no answer (timed out after 1.5s")
    assert sent[0] >= 5


@settings(GENERATED, max_examples=8)
@given(
    phase=st.sampled_from(TRICKLE_PHASES),
    gap=st.floats(0.05, 0.6),
    deadline=st.floats(1.0, 1.6),
    method=st.sampled_from(["GET", "POST"]),
)
def test_generated_trickles_end_by_the_deadline(
    trickler: Scripted, phase: str, gap: float, deadline: float, method: str
) -> None:
    path, sent = new_path("drip"), [0]
    trickler.routes[path] = trickle(phase, gap, trickler.stop, sent)
    code, out, err, seconds = run_runner(
        trickler.url, [{"http": {"method": method, "path": path, "json": {}}}], deadline=deadline
    )
    assert code == smoke.EXIT_TIMEOUT, err
    assert out == ""
    assert deadline - 0.05 <= seconds < deadline + 5, (seconds, deadline)
    assert err.startswith(f"FAIL http {method} {path}: no answer (timed out after {deadline:.1f}s")


def test_retries_never_run_past_the_deadline(trickler: Scripted) -> None:
    """A fast 503 first, then trickles: the retry near the deadline gets only what is left; the 503
    (the last attempt the deadline did not cut short) decides."""
    hits = [0]
    sent = [0]
    drip = trickle("body", 0.3, trickler.stop, sent)
    not_ready = reply(503, {"error": "warming up"})

    def route(req: BaseHTTPRequestHandler) -> None:
        hits[0] += 1
        (not_ready if hits[0] % 2 else drip)(req)

    trickler.routes["/flaky"] = route
    code, _, err, seconds = run_runner(
        trickler.url, [{"http": {"path": "/flaky"}}], deadline=1.2, interval=0.3
    )
    assert 1.15 <= seconds < 2.1, seconds  # the retry was cut at the deadline (1.2 s), not after 1 s more
    assert code == smoke.EXIT_TIMEOUT
    assert hits[0] == 2 and sent[0] >= 1  # a 503, then a trickle that got under a second
    assert err.startswith("FAIL http GET /flaky: expected status 200, got 503; status 503; body: ")
    assert "after 2 attempt(s)" in err


# --------------------------------------------------------------------------- masking, generated


SECRET_NAMES = st.builds(
    lambda pre, word, post, upper: (pre + word + post).upper() if upper else pre + word + post,
    st.sampled_from(["", "x-", "X-Api-", "api_", "client_", "access-", "db.", "Proxy-"]),
    st.sampled_from(smoke_checklist.SECRET_WORDS),
    st.sampled_from(["", "_id", "-value", "s", "Value", ".1"]),
    st.booleans(),
)
TOKEN68 = st.builds(
    lambda body, pad: body + "=" * pad,
    st.text(alphabet=string.ascii_letters + string.digits + "-._~+/", min_size=1, max_size=40),
    st.integers(0, 2),
)
ANY_TEXT = st.text(min_size=1, max_size=40)
AUTH_SCHEMES = st.sampled_from(["", "Bearer ", "Basic ", "Token ", "bearer "])

# position -> (secret strategy, how a body / path / redirect carries it); q = percent-encoded secret
MASK_POSITIONS: dict[str, Any] = {
    "text: URL password": (ANY_TEXT, lambda n, s, q, a: ("body", f"no route to http://svc:{q}@db.internal:5432/x")),
    "text: URL user": (ANY_TEXT, lambda n, s, q, a: ("body", f"no route to https://{q}:pw@db.internal/x")),
    "text: form pair": (ANY_TEXT, lambda n, s, q, a: ("body", f"bad form: a=1&{n}={q}&b=2")),
    "text: header line": (TOKEN68, lambda n, s, q, a: ("body", f"HTTP/1.1 401\r\n{n}: {a}{s}\r\nX-Other: 1")),
    "text: Authorization header": (TOKEN68, lambda n, s, q, a: ("body", f"sent Authorization: {a}{s} and more")),
    "text: quoted pair": (ANY_TEXT, lambda n, s, q, a: ("body", f"config {n}={json.dumps(s, ensure_ascii=False)} end")),
    "text: truncated JSON": (ANY_TEXT, lambda n, s, q, a: (
        "body", '{"detail": "x", "' + n + '": ' + json.dumps(s, ensure_ascii=False)[:-1])),
    "JSON: secret key": (ANY_TEXT, lambda n, s, q, a: ("body", json.dumps({"error": "denied", n: s, "hint": "ok"}))),
    "JSON: nested secret key": (ANY_TEXT, lambda n, s, q, a: ("body", json.dumps({"d": [{"m": {n: {"v": s}}}]}))),
    "JSON: pair in a string": (ANY_TEXT, lambda n, s, q, a: ("body", json.dumps({"detail": f"a=1&{n}={q}"}))),
    "JSON: URL in a string": (ANY_TEXT, lambda n, s, q, a: ("body", json.dumps({"detail": f"GET http://u:{q}@h.example/"}))),
    "JSON: header in a string": (TOKEN68, lambda n, s, q, a: ("body", json.dumps({"detail": f"{n}: {a}{s}"}))),
    "JSON: a string alone": (ANY_TEXT, lambda n, s, q, a: ("body", json.dumps(f"http://u:{q}@h/ {n}={q}"))),
    "check path: query": (ANY_TEXT, lambda n, s, q, a: ("path", f"?{n}={q}")),
    "check path: URL user info": (ANY_TEXT, lambda n, s, q, a: ("absolute", f"u:{q}@")),
    "redirect: user info and query": (ANY_TEXT, lambda n, s, q, a: ("redirect", f"http://u:{q}@localhost/x?{n}={q}")),
}  # fmt: skip


def fail_line_with(server: Scripted, position: str, name: str, secret: str, scheme: str) -> str:
    quoted = urllib.parse.quote(secret, safe="")
    where, text = MASK_POSITIONS[position][1](name, secret, quoted, scheme)
    path = "/mask/" + position.replace(" ", "-").replace(":", "")
    server.routes[path] = reply(400, b"plain failure", "text/plain")
    if where == "body":
        server.routes[path] = reply(400, text.encode(), "text/plain")
    elif where == "path":
        path += text
    elif where == "absolute":
        path = f"http://{text}127.0.0.1:{server.port}{path}"
    elif where == "redirect":
        server.routes[path] = redirect(302, text)
    code, out, err, _ = run_runner(server.url, [{"http": {"path": path}}], deadline=0.01)
    assert code == smoke.EXIT_MALFORMED and out == "", err
    (line,) = err.splitlines()
    return line


@settings(GENERATED, max_examples=400)
@given(
    data=st.data(), position=st.sampled_from(sorted(MASK_POSITIONS)), name=SECRET_NAMES, scheme=AUTH_SCHEMES
)
def test_fail_lines_never_contain_the_secret(
    origin: Scripted, data: st.DataObject, position: str, name: str, scheme: str
) -> None:
    secret = data.draw(MASK_POSITIONS[position][0], label="secret")
    line = fail_line_with(origin, position, name, secret, scheme)
    baseline = fail_line_with(origin, position, name, "FILLER", scheme)
    assert "FILLER" not in baseline, baseline
    # the line does not depend on the secret at all: nothing of it shows
    assert line == baseline
    renderings = {
        secret,
        urllib.parse.quote(secret, safe=""),
        json.dumps(secret)[1:-1],
        smoke_checklist.one_line(secret),
    }
    for rendering in renderings:
        assert rendering in baseline or rendering not in line


def test_masking_examples() -> None:
    assert smoke_checklist.mask_text('{"error": "GET http://bob:hunter2@h/x?api_key=K1 failed"}') == (
        '{"error": "GET http://***@h/x?api_key=*** failed"}'
    )
    assert smoke_checklist.mask_text('"Authorization: Bearer abc.def"') == '"Authorization: ***"'
    assert smoke_checklist.mask_text("retry http://a@b:c@host/x") == "retry http://***@host/x"
    assert (
        smoke_checklist.mask_text('{"msg": "password=\\"two words\\" ok"}')
        == '{"msg": "password=\\"***\\" ok"}'
    )
    assert smoke_checklist.mask_text('{"t": "x", "detail": "{\\"token\\": \\"abc') == (
        '{"t": "x", "detail": "{\\"token\\": \\"***\\"'
    )
    assert smoke_checklist.mask_text("[" * 5000) == "[" * 5000  # too deep for json: masked as text, no crash
    assert smoke_checklist.validate_equals({"auth": {"token": "real"}}, {"auth.token": "other"}) == [
        "field 'auth.token' is not the expected value (a secret-looking field: values not shown)"
    ]


def test_verbose_retry_lines_are_masked_too(origin: Scripted) -> None:
    origin.routes["/verbose-secret"] = reply(500, b"boom token=v3rb0se", "text/plain")
    err = io.StringIO()
    runner = smoke.SmokeRunner(
        smoke_checklist.parse_checks([{"http": {"path": "/verbose-secret"}}]), origin.url,
        deadline=0.4, interval=0.05, out=io.StringIO(), err=err, verbose=True,
    )  # fmt: skip
    assert runner.run() == smoke.EXIT_TIMEOUT
    assert "v3rb0se" not in err.getvalue()
    assert err.getvalue().count("retry ") >= 1
