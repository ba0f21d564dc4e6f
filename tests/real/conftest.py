"""Session fixtures of the real-engine tier: a Docker engine, base images and two sshd, on this machine.

Fixtures (all session-scoped; each starts what it needs once and stops it by PID at the end):

- `run_dir` (Path): this run's directory, /tmp/gdt-<pytest pid>-XXXX, mode 0711, a tmpfs of its own
  (GPU_DEPLOY_REAL_TMPFS=0: plain disk); unmounted and removed at the end (GPU_DEPLOY_REAL_KEEP=1 keeps
  it, and its logs: engine/dockerd.log, engine/containerd.log, sshd-*/sshd.log). Runs whose pytest was
  killed before its teardown are reaped first (their processes by PID, bridges, mounts, sudoers file).
- `engine` (tests.real.engine.Engine): dockerd + containerd of its own; `.socket`, `.host`
  ("unix://..."), `.docker_cli(*args, input=None, check=True, timeout=300)`, `.env()`, `.pid`, `.log`.
- `docker_cli`: `engine.docker_cli`.
- `base_images` (tests.real.images.BaseImages): `.bash` = "gpu-deploy-test/bash:bookworm", `.python3` =
  "gpu-deploy-test/python3:bookworm", imported into `engine`.
- `ssh_hosts` (tests.real.hosts.SshHosts): `.target` and `.bastion` (SshServer: `.host`, `.port`,
  `.host_key`, `.host_key_ecdsa`, `.user`, `.private_key_path`, `.private_key`, `.url`,
  `.connection(proxy=None, host_key=None)`), `.deploy_user` and `.other_user` (LocalUser).

Without root or any of the programs it needs, every test of the tier fails with one line saying what to
install (`.ci/install-real-tier.sh`).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.real.engine import Engine, start_engine, stop_engine
from tests.real.hosts import SshHosts, start_ssh_hosts, stop_ssh_hosts
from tests.real.images import BaseImages, import_base_images
from tests.real.procs import make_run_dir, reap_stale_runs, remove_run_dir
from tests.real.requirements import missing_requirements

TIMINGS: dict[str, float] = {}
NOTES: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def real_tier_requirements() -> None:
    missing = missing_requirements()
    if missing:
        pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="session")
def run_dir(real_tier_requirements: None) -> Iterator[Path]:
    NOTES.extend(reap_stale_runs())
    path, on_tmpfs = make_run_dir()
    NOTES.append(f"run directory {path} ({'own tmpfs' if on_tmpfs else 'on disk'})")
    yield path
    keep = os.environ.get("GPU_DEPLOY_REAL_KEEP") == "1"
    stuck = remove_run_dir(path, keep=keep)
    if keep or stuck:
        NOTES.append(f"WARNING run directory kept: {path}" + (f" (still mounted: {stuck})" if stuck else ""))


def _timed(name: str, start: float) -> None:
    TIMINGS[name] = TIMINGS.get(name, 0.0) + time.monotonic() - start


@pytest.fixture(scope="session")
def engine(run_dir: Path) -> Iterator[Engine]:
    start = time.monotonic()
    running = start_engine(run_dir)
    _timed("engine up", start)
    yield running
    start = time.monotonic()
    NOTES.extend(f"WARNING engine teardown: {problem}" for problem in stop_engine(running))
    _timed("engine down", start)


@pytest.fixture(scope="session")
def docker_cli(engine: Engine) -> Callable[..., subprocess.CompletedProcess[str]]:
    return engine.docker_cli


@pytest.fixture(scope="session")
def base_images(engine: Engine) -> BaseImages:
    start = time.monotonic()
    images = import_base_images(engine)
    _timed("base images (debootstrap, cold)" if images.built else "base images (cached)", start)
    if images.built:
        TIMINGS["  of which debootstrap + tar"] = images.build_seconds
    TIMINGS["  of which docker import"] = images.import_seconds
    return images


@pytest.fixture(scope="session")
def ssh_hosts(run_dir: Path, engine: Engine) -> Iterator[SshHosts]:
    start = time.monotonic()
    hosts = start_ssh_hosts(run_dir, engine)
    _timed("ssh hosts up", start)
    yield hosts
    stop_ssh_hosts(hosts)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TIMINGS and not NOTES:
        return
    terminalreporter.section("real-engine tier")
    for name, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{name}: {seconds:.1f}s")
    for note in NOTES:
        terminalreporter.write_line(note)
