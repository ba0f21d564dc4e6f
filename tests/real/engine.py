"""A Docker engine of the tier's own: Debian's dockerd and containerd, every path under the run directory.

Nothing is shared with a Docker engine the machine may already run: its own containerd (not
/run/containerd/containerd.sock), its own unix socket (never /var/run/docker.sock), its own daemon.json
(never /etc/docker/daemon.json), its own bridge interface and address pool (never docker0 or 172.17/16),
no iptables rules. The socket is owned by group `docker` (`--group docker`), so the deploy user reaches it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.real.procs import (
    DAEMON_PATH,
    Daemon,
    SetupError,
    kill_pids,
    pids_mentioning,
    run_checked,
    start_daemon,
    unmount_under,
    wait_until,
)
from tests.real.requirements import find_program

DOCKER_GROUP = "docker"


def docker_cli_path() -> str:
    """/usr/local/bin/docker when there is one (a newer CLI than Debian's), else `docker` on PATH."""
    if os.access("/usr/local/bin/docker", os.X_OK):
        return "/usr/local/bin/docker"
    found = find_program("docker", "/usr/bin/docker")
    if found is None:
        raise SetupError("no docker CLI (apt-get install docker.io)")
    return found


def cli_env(docker_host: str, config_dir: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the Docker CLI: this DOCKER_HOST, an empty config dir (no contexts, no
    credential helpers from ~/.docker), no TLS settings inherited from the caller."""
    env = dict(os.environ if base is None else base)
    for name in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_API_VERSION"):
        env.pop(name, None)
    env["DOCKER_HOST"] = docker_host
    env["DOCKER_CONFIG"] = str(config_dir)
    return env


@dataclass
class Engine:
    """The running engine. `socket` is its unix socket, `host` the DOCKER_HOST value for it."""

    run_dir: Path
    socket: Path
    host: str
    data_root: Path
    exec_root: Path
    pidfile: Path
    log: Path
    containerd_socket: Path
    bridge: str
    bridge_subnet: str
    address_pool: str
    cli: str
    config_dir: Path
    _dockerd: Daemon = field(repr=False)
    _containerd: Daemon = field(repr=False)

    @property
    def pid(self) -> int:
        return self._dockerd.pid

    @property
    def containerd_pid(self) -> int:
        return self._containerd.pid

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for any Docker client (CLI or SDK) to use this engine."""
        return cli_env(self.host, self.config_dir, base)

    def docker_cli(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """`docker ARGS...` against this engine; text stdout/stderr captured; `check` raises on non-zero."""
        return run_checked([self.cli, *args], env=self.env(), input=input, timeout=timeout, check=check)

    def alive(self) -> bool:
        return self._dockerd.alive() and self._containerd.alive()


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    for argv in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        for word in out.split():
            with contextlib.suppress(ValueError):
                if "/" in word and word[0].isdigit():
                    nets.append(ipaddress.ip_network(word, strict=False))
    return [net for net in nets if isinstance(net, ipaddress.IPv4Network)]


def pick_address_pool() -> ipaddress.IPv4Network:
    """A 10.X.0.0/16 (X in 200..254) that no address or route on this machine overlaps: the engine's
    default bridge takes its first /24, user networks the next ones."""
    used = _used_networks()
    candidates = [ipaddress.IPv4Network(f"10.{x}.0.0/16") for x in range(200, 255)]
    random.Random(os.getpid()).shuffle(candidates)
    for pool in candidates:
        if not any(pool.overlaps(net) for net in used if net.prefixlen > 0):
            return pool
    raise SetupError("no free 10.X.0.0/16 (X in 200..254) for the test engine's networks")


def _ping(sock: Path) -> bool:
    """GET /_ping on the engine's socket (cheaper than a `docker info` per poll)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(2)
            conn.connect(str(sock))
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = conn.recv(4096)
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]


def _socket_accepts(sock: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(2)
            conn.connect(str(sock))
    except OSError:
        return False
    return True


def start_engine(run_dir: Path, timeout: float = 60) -> Engine:
    """containerd, then dockerd on it, both in the background; returns once `docker info` answers."""
    root = run_dir / "engine"
    root.mkdir(mode=0o711)
    os.chmod(root, 0o711)  # the deploy user walks through to the socket (mkdir honours the umask)
    containerd_dir = root / "containerd"
    containerd_dir.mkdir()
    containerd_socket = containerd_dir / "containerd.sock"
    containerd_config = containerd_dir / "config.toml"
    containerd_config.write_text(
        "version = 2\n"
        f'root = "{containerd_dir / "root"}"\n'
        f'state = "{containerd_dir / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{containerd_socket}"\n'
        f'[ttrpc]\n  address = "{containerd_socket}.ttrpc"\n'
        f'[debug]\n  address = "{containerd_dir / "debug.sock"}"\n'
    )
    env = dict(os.environ)
    env["PATH"] = DAEMON_PATH
    containerd_bin = find_program("containerd", "/usr/bin/containerd") or "containerd"
    containerd = start_daemon(
        "containerd", [containerd_bin, "--config", str(containerd_config)], root / "containerd.log", env
    )
    try:
        wait_until(containerd, lambda: _socket_accepts(containerd_socket), 30, "serving its socket")
    except BaseException:
        containerd.stop()
        raise

    pool = pick_address_pool()
    bridge = f"gdt{os.urandom(3).hex()}"  # an interface name: 15 characters at most
    gateway = f"{pool.network_address + 1}/24"
    try:
        run_checked(["ip", "link", "add", "name", bridge, "type", "bridge"])
        run_checked(["ip", "addr", "add", gateway, "dev", bridge])
        run_checked(["ip", "link", "set", bridge, "up"])
    except BaseException:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
        containerd.stop()
        raise

    sock = root / "docker.sock"
    daemon_json = root / "daemon.json"
    daemon_json.write_text(json.dumps({}) + "\n")
    config_dir = root / "cli-config"
    config_dir.mkdir()
    dockerd_bin = find_program("dockerd", "/usr/sbin/dockerd") or "dockerd"
    argv = [
        dockerd_bin,
        f"--config-file={daemon_json}",
        f"--containerd={containerd_socket}",
        f"--data-root={root / 'data'}",
        f"--exec-root={root / 'exec'}",
        f"--pidfile={root / 'dockerd.pid'}",
        f"--host=unix://{sock}",
        f"--group={DOCKER_GROUP}",
        "--iptables=false",
        f"--bridge={bridge}",
        f"--default-address-pool=base={pool},size=24",
    ]
    dockerd = start_daemon("dockerd", argv, root / "dockerd.log", env)
    engine = Engine(
        run_dir=run_dir,
        socket=sock,
        host=f"unix://{sock}",
        data_root=root / "data",
        exec_root=root / "exec",
        pidfile=root / "dockerd.pid",
        log=root / "dockerd.log",
        containerd_socket=containerd_socket,
        bridge=bridge,
        bridge_subnet=str(ipaddress.IPv4Network(gateway, strict=False)),
        address_pool=str(pool),
        cli=docker_cli_path(),
        config_dir=config_dir,
        _dockerd=dockerd,
        _containerd=containerd,
    )
    try:
        wait_until(dockerd, lambda: _ping(sock), timeout, "answering on its socket")
        info = engine.docker_cli("info", "--format", "{{.ServerVersion}} {{.Driver}}", timeout=30)
        pid_text = engine.pidfile.read_text().strip()
        if pid_text != str(dockerd.pid):
            raise SetupError(f"dockerd pidfile says {pid_text}, started {dockerd.pid}")
        if not info.stdout.strip():
            raise SetupError(f"docker info on {sock} printed nothing: {info.stderr}")
    except BaseException:
        stop_engine(engine)
        raise
    return engine


def stop_engine(engine: Engine) -> list[str]:
    """Remove every container and network of this engine, stop dockerd then containerd by PID (SIGTERM,
    wait, SIGKILL), end shims still serving this containerd, delete the bridges; returns what was left."""
    problems: list[str] = []
    bridges = [engine.bridge]
    if engine._dockerd.alive():
        try:
            ids = engine.docker_cli("ps", "-aq", timeout=30).stdout.split()
            if ids:
                engine.docker_cli("rm", "-f", "-v", *ids, timeout=120, check=False)
            nets = engine.docker_cli(
                "network", "ls", "-q", "--no-trunc", "--filter", "driver=bridge", timeout=30
            ).stdout.split()
            bridges += [f"br-{net[:12]}" for net in nets]
            engine.docker_cli("network", "prune", "-f", timeout=60, check=False)
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            problems.append(f"cleaning the engine: {exc}")
    engine._dockerd.stop(grace=30)
    shims = pids_mentioning(str(engine.containerd_socket))
    if shims:
        problems.append(f"container shims still running after dockerd stopped: {shims}")
        kill_pids(shims)
    engine._containerd.stop(grace=15)
    for bridge in bridges:
        if Path(f"/sys/class/net/{bridge}").exists():
            subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
    stuck = unmount_under(engine.data_root.parent)
    if stuck:
        problems.append(f"still mounted: {stuck}")
    return problems
