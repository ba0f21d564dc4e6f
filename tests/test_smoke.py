"""Tests for components/smoke.py against real HTTP servers on 127.0.0.1 and a stub docker."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from components import smoke

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
    code, out, err = run_main(capsys, server.url, checks)
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
    assert time.monotonic() - started < 2.5
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
    code, _, err = run_main(capsys, server.url, [{"gpu": {}}], "--container", "app")
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
    assert smoke.validate_json(body, {"s": "string", "i": "number", "f": "number", "b": "boolean"}) == []
    assert smoke.validate_json(body, {"i": "integer", "o": "object", "a": "array", "n": "any"}) == []
    assert smoke.validate_json(body, {"o.k": "array", "o.k.1.id": "integer"}) == []
    assert smoke.validate_json(body, {"b": "number", "f": "integer", "n": "string"}) == [
        "field 'b' is boolean, expected number",
        "field 'f' is number, expected integer",
        "field 'n' is null, expected string",
    ]
    assert smoke.validate_json(body, {"o.missing": "any", "o.k.5": "any", "s.x": "any"}) == [
        "missing field 'o.missing'",
        "missing field 'o.k.5'",
        "missing field 's.x'",
    ]
    assert smoke.validate_json([1], {"a": "any"}) == ["missing field 'a'"]


def test_render_template() -> None:
    saved = {"tts": {"audioUrl": "http://h/audio/a.wav?x=1", "n": 3, "ok": True}}
    assert smoke.render_template("/p{tts.audioUrl|basename}", saved) == "/pa.wav"
    assert smoke.render_template("{tts.n}-{tts.ok}-{{lit}}", saved) == "3-true-{lit}"
    with pytest.raises(KeyError):
        smoke.render_template("{tts.nope}", saved)
    with pytest.raises(KeyError):
        smoke.render_template("{other.x}", saved)


def test_mask_text() -> None:
    assert smoke.mask_text('{"password": "p", "list": [{"secretValue": 1}]}') == (
        '{"password": "***", "list": [{"secretValue": "***"}]}'
    )
    assert smoke.mask_text('{"token": "abc", "trunc') == '{"token": "***", "trunc'
    assert smoke.mask_text("Authorization: Bearer abc123 next") == "Authorization: *** next"
    assert smoke.mask_url("http://user:pw@h/x?api_key=1&a=2") == "http://***@h/x?api_key=***&a=2"


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
    checks = smoke.parse_checks([{"http": {"path": "/h", "json": {"ok": "boolean"}}}])
    runner = smoke.SmokeRunner(
        checks, "http://127.0.0.1:1", deadline=deadline, interval=interval,
        clock=fake.clock, sleep=fake.sleep, http=http, out=out, err=err,
    )  # fmt: skip
    return runner, timeouts, out, err


def test_runner_retries_on_interval_until_deadline() -> None:
    fake = FakeTime()
    runner, timeouts, _, err = fake_runner(fake, [smoke.Unreachable("refused")])
    assert runner.run() == 2
    assert fake.sleeps == [2, 2, 2, 2]
    assert timeouts == [10, 8, 6, 4, 2]
    assert "after 5 attempt(s)" in err.getvalue()


def test_runner_request_timeout_capped_at_10() -> None:
    fake = FakeTime()
    ok = smoke.HttpResponse(200, b'{"ok": true}')
    runner, timeouts, out, _ = fake_runner(fake, [ok], deadline=180)
    assert runner.run() == 0
    assert timeouts == [10]
    assert out.getvalue() == "PASS http GET /h 200 in 0.0s\n"


def test_runner_last_answer_decides() -> None:
    bad = smoke.HttpResponse(200, b"{}")
    fake = FakeTime()
    runner, _, _, err = fake_runner(fake, [bad, bad, smoke.Unreachable("refused")], deadline=6)
    assert runner.run() == 2
    fake = FakeTime()
    runner, _, _, err = fake_runner(fake, [smoke.Unreachable("refused"), bad], deadline=6)
    assert runner.run() == 3
    assert "missing field 'ok'" in err.getvalue()


def test_runner_gives_late_check_one_attempt() -> None:
    fake = FakeTime()
    runner, timeouts, _, _ = fake_runner(fake, [smoke.HttpResponse(200, b'{"ok": false}')], deadline=0.01)
    assert runner.run() == 0
    assert timeouts == [smoke.MIN_ATTEMPT_TIMEOUT]


def test_validate_equals_exact_values() -> None:
    body = {"cuda": True, "gpus": [{"name": "NVIDIA A2"}], "count": 1}
    assert smoke.validate_equals(body, {"cuda": True, "gpus.0.name": "NVIDIA A2", "count": 1}) == []
    assert smoke.validate_equals(body, {"cuda": False, "count": True, "nope": 1}) == [
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
