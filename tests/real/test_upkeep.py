"""Real-engine tier: the release pruning, the DCGM exporter's container and a service's test job, on a real
dockerd (no GPU: device requests are left out, stand-in images replace the ones a registry would give).

- prune-releases.sh runs as pulumi-command runs it (real bash, `env ... bash -s`) against release images
  committed one second apart, a stopped container using an old one and the current release;
- the prod stack's planned `dcgm-exporter` container, its image replaced by a stand-in that reads the `-f`
  counters file and serves it on `-a` like the exporter: its uploaded counters file (no DCGM_FI_PROF_* on
  the P40), its loopback binding, its user and capabilities, through tests/real/engine_api.py;
- the a4000 stack's planned `backend-test` job on the stand-in bash image: its exit code, the `timeout`
  wrapper's 124, and its read-only volume.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from components.docker.dcgm import counters
from tests.plans import containers, plan_with, shipped_plan
from tests.real import engine_api
from tests.real.engine import Engine
from tests.real.images import BaseImages
from tests.real.rollout import (
    create_container,
    delete_container,
    free_tcp_port,
    inspect,
    run_host_script_locally,
)

REPOSITORY = "gpu-deploy-test/prune-app"
STANDIN_EXPORTER = r"""
import http.server, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
fields = [l.split(",")[0].strip() for l in open(args["-f"]) if l.strip() and not l.startswith("#")]
port = int(args["-a"].rsplit(":", 1)[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = "".join(f"{f}{{gpu=\"0\"}} 0\n" for f in fields).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
http.server.ThreadingHTTPServer(("", port), H).serve_forever()
"""


def commit(engine: Engine, base: str, ref: str, changes: list[str]) -> None:
    """A new image (new id, created now) from `base`, with Dockerfile `changes`."""
    cid = engine.docker_cli("create", base, "true").stdout.strip()
    try:
        argv = ["commit"]
        for change in changes:
            argv += ["-c", change]
        engine.docker_cli(*argv, cid, ref)
    finally:
        engine.docker_cli("rm", cid)


def tags(engine: Engine) -> set[str]:
    out = engine.docker_cli("image", "ls", "--format", "{{.Tag}}", REPOSITORY).stdout
    return set(out.split())


def test_prune_keeps_the_newest_the_current_and_what_a_container_uses(
    engine: Engine, base_images: BaseImages
) -> None:
    releases = [f"p40-{n:012x}" for n in range(1, 6)]
    for n, release in enumerate(releases):
        commit(engine, base_images.bash, f"{REPOSITORY}:{release}", [f"LABEL release={release}"])
        commit(engine, base_images.bash, f"{REPOSITORY}:{release}-deps", [f"LABEL release={release}-deps"])
        if n < len(releases) - 1:
            time.sleep(1.1)  # creation times a second apart: the script orders releases to the second
    engine.docker_cli("tag", base_images.bash, f"{REPOSITORY}:latest")  # not a release: never touched
    stopped = engine.docker_cli("create", f"{REPOSITORY}:{releases[0]}-deps", "true").stdout.strip()
    try:
        env = {"REPOSITORIES": REPOSITORY, "KEEP": "2", "RELEASE": releases[1]}
        done = run_host_script_locally("prune-releases", env, engine)
        assert done.exit == 0, done.stderr
        assert "removed 2 image tag(s)" in done.stdout, done.stdout
        kept = {r for r in releases if r != releases[2]}
        assert tags(engine) == {"latest", *kept, *(f"{r}-deps" for r in kept)}
        again = run_host_script_locally("prune-releases", env, engine)
        assert again.exit == 0 and "removed 0 image tag(s)" in again.stdout  # idempotent
    finally:
        engine.docker_cli("rm", "-f", stopped)
        for tag in tags(engine):
            engine.docker_cli("image", "rm", f"{REPOSITORY}:{tag}", check=False)


def without_gpu(inputs: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Planned inputs with the GPU request left out (no NVIDIA runtime here) and `changes` applied."""
    raw: dict[str, Any] = json.loads(json.dumps(inputs))
    raw.pop("deviceRequests", None)
    raw.update(changes)
    return raw


def test_the_planned_dcgm_exporter_gets_its_counters_on_loopback_only(
    engine: Engine, base_images: BaseImages, tmp_path: Path
) -> None:
    image = "gpu-deploy-test/dcgm-standin:1"
    script = tmp_path / "exporter.py"
    script.write_text(STANDIN_EXPORTER)
    cid = engine.docker_cli("create", base_images.python3, "true").stdout.strip()
    engine.docker_cli("cp", str(script), f"{cid}:/standin-exporter.py")
    engine.docker_cli("commit", "-c", 'ENTRYPOINT ["python3", "/standin-exporter.py"]', cid, image)
    engine.docker_cli("rm", cid)
    planned = containers(shipped_plan("prod"))["dcgm-exporter"].inputs
    port = free_tcp_port()
    network = "gpu-deploy-test-dcgm"
    engine_api.create_network(str(engine.socket), network)
    inputs = without_gpu(
        planned,
        image=image,
        name="gpu-deploy-test-dcgm-exporter",
        ports=[{**planned["ports"][0], "external": port}],
        networksAdvanced=[{"name": network}],
    )
    try:
        create_container(engine, inputs)
        deadline, body = time.time() + 30, ""
        while time.time() < deadline and not body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    body = response.read().decode()
            except OSError:
                time.sleep(0.2)
        assert "DCGM_FI_DEV_GPU_UTIL" in body and "DCGM_FI_DEV_FB_USED" in body
        assert "DCGM_FI_PROF_" not in body, "the P40's exporter is never asked for profiling metrics"
        seen = engine.docker_cli("exec", inputs["name"], "cat", planned["uploads"][0]["file"]).stdout
        assert seen == counters(profiling=False)
        state = inspect(engine, inputs["name"])
        assert state is not None
        host = state["HostConfig"]
        assert host["PortBindings"] == {"9400/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
        assert state["Config"]["User"] == "1000:1000" and host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert host["SecurityOpt"] == ["no-new-privileges:true"] and host["Memory"] == 512 << 20
        assert engine.docker_cli("exec", inputs["name"], "id", "-u").stdout.strip() == "1000"
    finally:
        delete_container(engine, inputs["name"], 1)
        engine_api.remove_network(str(engine.socket), network)
        engine.docker_cli("image", "rm", image, check=False)


def test_the_planned_test_job_exits_with_its_command_and_times_out(
    engine: Engine, base_images: BaseImages, tmp_path: Path
) -> None:
    def short(config: dict[str, Any]) -> None:
        config["gpu-deploy:services"]["backend"]["test"]["timeout"] = "10s"

    planned = containers(plan_with(tmp_path, "a4000", short))["backend-test"].inputs
    prefix = planned["command"][:4]
    assert prefix == ["timeout", "-k", "10", "10"]
    models = tmp_path / "models"
    models.mkdir()
    mounts = [{**planned["mounts"][0], "source": str(models)}]
    network = "gpu-deploy-test-jobs"
    engine_api.create_network(str(engine.socket), network)

    def run(*command: str) -> int | None:
        inputs = without_gpu(
            planned,
            image=base_images.bash,
            name="gpu-deploy-test-backend-test",
            command=[*prefix, *command],
            mounts=mounts,
            networksAdvanced=[{"name": network}],
            user="0:0",  # the stand-in image's /tmp: any user works, root proves the mount is read-only
        )
        create = engine_api.create_body(inputs)
        try:
            _, code, _ = engine_api.run(str(engine.socket), create)
        finally:
            delete_container(engine, inputs["name"], 1)
        return code

    try:
        assert run("bash", "-c", "exit 0") == 0
        assert run("bash", "-c", "exit 3") == 3  # a failing test: its exit code fails the service's gate
        started = time.time()
        assert run("sleep", "60") == 124  # `timeout` at 10 s
        assert time.time() - started < 40
        assert run("bash", "-c", "touch /app/models/written") != 0, "the test never writes the service's data"
        assert not (models / "written").exists()
    finally:
        engine_api.remove_network(str(engine.socket), network)
