"""The tier's own machinery works: the engine, both base images, both sshd, every client helper."""

from __future__ import annotations

import grp
import json
import os
import stat
import time
import urllib.request
from pathlib import Path

import pytest

from components.host import SMOKE_FILES
from tests.real import requirements
from tests.real.engine import Engine
from tests.real.hosts import SshHosts, keygen, run_as
from tests.real.images import BaseImages
from tests.real.remote import copy_to_remote, docker_over_ssh, run_remote, ssh_opts


def accepted_logins(log: Path) -> int:
    return log.read_text(errors="replace").count("Accepted publickey for")


def fresh_marker(tmp_path: Path) -> Path:
    """A path in /tmp (the deploy user may write there) that does not exist yet."""
    marker = Path("/tmp") / f"gdt-marker-{os.getpid()}-{tmp_path.name}-{time.monotonic_ns()}"
    assert not marker.exists()
    return marker


def wrong_host_key(tmp_path: Path) -> str:
    return keygen(tmp_path / "not_the_host_key", "ed25519")


# The engine


def test_engine_has_its_own_socket_owned_by_group_docker(engine: Engine) -> None:
    assert engine.socket.is_socket()
    assert engine.socket.is_relative_to(engine.run_dir)
    mode = engine.socket.stat()
    assert grp.getgrgid(mode.st_gid).gr_name == "docker"
    assert stat.S_IMODE(mode.st_mode) == 0o660
    info = engine.docker_cli("info", "--format", "{{.DockerRootDir}}|{{.Name}}").stdout.strip()
    assert info.split("|")[0] == str(engine.data_root)
    assert engine.pidfile.read_text().strip() == str(engine.pid)


def test_bash_image_has_bash_and_coreutils_only(engine: Engine, base_images: BaseImages) -> None:
    script = (
        "set -e; bash --version | head -1; ls --version | head -1; "
        "for tool in curl wget python3 python node; do "
        'if command -v "$tool"; then echo "unexpected $tool" >&2; exit 3; fi; done; echo clean'
    )
    out = engine.docker_cli("run", "--rm", base_images.bash, "bash", "-c", script).stdout
    assert "GNU bash" in out
    assert out.rstrip().endswith("clean")


def test_python3_image_runs_python3(engine: Engine, base_images: BaseImages) -> None:
    out = engine.docker_cli(
        "run",
        "--rm",
        base_images.python3,
        "python3",
        "-c",
        "import sys, json; print(json.dumps(sys.version_info[:2]))",
    ).stdout
    assert out.strip() == "[3, 11]"
    for tool in ("curl", "wget", "node"):
        assert (
            engine.docker_cli(
                "run", "--rm", base_images.python3, "sh", "-c", f"command -v {tool}", check=False
            ).returncode
            != 0
        )


def test_python3_image_runs_the_smoke_runner(engine: Engine, base_images: BaseImages) -> None:
    """The runner and its modules, written into one folder in the container (as the ConfigMap mounts them)."""
    files = json.dumps({name: path.read_text() for name, path in SMOKE_FILES.items()})
    unpack = (
        "import json, os, sys, tempfile\n"
        "folder = tempfile.mkdtemp()\n"
        "for name, text in json.load(sys.stdin).items():\n"
        "    with open(os.path.join(folder, name), 'w') as handle:\n"
        "        handle.write(text)\n"
        "os.execvp('python3', ['python3', os.path.join(folder, 'smoke.py'), '--help'])\n"
    )
    result = engine.docker_cli("run", "--rm", "-i", base_images.python3, "python3", "-c", unpack, input=files)
    assert "--base-url" in result.stdout


def test_published_port_on_loopback_reaches_a_container(engine: Engine, base_images: BaseImages) -> None:
    name = f"gdt-http-{os.getpid()}"
    engine.docker_cli(
        "run", "-d", "--name", name, "-p", "127.0.0.1::8000", base_images.python3,
        "python3", "-c",
        "import http.server as h\n"
        "class H(h.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'pong')\n"
        "h.HTTPServer(('', 8000), H).serve_forever()",
    )  # fmt: skip
    try:
        port = engine.docker_cli("port", name, "8000/tcp").stdout.split(":")[-1].strip()
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    assert response.read() == b"pong"
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        engine.docker_cli("rm", "-f", name, check=False)


# SSH: run_remote


def test_run_remote_with_only_the_key_file(
    ssh_hosts: SshHosts, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSH_AUTH_SOCK", "/nonexistent/agent.sock")  # ignored: no agent is used
    target = ssh_hosts.target
    result = run_remote(target.connection(), 'id -un; echo "$DOCKER_HOST"; cat', stdin="from stdin\n")
    assert result == (0, f"{target.user}\n{engine.host}\nfrom stdin\n", "")
    code, out, err = run_remote(target.connection(), "echo out; echo err >&2; exit 7")
    assert (code, out, err) == (7, "out\n", "err\n")


def test_run_remote_pins_the_ecdsa_key_too(ssh_hosts: SshHosts) -> None:
    target = ssh_hosts.target
    assert target.host_key_ecdsa.startswith("ecdsa-sha2-nistp256 ")
    result = run_remote(target.connection(host_key=target.host_key_ecdsa), "echo ok")
    assert result == (0, "ok\n", "")


def test_run_remote_through_the_bastion(ssh_hosts: SshHosts) -> None:
    target, bastion = ssh_hosts.target, ssh_hosts.bastion
    before = accepted_logins(bastion.log)
    result = run_remote(target.connection(proxy=bastion), "id -un")
    assert result == (0, f"{target.user}\n", "")
    assert accepted_logins(bastion.log) == before + 1


def test_deploy_user_has_passwordless_sudo_that_keeps_the_test_engine(
    ssh_hosts: SshHosts, engine: Engine
) -> None:
    code, out, err = run_remote(
        ssh_hosts.target.connection(), "sudo -n id -u && sudo -n sh -c 'echo \"$DOCKER_HOST\"'"
    )
    assert (code, out, err) == (0, f"0\n{engine.host}\n", "")


@pytest.mark.parametrize("wrong", ["target", "bastion", "target via bastion"])
def test_a_wrong_host_key_is_refused_before_anything_runs(
    ssh_hosts: SshHosts, tmp_path: Path, wrong: str
) -> None:
    target, bastion = ssh_hosts.target, ssh_hosts.bastion
    bad = wrong_host_key(tmp_path)
    if wrong == "target":
        connection = target.connection(host_key=bad)
    elif wrong == "bastion":
        connection = target.connection(proxy=bastion.connection(host_key=bad))
    else:
        connection = target.connection(proxy=bastion, host_key=bad)
    marker = fresh_marker(tmp_path)
    code, _out, err = run_remote(connection, f"touch {marker}")
    assert code == 255
    assert "Host key verification failed" in err
    assert not marker.exists()
    # the same command with the right keys does run (the marker proves something)
    right = target.connection(proxy=bastion) if "bastion" in wrong else target.connection()
    assert run_remote(right, f"touch {marker}").exit == 0
    assert marker.exists()
    marker.unlink()


# SSH: copy_to_remote


@pytest.mark.parametrize("via_bastion", [False, True], ids=["direct", "bastion"])
def test_copy_to_remote(ssh_hosts: SshHosts, tmp_path: Path, via_bastion: bool) -> None:
    target = ssh_hosts.target
    connection = target.connection(proxy=ssh_hosts.bastion if via_bastion else None)
    local = tmp_path / "payload with space.txt"
    local.write_text("payload\nline two\n")
    remote = f"{ssh_hosts.deploy_user.home}/gdt-copy-{os.getpid()}-{via_bastion}.txt"
    result = copy_to_remote(connection, local, remote)
    assert result.exit == 0, result.stderr
    try:
        assert run_remote(connection, f"stat -c %U {remote}; cat {remote}") == (
            0,
            f"{target.user}\npayload\nline two\n",
            "",
        )
    finally:
        Path(remote).unlink(missing_ok=True)


def test_copy_to_remote_fails_on_a_missing_directory(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    local = tmp_path / "f"
    local.write_text("x")
    result = copy_to_remote(ssh_hosts.target.connection(), local, "/nonexistent-dir/f")
    assert result.exit != 0


# Docker over ssh://


def test_docker_over_ssh_with_only_the_key(ssh_hosts: SshHosts, engine: Engine, tmp_path: Path) -> None:
    target = ssh_hosts.target
    before = accepted_logins(target.log)
    opts = ssh_opts(target.connection(), tmp_path)
    version = docker_over_ssh(target.url, opts, "version", "--format", "{{.Server.Version}}")
    assert version.returncode == 0, version.stderr
    assert (
        version.stdout.strip()
        == engine.docker_cli("version", "--format", "{{.Server.Version}}").stdout.strip()
    )
    root = docker_over_ssh(target.url, opts, "info", "--format", "{{.DockerRootDir}}")
    assert root.stdout.strip() == str(engine.data_root)  # the test engine, not the machine's own
    ps = docker_over_ssh(target.url, opts, "ps", "--all")
    assert ps.returncode == 0, ps.stderr
    assert ps.stdout.startswith("CONTAINER ID")
    assert accepted_logins(target.log) > before


def test_docker_over_ssh_through_the_bastion(ssh_hosts: SshHosts, engine: Engine, tmp_path: Path) -> None:
    target, bastion = ssh_hosts.target, ssh_hosts.bastion
    before = accepted_logins(bastion.log)
    opts = ssh_opts(target.connection(proxy=bastion), tmp_path)
    assert any(opt.startswith("ProxyCommand=") for opt in opts)
    result = docker_over_ssh(target.url, opts, "info", "--format", "{{.DockerRootDir}}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(engine.data_root)
    assert accepted_logins(bastion.log) > before


def test_docker_over_ssh_refuses_a_wrong_host_key(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    target = ssh_hosts.target
    before = accepted_logins(target.log)
    opts = ssh_opts(target.connection(host_key=wrong_host_key(tmp_path)), tmp_path)
    result = docker_over_ssh(target.url, opts, "version", timeout=60)
    assert result.returncode != 0
    assert "Host key verification failed" in result.stderr
    assert accepted_logins(target.log) == before


# Local users


def test_other_user_has_no_docker_and_no_sudo(ssh_hosts: SshHosts, engine: Engine) -> None:
    other = ssh_hosts.other_user
    assert "docker" not in other.groups
    assert run_as(other, ["id", "-un"]).stdout.strip() == other.name
    denied = run_as(other, [engine.cli, "--host", engine.host, "ps"])
    assert denied.returncode != 0
    assert "permission denied" in denied.stderr.lower()
    assert run_as(other, ["sudo", "-n", "true"]).returncode != 0
    deploy = run_as(ssh_hosts.deploy_user, [engine.cli, "--host", engine.host, "ps", "-q"])
    assert deploy.returncode == 0, deploy.stderr


# The requirements line


def test_requirements_line_names_every_missing_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(
        requirements, "find_program", lambda name, fallback: None if name in ("dockerd", "sshd") else name
    )
    line = requirements.missing_requirements()
    assert line == (
        "real-engine tier needs root and: dockerd (apt-get install docker.io), sshd (apt-get install "
        "openssh-server); run .ci/install-real-tier.sh as root, then `make real` as root"
    )
    monkeypatch.setattr(requirements, "find_program", lambda name, fallback: name)
    assert requirements.missing_requirements() == (
        "real-engine tier needs root; run .ci/install-real-tier.sh as root, then `make real` as root"
    )
