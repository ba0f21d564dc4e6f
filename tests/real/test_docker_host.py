"""The planned Docker-host deploy, run for real: the exact planned commands over real SSH, the planned
containers through the real engine, in the order `pulumi up` runs them.

A stack file pointing at this machine's test sshd (tests/real/hosts.py) and engine is planned with the
real program (`make_plan`). Then:
- remote commands: the planned `create` and `stdin`, as pulumi-command runs them (tests.real.remote:
  the create string as the session's command, stdin piped, the pinned key's algorithm only);
- CopyToRemote: the planned FileAsset to the planned remotePath, over SFTP as pulumi-command copies;
- the Docker provider: the Docker CLI over `ssh://` with exactly the planned `host` and `sshOpts`;
- containers: every planned input mapped one to one onto an Engine API create (tests.real.engine_api),
  stand-in images tagged as the planned names.
No GPU here: the GPU steps run too and must fail the way the README says, with their ERROR/NEXT lines.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.remote.runners import runner_files
from components.remote.ssh import local_home
from stacks.plan import Plan, PlannedResource, make_plan
from tests.real import engine_api
from tests.real.engine import Engine
from tests.real.hosts import SshHosts, run_as
from tests.real.images import BaseImages
from tests.real.remote import Connection, RemoteResult, copy_to_remote, docker_over_ssh, run_remote

STACK = "realhost"
COPY = "command:remote:CopyToRemote"
COMMAND = "command:remote:Command"
CONTAINER = "docker:index/container:Container"
PROVIDER = "pulumi:providers:docker"

# An HTTP server for the bash-only image: perl-base (Debian's Essential set) has sockets; the image has
# no curl, wget, python3 or node, so its health probe can only be bash's /dev/tcp.
PERL_SERVER = (
    "use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalPort => 8080, Listen => 5, ReuseAddr => 1) "
    "or die $!; open(my $db, '>>', '/data/app.db') or die $!; print $db qq(bash-only service wrote\\n); "
    "close $db; while (my $c = $s->accept) { while (my $l = <$c>) { last if $l =~ /^\\r?\\n$/ } "
    'print $c qq(HTTP/1.0 200 OK\\r\\nContent-Type: application/json\\r\\n\\r\\n{"ok": true}); close $c }'
)
PYTHON_SERVER = (
    "import http.server, pathlib\n"
    "pathlib.Path('/data/app.db').open('a').write('python3 service wrote\\n')\n"
    "pathlib.Path('/data/new-file').write_text('made by the service')\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('Content-Type', 'application/json'); self.end_headers()\n"
    "        self.wfile.write(b'{\"ok\": true}')\n"
    "http.server.HTTPServer(('0.0.0.0', 8080), H).serve_forever()\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Deploy:
    plan: Plan
    root: Path
    hosts: SshHosts
    engine: Engine
    images: BaseImages
    home: Path  # the operator's home (ssh's `~`): where the program wrote the Docker transport's key
    ports: dict[str, int]

    def connection(self, *, bastion: bool = False, host_key: str | None = None) -> Connection:
        target = self.hosts.target
        return target.connection(proxy=self.hosts.bastion if bastion else None, host_key=host_key)

    def command(self, name: str) -> PlannedResource:
        return self.plan.named(COMMAND, name)

    def run(self, name: str, connection: Connection | None = None) -> RemoteResult:
        planned = self.command(name).inputs
        return run_remote(connection or self.connection(), planned["create"], planned.get("stdin"))

    def copy_runners(self) -> None:
        for copy in self.plan.by_type(COPY):
            source = Path(copy.inputs["source"]["path"])
            result = copy_to_remote(self.connection(), source, copy.inputs["remotePath"])
            assert result.exit == 0, result.stderr

    def container(self, service: str) -> engine_api.EngineCreate:
        planned = self.plan.named(CONTAINER, service).inputs
        return engine_api.create_body(planned, logical_name=service)


def stack_file(
    tmp: Path, hosts: SshHosts, root: Path, ports: dict[str, int], *, profile: str, bastion: bool
) -> Path:
    target: dict[str, Any] = {
        "kind": "docker",
        "host": hosts.target.host,
        "port": hosts.target.port,
        "user": hosts.target.user,
        "hostKey": hosts.target.host_key,
        "sshKey": hosts.target.private_key,
        "root": str(root),
    }
    if bastion:
        b = hosts.bastion
        target["bastion"] = {"host": b.host, "port": b.port, "user": b.user, "hostKey": b.host_key}
    health = {"http": {"path": "/health", "port": 8080}, "interval": "1s", "timeout": "3s", "retries": 60}
    # Each service under its fixed name, publishing its own port (rollout: stop-first): this module runs
    # the planned containers one by one; the proxy path (zero downtime) is tests/real/test_rollout.py's.
    service = {
        "user": "1001:1001",
        "memory": "256m",
        "volumes": ["data:/data"],
        "healthcheck": health,
        "rollout": "stop-first",
    }
    services: dict[str, Any] = {
        "bash-only": {
            **service,
            "image": "gpu-deploy-test/bash:bookworm",
            "command": ["perl", "-e", PERL_SERVER],
            "ports": [f"127.0.0.1:{ports['bash-only']}:8080"],
            "smoke": [{"http": {"path": "/health", "json": {"ok": "boolean"}}}],
        },
        "python-only": {
            **service,
            "image": "gpu-deploy-test/python3:bookworm",
            # one line: a line break in any config value is refused (it would split a command line)
            "command": ["python3", "-c", f"exec({PYTHON_SERVER!r})"],
            "ports": [f"127.0.0.1:{ports['python-only']}:8080"],
            "dependsOn": {"bash-only": "healthy"},
            "smoke": [
                {"http": {"path": "/health", "equals": {"ok": True}}},
                {"file": {"path": "/data/new-file"}},
            ],
        },
    }
    if profile != "cpu":
        services["trainer"] = {
            "image": "gpu-deploy-test/bash:bookworm",
            "gpu": 1,
            "user": "1001:1001",
            "memory": "256m",
            "command": ["sleep", "infinity"],
        }
    config = {
        "pulumi:disable-default-providers": ["docker", "kubernetes"],
        "gpu-deploy:profile": profile,
        "gpu-deploy:target": target,
        "gpu-deploy:provision": {"driver": "verify", "toolkit": "verify"},
        "gpu-deploy:services": services,
    }
    path = tmp / f"Pulumi.{STACK}.{profile}.{'bastion' if bastion else 'direct'}.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    return path


@pytest.fixture(scope="module")
def deploy(
    tmp_path_factory: pytest.TempPathFactory, ssh_hosts: SshHosts, engine: Engine, base_images: BaseImages
) -> Iterator[Deploy]:
    tmp = tmp_path_factory.mktemp("deploy")
    # A root where a real one would be: /tmp is a system location a stack may not use (components.core.values).
    # This run's own directory under /srv, removed afterwards.
    base = Path(tempfile.mkdtemp(prefix=f"gdt-{os.getpid()}-", dir="/srv"))
    base.chmod(0o755)
    root = base / STACK
    (root / "data").mkdir(parents=True)
    # what the old compose setup left: a database root owns, read-only
    (root / "data" / "app.db").write_text("from the old setup\n")
    (root / "data" / "app.db").chmod(0o444)
    # The program writes the Docker transport's copy of target.sshKey where ssh reads `~`: the operator's
    # home in the password database (here root's). This stack's file is removed again afterwards.
    home = local_home()
    key_file = home / ".ssh/gpu-deploy" / f"gpu-deploy.{STACK}.key"
    ports = {"bash-only": free_port(), "python-only": free_port()}
    try:
        plan = make_plan(
            STACK, config_file=stack_file(tmp, ssh_hosts, root, ports, profile="cpu", bastion=False)
        )
        yield Deploy(plan, root, ssh_hosts, engine, base_images, home, ports)
    finally:
        key_file.unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- the pinned host key
def test_a_wrong_host_key_is_refused_before_anything_runs(deploy: Deploy) -> None:
    wrong = deploy.hosts.bastion.host_key  # a real host key, of another server
    marker = deploy.root / "refused-marker"
    create = f"touch {shlex.quote(str(marker))}"
    for connection in (
        deploy.connection(host_key=wrong),
        deploy.connection(bastion=True, host_key=wrong),
    ):
        result = run_remote(connection, create)
        assert result.exit == 255 and "Host key verification failed" in result.stderr, result
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr
    assert not marker.exists()
    prepare = deploy.command("dirs-1001-1001-prepare").inputs
    result = run_remote(deploy.connection(host_key=wrong), prepare["create"], prepare["stdin"])
    assert result.exit == 255 and not (deploy.root / "logs").exists()


def test_the_planned_docker_provider_reaches_the_engine_with_only_the_stack_key(deploy: Deploy) -> None:
    """Exactly the planned host and sshOpts: the pin comes from the options themselves (no known_hosts
    file), the key from the file the program wrote; no agent."""
    provider = deploy.plan.by_type(PROVIDER)[0].inputs
    opts = json.loads(provider["sshOpts"])
    assert any(o.startswith("KnownHostsCommand=") for o in opts)
    key_file = deploy.home / ".ssh/gpu-deploy/gpu-deploy.realhost.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    version = docker_over_ssh(provider["host"], opts, "version", "--format", "{{.Server.Version}}")
    assert version.returncode == 0, version.stderr
    server = deploy.engine.docker_cli("version", "--format", "{{.Server.Version}}").stdout
    assert version.stdout == server


def test_the_planned_docker_provider_goes_through_the_bastion(deploy: Deploy, tmp_path: Path) -> None:
    ports = {"bash-only": free_port(), "python-only": free_port()}
    plan = make_plan(
        STACK, config_file=stack_file(tmp_path, deploy.hosts, deploy.root, ports, profile="cpu", bastion=True)
    )
    provider = plan.by_type(PROVIDER)[0].inputs
    opts = json.loads(provider["sshOpts"])
    assert any(o.startswith("ProxyCommand=ssh ") for o in opts)
    listed = docker_over_ssh(provider["host"], opts, "info", "--format", "{{.DockerRootDir}}")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == str(deploy.engine.data_root)
    # the bastion's own key is pinned too: a wrong one stops the jump before the target is reached
    wrong = [o.replace(deploy.hosts.bastion.host_key, deploy.hosts.target.host_key) for o in opts]
    refused = docker_over_ssh(provider["host"], wrong, "version")
    assert refused.returncode != 0 and "Host key verification failed" in refused.stderr


# ---------------------------------------------------------------- runners and host directories
def test_runners_are_copied_to_the_deploy_users_own_place_and_cannot_be_swapped(deploy: Deploy) -> None:
    user = deploy.hosts.deploy_user
    runners = user.home / ".gpu-deploy" / STACK
    shutil.rmtree(
        runners, ignore_errors=True
    )  # an earlier run's files (another release's) are not this run's
    deploy.copy_runners()
    deploy.copy_runners()  # a second copy over the first changes nothing
    assert sorted(p.name for p in runners.iterdir()) == sorted(runner_files())  # exactly the bundle
    for path in runners.iterdir():
        assert path.stat().st_uid == user.uid
    planted = run_as(deploy.hosts.other_user, ["sh", "-c", f"echo 'import os' > {runners}/pynvml.py"])
    assert planted.returncode != 0, "another account cannot write into the deploy user's runners"
    assert run_as(deploy.hosts.other_user, ["mkdir", "-p", "/var/tmp/gpu-deploy-smoke"]).returncode == 0
    # the old world-writable place is not used at all
    assert not any("/var/tmp" in r.inputs.get("create", "") for r in deploy.plan.by_type(COMMAND))


def test_a_tampered_runner_is_refused(deploy: Deploy) -> None:
    deploy.copy_runners()
    runners = deploy.hosts.deploy_user.home / ".gpu-deploy" / STACK
    smoke = runners / "smoke.py"
    original = smoke.read_bytes()
    try:
        smoke.write_bytes(original + b"\nraise SystemExit('swapped')\n")
        result = deploy.run("smoke-bash-only-run")
        assert result.exit == 21, result
        assert "is not the file that was copied" in result.stderr and "NEXT:" in result.stderr
    finally:
        smoke.write_bytes(original)


def test_host_directories_get_the_planned_owner_and_mode_and_are_idempotent(deploy: Deploy) -> None:
    first = deploy.run("dirs-1001-1001-prepare")
    assert first.exit == 0, first.stderr
    again = deploy.run("dirs-1001-1001-prepare")
    assert again.exit == 0, again.stderr
    assert "already 1001:1001 mode 750" in again.stderr and "re-owned" not in again.stderr
    data = deploy.root / "data"
    for path in [data, *data.iterdir()]:
        info = path.lstat()
        assert (info.st_uid, info.st_gid) == (1001, 1001), path
        assert not info.st_mode & stat.S_IWOTH, path
    assert stat.S_IMODE(data.stat().st_mode) == 0o750


# ---------------------------------------------------------------- containers, health, smoke
@pytest.fixture(scope="module")
def running(deploy: Deploy) -> Iterator[dict[str, str]]:
    """The stack's network and its containers in the planned start order, each created from its planned
    inputs; healthy ones waited for as the provider's `wait` does."""
    assert deploy.run("dirs-1001-1001-prepare").exit == 0
    network = f"gpu-deploy-{STACK}"
    engine_api.create_network(str(deploy.engine.socket), network)
    ids: dict[str, str] = {}
    try:
        for service in deploy.plan.outputs["startOrder"]:
            create = deploy.container(service)
            ids[service] = engine_api.create_and_start(str(deploy.engine.socket), create)
            if create.wait_healthy:
                engine_api.wait_healthy(str(deploy.engine.socket), ids[service], create.wait_timeout_s)
        yield ids
    finally:
        for container_id in ids.values():
            engine_api.remove(str(deploy.engine.socket), container_id)
        engine_api.remove_network(str(deploy.engine.socket), network)


@pytest.mark.parametrize("service", ["bash-only", "python-only"])
def test_health_turns_healthy_with_the_one_tool_the_image_has(
    deploy: Deploy, running: dict[str, str], service: str
) -> None:
    state = engine_api.inspect(str(deploy.engine.socket), running[service])["State"]
    assert state["Health"]["Status"] == "healthy"
    assert all(entry["ExitCode"] == 0 for entry in state["Health"]["Log"][-3:])


def test_containers_run_non_root_without_capabilities_or_new_privileges(
    deploy: Deploy, running: dict[str, str]
) -> None:
    for service, container_id in running.items():
        status = deploy.engine.docker_cli("exec", container_id, "cat", "/proc/self/status").stdout
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert fields["Uid"].split()[0] == "1001" and fields["Gid"].split()[0] == "1001", service
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0, service
        assert fields["NoNewPrivs"].strip() == "1", service


def test_the_services_wrote_everything_in_their_directories(deploy: Deploy, running: dict[str, str]) -> None:
    database = (deploy.root / "data" / "app.db").read_text()
    assert database.startswith("from the old setup\n")
    assert "bash-only service wrote" in database and "python3 service wrote" in database
    assert (deploy.root / "data" / "new-file").read_text() == "made by the service"


def test_the_planned_smoke_tests_pass_on_the_host(deploy: Deploy, running: dict[str, str]) -> None:
    deploy.copy_runners()
    for service in ("bash-only", "python-only"):
        result = deploy.run(f"smoke-{service}-run")
        assert result.exit == 0, (result.stdout, result.stderr)
        assert "PASS" in result.stdout + result.stderr


# ---------------------------------------------------------------- the GPU steps on a machine without a GPU
@pytest.fixture(scope="module")
def gpu_plan(deploy: Deploy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plan]:
    tmp = tmp_path_factory.mktemp("gpu")
    path = stack_file(tmp, deploy.hosts, deploy.root, dict(deploy.ports), profile="p40", bastion=False)
    yield make_plan(STACK, config_file=path)


def test_gpu_host_steps_fail_with_what_to_do(deploy: Deploy, gpu_plan: Plan) -> None:
    """Each GPU step, exactly as planned, on a host without NVIDIA hardware: the documented exit code and
    the ERROR/NEXT lines; the preflight runs the real pynvml after run-verified checked it."""
    gpu = Deploy(gpu_plan, deploy.root, deploy.hosts, deploy.engine, deploy.images, deploy.home, deploy.ports)
    gpu.copy_runners()
    driver = gpu.run("gpu-host-driver")
    assert driver.exit == 14 and "ERROR:" in driver.stderr and "NEXT:" in driver.stderr, driver
    preflight = gpu.run("gpu-host-preflight")
    assert preflight.exit == 3, preflight
    assert "NVML" in preflight.stdout + preflight.stderr
    toolkit = gpu.run("gpu-host-toolkit")
    assert toolkit.exit in (14, 20) and "NEXT:" in toolkit.stderr, toolkit


def test_a_gpu_request_gets_the_engines_nvidia_error(
    deploy: Deploy, gpu_plan: Plan, running: dict[str, str]
) -> None:
    """The README's "could not select device driver" line: the engine has no NVIDIA runtime here. (The
    stack's network is the running services'.)"""
    planned = gpu_plan.named(CONTAINER, "trainer").inputs
    assert planned["deviceRequests"][0]["deviceIds"] == "[unknown]"  # placed from the host's preflight
    create = engine_api.create_body(
        planned, substitutes={"deviceRequests[0].deviceIds": ["GPU-00000000-0000-0000-0000-000000000000"]}
    )
    try:
        with pytest.raises(engine_api.EngineError) as refused:
            engine_api.create_and_start(str(deploy.engine.socket), create)
        assert 'could not select device driver "nvidia" with capabilities: [[gpu]]' in refused.value.message
    finally:
        deploy.engine.docker_cli("rm", "-f", planned["name"], check=False)


def test_a_bind_source_outside_the_root_is_mounted_only_if_it_exists(
    deploy: Deploy, running: dict[str, str]
) -> None:
    """Outside target.root nothing is created (stacks/docker.py host_directories): the planned Mount API
    bind of a missing source is refused by the engine instead of creating it, as `-v` would."""
    planned = dict(deploy.plan.named(CONTAINER, "bash-only").inputs)
    missing = deploy.root.parent / "not-created-by-anyone"
    planned["mounts"] = [{"type": "bind", "source": str(missing), "target": "/data"}]
    planned["name"] = "realhost-missing-source"
    planned.pop("ports", None)
    create = engine_api.create_body(planned)
    try:
        with pytest.raises(engine_api.EngineError) as refused:
            engine_api.create_and_start(str(deploy.engine.socket), create)
        assert "bind source path does not exist" in refused.value.message
        assert not missing.exists()
    finally:
        deploy.engine.docker_cli("rm", "-f", "realhost-missing-source", check=False)
