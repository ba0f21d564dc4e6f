"""One SSH connection to a GPU host, spoken by both transports that reach it.

The remote commands (pulumi-command) and the Docker provider (the Docker CLI's ssh connection helper,
which runs the operator's `ssh`) must use the same host, user, port, private key, bastion and pinned host
key, from any checkout, on every run. This module owns that connection and derives both forms:

- `command_connection()`: pulumi-command's `ConnectionArgs` (pinned `hostKey`, `privateKey`, `proxy`).
- `docker_ssh_opts()`: the `sshOpts` of the Docker provider. The pinned key reaches ssh through
  `KnownHostsCommand` (OpenSSH 8.5+) with every known_hosts file off, so nothing written once to a local
  file is trusted and a fresh clone or CI runner needs none; `HostKeyAlgorithms` offers only the pinned
  key's type, as pulumi-command does. The bastion is a `ProxyCommand` with the same options (options
  given with -o do not reach a `ProxyJump` connection). The private key, when the stack has one, is written
  on every run to `~/.ssh/gpu-deploy/<project>.<stack>.key` (mode 0600): ssh reads keys only from files.
  Without one both transports use the operator's ssh-agent.
"""

from __future__ import annotations

import os
import pwd
import shlex
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_command as command

from components.core.values import HostKey, parse_host_key
from components.core.vocabulary import SECRET_PLACEHOLDER

KEY_DIR = "~/.ssh/gpu-deploy"  # as ssh reads it: `~` is expanded by ssh itself, on whichever machine runs it
ECHO = "/bin/echo"  # KnownHostsCommand runs a program by absolute path, without a shell


@dataclass(frozen=True)
class SshHop:
    host: str
    port: int
    user: str
    host_key: HostKey

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this host: `host` on port 22, `[host]:port` elsewhere."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


@dataclass(frozen=True)
class SshTarget:
    hop: SshHop
    bastion: SshHop | None = None

    @classmethod
    def of(
        cls,
        *,
        host: str,
        port: int,
        user: str,
        host_key: str,
        bastion: tuple[str, int, str, str] | None = None,
    ) -> SshTarget:
        via = None
        if bastion is not None:
            b_host, b_port, b_user, b_key = bastion
            via = SshHop(b_host, b_port, b_user, parse_host_key(b_key))
        return cls(SshHop(host, port, user, parse_host_key(host_key)), via)

    @property
    def docker_url(self) -> str:
        return f"ssh://{self.hop.user}@{self.hop.host}:{self.hop.port}"


def command_connection(
    target: SshTarget, private_key: pulumi.Input[str] | None
) -> command.remote.ConnectionArgs:
    """pulumi-command's connection: pinned host key, the stack's key (or the agent), the bastion."""
    key = pulumi.Output.secret(private_key) if private_key is not None else None
    bastion = target.bastion
    return command.remote.ConnectionArgs(
        host=target.hop.host,
        port=target.hop.port,
        user=target.hop.user,
        host_key=str(target.hop.host_key),
        private_key=key,
        proxy=command.remote.ProxyConnectionArgs(
            host=bastion.host,
            port=bastion.port,
            user=bastion.user,
            host_key=str(bastion.host_key),
            private_key=key,
        )
        if bastion
        else None,
    )


def identity_file(project: str, stack: str) -> str:
    """Where the Docker transport's copy of `target.sshKey` lives, as ssh reads the path."""
    return f"{KEY_DIR}/{project}.{stack}.key"


def _hop_options(hop: SshHop, identity: str | None) -> list[str]:
    pin = f"{ECHO} {hop.known_hosts_name} {hop.host_key}"
    options = [
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=/dev/null",
        "GlobalKnownHostsFile=/dev/null",
        f"KnownHostsCommand={pin}",
        f"HostKeyAlgorithms={hop.host_key.type}",
    ]
    if identity is not None:
        options += ["IdentitiesOnly=yes", f"IdentityFile={identity}"]
    return [word for option in options for word in ("-o", option)]


def docker_ssh_opts(target: SshTarget, identity: str | None) -> list[str]:
    """The Docker provider's `sshOpts`: given to `ssh` before `-l user -p port -- host` (docker/cli
    cli/connhelper: GetConnectionHelperWithSSHOpts), so they govern the whole connection."""
    options = _hop_options(target.hop, identity)
    bastion = target.bastion
    if bastion is not None:
        jump = [
            "ssh",
            *_hop_options(bastion, identity),
            "-p",
            str(bastion.port),
            "-l",
            bastion.user,
            "-W",
            "%h:%p",
            bastion.host,
        ]
        options += ["-o", "ProxyCommand=" + " ".join(shlex.quote(word) for word in jump)]
    return options


def local_home() -> Path:
    """The home directory ssh means by `~`: the user's entry in the password database, not $HOME (OpenSSH
    misc.c tilde_expand_filename uses getpwuid), so the key is written where ssh will read it."""
    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def write_identity(path: str, private_key: str) -> None:
    """Write the private key where `identity_file` says, mode 0600 in a 0700 directory, on every run (the
    same content is left alone). The plan's "[secret]" placeholder is never written."""
    if private_key == SECRET_PLACEHOLDER:
        return
    local = Path(path.replace("~", str(local_home()), 1) if path.startswith("~/") else path)
    local.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = private_key if private_key.endswith("\n") else private_key + "\n"
    if local.is_file() and local.read_text(encoding="utf-8") == text:
        return
    descriptor = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(local, 0o600)
