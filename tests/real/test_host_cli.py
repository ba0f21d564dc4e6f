"""`python -m stacks tunnel|status|logs`, run for real: the CLI as a subprocess, the OpenSSH client with the
stack's pinned keys against this tier's sshd on loopback, containers in the tier's own dockerd.

- tunnel: an sshd of its own that allows forwarding to one loopback port (the tier's target allows none),
  directly and through a bastion of its own (the bastion's key pinned too); a tiny HTTP server listens on
  the stack's published port, the tunnel maps it to another local port (the sshd runs on this machine:
  the same port cannot listen twice), a request goes through, SIGINT closes ssh and the CLI exits 0.
- status and logs: labeled containers in the test engine, over the tier's target sshd (its sessions reach
  the test engine: SetEnv DOCKER_HOST) and with `host: local` (DOCKER_HOST in the CLI's environment).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.core.vocabulary import LABEL_SERVICE, LABEL_STACK
from components.remote.ssh import identity_file, local_home
from stacks.plan import PROJECT_DIR
from tests.real.engine import Engine
from tests.real.hosts import SshHosts, SshServer, free_port, start_sshd
from tests.real.images import BaseImages

STACK = "h6real"
KEY_FILE = local_home() / identity_file("gpu-deploy", STACK).removeprefix("~/")


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stacks", *args],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or dict(os.environ),
        check=False,
    )


def write_stack(tmp: Path, target: dict[str, Any], services: dict[str, Any]) -> Path:
    config = {
        "pulumi:disable-default-providers": ["docker", "kubernetes"],
        "gpu-deploy:profile": "cpu",
        "gpu-deploy:target": target,
        "gpu-deploy:services": services,
    }
    path = tmp / f"Pulumi.{STACK}.{len(list(tmp.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    return path


def ssh_target(server: SshServer, hosts: SshHosts, bastion: SshServer | None = None) -> dict[str, Any]:
    target: dict[str, Any] = {
        "kind": "docker",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "hostKey": server.host_key,
        "sshKey": hosts.private_key,  # plain here: written to KEY_FILE as `pulumi up` writes it
    }
    if bastion is not None:
        target["bastion"] = {
            "host": bastion.host,
            "port": bastion.port,
            "user": bastion.user,
            "hostKey": bastion.host_key,
        }
    return target


@pytest.fixture(scope="module", autouse=True)
def key_file_removed() -> Iterator[None]:
    yield
    KEY_FILE.unlink(missing_ok=True)


# ---------------------------------------------------------------- tunnel
class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello through the tunnel"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def published() -> Iterator[int]:
    """The service on the "host": an HTTP server on 127.0.0.1:PORT, as a container published there."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def tunnel_hosts(run_dir: Path, ssh_hosts: SshHosts, published: int) -> Iterator[tuple[SshServer, SshServer]]:
    """An sshd that forwards to the published port only, and a bastion that reaches that sshd only."""
    user, key = ssh_hosts.deploy_user, ssh_hosts.private_key_path
    servers: list[SshServer] = []
    try:
        forwarding = ["AllowTcpForwarding local", "AllowStreamLocalForwarding no"]
        target = start_sshd(run_dir, "tunnel", user, key, [*forwarding, f"PermitOpen 127.0.0.1:{published}"])
        servers.append(target)
        bastion = start_sshd(
            run_dir, "tunnel-bastion", user, key, [*forwarding, f"PermitOpen {target.host}:{target.port}"]
        )
        servers.append(bastion)
        yield target, bastion
    finally:
        for server in servers:
            server.stop()


def fetch(port: int, deadline: float) -> str:
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def refused(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("via_bastion", [False, True], ids=["direct", "bastion"])
def test_tunnel_forwards_the_published_port_until_sigint(
    tmp_path: Path,
    ssh_hosts: SshHosts,
    tunnel_hosts: tuple[SshServer, SshServer],
    published: int,
    via_bastion: bool,
) -> None:
    target, bastion = tunnel_hosts
    services = {
        "api": {
            "image": "busybox:1.36",
            "ports": [
                f"127.0.0.1:{published}:8000",
                f"0.0.0.0:{free_port()}:9000",
            ],  # only loopback: tunneled
            "healthcheck": {"http": {"path": "/", "port": 8000}},
        }
    }
    stack = write_stack(tmp_path, ssh_target(target, ssh_hosts, bastion if via_bastion else None), services)
    local = free_port()
    argv = [sys.executable, "-m", "stacks", "tunnel", STACK, "--config-file", str(stack)]
    argv += ["--local-port", f"{published}={local}"]
    tunnel = subprocess.Popen(
        argv,
        cwd=PROJECT_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert fetch(local, time.monotonic() + 30) == "hello through the tunnel"
        tunnel.send_signal(signal.SIGINT)  # what Ctrl+C sends the CLI
        out, err = tunnel.communicate(timeout=15)
    finally:
        if tunnel.poll() is None:
            os.killpg(tunnel.pid, signal.SIGKILL)
            tunnel.wait()
    assert tunnel.returncode == 0, err
    assert out.splitlines()[0].split(maxsplit=3) == [
        f"http://127.0.0.1:{local}",
        "->",
        "api",
        f"(127.0.0.1 127.0.0.1:{published}, container port 8000)",
    ]
    assert err.strip().endswith("tunnel closed")
    assert refused(local)  # ssh is gone: nothing listens on the local port any more


def test_tunnel_with_a_wrong_host_key_fails_before_forwarding(
    tmp_path: Path, ssh_hosts: SshHosts, tunnel_hosts: tuple[SshServer, SshServer], published: int
) -> None:
    target, bastion = tunnel_hosts
    wrong = {**ssh_target(target, ssh_hosts), "hostKey": bastion.host_key}  # a real key, of another server
    stack = write_stack(
        tmp_path, wrong, {"api": {"image": "busybox:1.36", "ports": [f"127.0.0.1:{published}:80"]}}
    )
    local = free_port()
    result = cli("tunnel", STACK, "--config-file", str(stack), "--local-port", f"{published}={local}")
    assert result.returncode == 1
    assert "Host key verification failed" in result.stderr
    assert result.stderr.strip().endswith("(its message is above)")
    assert refused(local)


# ---------------------------------------------------------------- status and logs
@pytest.fixture(scope="module")
def containers(engine: Engine, base_images: BaseImages) -> Iterator[dict[str, str]]:
    """The stack's containers as a deploy leaves them mid-replacement: two copies of `api` (the old one
    stopped, names the engine chose), a `trainer` with a GPU request that never started, and a container
    of another stack that must not show."""
    image = base_images.bash

    def run(*args: str) -> str:
        return engine.docker_cli(*args).stdout.strip()

    labels = ["--label", f"{LABEL_STACK}={STACK}"]
    loop = "echo first line; echo second line; while sleep 0.2; do echo tick; done"
    try:
        old = run(
            "run",
            "-d",
            *labels,
            "--label",
            f"{LABEL_SERVICE}=api",
            image,
            "bash",
            "-c",
            "echo old copy; sleep 600",
        )
        run("stop", "-t", "0", old)
        new = run(
            "run",
            "-d",
            *labels,
            "--label",
            f"{LABEL_SERVICE}=api",
            "--health-cmd",
            "true",
            "--health-interval",
            "1s",
            image,
            "bash",
            "-c",
            loop,
        )
        trainer = run(
            "create", *labels, "--label", f"{LABEL_SERVICE}=trainer", "--gpus", "all", image, "true"
        )
        other = run(
            "run",
            "-d",
            "--label",
            f"{LABEL_STACK}=other",
            "--label",
            f"{LABEL_SERVICE}=api",
            image,
            "sleep",
            "600",
        )
        deadline = time.monotonic() + 30
        while run("inspect", "--format", "{{.State.Health.Status}}", new) != "healthy":
            assert time.monotonic() < deadline, "the health check never passed"
            time.sleep(0.3)
        yield {"old": old, "new": new, "trainer": trainer, "other": other}
    finally:
        ids = run("ps", "-aq", "--filter", f"label={LABEL_STACK}={STACK}").split()
        ids += run("ps", "-aq", "--filter", f"label={LABEL_STACK}=other").split()
        if ids:
            engine.docker_cli("rm", "-f", *ids, check=False)


SERVICES = {
    "api": {"image": "gpu-deploy-test/bash:bookworm"},
    "trainer": {"image": "gpu-deploy-test/bash:bookworm"},
    "web": {"image": "gpu-deploy-test/bash:bookworm"},
}


@pytest.fixture(scope="module")
def over_ssh(tmp_path_factory: pytest.TempPathFactory, ssh_hosts: SshHosts) -> Path:
    return write_stack(tmp_path_factory.mktemp("ssh"), ssh_target(ssh_hosts.target, ssh_hosts), SERVICES)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stack(tmp_path_factory.mktemp("local"), {"kind": "docker", "host": "local"}, SERVICES)


def local_env(engine: Engine) -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": engine.host}


@pytest.mark.parametrize("where", ["ssh", "local"])
def test_status_shows_each_container_of_the_stack(
    where: str, over_ssh: Path, local: Path, engine: Engine, containers: dict[str, str]
) -> None:
    stack, env = (over_ssh, None) if where == "ssh" else (local, local_env(engine))
    result = cli("status", STACK, "--config-file", str(stack), "--json", env=env)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["host"] == ("127.0.0.1" if where == "ssh" else "local")
    rows = [(r["service"], r["id"], r["state"], r["health"], r["tag"], r["gpu"]) for r in doc["services"]]
    assert rows == [
        ("api", containers["new"][:12], "running", "healthy", "bookworm", "-"),
        ("api", containers["old"][:12], "exited (137)", "-", "bookworm", "-"),
        ("trainer", containers["trainer"][:12], "created", "-", "bookworm", "all"),
        ("web", "", "not deployed", "-", "-", "-"),
    ]
    assert doc["services"][0]["status"].startswith("Up ")  # docker ps's own words
    table = cli("status", STACK, "--config-file", str(stack), env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "CONTAINER", "STATE", "HEALTH", "IMAGE", "TAG", "GPU"]
    assert lines[1].split()[0::2] == ["api", "running", "bookworm"]
    assert len(lines) == 5


@pytest.mark.parametrize("where", ["ssh", "local"])
def test_logs_of_the_newest_running_copy(
    where: str, over_ssh: Path, local: Path, engine: Engine, containers: dict[str, str]
) -> None:
    stack, env = (over_ssh, None) if where == "ssh" else (local, local_env(engine))
    first = cli("logs", STACK, "api", "--tail", "all", "--config-file", str(stack), env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[:2] == ["first line", "second line"]  # not the old copy's "old copy"
    assert "note: 2 containers of api: showing" in first.stderr
    tail = cli("logs", STACK, "api", "--tail", "1", "--config-file", str(stack), env=env)
    assert tail.stdout == "tick\n"
    none = cli("logs", STACK, "web", "--config-file", str(stack), env=env)
    assert none.returncode == 1
    assert none.stderr.strip().endswith(f"runs no container of {STACK}/web (not deployed?)")


def test_logs_follow_until_sigint(over_ssh: Path, containers: dict[str, str]) -> None:
    argv = [sys.executable, "-m", "stacks", "logs", STACK, "api", "--follow", "--tail", "1"]
    follow = subprocess.Popen(
        [*argv, "--config-file", str(over_ssh)],
        cwd=PROJECT_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert follow.stdout is not None
        lines = [follow.stdout.readline() for _ in range(5)]  # it keeps printing: the loop's ticks
        assert lines == ["tick\n"] * 5
        follow.send_signal(signal.SIGINT)
        follow.communicate(timeout=15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            if follow.poll() is None:
                os.killpg(follow.pid, signal.SIGKILL)
                follow.wait()
    assert follow.returncode == 0
