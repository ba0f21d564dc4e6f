"""The host scripts without root (PRIVILEGES=unprivileged, provision.privileges): real bash, fake roots.

The scripts run as a user that is not root (as this user when the tests are not root, else as `nobody`
through setpriv, with the test's files given to it): they verify and change nothing, never call sudo, and
where root would be needed fail with exit 11 and an ERROR line that says what an administrator does.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.host.shell import command_line, script
from tests.host.test_scripts import STUB_HEAD, STUBS, Host, assert_fails

NOBODY = 65534
IMAGE = "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for entry in path.rglob("*"):
        os.lchown(entry, uid, gid)


@pytest.fixture
def user() -> tuple[int, int]:
    """The unprivileged user the scripts run as: (uid, gid); `nobody` when the tests run as root."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is needed to drop root")
    return NOBODY, NOBODY


@pytest.fixture
def host(user: tuple[int, int]) -> Iterator[Host]:
    """tests/host/test_scripts.py's stub host, in a directory the user can reach (pytest's own tmp is
    root's, mode 0700): stubs, state and logs the user's, the fake root itself root's, like a real /."""
    base = Path(tempfile.mkdtemp(prefix="gpu-deploy-unprivileged-"))
    base.chmod(0o755)
    try:
        root, state, bindir = base / "root", base / "state", base / "bin"
        for d in (root, state, bindir):
            d.mkdir(mode=0o755)
        for name, body in STUBS.items():
            (bindir / name).write_text(STUB_HEAD + body)
            (bindir / name).chmod(0o755)
        h = Host(base, root, state, base / "calls.log")
        h.env = {
            "PATH": f"{bindir}:{os.environ['PATH']}",
            "HOME": str(base),
            "HOST_ROOT": str(root),
            "STATE": str(state),
            "CALLS_LOG": str(h.calls_log),
            "LANG": "C.UTF-8",
        }
        h.set_os("ubuntu22")
        h.calls_log.touch()
        if os.geteuid() == 0:
            for path in (state, bindir, h.calls_log):
                _chown_tree(path, *user)
        yield h
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(host: Host, who: tuple[int, int], name: str, **variables: str) -> subprocess.CompletedProcess[str]:
    host.calls_log.write_text("")
    argv = ["bash", "-c", command_line({**variables, "PRIVILEGES": "unprivileged"})]
    if os.geteuid() == 0:
        argv = ["setpriv", f"--reuid={who[0]}", f"--regid={who[1]}", "--clear-groups", *argv]
    return subprocess.run(
        argv, input=script(name), env=host.env, capture_output=True, text=True, timeout=60, check=False
    )


def users_dir(host: Host, who: tuple[int, int], rel: str) -> Path:
    """A directory of the fake root that the user owns (its home)."""
    path = host.root / rel
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, *who)
    return path


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_prepare_dirs_as_the_deploy_user_in_its_home(host: Host, user: tuple[int, int]) -> None:
    users_dir(host, user, "home/students/r03i18")
    root = "/home/students/r03i18/asr-test"
    dirs = f"{root}/data\n{root}/checkpoints/run1\n"
    owner = f"{user[0]}:{user[1]}"
    result = run(host, user, "prepare-dirs", ROOT=root, DIRS=dirs, OWNER=owner)
    assert result.returncode == 0, result.stderr
    for rel in ("asr-test/data", "asr-test/checkpoints/run1"):
        info = (host.root / "home/students/r03i18" / rel).stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (*user, 0o750)
    assert not host.called("sudo")
    again = run(host, user, "prepare-dirs", ROOT=root, DIRS=dirs, OWNER=owner)
    assert again.returncode == 0 and f"already {owner} mode 750" in again.stderr


def test_prepare_dirs_for_another_owner_needs_root(host: Host, user: tuple[int, int]) -> None:
    users_dir(host, user, "home/u")
    result = run(host, user, "prepare-dirs", ROOT="/home/u/app", DIRS="/home/u/app/data", OWNER="1001:1001")
    assert_fails(result, 11, "only root can give a directory to another user", "services.<name>.user")
    assert "1001:1001" in one_error_line(result)
    assert not (host.root / "home/u/app").exists() and not host.called("sudo")


@pytest.mark.skipif(os.geteuid() != 0, reason="a directory the user does not own needs root to make")
def test_prepare_dirs_outside_the_users_own_directories_needs_root(host: Host, user: tuple[int, int]) -> None:
    (host.root / "srv").mkdir()
    owner = f"{user[0]}:{user[1]}"
    result = run(host, user, "prepare-dirs", ROOT="/srv/app", DIRS="/srv/app/data", OWNER=owner)
    assert_fails(result, 11, "root /srv/app is in /srv, owned by root", "target.root to a directory under")
    one_error_line(result)
    assert not (host.root / "srv/app").exists() and not host.called("sudo")


@pytest.mark.skipif(os.geteuid() != 0, reason="a file of another user needs root to make")
def test_prepare_dirs_refuses_what_another_user_left_inside(host: Host, user: tuple[int, int]) -> None:
    home = users_dir(host, user, "home/u")
    data = home / "app/data"
    data.mkdir(parents=True)
    _chown_tree(home / "app", *user)
    (data / "app.db").write_text("root's old database")  # root-owned, as an older setup left it
    owner = f"{user[0]}:{user[1]}"
    result = run(host, user, "prepare-dirs", ROOT="/home/u/app", DIRS="/home/u/app/data", OWNER=owner)
    assert_fails(result, 11, "/home/u/app/data/app.db belongs to root", "sudo chown -R")
    one_error_line(result)
    os.chown(data, 0, 0)  # the listed directory itself another user's
    (data / "app.db").unlink()
    result = run(host, user, "prepare-dirs", ROOT="/home/u/app", DIRS="/home/u/app/data", OWNER=owner)
    assert_fails(result, 11, "/home/u/app/data belongs to uid 0")


def test_configure_runtime_only_verifies(host: Host, user: tuple[int, int]) -> None:
    result = run(host, user, "configure-runtime", CONTAINER_RUNTIME="docker")
    assert result.returncode == 0, result.stderr
    assert "nothing changed (unprivileged)" in result.stderr
    assert not host.called("sudo") and not host.called("nvidia-ctk") and not host.called("systemctl")

    host.env["STUB_DOCKER_RUNTIMES"] = '{"runc":{}}'
    result = run(host, user, "configure-runtime", CONTAINER_RUNTIME="docker")
    assert_fails(
        result, 17, "does not list the nvidia runtime", "nvidia-ctk runtime configure --runtime=docker"
    )
    assert "provision.privileges: unprivileged" in one_error_line(result)
    assert not host.called("nvidia-ctk") and not host.called("systemctl") and not host.called("sudo")

    host.env["STUB_DOCKER_FAIL"] = "1"
    result = run(host, user, "configure-runtime", CONTAINER_RUNTIME="docker")
    assert_fails(result, 11, "cannot use Docker", "usermod -aG docker")
    assert_fails(run(host, user, "configure-runtime", CONTAINER_RUNTIME="containerd"), 19, "needs root")


def test_verify_gpu_runs_docker_as_the_user(host: Host, user: tuple[int, int]) -> None:
    host.env["STUB_NVIDIA_SMI"] = "ok"
    result = run(host, user, "verify-gpu", CUDA_IMAGE=IMAGE, CONTAINER_RUNTIME="docker")
    assert result.returncode == 0, result.stderr
    assert f"docker run --rm --runtime=nvidia --gpus all {IMAGE} nvidia-smi" in host.called("docker")
    assert not host.called("sudo")
    result = run(host, user, "verify-gpu", CUDA_IMAGE=IMAGE, CONTAINER_RUNTIME="microk8s")
    assert_fails(result, 19, "CONTAINER_RUNTIME=microk8s needs root")


def test_driver_and_toolkit_verify_without_root_and_refuse_to_install(
    host: Host, user: tuple[int, int]
) -> None:
    host.env["STUB_NVIDIA_SMI"] = "ok"
    (host.state / "pkg-nvidia-driver-580-server").touch()
    verify = run(host, user, "install-driver", DRIVER_ACTION="verify", DRIVER_BRANCH="580", DRIVER_HOLD="no")
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.strip() == "580.65.06" and not host.called("sudo") and not host.called("apt-mark")

    held = run(host, user, "install-driver", DRIVER_ACTION="verify", DRIVER_BRANCH="580", DRIVER_HOLD="yes")
    assert_fails(held, 11, "needs root", "'sudo apt-mark hold nvidia-driver-580-server'")
    one_error_line(held)

    host.env["STUB_NVIDIA_SMI"] = "fail"
    install = run(
        host, user, "install-driver", DRIVER_ACTION="install", DRIVER_BRANCH="580", DRIVER_HOLD="no"
    )
    assert_fails(install, 11, "this step needs root", "provision.privileges: unprivileged")
    assert not host.called("sudo") and not host.called("apt-get")

    toolkit = run(host, user, "install-toolkit", TOOLKIT_ACTION="install")
    assert_fails(toolkit, 11, "this step needs root")
    (host.state / "pkg-nvidia-container-toolkit").touch()
    assert run(host, user, "install-toolkit", TOOLKIT_ACTION="verify").returncode == 0
    assert not host.called("sudo")


def test_unknown_privileges_value_is_refused(host: Host) -> None:
    result = host.run("configure-runtime", CONTAINER_RUNTIME="docker", PRIVILEGES="sudo")
    assert_fails(result, 19, "PRIVILEGES must be root or unprivileged")
