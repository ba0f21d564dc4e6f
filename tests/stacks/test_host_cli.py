"""`python -m stacks tunnel|status|logs`: the arguments they build, their refusals, the status table.

What they do against a real sshd and dockerd is tests/real/test_host_cli.py.
"""

from __future__ import annotations

import json
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from components.core.vocabulary import LABEL_SERVICE, LABEL_STACK
from stacks import host_cli, host_status
from stacks.__main__ import main
from stacks.config import ConfigError
from stacks.plan import PROJECT_DIR

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPEduGpuHostKeyPlaceholderReplaceMe000000000"
BASTION_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPA4000HostKeyPlaceholderReplaceMe0000000000"


def stack_file(tmp_path: Path, *, target: str | None = None, services: str | None = None) -> Path:
    target = (
        target
        or f"""
    kind: docker
    host: gpu.example.org
    port: 2222
    user: deploy
    hostKey: {HOST_KEY}
    bastion: {{host: jump.example.org, port: 2200, user: hop, hostKey: {BASTION_KEY}}}"""
    )
    services = (
        services
        or """
    api:
      image: busybox:1.36
      ports: ["127.0.0.1:18081:8000", "8443:8443", "[::1]:18082:9000", "127.0.0.1:18084:53/udp"]
      healthcheck: {http: {path: /health, port: 8000}}
    off:
      image: busybox:1.36
      enabled: false
      ports: ["127.0.0.1:18083:80"]"""
    )
    path = tmp_path / "Pulumi.h6.yaml"
    path.write_text(
        "config:\n  gpu-deploy:profile: cpu\n"
        f"  gpu-deploy:target:{target}\n"
        f"  gpu-deploy:services:{services}\n"
    )
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- tunnel
def test_the_edu_gpu_stack_forwards_the_write_ups_two_ports() -> None:
    _, config = host_cli.load_config("edu-gpu", None)
    forwards = host_cli.loopback_forwards(config)
    assert [(f.service, f.ssh_spec, f.local_url) for f in forwards] == [
        ("asr-api", "127.0.0.1:58081:127.0.0.1:58081", "http://127.0.0.1:58081"),
        ("frontend", "127.0.0.1:58080:127.0.0.1:58080", "http://127.0.0.1:58080"),
    ]


def test_only_loopback_tcp_ports_of_enabled_services_are_forwarded(tmp_path: Path) -> None:
    _, config = host_cli.load_config("h6", stack_file(tmp_path))
    forwards = host_cli.loopback_forwards(config, {18082: 28082})
    assert [(f.service, f.ssh_spec, f.local_url) for f in forwards] == [
        ("api", "127.0.0.1:18081:127.0.0.1:18081", "http://127.0.0.1:18081"),  # its HTTP health check's port
        ("api", "[::1]:28082:[::1]:18082", "[::1]:28082"),
    ]


def test_tunnel_argv_is_the_deploys_pinned_connection_with_forwards(tmp_path: Path) -> None:
    host = host_cli.load_stack_host("h6", stack_file(tmp_path))
    argv = host_cli.tunnel_argv(host, host_cli.loopback_forwards(host.config))
    assert argv[0] == "ssh"
    assert argv[-2:] == ["--", "gpu.example.org"]
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "deploy"
    assert argv.count("-L") == 2 and "-N" in argv
    options = [argv[i + 1] for i, word in enumerate(argv) if word == "-o"]
    assert "ExitOnForwardFailure=yes" in options
    assert "StrictHostKeyChecking=yes" in options and "BatchMode=yes" in options
    assert "UserKnownHostsFile=/dev/null" in options  # nothing but the pinned key is trusted
    assert f"KnownHostsCommand=/bin/echo [gpu.example.org]:2222 {HOST_KEY}" in options
    proxy = next(o for o in options if o.startswith("ProxyCommand="))
    jump = shlex.split(proxy.removeprefix("ProxyCommand="))
    assert f"KnownHostsCommand=/bin/echo [jump.example.org]:2200 {BASTION_KEY}" in jump
    assert jump[-5:] == ["-l", "hop", "-W", "%h:%p", "jump.example.org"]


def test_local_port_mapping_is_checked() -> None:
    assert host_cli.parse_local_ports(["58080=18080", "58081=18081"]) == {58080: 18080, 58081: 18081}
    for bad in ("58080", "58080=", "x=1", "0=1", "1=70000"):
        with pytest.raises(ConfigError, match="--local-port: expected PORT=LOCAL"):
            host_cli.parse_local_ports([bad])


def test_a_local_port_that_is_not_the_stacks_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        ["tunnel", "h6", "--config-file", str(stack_file(tmp_path)), "--local-port", "9=19"], capsys
    )
    assert code == 2
    assert err == "gpu-deploy:--local-port: 9 is not a loopback port of the stack (those: 18081, 18082)\n"


def test_a_taken_local_port_is_refused_before_ssh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["tunnel", "h6", "--config-file", str(stack_file(tmp_path)), "--local-port", f"18081={port}"]
        code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"gpu-deploy:--local-port: 127.0.0.1:{port} (api) is taken on this machine")
    assert err.endswith("map it elsewhere with --local-port 18081=LOCAL\n")


@pytest.mark.parametrize(
    ("stack", "line"),
    [
        (
            "dev",
            "gpu-deploy:target.host: local: the ports are on this machine already (probe http://127.0.0.1:8080)",
        ),
        ("prod", "gpu-deploy:services: stack prod publishes no port on 127.0.0.1 or ::1"),
        ("a2", "gpu-deploy:target.kind: kubernetes: tunnel, status and logs reach a Docker host"),
    ],
)
def test_tunnel_refusals_are_one_line_exit_2(
    stack: str, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["tunnel", stack], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(line) and err.count("\n") == 1


def test_status_and_logs_refuse_a_kubernetes_stack(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["status", "a2"], ["logs", "a2", "x"]):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and err.startswith("gpu-deploy:target.kind: kubernetes:")


def test_logs_of_an_unknown_service_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["logs", "edu-gpu", "nope"], capsys)
    assert code == 2
    assert err == "gpu-deploy:services.nope: no such service (services: asr-api, frontend)\n"


def test_a_bad_tail_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["logs", "edu-gpu", "asr-api", "--tail", "ten"])
    assert exit_.value.code == 2
    assert 'expected a number of lines or "all"' in capsys.readouterr().err


# ---------------------------------------------------------------- the key file of target.sshKey
def test_the_deploys_key_file_is_used_when_pulumi_up_wrote_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"""
    kind: docker
    host: gpu.example.org
    hostKey: {HOST_KEY}
    sshKey: {{secure: v1:AAAA}}"""
    path = stack_file(tmp_path, target=target)
    home = tmp_path / "home"
    monkeypatch.setattr(host_cli, "local_home", lambda: home)
    without = host_cli.load_stack_host("h6", path)
    assert without.ssh is not None and not any("IdentityFile" in w for w in without.ssh)
    assert "not there yet: using your ssh-agent" in capsys.readouterr().err
    key = home / ".ssh/gpu-deploy/gpu-deploy.h6.key"
    key.parent.mkdir(parents=True)
    key.write_text("key\n")
    with_key = host_cli.load_stack_host("h6", path)
    assert with_key.ssh is not None
    assert "IdentityFile=~/.ssh/gpu-deploy/gpu-deploy.h6.key" in with_key.ssh
    assert "IdentitiesOnly=yes" in with_key.ssh
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- what runs on the host
def test_remote_commands_are_quoted_once_for_the_login_shell(tmp_path: Path) -> None:
    host = host_cli.load_stack_host("h6", stack_file(tmp_path))
    script = host_status.status_script("we'ird $stack")
    argv = host.argv(script)
    assert argv[-2:] == ["gpu.example.org", f"sh -c {shlex.quote(script)}"]
    assert shlex.split(argv[-1]) == ["sh", "-c", script]  # what the remote login shell hands sh
    filters = shlex.split(script.splitlines()[1])
    assert f"label={LABEL_STACK}=we'ird $stack" in filters
    service_script = host_status.status_script("s", "api")
    assert f"label={LABEL_SERVICE}=api" in shlex.split(service_script.splitlines()[1])


def test_a_local_target_runs_the_script_here(tmp_path: Path) -> None:
    path = stack_file(tmp_path, target="\n    kind: docker\n    host: local")
    host = host_cli.load_stack_host("h6", path)
    assert host.ssh is None
    assert host.argv("docker ps") == ["sh", "-c", "docker ps"]


def test_logs_script() -> None:
    assert host_status.logs_script("abc", follow=True, tail="20") == "docker logs --follow --tail 20 abc"
    assert host_status.logs_script("abc", follow=False, tail=None) == "docker logs abc"


# ---------------------------------------------------------------- the status table
def container(service: str, name: str, *, created: str, running: bool = True, **extra: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "Status": "running" if running else "exited",
        "Running": running,
        "ExitCode": 0 if running else 137,
    }
    state.update(extra.pop("state", {}))
    return {
        "Id": f"{name:0<64}"[:64].replace("-", "0"),
        "Name": f"/{name}",
        "Created": created,
        "Config": {
            "Image": extra.pop("image", "registry.example.org:5000/team/app:rel-42"),
            "Labels": {LABEL_STACK: "h6", LABEL_SERVICE: service},
        },
        "State": state,
        "HostConfig": extra.pop("host_config", {}),
    }


def status_output(*items: dict[str, Any], ps: list[dict[str, Any]] | None = None) -> str:
    lines = [json.dumps(row) for row in ps or []]
    return "\n".join([*lines, host_status.INSPECT_MARK, json.dumps(list(items))]) + "\n"


def test_status_rows_running_copy_first_then_newest() -> None:
    output = status_output(
        container("api", "api-old", created="2026-01-01T10:00:00.5Z", running=False),
        container("api", "api-new", created="2026-01-01T10:00:00.123456789Z"),
        container("api", "api-newest-stopped", created="2026-01-02T00:00:00Z", running=False),
        container(
            "gpu",
            "gpu",
            created="2026-01-01T00:00:00Z",
            image="nvidia/cuda@sha256:0123456789abcdef0123",
            host_config={"DeviceRequests": [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]},
            state={"Health": {"Status": "healthy"}},
        ),
        {
            **container("x", "other-stack", created="2026-01-01T00:00:00Z"),
            "Config": {"Labels": {LABEL_STACK: "zz"}},
        },
        ps=[{"ID": f"{'gpu':0<64}", "Status": "Up 3 hours (healthy)"}],
    )
    rows = host_status.parse_status("h6", output)
    assert [(r["service"], r["container"], r["state"]) for r in rows] == [
        ("api", "api-new", "running"),
        ("api", "api-newest-stopped", "exited (137)"),
        ("api", "api-old", "exited (137)"),
        ("gpu", "gpu", "running"),
    ]
    gpu = rows[-1]
    assert (gpu["health"], gpu["tag"], gpu["gpu"], gpu["status"]) == (
        "healthy",
        "@sha256:0123456789ab",
        "all",
        "Up 3 hours (healthy)",
    )
    assert rows[0]["tag"] == "rel-42" and rows[0]["health"] == "-" and rows[0]["gpu"] == "-"
    assert host_status.pick_container(rows[:3]) is rows[0]


@pytest.mark.parametrize(
    ("requests", "shown"),
    [
        ([], "-"),
        ([{"Driver": "nvidia", "Count": 2, "Capabilities": [["gpu"]]}], "2"),
        (
            [{"Driver": "", "Count": 0, "DeviceIDs": ["0", "GPU-abc"], "Capabilities": [["gpu"]]}],
            "devices:0,GPU-abc",
        ),
        ([{"Driver": "other", "Count": 1, "Capabilities": [["fpga"]]}], "-"),
    ],
)
def test_gpu_column(requests: list[dict[str, Any]], shown: str) -> None:
    assert host_status.gpu_of({"DeviceRequests": requests}) == shown


@pytest.mark.parametrize(
    ("reference", "tag"),
    [
        ("redis:7.2.4", "7.2.4"),
        ("busybox", "latest"),
        ("localhost:5000/app", "latest"),
        ("localhost:5000/app:v1", "v1"),
    ],
)
def test_image_tag(reference: str, tag: str) -> None:
    assert host_status.image_tag(reference) == tag


def test_table_lines_up_and_names_services_without_a_container(tmp_path: Path) -> None:
    _, config = host_cli.load_config("h6", stack_file(tmp_path))
    rows = host_status.with_missing([], config)
    assert rows == [
        {
            "service": "api",
            "container": "-",
            "id": "",
            "state": "not deployed",
            "running": False,
            "health": "-",
            "image": "",
            "tag": "-",
            "gpu": "-",
            "created": "",
            "status": "",
        }
    ]  # the disabled service is not expected
    table = host_status.render_table(
        [
            *host_status.parse_status(
                "h6", status_output(container("a-long-service", "c", created="2026-01-01T00:00:00Z"))
            ),
            *rows,
        ]
    )
    assert table.splitlines() == [
        "SERVICE         CONTAINER  STATE         HEALTH  IMAGE TAG  GPU",
        "a-long-service  c          running       -       rel-42     -",
        "api             -          not deployed  -       -          -",
    ]


# ---------------------------------------------------------------- Ctrl+C, SIGTERM, a closed terminal
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_closes_the_child_and_exits_0(signum: signal.Signals) -> None:
    script = (
        "import sys; from stacks.host_cli import run_until_stopped; "
        "sys.exit(run_until_stopped(['sleep', '60'], on_stop='closed'))"
    )
    cli = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_DIR, stderr=subprocess.PIPE, text=True)
    children = Path(f"/proc/{cli.pid}/task/{cli.pid}/children")
    deadline = time.monotonic() + 60
    while not children.read_text().split():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    child = int(children.read_text().split()[0])
    cli.send_signal(signum)
    _, err = cli.communicate(timeout=30)
    assert (cli.returncode, err) == (0, "closed\n")
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
