"""Starting and stopping the tier's own processes: by the PID it started, never by name."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Daemons get a PATH with the sbin directories (dockerd looks up docker-proxy, runc, containerd-shim there).
DAEMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SetupError(RuntimeError):
    """A component of the tier did not come up; the message says which and where its log is."""


@dataclass
class Daemon:
    """A background process this run started, its output in `log`."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL; the process is reaped either way."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def start_daemon(name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> Daemon:
    """Start `argv` in its own session (a Ctrl-C to pytest does not reach it: teardown stops it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("PATH", DAEMON_PATH)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=run_env,
            start_new_session=True,
        )
    return Daemon(name=name, proc=proc, log=log)


def wait_until(daemon: Daemon, ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `ready` until it holds; fail early (with the log's tail) if the daemon exits."""
    deadline = time.monotonic() + timeout
    while True:
        if not daemon.alive():
            raise SetupError(
                f"{daemon.name} exited ({daemon.proc.returncode}) before {what}; log {daemon.log}:\n"
                f"{daemon.log_tail()}"
            )
        if ready():
            return
        if time.monotonic() > deadline:
            raise SetupError(
                f"{daemon.name} not {what} after {timeout:.0f}s; log {daemon.log}:\n{daemon.log_tail()}"
            )
        time.sleep(0.1)


def unmount_under(root: Path, include_root: bool = False) -> list[str]:
    """Unmount whatever is still mounted under `root` (dockerd leaves its data root bind-mounted on
    itself), deepest first, and `root` itself with `include_root`; returns the mount points it could not
    unmount."""
    base = str(root.resolve()).rstrip("/")
    points: list[str] = []
    with Path("/proc/self/mounts").open() as mounts:
        for line in mounts:
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(base + "/") or (include_root and point == base):
                points.append(point)
    stuck = []
    for point in sorted(set(points), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            lazy = subprocess.run(["umount", "-l", point], capture_output=True, check=False)
            if lazy.returncode != 0:
                stuck.append(point)
    return stuck


def tmpfs_size() -> int:
    """Half the machine's memory, between 2 and 16 GiB: a limit, not a reservation."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(2 * 1024**3, min(16 * 1024**3, total // 2))


def make_run_dir(parent: Path = Path("/tmp")) -> tuple[Path, bool]:
    """This run's directory, /tmp/gdt-<pid>-XXXX, mode 0711 (the deploy user walks through it to the
    engine's socket), with a tmpfs of its own mounted on it (exec, suid and device nodes allowed, unlike
    a nodev /dev/shm) unless GPU_DEPLOY_REAL_TMPFS=0: the engine's layers, the containers and debootstrap
    then never wait for the disk (`docker import` of both base images: 4 s instead of 15 s here).
    Returns the directory and whether the tmpfs is mounted."""
    path = Path(tempfile.mkdtemp(prefix=f"gdt-{os.getpid()}-", dir=parent))
    mounted = False
    if os.environ.get("GPU_DEPLOY_REAL_TMPFS", "1") != "0":
        options = f"size={tmpfs_size()},mode=0711"
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "gdt-run", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mount.returncode != 0:
            raise SetupError(
                f"mount -t tmpfs on {path}: {mount.stderr.strip()} (GPU_DEPLOY_REAL_TMPFS=0: no tmpfs)"
            )
        mounted = True
    path.chmod(0o711)
    return path, mounted


def remove_run_dir(path: Path, keep: bool = False) -> list[str]:
    """Unmount everything under `path` and the tmpfs on it, then remove it (with `keep`, leave it and
    its logs on disk: the tmpfs stays mounted). Returns the mount points still there."""
    if keep:
        return []
    stuck = unmount_under(path, include_root=True)
    if not stuck:
        shutil.rmtree(path, ignore_errors=True)
    return stuck


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (a path unique to this run): the container shims
    this run's containerd started, which outlive it if a container is still running."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return found


def kill_pids(pids: Sequence[int], grace: float = 5.0) -> None:
    """SIGTERM these PIDs, wait, SIGKILL the ones left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [pid for pid in left if Path(f"/proc/{pid}").exists()]
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class CommandFailed(AssertionError):
    """A command the tier ran exited non-zero: the command, its exit code and its output's tail."""


def run_checked(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = 300,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` with text output captured; with `check`, a non-zero exit raises `CommandFailed`."""
    result = subprocess.run(
        list(argv),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise CommandFailed(
            f"{' '.join(argv)} exited {result.returncode}\n"
            f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
        )
    return result


RUN_DIR_NAME = re.compile(r"gdt-(\d+)-[A-Za-z0-9_]{8}")
CLIENT_DIR_NAME = re.compile(r"gdt-(?:ssh|dockerssh)-(\d+)-[A-Za-z0-9_]{8}")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _bridges_in(pool: str) -> list[str]:
    """The br-* interfaces (user-defined networks of a test engine) with an address in `pool`."""
    net = ipaddress.ip_network(pool, strict=False)
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=False
    ).stdout
    found = []
    for line in out.splitlines():
        words = line.split()
        bridge = len(words) > 3 and words[1].startswith("br-") and words[2] == "inet"
        if bridge and ipaddress.ip_interface(words[3]).ip in net:
            found.append(words[1])
    return found


def reap_stale_runs(parent: Path = Path("/tmp")) -> list[str]:
    """Runs whose pytest died without its teardown (SIGKILL, OOM): their processes (found by the run
    directory in their command line, ended by PID: SIGTERM, then SIGKILL), the engine's bridges, the
    mounts and the directory. Returns one line per run reaped."""
    reaped = []
    for temp in sorted(parent.glob("gdt-*-*")):  # the clients' key and known_hosts copies
        client = CLIENT_DIR_NAME.fullmatch(temp.name)
        if client and temp.is_dir() and not Path(f"/proc/{client.group(1)}").exists():
            shutil.rmtree(temp, ignore_errors=True)
    for run in sorted(parent.glob("gdt-*-*")):
        match = RUN_DIR_NAME.fullmatch(run.name)
        if not match or not run.is_dir() or Path(f"/proc/{match.group(1)}").exists():
            continue
        if not ((run / "engine").is_dir() or any(run.glob("sshd-*"))):
            continue
        pids = pids_mentioning(str(run) + "/")
        bridges: list[str] = []
        for pid in pids:
            for arg in _cmdline(pid):
                if arg.startswith("--bridge="):
                    bridges.append(arg.removeprefix("--bridge="))
                if arg.startswith("--default-address-pool=base="):
                    bridges += _bridges_in(arg.removeprefix("--default-address-pool=base=").split(",")[0])
        kill_pids(pids, grace=20)
        for bridge in bridges:
            if Path(f"/sys/class/net/{bridge}").exists():
                subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
        stuck = remove_run_dir(run)
        reaped.append(f"reaped stale run {run}: processes {pids}, bridges {bridges}, still mounted {stuck}")
    return reaped
