"""`python -m stacks tunnel|status|logs STACK`: reach a Docker stack's host the way its deploy does.

    python -m stacks tunnel STACK [--local-port PORT=LOCAL ...] [--config-file FILE]
    python -m stacks status STACK [--json] [--config-file FILE]
    python -m stacks logs STACK SERVICE [--follow] [--tail N] [--config-file FILE]

The stack file is read and validated offline (stacks.plan, stacks.config: no Pulumi CLI). The host is
reached with the OpenSSH client and the deploy's own connection (components/remote/ssh.py
`docker_ssh_opts`: only the stack's pinned host key is trusted, the bastion with its own pinned key, the
key file `pulumi up` wrote for `target.sshKey` or else the ssh-agent). `host: local` runs the same Docker
commands on this machine. Containers are found by their labels (LABEL_STACK, LABEL_SERVICE), never by name:
a zero-downtime replacement runs beside the old copy under another name.

- tunnel: `ssh -N -L 127.0.0.1:P:127.0.0.1:P` for every port an enabled service publishes on 127.0.0.1 or
  ::1; Ctrl+C (SIGINT) or SIGTERM closes ssh and exits 0.
- status: each container of the stack (and each enabled service without one): state, health, image tag,
  GPU; `--json` for machines.
- logs: `docker logs` of the service's container (the newest running one when two copies exist).

Exit codes as the rest of the CLI: 0 done, 2 a refusal naming the key (no loopback port to forward, a local
or Kubernetes target, an unknown service, a bad --local-port), 1 anything else (ssh or docker failed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from components.remote.ssh import docker_ssh_opts, identity_file, local_home, write_identity
from stacks.config import ConfigError, DockerTarget, StackConfig, validate_with_secrets
from stacks.config.reading import read_pulumi_config, secure_paths
from stacks.host_status import (
    logs_script,
    parse_status,
    pick_container,
    render_table,
    status_script,
    with_missing,
)
from stacks.hosts import ssh_target
from stacks.plan import PlanError, prepare

EXIT_OK, EXIT_FAILED = 0, 1
LOOPBACK = ("127.0.0.1", "::1")
SSH = "ssh"


class HostError(PlanError):
    """The host could not be reached or asked (ssh or docker failed): `error: ...`, exit 1."""


# ---------------------------------------------------------------- the stack and its host
@dataclass(frozen=True)
class StackHost:
    """A Docker stack's validated config and how to run a command where its engine is."""

    stack: str
    config: StackConfig
    ssh: tuple[str, ...] | None  # `ssh OPTIONS -p PORT -l USER -- HOST`; None for `host: local`

    @property
    def target(self) -> DockerTarget:
        target = self.config.target
        assert isinstance(target, DockerTarget)  # load_stack_host refuses the others
        return target

    def argv(self, script: str, *, ssh_options: Sequence[str] = ()) -> list[str]:
        """`sh -c SCRIPT` on the host: here for `local`, else one SSH session (the remote login shell
        runs `sh -c 'SCRIPT'`, so the script is POSIX sh whatever that shell is)."""
        if self.ssh is None:
            return ["sh", "-c", script]
        *options, dashdash, host = self.ssh
        return [*options, *ssh_options, dashdash, host, f"sh -c {shlex.quote(script)}"]


def load_config(stack: str, config_file: Path | None) -> tuple[str, StackConfig]:
    """The project's name and the stack's config, validated as the program validates it (secure values
    stay "[secret]")."""
    plan = prepare(stack, config_file=config_file)  # the config the CLI would hand the program, offline
    raw, secret_keys = read_pulumi_config()
    return plan.project, validate_with_secrets(raw, secret_keys, secure_paths(stack))


def ssh_command(project: str, stack: str, target: DockerTarget) -> tuple[str, ...]:
    """The deploy's own SSH connection to the host, as an `ssh` command line without its command."""
    identity = None
    if target.ssh_key is not None:
        path = identity_file(project, stack)  # written by `pulumi up` from target.sshKey
        write_identity(path, target.ssh_key)  # as the deploy does; a "[secret]" (still encrypted) is not
        if (local_home() / path.removeprefix("~/")).is_file():
            identity = path
        else:
            print(
                f"note: `pulumi up` writes target.sshKey to {path}; not there yet: using your ssh-agent",
                file=sys.stderr,
            )
    connection = ssh_target(
        host=target.host,
        port=target.port,
        user=target.user,
        host_key=target.host_key or "",
        bastion=target.bastion,
    )
    return (
        SSH,
        *docker_ssh_opts(connection, identity),
        "-p",
        str(target.port),
        "-l",
        target.user,
        "--",
        target.host,
    )


def load_stack_host(stack: str, config_file: Path | None) -> StackHost:
    project, config = load_config(stack, config_file)
    target = config.target
    if not isinstance(target, DockerTarget):
        raise ConfigError(
            "target.kind",
            f"{target.kind}: tunnel, status and logs reach a Docker host; on a cluster use "
            f"`kubectl -n {getattr(target, 'namespace', '?')} port-forward`, `get pods`, `logs`",
        )
    return StackHost(stack, config, None if target.is_local else ssh_command(project, stack, target))


# ---------------------------------------------------------------- tunnel
@dataclass(frozen=True)
class Forward:
    service: str
    address: str  # the host's loopback address the port is published on: 127.0.0.1 or ::1
    port: int  # the published port on the host
    container_port: int
    local_port: int  # where it appears on this machine
    http: bool  # the service's HTTP health check answers on this container port

    @property
    def local_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{'http://' if self.http else ''}{host}:{self.local_port}"

    @property
    def ssh_spec(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.local_port}:{host}:{self.port}"


def parse_local_ports(values: Sequence[str]) -> dict[int, int]:
    """`--local-port PORT=LOCAL` (repeatable): the host's PORT appears here as LOCAL."""
    mapping: dict[int, int] = {}
    for value in values:
        port, sep, local = value.partition("=")
        if not (
            sep and port.isdigit() and local.isdigit() and 0 < int(port) < 65536 and 0 < int(local) < 65536
        ):
            raise ConfigError("--local-port", f"expected PORT=LOCAL (ports 1-65535), got {value!r}")
        mapping[int(port)] = int(local)
    return mapping


def loopback_forwards(config: StackConfig, local_ports: Mapping[int, int] | None = None) -> list[Forward]:
    """Every TCP port an enabled service publishes on a loopback address of the host, in config order."""
    local_ports = dict(local_ports or {})
    forwards = []
    for name, service in config.services.items():
        if not service.enabled:
            continue
        check = service.healthcheck.http if service.healthcheck else None
        for mapping in service.ports:
            if mapping.host_ip in LOOPBACK and mapping.protocol == "tcp":
                forwards.append(
                    Forward(
                        service=name,
                        address=mapping.host_ip,
                        port=mapping.host_port,
                        container_port=mapping.container_port,
                        local_port=local_ports.pop(mapping.host_port, mapping.host_port),
                        http=check is not None and check.port == mapping.container_port,
                    )
                )
    if local_ports:
        published = ", ".join(str(f.port) for f in forwards) or "none"
        raise ConfigError(
            "--local-port",
            f"{', '.join(map(str, local_ports))} is not a loopback port of the stack (those: {published})",
        )
    return forwards


def tunnel_argv(host: StackHost, forwards: Sequence[Forward]) -> list[str]:
    """`ssh -N -L ...`: no remote command, exits when a forward cannot be set up."""
    if host.ssh is None:
        raise ValueError("a local target has nothing to tunnel")
    *options, dashdash, address = host.ssh
    extra = ["-N", "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=30"]
    extra += [word for forward in forwards for word in ("-L", forward.ssh_spec)]
    return [*options, *extra, dashdash, address]


def check_local_port_free(forward: Forward) -> None:
    family = socket.AF_INET6 if ":" in forward.address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((forward.address, forward.local_port))
        except OSError as err:
            raise ConfigError(
                "--local-port",
                f"{forward.address}:{forward.local_port} ({forward.service}) is taken on this machine "
                f"({err.strerror}): map it elsewhere with --local-port {forward.port}=LOCAL",
            ) from None


class _Stop(Exception):
    """SIGTERM or SIGHUP (the terminal closed): close the child as Ctrl+C does."""


@contextlib.contextmanager
def _signals_stop() -> Iterator[None]:
    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise _Stop

    before = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def run_until_stopped(argv: Sequence[str], *, on_stop: str) -> int:
    """Run `argv` (ssh, or docker here) until it ends, returning its exit status; Ctrl+C (SIGINT), SIGTERM
    or SIGHUP closes it instead and returns 0. The child has a process group of its own, so the terminal's
    Ctrl+C reaches only this process, which closes the child: one path, whoever sends the signal."""
    with _signals_stop():
        child = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, process_group=0)
        try:
            return child.wait()
        except (KeyboardInterrupt, _Stop):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            if on_stop:
                print(on_stop, file=sys.stderr)
            return EXIT_OK


def cmd_tunnel(args: argparse.Namespace) -> int:
    host = load_stack_host(args.stack, _config_file(args))
    forwards = loopback_forwards(host.config, parse_local_ports(args.local_port or []))
    if not forwards:
        raise ConfigError(
            "services",
            f'stack {args.stack} publishes no port on 127.0.0.1 or ::1 (ports: ["127.0.0.1:PORT:PORT"]): '
            "nothing to tunnel",
        )
    if host.ssh is None:
        where = ", ".join(f"{f.service} {f.local_url}" for f in forwards)
        raise ConfigError("target.host", f"local: the ports are on this machine already ({where}): no tunnel")
    for forward in forwards:
        check_local_port_free(forward)
    target = host.target
    for forward in forwards:
        print(
            f"{forward.local_url:<28} -> {forward.service} "
            f"({target.host} {forward.address}:{forward.port}, container port {forward.container_port})"
        )
    print(f"ssh {target.user}@{target.host}: Ctrl+C closes the tunnel", flush=True)
    code = run_until_stopped(tunnel_argv(host, forwards), on_stop="tunnel closed")
    if code != EXIT_OK:
        raise HostError(f"ssh to {target.host} exited with status {code} (its message is above)")
    return EXIT_OK


# ---------------------------------------------------------------- status
def run_captured(host: StackHost, script: str) -> str:
    result = subprocess.run(
        host.argv(script), capture_output=True, text=True, check=False, timeout=120, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        where = "this machine" if host.ssh is None else host.target.host
        why = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
        raise HostError(f"docker on {where} failed: {why[0]}")
    return result.stdout


def cmd_status(args: argparse.Namespace) -> int:
    host = load_stack_host(args.stack, _config_file(args))
    rows = with_missing(parse_status(args.stack, run_captured(host, status_script(args.stack))), host.config)
    where = "local" if host.ssh is None else host.target.host
    if args.json:
        print(json.dumps({"stack": args.stack, "host": where, "services": rows}, indent=2))
    else:
        print(render_table(rows))
    return EXIT_OK


# ---------------------------------------------------------------- logs
def _tail(value: str) -> str:
    if value != "all" and not value.isdigit():
        raise argparse.ArgumentTypeError(f'expected a number of lines or "all", got {value!r}')
    return value


def cmd_logs(args: argparse.Namespace) -> int:
    host = load_stack_host(args.stack, _config_file(args))
    services = host.config.services
    if args.service not in services:
        raise ConfigError(f"services.{args.service}", f"no such service (services: {', '.join(services)})")
    rows = parse_status(args.stack, run_captured(host, status_script(args.stack, args.service)))
    chosen = pick_container(rows)
    if chosen is None:
        where = "this machine" if host.ssh is None else host.target.host
        raise HostError(f"{where} runs no container of {args.stack}/{args.service} (not deployed?)")
    if len(rows) > 1:
        print(
            f"note: {len(rows)} containers of {args.service}: showing {chosen['container']}", file=sys.stderr
        )
    argv = host.argv(logs_script(chosen["id"], follow=args.follow, tail=args.tail))
    code = run_until_stopped(argv, on_stop="")
    if code != EXIT_OK:
        raise HostError(f"docker logs exited with status {code}")
    return EXIT_OK


# ---------------------------------------------------------------- the subcommands
def _config_file(args: argparse.Namespace) -> Path | None:
    return Path(args.config_file) if args.config_file else None


def add_parsers(sub: Any) -> None:
    """`tunnel`, `status` and `logs` on `python -m stacks`'s subparsers."""
    commands: list[tuple[str, str, Callable[[argparse.Namespace], int]]] = [
        ("tunnel", "forward the stack's loopback ports to this machine over SSH, until Ctrl+C", cmd_tunnel),
        ("status", "each service's container on the host: state, health, image tag, GPU", cmd_status),
        ("logs", "a service's container logs on the host (docker logs)", cmd_logs),
    ]
    for name, help_text, func in commands:
        command = sub.add_parser(name, help=help_text)
        command.add_argument("stack")
        if name == "logs":
            command.add_argument("service")
            command.add_argument("--follow", "-f", action="store_true", help="keep printing until Ctrl+C")
            command.add_argument("--tail", type=_tail, help='lines from the end ("all" or N)')
        if name == "status":
            command.add_argument("--json", action="store_true", help="one JSON object on stdout")
        if name == "tunnel":
            command.add_argument(
                "--local-port",
                action="append",
                metavar="PORT=LOCAL",
                help="the host's PORT appears here as LOCAL (repeatable; default: the same port)",
            )
        command.add_argument("--config-file", help="a stack config file instead of Pulumi.STACK.yaml")
        command.set_defaults(func=func)
