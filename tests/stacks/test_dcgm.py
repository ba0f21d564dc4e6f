"""The Docker host's DCGM exporter (`gpu-deploy:dcgm`): its keys and one-line refusals, the counters file
per card (no profiling metrics on a P40), and the container the prod and h100 stacks plan."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from components.core.vocabulary import DCGM_EXPORTER_COUNTERS, DCGM_EXPORTER_IMAGE
from components.docker.dcgm import COUNTERS_FILE, counters
from stacks.config import NAMESPACE, ConfigError, validate
from tests.plans import containers, plan_with, shipped_plan

ONE_LINE = re.compile(rf"^{NAMESPACE}:\S+: [^\n]+$")
BASE: dict[str, Any] = {
    "profile": "p40",
    "target": {"kind": "docker", "host": "local"},
    "dcgm": {},
    "services": {"app": {"image": "ghcr.io/acme/app:1.0.0", "gpu": 1, "ports": ["127.0.0.1:3000:3000"]}},
}


def raw_with(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return raw


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        validate(raw)
    message = str(err.value)
    assert ONE_LINE.match(message), message
    return message


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"dcgm": {"address": "localhost:9400"}},
            'gpu-deploy:dcgm.address: expected IP:port, e.g. 127.0.0.1:9400 or [::1]:9400, got "localhost:9400"',
        ),
        (
            {"dcgm": {"address": "127.0.0.1:70000"}},
            'gpu-deploy:dcgm.address: expected IP:port, e.g. 127.0.0.1:9400 or [::1]:9400, got "127.0.0.1:70000"',
        ),
        (
            {"dcgm": {"profiling": True}},
            "gpu-deploy:dcgm.profiling: profiling metrics (DCGM_FI_PROF_*) need compute capability 7.0 (Volta) "
            "or newer; p40 has 6.1: remove dcgm.profiling",
        ),
        (
            {"dcgm": {"address": "0.0.0.0:3000"}},
            "gpu-deploy:dcgm.address: host port 3000/tcp on 0.0.0.0: services.app.ports has it already",
        ),
        (
            {"profile": "cpu", "services": {"app": {"image": "ghcr.io/acme/app:1.0.0"}}},
            "gpu-deploy:dcgm: the cpu profile has no GPU to watch: remove dcgm or set dcgm.enabled: false",
        ),
        ({"dcgm": {"image": "nvcr.io/nvidia/k8s/dcgm-exporter"}}, "gpu-deploy:dcgm.image: "),
        ({"dcgm": {"memory": 512}}, "gpu-deploy:dcgm.memory: "),
    ],
)
def test_refusals_name_the_key(changes: dict[str, Any], message: str) -> None:
    assert refused(raw_with(**changes)).startswith(message)


def test_kubernetes_has_its_own_exporter() -> None:
    raw = {
        "profile": "a2",
        "target": {"kind": "kubernetes", "context": "c", "namespace": "apps", "version": "1.30"},
        "dcgm": {},
        "services": {"app": {"image": "ghcr.io/acme/app:1.0.0", "memory": "1g"}},
    }
    assert refused(raw) == (
        "gpu-deploy:dcgm: a Docker host setting; on kubernetes the exporter is gpuOperator.dcgm"
    )


def test_addresses_parse_v4_and_v6() -> None:
    assert validate(raw_with(dcgm={"address": "[::1]:9500"})).dcgm.address == ("::1", 9500)  # type: ignore[union-attr]
    config = validate(raw_with(profile="h100", dcgm={"profiling": True}))
    assert config.dcgm is not None and config.dcgm.profiling


def test_the_counters_file_drops_profiling_metrics_unless_asked() -> None:
    full = COUNTERS_FILE.read_text(encoding="utf-8")
    assert "DCGM_FI_PROF_GR_ENGINE_ACTIVE" in full  # NVIDIA's default file lists them
    basic = counters(profiling=False)
    assert "DCGM_FI_PROF_" not in basic
    assert "DCGM_FI_DEV_GPU_UTIL" in basic and "DCGM_FI_DEV_FB_USED" in basic
    fields = [line for line in basic.splitlines() if line and not line.startswith("#")]
    assert all(line.count(",") >= 2 for line in fields), "dcgm-exporter: every entry has 2 commas"
    assert "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE" in counters(profiling=True)


@pytest.mark.parametrize("stack", ["prod", "h100"])
def test_the_exporter_container_is_pinned_unprivileged_and_on_loopback(stack: str) -> None:
    exporter = containers(shipped_plan(stack))["dcgm-exporter"]
    inputs = exporter.inputs
    assert inputs["image"] == DCGM_EXPORTER_IMAGE
    assert inputs["user"] == "1000:1000"
    assert inputs["capabilities"] == {"drops": ["ALL"]}
    assert inputs["securityOpts"] == ["no-new-privileges:true"]
    assert inputs["ports"] == [{"internal": 9400, "external": 9400, "ip": "127.0.0.1", "protocol": "tcp"}]
    assert inputs["command"] == ["-f", DCGM_EXPORTER_COUNTERS, "-a", ":9400"]
    assert inputs["deviceRequests"] == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]
    [upload] = inputs["uploads"]
    assert upload["file"] == DCGM_EXPORTER_COUNTERS
    assert upload["content"] == counters(profiling=False)


def test_profiling_on_a_volta_or_newer_card_runs_as_root_with_sys_admin_only(tmp_path: Path) -> None:
    def profiling(config: dict[str, Any]) -> None:
        config["gpu-deploy:dcgm"]["profiling"] = True

    inputs = containers(plan_with(tmp_path, "h100", profiling))["dcgm-exporter"].inputs
    assert inputs["user"] == "0:0"
    assert inputs["capabilities"] == {"drops": ["ALL"], "adds": ["SYS_ADMIN"]}
    assert "DCGM_FI_PROF_GR_ENGINE_ACTIVE" in inputs["uploads"][0]["content"]
