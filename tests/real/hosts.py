"""Two OpenSSH servers on loopback (a deploy target and a bastion) and the local users they serve.

- `gpudeploy-test` (DEPLOY_USER): created if missing, with a home, in group `docker`, passwordless sudo
  through /etc/sudoers.d/gpudeploy-test-<pytest pid> (removed at teardown; `env_keep` DOCKER_HOST so
  `sudo docker ...` reaches the test engine too, never the machine's own), this run's ed25519 client key
  in ~/.ssh/authorized_keys (the line is removed at teardown).
- `gpudeploy-other` (OTHER_USER): an unprivileged local user (no docker group, no sudo, no ssh access).
- `target` sshd: pubkey only, `AllowUsers gpudeploy-test`, sftp (internal-sftp), no forwarding, and
  `SetEnv DOCKER_HOST=unix://<test engine socket>`: every session of the deploy user (a command,
  `docker system dial-stdio` for ssh:// Docker hosts, sudo through env_keep) uses the test engine.
- `bastion` sshd: the same, with TCP forwarding allowed to the target's address only (PermitOpen).

Each server has its own throwaway ed25519 and ecdsa host keys and sshd_config under the run directory,
runs in the foreground (`-D -e`) in the background of the test session, and is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.real.engine import DOCKER_GROUP, Engine
from tests.real.procs import Daemon, SetupError, run_checked, start_daemon, wait_until
from tests.real.remote import Connection
from tests.real.requirements import find_program

DEPLOY_USER = "gpudeploy-test"
OTHER_USER = "gpudeploy-other"
LOOPBACK = "127.0.0.1"
SUDOERS_DIR = Path("/etc/sudoers.d")
KEY_MARK = "gpu-deploy-real-tier"  # the comment on this tier's authorized_keys lines, with the pytest pid


@dataclass(frozen=True)
class LocalUser:
    name: str
    uid: int
    gid: int
    home: Path
    groups: tuple[str, ...]


def _groups_of(name: str, gid: int) -> tuple[str, ...]:
    return tuple(grp.getgrgid(g).gr_name for g in os.getgrouplist(name, gid))


def ensure_user(name: str, groups: Sequence[str] = ()) -> LocalUser:
    """The local user `name` (created with a home dir and bash if missing) in `groups`, unlocked for
    public-key logins (password field `*`: no password works, yet sshd does not treat it as locked)."""
    for group in groups:
        with contextlib.suppress(KeyError):
            grp.getgrnam(group)
            continue
        run_checked(["groupadd", "--system", group], check=False)
    exists = True
    try:
        pwd.getpwnam(name)
    except KeyError:
        exists = False
    if not exists:
        argv = ["useradd", "--create-home", "--shell", "/bin/bash", "--user-group"]
        if groups:
            argv += ["--groups", ",".join(groups)]
        created = run_checked([*argv, name], check=False)
        if created.returncode not in (0, 9):  # 9: created meanwhile by a concurrent run
            raise SetupError(f"useradd {name}: {created.stderr.strip()}")
    for group in groups:
        run_checked(["usermod", "--append", "--groups", group, name])
    run_checked(["usermod", "--password", "*", name])
    entry = pwd.getpwnam(name)
    home = Path(entry.pw_dir)
    if not home.is_dir():
        home.mkdir(parents=True, mode=0o755)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    return LocalUser(name, entry.pw_uid, entry.pw_gid, home, _groups_of(name, entry.pw_gid))


def run_as(
    user: LocalUser,
    argv: Sequence[str],
    *,
    input: str | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` locally as `user` (its uid, gid and supplementary groups; HOME, USER, a plain PATH),
    output captured as text, never raising on a non-zero exit."""
    run_env = {
        "HOME": str(user.home),
        "USER": user.name,
        "LOGNAME": user.name,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }
    run_env.update(env or {})
    return subprocess.run(
        list(argv),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd or user.home,
        env=run_env,
        user=user.uid,
        group=user.gid,
        extra_groups=[grp.getgrnam(g).gr_gid for g in user.groups],
        timeout=timeout,
        check=False,
    )


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def remove_stale_grants(user: LocalUser) -> None:
    """Sudoers files and authorized_keys lines of earlier runs whose pytest is gone (killed before its
    teardown) are removed, so no grant outlives its run."""
    for path in SUDOERS_DIR.glob(f"{user.name}-*"):
        match = re.fullmatch(rf"{re.escape(user.name)}-(\d+)", path.name)
        if match and not _pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
    keys = user.home / ".ssh" / "authorized_keys"
    if keys.is_file():
        lines = keys.read_text().splitlines(keepends=True)
        kept = [
            line
            for line in lines
            if not (m := re.search(rf"{KEY_MARK} pid=(\d+)", line)) or _pid_alive(int(m.group(1)))
        ]
        if kept != lines:
            keys.write_text("".join(kept))


def grant_sudo(user: LocalUser) -> Path:
    """Passwordless sudo for `user`, DOCKER_HOST kept: /etc/sudoers.d/<user>-<pid>, checked by visudo."""
    path = SUDOERS_DIR / f"{user.name}-{os.getpid()}"
    partial = SUDOERS_DIR / f".{path.name}.partial"  # a name with a dot: sudo's includedir skips it
    partial.write_text(
        f"# gpu-deploy real-engine tier (pytest pid {os.getpid()}): removed at teardown\n"
        f'Defaults:{user.name} env_keep += "DOCKER_HOST"\n'
        f"{user.name} ALL=(ALL:ALL) NOPASSWD: ALL\n"
    )
    os.chmod(partial, 0o440)
    visudo = find_program("visudo", "/usr/sbin/visudo") or "visudo"
    check = run_checked([visudo, "-c", "-q", "-f", str(partial)], check=False)
    if check.returncode != 0:
        partial.unlink()
        raise SetupError(f"visudo refused the test sudoers file: {check.stdout}{check.stderr}")
    partial.replace(path)
    return path


def authorize_key(user: LocalUser, public_key: str) -> Path:
    """Append this run's key (marked with the pytest pid) to the user's ~/.ssh/authorized_keys."""
    ssh_dir = user.home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(ssh_dir, user.uid, user.gid)
    keys = ssh_dir / "authorized_keys"
    fields = public_key.split()
    with keys.open("a") as out:
        out.write(f"{fields[0]} {fields[1]} {KEY_MARK} pid={os.getpid()}\n")
    os.chown(keys, user.uid, user.gid)
    os.chmod(keys, 0o600)
    return keys


def revoke_key(user: LocalUser) -> None:
    keys = user.home / ".ssh" / "authorized_keys"
    if keys.is_file():
        mark = f"{KEY_MARK} pid={os.getpid()}"
        lines = keys.read_text().splitlines(keepends=True)
        keys.write_text("".join(line for line in lines if mark not in line))


def keygen(path: Path, kind: str, comment: str = "") -> str:
    """A new key pair at `path` / `path`.pub; returns the public key line "TYPE BASE64" (no comment)."""
    keygen_bin = find_program("ssh-keygen", "/usr/bin/ssh-keygen") or "ssh-keygen"
    argv = [keygen_bin, "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(path)]
    if kind == "ecdsa":
        argv[4:4] = ["-b", "256"]
    run_checked(argv)
    return " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


@dataclass
class SshServer:
    """One sshd. `host_key` is the line to pin ("ssh-ed25519 AAAA..."), `host_key_ecdsa` the other one;
    `user`, `private_key_path` and `private_key` log in to it."""

    role: str
    host: str
    port: int
    host_key: str
    host_key_ecdsa: str
    user: str
    private_key_path: Path
    private_key: str
    public_key: str
    config: Path
    log: Path
    _daemon: Daemon = field(repr=False)

    @property
    def pid(self) -> int:
        return self._daemon.pid

    @property
    def url(self) -> str:
        """The Docker host URL for this server: ssh://user@host:port."""
        return f"ssh://{self.user}@{self.host}:{self.port}"

    def connection(
        self, proxy: SshServer | Connection | None = None, host_key: str | None = None
    ) -> Connection:
        """A pulumi-command-like Connection to this server with the ed25519 host key pinned (or
        `host_key`), the private key's text, and optionally a bastion (`proxy`)."""
        if isinstance(proxy, SshServer):
            proxy = proxy.connection()
        return Connection(
            host=self.host,
            port=self.port,
            user=self.user,
            host_key=host_key or self.host_key,
            private_key=self.private_key,
            proxy=proxy,
        )

    def alive(self) -> bool:
        return self._daemon.alive()

    def stop(self) -> None:
        self._daemon.stop(grace=10)


@dataclass
class SshHosts:
    """What the `ssh_hosts` fixture gives: both servers and both local users."""

    target: SshServer
    bastion: SshServer
    deploy_user: LocalUser
    other_user: LocalUser
    sudoers_file: Path
    authorized_keys: Path

    @property
    def user(self) -> str:
        return self.deploy_user.name

    @property
    def private_key_path(self) -> Path:
        return self.target.private_key_path

    @property
    def private_key(self) -> str:
        return self.target.private_key


def _sshd_config(directory: Path, port: int, user: str, extra: Sequence[str], keys: Sequence[Path]) -> Path:
    lines = [
        f"# gpu-deploy real-engine tier: {directory.name}",
        f"ListenAddress {LOOPBACK}:{port}",
        *(f"HostKey {key}" for key in keys),
        f"PidFile {directory / 'sshd.pid'}",
        "LogLevel VERBOSE",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "PermitEmptyPasswords no",
        "UsePAM no",
        "PermitRootLogin no",
        f"AllowUsers {user}",
        "StrictModes no",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "PermitUserEnvironment no",
        "AllowAgentForwarding no",
        "X11Forwarding no",
        "PermitTunnel no",
        "PrintMotd no",
        # pulumi opens many sessions at once: the default 10:30:100 drops some of them at random
        "MaxStartups 200",
        "MaxSessions 100",
        "Subsystem sftp internal-sftp",
        *extra,
    ]
    path = directory / "sshd_config"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_sshd(
    run_dir: Path,
    role: str,
    user: LocalUser,
    client_key: Path,
    extra: Sequence[str],
    *,
    port: int | None = None,
) -> SshServer:
    """An sshd for `role` on a free loopback port, waited for until it listens."""
    directory = run_dir / f"sshd-{role}"
    directory.mkdir(mode=0o700)
    ed25519 = directory / "ssh_host_ed25519_key"
    ecdsa = directory / "ssh_host_ecdsa_key"
    host_key = keygen(ed25519, "ed25519")
    host_key_ecdsa = keygen(ecdsa, "ecdsa")
    port = port or free_port()
    config = _sshd_config(directory, port, user.name, extra, [ed25519, ecdsa])
    sshd = find_program("sshd", "/usr/sbin/sshd") or "/usr/sbin/sshd"
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    test = run_checked([sshd, "-t", "-f", str(config)], check=False)
    if test.returncode != 0:
        raise SetupError(f"sshd -t refused {config}: {test.stderr.strip()}")
    log = directory / "sshd.log"
    daemon = start_daemon(f"sshd ({role})", [sshd, "-D", "-e", "-f", str(config)], log)
    listening = f"Server listening on {LOOPBACK} port {port}"
    try:
        wait_until(daemon, lambda: listening in log.read_text(errors="replace"), 15, "listening")
    except BaseException:
        daemon.stop()
        raise
    return SshServer(
        role=role,
        host=LOOPBACK,
        port=port,
        host_key=host_key,
        host_key_ecdsa=host_key_ecdsa,
        user=user.name,
        private_key_path=client_key,
        private_key=client_key.read_text(),
        public_key=client_key.with_name(client_key.name + ".pub").read_text().strip(),
        config=config,
        log=log,
        _daemon=daemon,
    )


def start_ssh_hosts(run_dir: Path, engine: Engine) -> SshHosts:
    """Users, grants, the client key, then the target and the bastion sshd."""
    deploy = ensure_user(DEPLOY_USER, [DOCKER_GROUP])
    other = ensure_user(OTHER_USER)
    remove_stale_grants(deploy)
    client_dir = run_dir / "client"
    client_dir.mkdir(mode=0o700)
    client_key = client_dir / "id_ed25519"
    public_key = keygen(client_key, "ed25519", comment=f"{KEY_MARK} pid={os.getpid()}")
    sudoers = grant_sudo(deploy)
    servers: list[SshServer] = []
    try:
        authorized = authorize_key(deploy, public_key)
        target = start_sshd(
            run_dir,
            "target",
            deploy,
            client_key,
            [
                "AllowTcpForwarding no",
                "AllowStreamLocalForwarding no",
                f"SetEnv DOCKER_HOST={engine.host}",
            ],
        )
        servers.append(target)
        bastion = start_sshd(
            run_dir,
            "bastion",
            deploy,
            client_key,
            [
                "AllowTcpForwarding local",
                "AllowStreamLocalForwarding no",
                f"PermitOpen {target.host}:{target.port}",
            ],
        )
        servers.append(bastion)
    except BaseException:
        for server in servers:
            server.stop()
        revoke_key(deploy)
        sudoers.unlink(missing_ok=True)
        raise
    return SshHosts(
        target=target,
        bastion=bastion,
        deploy_user=deploy,
        other_user=other,
        sudoers_file=sudoers,
        authorized_keys=authorized,
    )


def stop_ssh_hosts(hosts: SshHosts) -> None:
    """Both sshd stopped by PID; the sudoers file and this run's authorized_keys line removed."""
    for server in (hosts.bastion, hosts.target):
        server.stop()
    hosts.sudoers_file.unlink(missing_ok=True)
    revoke_key(hosts.deploy_user)
