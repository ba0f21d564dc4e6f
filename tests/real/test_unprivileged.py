"""A deploy user without sudo (provision.privileges: unprivileged), for real: the planned host steps over
real SSH as the tier's deploy user with its passwordless sudo taken away for these tests (its sudoers file
moved aside, put back afterwards). What the user may do (directories in its own home, Docker through the
docker group) succeeds; what needs root fails with exit 11 or 17 and one ERROR line saying what an
administrator has to do, and nothing tries sudo.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacks.plan import Plan, make_plan
from tests.real.hosts import SshHosts
from tests.real.remote import RemoteResult, run_remote

STACK = "realunprivileged"
COMMAND = "command:remote:Command"


@pytest.fixture(scope="module")
def no_sudo(ssh_hosts: SshHosts) -> Iterator[SshHosts]:
    """The deploy user without its passwordless sudo: the sudoers file under a name with a dot (sudo's
    includedir skips it), restored afterwards."""
    granted = ssh_hosts.sudoers_file
    aside = granted.with_name(f".{granted.name}.off")
    granted.replace(aside)
    try:
        check = run_remote(ssh_hosts.target.connection(), "sudo -n true")
        assert check.exit != 0, "the deploy user still has sudo"
        yield ssh_hosts
    finally:
        aside.replace(granted)


def plan_for(tmp: Path, hosts: SshHosts, root: Path, privileges: str) -> Plan:
    user = hosts.deploy_user
    target: dict[str, Any] = {
        "kind": "docker",
        "host": hosts.target.host,
        "port": hosts.target.port,
        "user": hosts.target.user,
        "hostKey": hosts.target.host_key,
        "sshKey": hosts.target.private_key,
        "root": str(root),
    }
    config = {
        "pulumi:disable-default-providers": ["docker", "kubernetes"],
        "gpu-deploy:profile": "p40",
        "gpu-deploy:target": target,
        "gpu-deploy:provision": {"privileges": privileges, "driver": "verify", "toolkit": "verify"},
        "gpu-deploy:services": {
            "api": {
                "image": "gpu-deploy-test/bash:bookworm",
                "gpu": 1,
                "user": f"{user.uid}:{user.gid}",  # the deploy user's own: only root could give them away
                "memory": "256m",
                "volumes": ["data:/data", "checkpoints:/checkpoints"],
                "command": ["sleep", "infinity"],
            }
        },
    }
    path = tmp / f"Pulumi.{STACK}.{privileges}.{root.parent.name}.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    return make_plan(STACK, config_file=path)


def run(plan: Plan, hosts: SshHosts, name: str) -> RemoteResult:
    planned = plan.named(COMMAND, name).inputs
    return run_remote(hosts.target.connection(), planned["create"], planned.get("stdin"))


def error_line(result: RemoteResult) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1, result
    return errors[0]


@pytest.fixture(scope="module")
def places(no_sudo: SshHosts) -> Iterator[tuple[Path, Path]]:
    """(a directory the deploy user owns in its home, a root-owned one under /srv), removed afterwards."""
    user = no_sudo.deploy_user
    home = user.home / f"gdt-{os.getpid()}"
    home.mkdir(mode=0o755)
    os.chown(home, user.uid, user.gid)
    srv = Path(tempfile.mkdtemp(prefix=f"gdt-{os.getpid()}-", dir="/srv"))
    srv.chmod(0o755)
    try:
        yield home, srv
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(srv, ignore_errors=True)


def dirs_step(plan: Plan) -> str:
    [step] = [r.name for r in plan.by_type(COMMAND) if r.name.startswith("dirs-")]
    return step


def test_directories_in_the_users_own_home_are_made_without_root(
    tmp_path: Path, no_sudo: SshHosts, places: tuple[Path, Path]
) -> None:
    user = no_sudo.deploy_user
    root = places[0] / "asr-test"
    plan = plan_for(tmp_path, no_sudo, root, "unprivileged")
    first = run(plan, no_sudo, dirs_step(plan))
    assert first.exit == 0, first.stderr
    for name in ("data", "checkpoints"):
        info = (root / name).stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (user.uid, user.gid, 0o750)
    again = run(plan, no_sudo, dirs_step(plan))
    assert again.exit == 0 and f"already {user.uid}:{user.gid} mode 750" in again.stderr
    assert "sudo" not in first.stderr + again.stderr


def test_a_root_outside_the_users_own_directories_fails_in_one_line(
    tmp_path: Path, no_sudo: SshHosts, places: tuple[Path, Path]
) -> None:
    root = places[1] / "asr-test"
    result = run(plan := plan_for(tmp_path, no_sudo, root, "unprivileged"), no_sudo, dirs_step(plan))
    assert result.exit == 11, result
    line = error_line(result)
    assert f"the stack's root {root} is in {places[1]}, owned by root" in line
    assert "provision.privileges: unprivileged" in line and not root.exists()


def test_with_privileges_root_the_same_step_needs_sudo(
    tmp_path: Path, no_sudo: SshHosts, places: tuple[Path, Path]
) -> None:
    root = places[0] / "rooted"
    result = run(plan := plan_for(tmp_path, no_sudo, root, "root"), no_sudo, dirs_step(plan))
    assert result.exit == 11, result
    assert "'sudo -n' is not allowed for user" in error_line(result)


def test_docker_runtime_is_only_verified_and_the_administrator_named(
    tmp_path: Path, no_sudo: SshHosts, places: tuple[Path, Path]
) -> None:
    """The tier's engine has no nvidia runtime: the deploy user reaches it (docker group), sees that, and
    says what an administrator runs, changing nothing."""
    plan = plan_for(tmp_path, no_sudo, places[0] / "runtime", "unprivileged")
    result = run(plan, no_sudo, "gpu-host-runtime")
    assert result.exit == 17, result
    line = error_line(result)
    assert "the running dockerd does not list the nvidia runtime" in line
    assert "provision.privileges: unprivileged" in line
    assert "sudo nvidia-ctk runtime configure --runtime=docker" in result.stderr
    assert "sudo: " not in result.stderr  # nothing tried sudo


def test_the_driver_step_verifies_without_holding(
    tmp_path: Path, no_sudo: SshHosts, places: tuple[Path, Path]
) -> None:
    """No NVIDIA driver here: the verify fails as it does with root (exit 14), holding nothing."""
    plan = plan_for(tmp_path, no_sudo, places[0] / "driver", "unprivileged")
    assert "DRIVER_HOLD=no" in plan.named(COMMAND, "gpu-host-driver").inputs["create"]
    result = run(plan, no_sudo, "gpu-host-driver")
    assert result.exit == 14, result
    assert "nvidia-smi failed" in error_line(result)
