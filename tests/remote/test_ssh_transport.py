"""Both transports to a GPU host use one connection: components/remote/ssh.py, read back by the real ssh client.

`ssh -G` prints the configuration ssh would use for a connection without making it, so these tests show
what OpenSSH itself makes of the Docker provider's sshOpts, given in the order the Docker CLI's ssh
connection helper gives them (options first, then `-l user -p port -- host`). Real connections over a
real sshd and bastion are in tests/real/.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pulumi_command as command
import pytest

import components.remote.ssh
from components.core.vocabulary import SECRET_PLACEHOLDER
from components.remote.ssh import (
    SshTarget,
    command_connection,
    docker_ssh_opts,
    identity_file,
    write_identity,
)
from stacks.plan import Plan
from tests.plans import DOCKER_PROVIDER, REMOTE_COMMAND, plan_with

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL8war8sJe6U3kmQHIT7Umy2qtAlRF7xs29MLzDt2aNi"
BASTION_KEY = (
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBIoKl98itahOqrprcFuksqOtBs2q9u/"
    "fVTc4JV55AcwYjZmm8j6o1d4uG5RXIM+PRRfHubDBO5a32dqBa9wS8R0="
)
TARGET = SshTarget.of(host="gpu1.example.net", port=2222, user="deploy", host_key=ED25519)
VIA_BASTION = SshTarget.of(
    host="gpu1.internal",
    port=22,
    user="deploy",
    host_key=ED25519,
    bastion=("jump.example.net", 2200, "hop", BASTION_KEY),
)


def ssh_config(options: list[str], target: SshTarget, home: Path) -> dict[str, str]:
    """What OpenSSH resolves for the Docker CLI's command line (cli/connhelper: sshOpts first)."""
    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.fail("the OpenSSH client is needed: apt-get install openssh-client")
    argv = [ssh, "-G", *options, "-l", target.hop.user, "-p", str(target.hop.port), "--", target.hop.host]
    result = subprocess.run(
        argv, capture_output=True, text=True, check=True, env={**os.environ, "HOME": str(home)}
    )
    config: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(" ")
        config.setdefault(key, value)
    return config


def test_ssh_reads_the_pin_and_nothing_else(tmp_path: Path) -> None:
    config = ssh_config(docker_ssh_opts(TARGET, None), TARGET, tmp_path)
    assert config["stricthostkeychecking"] == "true"
    assert config["batchmode"] == "yes"
    assert config["userknownhostsfile"] == "/dev/null"
    assert config["globalknownhostsfile"] == "/dev/null"
    assert config["hostkeyalgorithms"] == "ssh-ed25519"
    assert config["knownhostscommand"] == f"/bin/echo [gpu1.example.net]:2222 {ED25519}"
    assert (config["user"], config["port"], config["hostname"]) == ("deploy", "2222", "gpu1.example.net")
    assert "proxycommand" not in config
    assert config.get("identitiesonly") == "no", "without target.sshKey the agent's keys are used"


def test_the_pin_command_prints_a_known_hosts_line(tmp_path: Path) -> None:
    pin = ssh_config(docker_ssh_opts(TARGET, None), TARGET, tmp_path)["knownhostscommand"]
    printed = subprocess.run(shlex.split(pin), capture_output=True, text=True, check=True).stdout
    assert printed == f"[gpu1.example.net]:2222 {ED25519}\n"
    default_port = SshTarget.of(host="gpu1", port=22, user="u", host_key=ED25519)
    assert default_port.hop.known_hosts_name == "gpu1"


def test_the_key_file_and_the_bastion_follow_the_remote_commands(tmp_path: Path) -> None:
    identity = identity_file("gpu-deploy", "prod")
    config = ssh_config(docker_ssh_opts(VIA_BASTION, identity), VIA_BASTION, tmp_path)
    assert config["identitiesonly"] == "yes"
    assert config["identityfile"] == "~/.ssh/gpu-deploy/gpu-deploy.prod.key", (
        "~ is ssh's to expand, where it runs"
    )
    jump = shlex.split(config["proxycommand"])
    assert jump[0] == "ssh" and jump[-3:] == ["-W", "%h:%p", "jump.example.net"]
    assert jump[jump.index("-p") + 1] == "2200" and jump[jump.index("-l") + 1] == "hop"
    inner = ssh_config(
        jump[1 : jump.index("-p")],
        SshTarget.of(host="jump.example.net", port=2200, user="hop", host_key=BASTION_KEY),
        tmp_path,
    )
    assert inner["knownhostscommand"] == f"/bin/echo [jump.example.net]:2200 {BASTION_KEY}"
    assert inner["hostkeyalgorithms"] == "ecdsa-sha2-nistp256"
    assert inner["stricthostkeychecking"] == "true" and inner["userknownhostsfile"] == "/dev/null"
    assert inner["identityfile"] == config["identityfile"]

    connection = command_connection(VIA_BASTION, None)
    assert (connection.host, connection.port, connection.user) == ("gpu1.internal", 22, "deploy")
    assert connection.host_key == ED25519
    proxy = connection.proxy
    assert isinstance(proxy, command.remote.ProxyConnectionArgs)
    assert (proxy.host, proxy.port, proxy.user, proxy.host_key) == (
        "jump.example.net",
        2200,
        "hop",
        BASTION_KEY,
    )


def test_write_identity_is_private_and_stable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(components.remote.ssh, "local_home", lambda: tmp_path)
    path = identity_file("gpu-deploy", "prod")
    write_identity(path, SECRET_PLACEHOLDER)
    assert not (tmp_path / ".ssh").exists(), "the plan's placeholder is never written"
    write_identity(path, "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----")
    written = tmp_path / ".ssh/gpu-deploy/gpu-deploy.prod.key"
    assert written.read_text().endswith("-----END OPENSSH PRIVATE KEY-----\n")
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE(written.parent.stat().st_mode) == 0o700
    written.chmod(0o644)
    write_identity(path, "-----BEGIN OPENSSH PRIVATE KEY-----\nnew\n-----END OPENSSH PRIVATE KEY-----\n")
    assert "new" in written.read_text() and stat.S_IMODE(written.stat().st_mode) == 0o600


def provider_and_commands(plan: Plan) -> tuple[list[str], list[Any]]:
    provider = plan.by_type(DOCKER_PROVIDER)[0]
    return json.loads(provider.inputs["sshOpts"]), [
        r.inputs["connection"] for r in plan.by_type(REMOTE_COMMAND)
    ]


def test_a_stack_with_a_key_and_a_bastion_plans_one_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planned provider uses the stack's key file and bastion; the key itself is never planned."""
    monkeypatch.setattr(components.remote.ssh, "local_home", lambda: tmp_path)
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"

    def edit(config: dict[str, object]) -> None:
        target = config["gpu-deploy:target"]
        assert isinstance(target, dict)
        target["sshKey"] = key
        target["bastion"] = {"host": "jump.example.net", "port": 2200, "user": "hop", "hostKey": BASTION_KEY}

    plan = plan_with(tmp_path, "prod", edit)
    opts, connections = provider_and_commands(plan)
    assert "IdentityFile=~/.ssh/gpu-deploy/gpu-deploy.prod.key" in opts
    assert any(o.startswith("ProxyCommand=ssh ") and "jump.example.net" in o for o in opts)
    assert (tmp_path / ".ssh/gpu-deploy/gpu-deploy.prod.key").read_text() == key
    assert key not in json.dumps(plan.as_json()), "the key itself is never planned in clear"
    # pulumi-command's SDK makes every connection a secret, so the plan shows none of them; that both come
    # from one SshTarget is shown above, and over a real sshd and bastion in tests/real/.
    assert connections and all(c == "[secret]" for c in connections)
