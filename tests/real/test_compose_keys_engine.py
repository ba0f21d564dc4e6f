"""Compose's keys on a Docker host, run for real (issue 15): a service with `entrypoint`, `cpus`, `ulimits`
(NVIDIA's memlock -1 and stack 67108864) and `ipc` is planned by the real program, its planned
docker.Container inputs mapped onto the Engine API the way terraform-provider-docker v4.5.0 sends them
(tests/real/engine_api.py: `entrypoint` -> Config.Entrypoint, `cpus` -> HostConfig.NanoCPUs through
ParseCPUs, `ulimit` -> HostConfig.Ulimits, `ipc_mode` -> HostConfig.IpcMode), created in the tier's own
engine, and `docker inspect` and the running process must show each. A limit above the host's CPUs is
refused by the engine with its own line.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from stacks.plan import Plan
from tests.plans import containers, plan_with
from tests.real import engine_api
from tests.real.engine import Engine
from tests.real.images import BaseImages

SERVICE = {
    "image": "gpu-deploy-test/stand-in:1",  # replaced by the tier's bash image
    "entrypoint": ["/bin/bash", "-c"],
    "command": ["echo started; exec sleep 600"],
    "user": "1001:1001",
    "memory": "256m",
    "cpus": "1.5",
    "ulimits": {"memlock": -1, "stack": 67108864, "nofile": {"soft": 1024, "hard": 4096}},
    "ipc": "shareable",
}


def compose_plan(tmp_path: Path, **changes: Any) -> Plan:
    def edit(config: dict[str, Any]) -> None:
        config["gpu-deploy:profile"] = "cpu"
        config.pop("gpu-deploy:image", None)
        config["gpu-deploy:services"] = {"compose": {**SERVICE, **changes}}

    return plan_with(tmp_path, "dev", edit)


def create(engine: Engine, images: BaseImages, planned: dict[str, Any], network: str) -> str:
    body = engine_api.create_body(planned, image_override=images.bash, network_name_override=network)
    return engine_api.create_and_start(str(engine.socket), body)


@pytest.fixture
def network(engine: Engine) -> Any:
    name = f"compose-keys-{os.getpid()}"
    engine_api.create_network(str(engine.socket), name)
    yield name
    engine_api.remove_network(str(engine.socket), name)


CAP_SYS_RESOURCE = 24  # linux/capability.h


def engine_raises_limits() -> bool:
    """Whether the tier's dockerd (started by this process tree, with its capabilities) may raise a hard
    limit above its own: CAP_SYS_RESOURCE, as a root dockerd on a GPU host has. Without it (rootless Docker,
    a restricted container) runc cannot set memlock -1 above the daemon's own hard limit."""
    status = Path("/proc/self/status").read_text()
    effective = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)
    return bool(effective >> CAP_SYS_RESOURCE & 1)


def own_hard_memlock() -> int:
    for line in Path("/proc/self/limits").read_text().splitlines():
        if line.startswith("Max locked memory"):
            hard = line.split()[4]
            return -1 if hard == "unlimited" else int(hard)
    raise AssertionError("no Max locked memory in /proc/self/limits")


def test_planned_entrypoint_cpus_ulimits_and_ipc_reach_the_container(
    tmp_path: Path, engine: Engine, base_images: BaseImages, network: str
) -> None:
    planned = dict(containers(compose_plan(tmp_path))["compose"].inputs)
    planned.pop("image", None)
    assert planned["cpus"] == "1.5" and planned["ipcMode"] == "shareable"
    memlock = -1
    if not engine_raises_limits() and own_hard_memlock() != -1:
        # This machine's engine may not raise memlock: the planned -1 is refused, in runc's words ...
        with pytest.raises(engine_api.EngineError) as refused:
            create(engine, base_images, planned, network)
        assert "error setting rlimit type 8: operation not permitted" in refused.value.message
        engine.docker_cli("rm", "-f", planned["name"], check=False)
        # ... and the rest is checked with memlock at the daemon's own hard limit.
        memlock = own_hard_memlock()
        for ulimit in planned["ulimits"]:
            if ulimit["name"] == "memlock":
                ulimit.update(soft=memlock, hard=memlock)
    container_id = create(engine, base_images, planned, network)
    try:
        shown = json.loads(engine.docker_cli("inspect", container_id).stdout)[0]
        host = shown["HostConfig"]
        assert shown["Config"]["Entrypoint"] == ["/bin/bash", "-c"]
        assert shown["Config"]["Cmd"] == ["echo started; exec sleep 600"]
        assert host["NanoCpus"] == 1_500_000_000
        assert host["IpcMode"] == "shareable"
        assert sorted(host["Ulimits"], key=lambda u: u["Name"]) == [
            {"Name": "memlock", "Hard": memlock, "Soft": memlock},
            {"Name": "nofile", "Hard": 4096, "Soft": 1024},
            {"Name": "stack", "Hard": 67108864, "Soft": 67108864},
        ]
        # what the process really gets: bash's ulimit (KiB), as the non-root user, all caps dropped
        limits = engine.docker_cli(
            "exec", container_id, "/bin/bash", "-c", "ulimit -l; ulimit -s; ulimit -Sn; ulimit -Hn; id -u"
        ).stdout.split()
        locked = "unlimited" if memlock == -1 else str(memlock // 1024)
        assert limits == [locked, "65536", "1024", "4096", "1001"]
        cpu_max = engine.docker_cli(
            "exec", container_id, "/bin/bash", "-c", "cat /sys/fs/cgroup/cpu.max 2>/dev/null || true"
        ).stdout.split()
        if cpu_max:  # cgroup v2: quota and period, 1.5 CPUs
            assert int(cpu_max[0]) * 2 == int(cpu_max[1]) * 3, cpu_max
        assert "started" in engine.docker_cli("logs", container_id).stdout
    finally:
        engine_api.remove(str(engine.socket), container_id)


def test_a_cpu_limit_above_the_hosts_is_the_engines_one_line(
    tmp_path: Path, engine: Engine, base_images: BaseImages, network: str
) -> None:
    planned = dict(containers(compose_plan(tmp_path, cpus=1000, ulimits={}, ipc="private"))["compose"].inputs)
    planned.pop("image", None)
    assert planned["cpus"] == "1000."  # the provider's read-back text (helpers.go nanoInt64ToDecimalString)
    try:
        with pytest.raises(engine_api.EngineError) as refused:
            create(engine, base_images, planned, network)
        # moby daemon/daemon_unix.go verifyPlatformContainerResources (the API capitalises the first letter)
        pattern = r"Range of CPUs is from 0\.01 to (\d+)\.00, as there are only \1 CPUs available"
        assert re.fullmatch(pattern, refused.value.message), refused.value.message
    finally:
        engine.docker_cli("rm", "-f", planned["name"], check=False)
