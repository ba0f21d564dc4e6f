"""What the rollout tests drive: containers as the Docker provider makes and deletes them, the product's
host scripts as `pulumi up` runs them, request loops, and a fake `nvidia-smi` that asks the real engine.

- Containers are pulumi-docker Container inputs (camelCase, as `python -m stacks plan --json` shows
  them) mapped by tests.real.engine_api onto the Engine API: create, `uploads` (the provider copies them
  in before the start), start, `wait` until healthy; the delete stops with `destroyGraceSeconds`, then
  removes, as terraform-provider-docker's resourceDockerContainerDelete does.
- Host scripts run as pulumi-command runs them: `env K=V ... bash -s` with the script on stdin
  (components.host.shell), locally with real bash or over real SSH as the deploy user.
- `ClientLoop` sends one GET per fresh connection from this process (the proxy's published loopback
  port); `INTERNAL_CLIENT` does the same from a container on the stack network.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from components.host.shell import command_line, script
from tests.real import engine_api
from tests.real.engine import Engine
from tests.real.remote import Connection, RemoteResult, run_remote

# ---------------------------------------------------------------------------------------------------
# Containers, the provider's way


def create_container(engine: Engine, inputs: Mapping[str, Any]) -> str:
    """The provider's create of one Container, as tests.real.engine_api maps it: create, networks,
    `uploads` (CopyToContainer before the start), `sysctls` (HostConfig.Sysctls), start; waits until
    healthy when `wait` is set. Returns the container id."""
    create = engine_api.create_body(inputs)
    sock = str(engine.socket)
    container_id = engine_api.create_and_start(sock, create)
    if create.wait_healthy:
        engine_api.wait_healthy(sock, container_id, create.wait_timeout_s)
    return container_id


def delete_container(engine: Engine, name: str, grace_s: int) -> None:
    """FUNCS resourceDockerContainerDelete: stop with the grace period, remove; a missing one is fine."""
    engine_api.remove(str(engine.socket), name, grace_s=grace_s)


def inspect(engine: Engine, name: str) -> dict[str, Any] | None:
    try:
        return engine_api.inspect(str(engine.socket), name)
    except engine_api.EngineError as err:
        if err.status == 404:
            return None
        raise


def engine_events(engine: Engine, since: float, until: float, *names: str) -> list[dict[str, Any]]:
    """The engine's own record of container events (create, start, die, destroy ...) for these names,
    with their nanosecond times: `docker events --since --until` replays them from the engine's log."""
    argv = ["events", "--since", f"{since:.6f}", "--until", f"{until:.6f}", "--format", "{{json .}}"]
    argv += ["--filter", "type=container"]
    for name in names:
        argv += ["--filter", f"container={name}"]
    lines = engine.docker_cli(*argv, timeout=60).stdout.splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def event_time(events: Sequence[Mapping[str, Any]], name: str, action: str) -> float:
    """The time (seconds since the epoch) of the first `action` event of the container `name`."""
    for event in events:
        if event.get("Action") == action and event.get("Actor", {}).get("Attributes", {}).get("name") == name:
            return int(event["timeNano"]) / 1e9
    seen = [(e.get("Action"), e.get("Actor", {}).get("Attributes", {}).get("name")) for e in events]
    raise AssertionError(f"no {action} event for {name} in the engine's events: {seen}")


# ---------------------------------------------------------------------------------------------------
# Host scripts, as pulumi-command runs them


@dataclass(frozen=True)
class ScriptRun:
    exit: int
    stdout: str
    stderr: str
    started: float
    ended: float


def run_host_script_locally(
    name: str, env: Mapping[str, str], engine: Engine, path_prefix: str = "", timeout: float = 180
) -> ScriptRun:
    """local.Command: `env K=V ... bash -s` (the create string) with the script on stdin, run by real
    bash; the Docker CLI reaches the test engine through DOCKER_HOST, `path_prefix` goes first on PATH."""
    base = engine.env()
    if path_prefix:
        base["PATH"] = f"{path_prefix}:{base.get('PATH', '/usr/bin:/bin')}"
    started = time.time()
    result = subprocess.run(
        ["bash", "-c", command_line(env)],
        input=script(name),
        capture_output=True,
        text=True,
        env=base,
        timeout=timeout,
        check=False,
    )
    return ScriptRun(result.returncode, result.stdout, result.stderr, started, time.time())


def run_host_script_over_ssh(name: str, env: Mapping[str, str], connection: Connection) -> ScriptRun:
    """remote.Command: the same create string as one SSH session's command, the script piped in."""
    started = time.time()
    result: RemoteResult = run_remote(connection, command_line(env), script(name))
    return ScriptRun(result.exit, result.stdout, result.stderr, started, time.time())


# ---------------------------------------------------------------------------------------------------
# Clients


@dataclass(frozen=True)
class Sample:
    sent: float  # time.time() when the request was sent
    release: str | None  # the answering copy's release id, None on a failure
    error: str | None


@dataclass
class ClientLoop:
    """GET / on 127.0.0.1:`port`, one fresh connection per request, until stopped."""

    port: int
    pause_s: float = 0.005
    timeout_s: float = 10.0
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=f"client-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return self.samples

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(get_release(self.port, self.timeout_s))
            time.sleep(self.pause_s)

    def wait_for(self, release: str, timeout_s: float = 30) -> None:
        """Until a request was answered by `release`."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            if any(s.release == release for s in self.samples[seen:]):
                return
            seen = max(0, len(self.samples) - 1)
            time.sleep(0.05)
        raise AssertionError(f"no answer from {release} within {timeout_s}s: {summary(self.samples)}")


def get_release(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> Sample:
    sent = time.time()
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return Sample(sent, None, f"HTTP {response.status}: {body[:200]!r}")
        return Sample(sent, str(json.loads(body)["release"]), None)
    except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
        return Sample(sent, None, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


@dataclass
class KeepAliveLoop(ClientLoop):
    """GET / over one kept-alive connection, as a pooling client (requests, urllib3) sends them: a
    request on a REUSED connection that the server closed while it sat idle (no response byte came back)
    is sent again once on a fresh connection, as urllib3 retries it; `retried` counts those."""

    retried: int = 0

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            sent = time.time()
            reused = conn is not None
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
            try:
                sample = _exchange(conn, sent)
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine) as exc:
                conn.close()
                conn = None
                if not reused:
                    self.samples.append(Sample(sent, None, f"{type(exc).__name__}: {exc}"))
                    continue
                self.retried += 1
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
                try:
                    sample = _exchange(conn, sent)
                except (OSError, http.client.HTTPException, ValueError, KeyError) as again:
                    conn.close()
                    conn = None
                    sample = Sample(sent, None, f"{type(again).__name__}: {again} (after a retry)")
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                conn.close()
                conn = None
                sample = Sample(sent, None, f"{type(exc).__name__}: {exc}")
            self.samples.append(sample)
            time.sleep(self.pause_s)
        if conn is not None:
            conn.close()


def _exchange(conn: http.client.HTTPConnection, sent: float) -> Sample:
    conn.request("GET", "/")
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        return Sample(sent, None, f"HTTP {response.status}: {body[:200]!r}")
    return Sample(sent, str(json.loads(body)["release"]), None)


def runs(releases: Sequence[str | None]) -> list[str | None]:
    """Run-length order of answers: [v1, v1, None, v2] -> [v1, None, v2]."""
    order: list[str | None] = []
    for release in releases:
        if not order or order[-1] != release:
            order.append(release)
    return order


def summary(samples: Sequence[Sample]) -> str:
    failed = [s for s in samples if s.release is None]
    errors = sorted({s.error or "" for s in failed})[:5]
    return f"{len(samples)} requests, {len(failed)} failed, order {runs([s.release for s in samples])}, errors {errors}"


def outage(samples: Sequence[Sample]) -> tuple[float, int]:
    """The longest stretch without an answer: seconds from the last answered request before it to the
    first answered request after it, and how many requests failed in it."""
    longest = (0.0, 0)
    last_ok: float | None = None
    failed = 0
    for sample in samples:
        if sample.release is None:
            failed += 1
            continue
        if failed and last_ok is not None:
            longest = max(longest, (sample.sent - last_ok, failed))
        last_ok = sample.sent
        failed = 0
    return longest


# A client on the stack network, in a container: GETs `URL` until SIGTERM, then prints one JSON line.
INTERNAL_CLIENT = """\
import json, os, signal, time, urllib.request
url = os.environ["URL"]
stopping = False
def stop(signum, frame):
    global stopping
    stopping = True
signal.signal(signal.SIGTERM, stop)
ok = failed = 0
order = []
errors = []
while not stopping:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            release = json.loads(response.read())["release"]
        ok += 1
    except Exception as exc:
        release = None
        failed += 1
        if len(errors) < 5:
            errors.append(repr(exc))
    if not order or order[-1] != release:
        order.append(release)
    time.sleep(0.01)
print(json.dumps({"ok": ok, "failed": failed, "order": order, "errors": errors}), flush=True)
"""


# ---------------------------------------------------------------------------------------------------
# A fake nvidia-smi that asks the real engine

FAKE_NVIDIA_SMI = """\
import json, os, subprocess, sys, time
conf = json.load(open(CONF))
fields_known = ("index", "uuid", "memory.total", "memory.used", "memory.free", "name")
query = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--query-gpu=")]
formats = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--format=")]
others = [a for a in sys.argv[1:] if not a.startswith(("--query-gpu=", "--format="))]
if len(query) != 1 or len(formats) != 1 or others or formats[0] not in ("csv,noheader,nounits", "csv,noheader"):
    print(f"fake nvidia-smi: unexpected arguments {sys.argv[1:]}", file=sys.stderr)
    sys.exit(9)
fields = query[0].split(",")
if fields == ["driver_version"]:  # the gate's first question: does the driver answer at all
    print("580.65.06")
    sys.exit(0)
if any(f not in fields_known for f in fields):
    print(f"fake nvidia-smi: unknown field in {query[0]}", file=sys.stderr)
    sys.exit(9)
now = time.time()
running = False
if conf["old"]:
    inspected = subprocess.run([conf["docker"], "inspect", "-f", "{{.State.Running}}", conf["old"]],
                               capture_output=True, text=True)
    running = inspected.returncode == 0 and inspected.stdout.strip() == "true"
gone_file = os.path.join(conf["state"], "gone")
if conf["stuck_mib"] is not None:
    used = conf["stuck_mib"]
elif running:
    used = conf["idle_mib"] + conf["budget_mib"]
else:
    if not os.path.exists(gone_file):
        with open(gone_file, "w") as out:
            out.write(repr(now))
    gone = float(open(gone_file).read())
    # the driver frees the old process's memory a moment after it exits
    used = conf["idle_mib"] + (conf["budget_mib"] if now - gone < conf["lag_s"] else 0)
values = {"index": "0", "uuid": "GPU-fake-0000", "name": "Fake GPU", "memory.total": str(conf["total_mib"]),
          "memory.used": str(used), "memory.free": str(conf["total_mib"] - used)}
print(", ".join(values[f] for f in fields))
with open(os.path.join(conf["state"], "queries.log"), "a") as log:
    log.write(f"{now:.6f} {used} {'running' if running else 'stopped'}\\n")
"""


@dataclass(frozen=True)
class FakeGpu:
    """One fake GPU of `total_mib`: the old copy `old` holds `budget_mib` while the engine says it runs
    (and `lag_s` longer), or `stuck_mib` is always used (memory that never frees)."""

    directory: Path
    total_mib: int
    budget_mib: int
    idle_mib: int

    @property
    def bin_dir(self) -> Path:
        return self.directory / "bin"

    def queries(self) -> list[tuple[float, int]]:
        """(time, memory.used) of every query the fake answered."""
        log = self.directory / "queries.log"
        if not log.exists():
            return []
        return [(float(t), int(u)) for t, u, _ in (line.split() for line in log.read_text().splitlines())]


def make_fake_gpu(
    directory: Path,
    engine: Engine,
    *,
    old: str,
    total_mib: int,
    budget_mib: int,
    idle_mib: int = 300,
    lag_s: float = 0.0,
    stuck_mib: int | None = None,
) -> FakeGpu:
    directory.mkdir(parents=True)
    conf = directory / "conf.json"
    conf.write_text(
        json.dumps(
            {
                "docker": engine.cli,
                "old": old,
                "total_mib": total_mib,
                "budget_mib": budget_mib,
                "idle_mib": idle_mib,
                "lag_s": lag_s,
                "stuck_mib": stuck_mib,
                "state": str(directory),
            }
        )
    )
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text(f"#!{sys.executable}\nCONF = {str(conf)!r}\n" + FAKE_NVIDIA_SMI)
    fake.chmod(0o755)
    return FakeGpu(directory, total_mib, budget_mib, idle_mib)


def env_of(values: Mapping[str, object]) -> dict[str, str]:
    return {key: str(value) for key, value in values.items()}


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def auto_name(logical: str) -> str:
    """pulumi-docker's autonaming (prov.SetAutonaming(255, "-")): `<logical name>-<7 hex>`."""
    return f"{logical}-{os.urandom(4).hex()[:7]}"
