#!/usr/bin/env python3
"""Post-deploy smoke checks for a GPU ML service (standard library only, Python 3.8+).

Copied to the GPU host with its two modules, smoke_checklist.py (the checks file: format, parsing,
masking) and smoke_io.py (HTTP on one origin, docker exec), and run there from their folder with
``python3`` (3.8 or newer); put whole into the smoke Job's ConfigMap on Kubernetes. So the three
import nothing from the rest of the repository or from third-party packages. They also work on
their own against any URL, from one folder::

    python3 smoke.py --base-url http://127.0.0.1:3000 --checks-file checks.json \
        [--deadline 180] [--interval 2] [--container NAME] [--docker docker] [--verbose]
    python3 smoke.py --base-url http://127.0.0.1:3000 --checks '[{"http": {"path": "/api/health"}}]'
    python3 smoke.py --base-url http://127.0.0.1:3000 --checks-file - < checks.json

The checks file (a JSON list of ``http``, ``file`` and ``gpu`` checks, with ``saveAs`` and path
templates) is described in smoke_checklist.py.

File and gpu checks run ``<docker> exec <container> test -f PATH`` and
``<docker> exec <container> COMMAND...`` (default command ``nvidia-smi``); they need
``--container``. ``--docker`` is split like a shell word list, so ``--docker "sudo -n docker"``
works.

Behaviour: checks run in order. Every check is retried every ``--interval`` seconds until it
passes or the overall ``--deadline`` (measured from start, for all checks together) would pass
before the next attempt. Each check always gets at least one attempt. An attempt ends after
min(10, remaining) seconds, all of it: connecting, redirects, the headers and the whole body, so a
server that trickles its answer byte by byte is cut off there too. Only a check's first attempt
may run past the deadline: it gets at least 1 s. Proxies from the environment are ignored. The
result of the LAST attempt decides the exit code, unless the deadline cut that attempt short (a
retry left with under 1 s that timed out): then the attempt before it decides.

Every request stays on the origin of ``--base-url`` (same scheme, host and port; http or https):
a redirect anywhere else is not followed (so request headers such as ``Authorization`` never
leave the service) and an absolute URL in a path (``scheme:...`` or ``//host/...``, written in
the checks or filled in from a saved response) that points elsewhere is not requested. Either
fails the check at once with exit 3, naming the refused URL (masked).

Exit codes (1-4 as in the reference smoke-test.sh):
  0  all checks passed
  1  missing tool: docker (first word of --docker) not found although a file/gpu check needs
     it, or python older than 3.8
  2  timeout: the endpoint never answered right within the deadline - last attempt could not
     connect, timed out, or got a 5xx (server not ready / unavailable)
  3  malformed response: it answered, but with an unexpected non-5xx status, a body that is
     not JSON, a missing field or a field of the wrong type
  4  expected file absent inside the container
  5  gpu check command failed inside the container (not in the reference; added here)
  64 usage error: bad arguments or an invalid checks file (argparse's own 2 would collide
     with "timeout")

Output: one ``PASS ...`` line per passed check on stdout; on failure ONE ``FAIL ...`` line on
stderr naming the check and the last response (status and first 300 characters of the body),
credentials masked as ``***`` (see smoke_checklist.py). ``--verbose`` adds one stderr line per failed
attempt, masked the same way.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from components.host import smoke_checklist, smoke_io
else:
    try:  # in the repo
        from components.host import smoke_checklist, smoke_io
    except ImportError:  # standalone, beside smoke_checklist.py and smoke_io.py
        import smoke_checklist
        import smoke_io

EXIT_OK = 0
EXIT_MISSING_TOOL = 1
EXIT_TIMEOUT = 2
EXIT_MALFORMED = 3
EXIT_FILE_ABSENT = 4
EXIT_GPU_FAILED = 5
EXIT_USAGE = 64

MIN_PYTHON = (3, 8)
DEFAULT_DEADLINE = 180.0
DEFAULT_INTERVAL = 2.0
MAX_REQUEST_TIMEOUT = 10.0
MIN_ATTEMPT_TIMEOUT = 1.0  # a check's first attempt, even when the deadline has passed
MAX_COMMAND_TIMEOUT = 60.0

# Outcome kinds of a single attempt.
OK = "ok"
UNREACHABLE = "unreachable"  # no connection, timeout, transport error -> exit 2
NOT_READY = "not-ready"  # 5xx -> exit 2
MALFORMED = "malformed"  # exit 3
FILE_ABSENT = "file-absent"  # exit 4
GPU_FAILED = "gpu-failed"  # exit 5
MISSING_TOOL = "missing-tool"  # exit 1, never retried

EXIT_FOR_KIND = {
    OK: EXIT_OK,
    UNREACHABLE: EXIT_TIMEOUT,
    NOT_READY: EXIT_TIMEOUT,
    MALFORMED: EXIT_MALFORMED,
    FILE_ABSENT: EXIT_FILE_ABSENT,
    GPU_FAILED: EXIT_GPU_FAILED,
    MISSING_TOOL: EXIT_MISSING_TOOL,
}


class UsageError(smoke_checklist.ConfigError):
    """argparse rejected the command line."""


@dataclass
class Outcome:
    """The result of one attempt at a check."""

    kind: str
    reason: str = ""
    status: int | None = None
    body: str | None = None
    saved: Any = None
    final: bool = False  # retrying cannot help (missing tool, unfillable template, another origin)
    timed_out: bool = False  # the attempt ran out of time (its request or command timed out)

    @property
    def ok(self) -> bool:
        return self.kind == OK


def python_supported(version: tuple[int, ...]) -> bool:
    return tuple(version[:2]) >= MIN_PYTHON


# --------------------------------------------------------------------------- runner


class SmokeRunner:
    """Runs checks in order with retries against one overall deadline.

    clock/sleep/http/run are injectable so tests can drive time and I/O.
    """

    def __init__(
        self,
        checks: Sequence[smoke_checklist.Check],
        base_url: str,
        *,
        deadline: float = DEFAULT_DEADLINE,
        interval: float = DEFAULT_INTERVAL,
        container: str | None = None,
        docker: Sequence[str] = ("docker",),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        http: Callable[
            [str, str, bytes | None, dict[str, str], float], smoke_io.HttpResponse
        ] = smoke_io.http_request,
        run: Callable[[Sequence[str], float], smoke_io.CommandResult] = smoke_io.run_command,
        out: TextIO | None = None,
        err: TextIO | None = None,
        verbose: bool = False,
    ) -> None:
        self.checks = list(checks)
        self.base_url = base_url
        self.origin = smoke_io.url_origin(base_url)
        self.deadline = deadline
        self.interval = interval
        self.container = container
        self.docker = list(docker)
        self.clock = clock
        self.sleep = sleep
        self.http = http
        self.run_cmd = run
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.verbose = verbose
        self.saved: dict[str, Any] = {}
        self.deadline_at = 0.0

    # -- driving

    def run(self) -> int:
        self.deadline_at = self.clock() + self.deadline
        needs_docker = any(
            isinstance(c, (smoke_checklist.FileCheck, smoke_checklist.GpuCheck)) for c in self.checks
        )
        if needs_docker and smoke_io.find_tool(self.docker) is None:
            name = self.docker[0] if self.docker else "docker"
            self._fail_line(
                "preflight",
                EXIT_MISSING_TOOL,
                f"'{name}' not found on PATH but file/gpu checks need it",
            )
            return EXIT_MISSING_TOOL
        for check in self.checks:
            code = self._run_check(check)
            if code != EXIT_OK:
                return code
        return EXIT_OK

    def _run_check(self, check: smoke_checklist.Check) -> int:
        started = self.clock()
        attempts = 0
        decisive: tuple[Outcome, str] | None = None  # the last attempt the deadline did not cut short
        while True:
            attempts += 1
            remaining = self.deadline_at - self.clock()
            # Only a check's first attempt may run past the deadline (it gets MIN_ATTEMPT_TIMEOUT).
            budget = max(remaining, MIN_ATTEMPT_TIMEOUT) if decisive is None else max(remaining, 0.0)
            outcome, label = self._attempt(check, budget)
            if outcome.ok:
                if isinstance(check, smoke_checklist.HttpCheck) and check.save_as:
                    self.saved[check.save_as] = outcome.saved
                took = self.clock() - started
                status = f" {outcome.status}" if outcome.status is not None else ""
                tries = f" ({attempts} attempts)" if attempts > 1 else ""
                print(f"PASS {label}{status} in {took:.1f}s{tries}", file=self.out, flush=True)
                return EXIT_OK
            if decisive is not None and outcome.timed_out and budget < MIN_ATTEMPT_TIMEOUT:
                outcome, label = decisive  # the deadline cut this retry short: the attempt before decides
            else:
                decisive = outcome, label
            remaining = self.deadline_at - self.clock()
            if outcome.final or remaining <= self.interval:
                code = EXIT_FOR_KIND[outcome.kind]
                self._fail_line(label, code, self._describe(outcome, attempts))
                return code
            if self.verbose:
                reason = smoke_checklist.one_line(smoke_checklist.mask_text(outcome.reason))
                print(f"retry {label}: {reason} ({remaining:.0f}s left)", file=self.err, flush=True)
            self.sleep(self.interval)

    def _attempt(self, check: smoke_checklist.Check, budget: float) -> tuple[Outcome, str]:
        label = check.label()
        try:
            if isinstance(check, smoke_checklist.HttpCheck):
                path = smoke_checklist.render_template(check.path, self.saved)
                label = f"http {check.method} {smoke_checklist.one_line(smoke_checklist.mask_url(path))}"
                return self._attempt_http(check, path, min(MAX_REQUEST_TIMEOUT, budget)), label
            if isinstance(check, smoke_checklist.FileCheck):
                path = smoke_checklist.render_template(check.path, self.saved)
                label = f"file {smoke_checklist.one_line(smoke_checklist.mask_url(path))}"
                return self._attempt_file(path, min(MAX_COMMAND_TIMEOUT, budget)), label
            return self._attempt_gpu(check, min(MAX_COMMAND_TIMEOUT, budget)), label
        except KeyError as error:
            reason = f"cannot fill path template: {error.args[0]}"
            return Outcome(MALFORMED, reason, final=True), label

    def _attempt_http(self, check: smoke_checklist.HttpCheck, path: str, timeout: float) -> Outcome:
        headers = dict(check.headers)
        data: bytes | None = None
        if check.body is not None:
            data = json.dumps(check.body).encode("utf-8")
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        if check.json_spec is not None and not any(k.lower() == "accept" for k in headers):
            headers["Accept"] = "application/json"
        url = smoke_io.join_url(self.base_url, path)
        origin = smoke_io.origin_text(self.origin)
        if self.origin is None or smoke_io.url_origin(url) != self.origin:
            reason = f"refused to request a URL off the service's origin {origin}: {url}"
            return Outcome(MALFORMED, reason, final=True)
        try:
            response = self.http(url, check.method, data, headers, timeout)
        except smoke_io.Unreachable as error:
            return Outcome(UNREACHABLE, f"no answer ({error})", timed_out=error.timed_out)
        except smoke_io.OffOrigin as error:
            reason = (
                f"refused redirect ({error.status}) off the service's origin {origin}, "
                f"not followed: {error.target}"
            )
            return Outcome(MALFORMED, reason, error.status, final=True)
        text = response.body[: smoke_io.MAX_BODY_BYTES].decode("utf-8", "replace")
        status = response.status
        if status not in check.status:
            kind = NOT_READY if 500 <= status <= 599 else MALFORMED
            wanted = "/".join(str(s) for s in check.status)
            return Outcome(kind, f"expected status {wanted}, got {status}", status, text)
        if len(response.body) > smoke_io.MAX_BODY_BYTES:
            return Outcome(MALFORMED, f"body larger than {smoke_io.MAX_BODY_BYTES} bytes", status, text)
        parsed: Any = None
        if check.json_spec is not None or check.equals is not None or check.save_as:
            try:
                parsed = json.loads(text)
            except ValueError:
                return Outcome(MALFORMED, "body is not JSON", status, text)
            problems = smoke_checklist.validate_json(
                parsed, check.json_spec or {}
            ) + smoke_checklist.validate_equals(parsed, check.equals or {})
            if problems:
                return Outcome(MALFORMED, "; ".join(problems), status, text)
        return Outcome(OK, status=status, body=text, saved=parsed)

    def _docker_exec(self, args: Sequence[str], timeout: float) -> smoke_io.CommandResult:
        if not self.container:
            raise smoke_io.ToolMissing("no --container given")
        return self.run_cmd([*self.docker, "exec", self.container, *args], timeout)

    def _attempt_file(self, path: str, timeout: float) -> Outcome:
        failure = "file not found in container {container} (docker exec exit {code})"
        return self._attempt_in_container(["test", "-f", path], timeout, FILE_ABSENT, failure)

    def _attempt_gpu(self, check: smoke_checklist.GpuCheck, timeout: float) -> Outcome:
        failure = "command failed in container {container} (exit {code})"
        return self._attempt_in_container(check.command, timeout, GPU_FAILED, failure)

    def _attempt_in_container(
        self, args: Sequence[str], timeout: float, failed: str, failure: str
    ) -> Outcome:
        try:
            result = self._docker_exec(args, timeout)
        except smoke_io.ToolMissing as error:
            return Outcome(MISSING_TOOL, str(error), final=True)
        if result.returncode == 0:
            return Outcome(OK)
        message = failure.format(container=self.container, code=result.returncode)
        return Outcome(failed, message, body=result.output, timed_out=result.timed_out)

    # -- reporting

    def _describe(self, outcome: Outcome, attempts: int) -> str:
        parts = [smoke_checklist.one_line(smoke_checklist.mask_text(outcome.reason))]
        if outcome.status is not None:
            parts.append(f"status {outcome.status}")
        if outcome.body is not None:
            parts.append(f"body: {smoke_checklist.snippet(outcome.body)}")
        if outcome.kind in (UNREACHABLE, NOT_READY):
            parts.append(f"deadline {self.deadline:g}s reached after {attempts} attempt(s)")
        return "; ".join(parts)

    def _fail_line(self, label: str, code: int, message: str) -> None:
        print(f"FAIL {label}: {message} (exit {code})", file=self.err, flush=True)


# --------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def command_arguments(
    base_url: str, checks_file: str, deadline_s: float, interval_s: float, container: str | None = None
) -> list[str]:
    """The arguments a deploy runs this program with (the Docker host's SmokeTest and the Kubernetes
    SmokeJob): the one place that knows this command line besides build_parser."""
    arguments = ["--base-url", base_url, "--checks-file", checks_file]
    if container is not None:
        arguments += ["--container", container]
    return [*arguments, "--deadline", f"{deadline_s:g}", "--interval", f"{interval_s:g}"]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="smoke.py",
        description="Post-deploy smoke checks. Exit codes: 0 ok, 1 missing tool, 2 timeout, "
        "3 malformed response, 4 file absent in container, 5 gpu check failed, 64 usage error.",
    )
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:3000")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checks-file", help="JSON file with the list of checks")
    source.add_argument("--checks", help="the list of checks as a JSON string")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE, help="overall seconds")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between tries")
    parser.add_argument("--container", help="container for file/gpu checks (docker exec)")
    parser.add_argument("--docker", default="docker", help='docker command, e.g. "sudo -n docker"')
    parser.add_argument("-v", "--verbose", action="store_true", help="log each failed attempt")
    return parser


def load_config(argv: Sequence[str]) -> tuple[argparse.Namespace, list[smoke_checklist.Check]]:
    args = build_parser().parse_args(list(argv))
    if smoke_io.url_origin(args.base_url) is None:
        raise smoke_checklist.ConfigError(
            f"--base-url must be an http(s) URL of a host and port, without user info, "
            f"got {smoke_checklist.mask_url(args.base_url)!r}"
        )
    if args.deadline <= 0 or args.interval < 0:
        raise smoke_checklist.ConfigError("--deadline must be > 0 and --interval >= 0")
    if args.checks_file == "-":  # from stdin: keeps request headers off the command line
        text = sys.stdin.read()
    elif args.checks_file is not None:
        try:
            with open(args.checks_file, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as error:
            raise smoke_checklist.ConfigError(f"cannot read --checks-file: {error}") from error
    else:
        text = args.checks
    try:
        raw = json.loads(text)
    except ValueError as error:
        raise smoke_checklist.ConfigError(f"checks are not valid JSON: {error}") from error
    checks = smoke_checklist.parse_checks(raw)
    if (
        any(isinstance(c, (smoke_checklist.FileCheck, smoke_checklist.GpuCheck)) for c in checks)
        and not args.container
    ):
        raise smoke_checklist.ConfigError("file/gpu checks need --container")
    try:
        args.docker_argv = shlex.split(args.docker)
    except ValueError as error:
        raise smoke_checklist.ConfigError(f"--docker: {error}") from error
    if not args.docker_argv:
        raise smoke_checklist.ConfigError("--docker must not be empty")
    return args, checks


def main(argv: Sequence[str] | None = None) -> int:
    if not python_supported(tuple(sys.version_info[:3])):
        found = ".".join(str(v) for v in sys.version_info[:3])
        print(f"FAIL preflight: python {found} is too old, need 3.8+ (exit 1)", file=sys.stderr)
        return EXIT_MISSING_TOOL
    try:
        args, checks = load_config(sys.argv[1:] if argv is None else argv)
    except smoke_checklist.ConfigError as error:
        print(f"smoke.py: error: {error} (exit {EXIT_USAGE})", file=sys.stderr)
        return EXIT_USAGE
    runner = SmokeRunner(
        checks,
        args.base_url,
        deadline=args.deadline,
        interval=args.interval,
        container=args.container,
        docker=args.docker_argv,
        verbose=args.verbose,
    )
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
