"""SSH clients as the deploy tools use them: OpenSSH's `ssh`/`sftp` with the host key pinned.

- `run_remote` behaves like pulumi-command's `remote.Command`: one SSH session whose command is the
  `create` string (the remote user's shell runs it), `stdin` piped in, exit status and output returned.
- `copy_to_remote` puts one local file on the host over SFTP (`sftp -b`), as pulumi-command copies.
- `docker_over_ssh` runs the Docker CLI against `ssh://user@host:port` the way terraform-provider-docker's
  connection helper does: a wrapper `ssh` first on PATH puts the provider's `sshOpts` before the CLI's own
  arguments (`-o ConnectTimeout=30 -T -l USER -p PORT -- HOST docker system dial-stdio`).

Every client trusts only the pinned key: a known_hosts file holding that one key, StrictHostKeyChecking
yes, HostKeyAlgorithms limited to the pinned key's type, no agent (IdentityAgent none, SSH_AUTH_SOCK
unset), only the given private key (IdentitiesOnly), BatchMode (no prompt), no user or system ssh_config
(-F with a generated file), so a wrong key is refused before anything runs on the host.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from tests.real.engine import cli_env, docker_cli_path
from tests.real.requirements import find_program

HOST_KEY_ALGORITHMS = {
    "ssh-ed25519": "ssh-ed25519",
    "ecdsa-sha2-nistp256": "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384": "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521": "ecdsa-sha2-nistp521",
    # pulumi-command offers a pinned key's own type only: for RSA that is SHA-1 "ssh-rsa"
    "ssh-rsa": "ssh-rsa",
}


@dataclass(frozen=True)
class Connection:
    """Where and how to log in, as pulumi-command's `remote.ConnectionArgs` holds it: `private_key` is
    the key's text (or `private_key_path` a file), `host_key` the pinned "TYPE BASE64" line, `proxy`
    the bastion's Connection."""

    host: str
    port: int
    user: str
    host_key: str
    private_key: str | None = None
    private_key_path: Path | None = None
    proxy: Connection | None = None


class RemoteResult(NamedTuple):
    exit: int
    stdout: str
    stderr: str


def ssh_binary() -> str:
    return find_program("ssh", "/usr/bin/ssh") or "/usr/bin/ssh"


def host_key_algorithms(host_key: str) -> str:
    kind = host_key.split(maxsplit=1)[0]
    if kind not in HOST_KEY_ALGORITHMS:
        raise ValueError(f"unsupported host key type {kind!r}: {sorted(HOST_KEY_ALGORITHMS)}")
    return HOST_KEY_ALGORITHMS[kind]


def known_hosts_line(host: str, port: int, host_key: str) -> str:
    name = host if port == 22 else f"[{host}]:{port}"
    kind, blob = host_key.split()[:2]
    return f"{name} {kind} {blob}\n"


def client_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without an SSH agent."""
    env = dict(os.environ if base is None else base)
    env.pop("SSH_AUTH_SOCK", None)
    env.pop("SSH_AGENT_PID", None)
    return env


def _key_file(connection: Connection, directory: Path, name: str) -> Path:
    if connection.private_key is not None:
        path = directory / name
        text = (
            connection.private_key if connection.private_key.endswith("\n") else connection.private_key + "\n"
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        path.chmod(0o600)
        return path
    if connection.private_key_path is None:
        raise ValueError("a Connection needs private_key or private_key_path (no agent here)")
    return connection.private_key_path


def _pinning(connection: Connection, directory: Path, name: str) -> dict[str, str]:
    """The ssh options that pin `connection`'s host key and use only its private key."""
    known_hosts = directory / f"{name}.known_hosts"
    known_hosts.write_text(known_hosts_line(connection.host, connection.port, connection.host_key))
    return {
        "UserKnownHostsFile": str(known_hosts),
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        "HostKeyAlgorithms": host_key_algorithms(connection.host_key),
        "CheckHostIP": "no",
        "UpdateHostKeys": "no",
        "BatchMode": "yes",
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "IdentityFile": str(_key_file(connection, directory, f"{name}.key")),
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "ConnectTimeout": "15",
        "ServerAliveInterval": "15",
        "LogLevel": "ERROR",
    }


@contextlib.contextmanager
def ssh_config(connection: Connection) -> Iterator[tuple[Path, str]]:
    """A private directory with an ssh_config for `connection` (and its bastions, by ProxyJump: the jump
    ssh reads the same -F file, so the bastion's key is pinned the same way); yields (config, alias)."""
    with tempfile.TemporaryDirectory(prefix=f"gdt-ssh-{os.getpid()}-") as tmp:
        directory = Path(tmp)
        blocks = []
        hop: Connection | None = connection
        index = 0
        while hop is not None:
            alias = f"hop{index}"
            options = {"HostName": hop.host, "Port": str(hop.port), "User": hop.user}
            options.update(_pinning(hop, directory, alias))
            if hop.proxy is not None:
                options["ProxyJump"] = f"hop{index + 1}"
            blocks.append(f"Host {alias}\n" + "".join(f"  {key} {value}\n" for key, value in options.items()))
            hop = hop.proxy
            index += 1
        config = directory / "ssh_config"
        config.write_text("\n".join(blocks))
        yield config, "hop0"


def run_remote(
    connection: Connection, create: str, stdin: str | None = None, timeout: float = 300
) -> RemoteResult:
    """`create` as the one command of an SSH session on `connection`'s host, `stdin` piped to it."""
    with ssh_config(connection) as (config, alias):
        result = subprocess.run(
            [ssh_binary(), "-F", str(config), "-T", "--", alias, create],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            env=client_env(),
            timeout=timeout,
            check=False,
        )
    return RemoteResult(result.returncode, result.stdout, result.stderr)


def _sftp_quote(path: str) -> str:
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def copy_to_remote(
    connection: Connection, local_path: Path | str, remote_path: str, timeout: float = 300
) -> RemoteResult:
    """A file asset copied as pulumi-command v1.2.1 copies it (provider/pkg/provider/remote/copy.go,
    sftpCopy): its parent directories made first (MkdirAll: an existing one is fine), then the file
    written at REMOTE, over SFTP in batch mode (`sftp -b`: any failed step fails the copy). A relative
    REMOTE is resolved by the SFTP server in the login directory, as there."""
    sftp = find_program("sftp", "/usr/bin/sftp") or "/usr/bin/sftp"
    parents = [str(p) for p in reversed(PurePosixPath(remote_path).parents) if str(p) not in (".", "/")]
    with ssh_config(connection) as (config, alias):
        batch = config.with_name("sftp.batch")
        lines = [f"-mkdir {_sftp_quote(p)}" for p in parents]  # "-": a directory already there is fine
        lines.append(f"put {_sftp_quote(str(local_path))} {_sftp_quote(remote_path)}")
        batch.write_text("\n".join(lines) + "\n")
        result = subprocess.run(
            [sftp, "-F", str(config), "-b", str(batch), "--", alias],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=client_env(),
            timeout=timeout,
            check=False,
        )
    return RemoteResult(result.returncode, result.stdout, result.stderr)


def ssh_opts(connection: Connection, directory: Path) -> list[str]:
    """Command-line options (terraform-provider-docker's `sshOpts` form: no config file) that pin
    `connection`'s host key and use its key only; its bastion, if any, through a ProxyCommand running
    the real ssh with the same pinning. Key and known_hosts files are written to `directory`."""
    return _opts(connection, directory, "target")


def _opts(connection: Connection, directory: Path, name: str) -> list[str]:
    pinning = _pinning(connection, directory, name)
    identity = pinning.pop("IdentityFile")
    opts = ["-F", "/dev/null"]
    for key, value in pinning.items():
        opts += ["-o", f"{key}={value}"]
    opts += ["-i", identity]
    if connection.proxy is not None:
        proxy = connection.proxy
        jump = [
            ssh_binary(),  # the real ssh by path: the wrapper on PATH would add the target's options
            *_opts(proxy, directory, f"{name}-proxy"),
            "-p", str(proxy.port), "-l", proxy.user, "-W", "%h:%p", "--", proxy.host,
        ]  # fmt: skip
        opts += ["-o", "ProxyCommand=" + shlex.join(jump)]
    return opts


def docker_over_ssh(
    host_url: str,
    ssh_opts: Sequence[str],
    *docker_args: str,
    input: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """`docker ARGS...` with DOCKER_HOST=`host_url` (ssh://user@host:port): the CLI's connection helper
    runs `ssh`, here a wrapper that execs the real ssh with `ssh_opts` first. Output captured as text;
    never raises on a non-zero exit."""
    with tempfile.TemporaryDirectory(prefix=f"gdt-dockerssh-{os.getpid()}-") as tmp:
        directory = Path(tmp)
        wrapper_dir = directory / "bin"
        wrapper_dir.mkdir()
        wrapper = wrapper_dir / "ssh"
        config = directory / "docker-config"
        config.mkdir()
        env = cli_env(host_url, config, client_env())
        path = env.get("PATH", "/usr/bin:/bin")
        # The caller's PATH is restored before the real ssh runs: a ProxyCommand in the options that
        # calls plain `ssh` gets the real one, not this wrapper again.
        wrapper.write_text(
            "#!/bin/sh\n"
            "# terraform-provider-docker's connection helper: its sshOpts, then the Docker CLI's arguments\n"
            f"PATH={shlex.quote(path)}\n"
            "export PATH\n"
            f'exec {shlex.join([ssh_binary(), *ssh_opts])} "$@"\n'
        )
        wrapper.chmod(0o700)
        env["PATH"] = f"{wrapper_dir}:{path}"
        return subprocess.run(
            [docker_cli_path(), *docker_args],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
