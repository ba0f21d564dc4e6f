"""GPU memory budgets and rollouts in the stack config (stacks/config/budgets.py): the keys, their one-line
refusals naming the key, the plan-time budget check for both targets, and the Kubernetes strategy each
workload gets."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pulumi_kubernetes as k8s
import pytest

from components.core.catalog import PROFILES
from components.core.gpu_memory import STOP_FIRST, ZERO_DOWNTIME
from components.kubernetes.workload import deployment_strategy
from stacks.config import NAMESPACE, ConfigError, ResolvedStack, resolve_profile, validate
from stacks.config.budgets import docker_rollouts, kubernetes_rollouts
from tests.plans import plan_with, stack_config

ONE_LINE = re.compile(rf"^{NAMESPACE}:\S+: [^\n]+$")
DEPLOYMENT = "kubernetes:apps/v1:Deployment"

DOCKER: dict[str, Any] = {
    "profile": "p40",  # 24 GB: 22919 MiB
    "target": {"kind": "docker", "host": "local", "root": "/srv/budgets"},
    "services": {
        "app": {
            "image": "ghcr.io/acme/app:1.0.0",
            "gpu": 1,
            "gpuMemory": "8GiB",
            "ports": ["127.0.0.1:3000:3000"],
            "healthcheck": {"http": {"path": "/health", "port": 3000}, "startPeriod": "60s"},
        },
        "worker": {"image": "ghcr.io/acme/worker:1.0.0", "gpu": 1, "gpuMemory": "4GiB"},
        "web": {
            "image": "ghcr.io/acme/web:1.0.0",
            "ports": ["127.0.0.1:8080:8080"],
            "healthcheck": {"http": {"path": "/", "port": 8080}},
        },
    },
}


def docker(**services: dict[str, Any]) -> dict[str, Any]:
    """DOCKER with each named service's keys updated (None removes a key)."""
    raw = copy.deepcopy(DOCKER)
    for name, keys in services.items():
        service = raw["services"].setdefault(name, {})
        for key, value in keys.items():
            if value is None:
                service.pop(key, None)
            else:
                service[key] = value
    return raw


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        validate(raw)
    message = str(err.value)
    assert ONE_LINE.match(message), message
    return message


def resolved(raw: dict[str, Any]) -> ResolvedStack:
    config = validate(raw)
    profile, _ = resolve_profile(config, None)
    return ResolvedStack("budgets", config, profile, frozenset())


# ---------------------------------------------------------------- the keys
@pytest.mark.parametrize(
    ("size", "mib"),
    [("20GiB", 20480), ("20Gi", 20480), ("20g", 20480), ("8192MiB", 8192), ("8192m", 8192), ("1.5GiB", 1536)],
)
def test_gpu_memory_is_a_size_with_units_in_mib(size: str, mib: int) -> None:
    raw = docker(app={"gpuMemory": size}, worker={"gpu": "none", "gpuMemory": None})
    assert validate(raw).services["app"].gpu_memory == mib


def test_a_service_without_a_budget_has_none() -> None:
    raw = docker(app={"gpuMemory": None}, worker={"gpu": "none", "gpuMemory": None})
    assert validate(raw).services["app"].gpu_memory is None


@pytest.mark.parametrize(
    ("services", "expected"),
    [
        (
            {"app": {"gpuMemory": "20"}},
            'services.app.gpuMemory: a size needs a unit: "20m" or "20g"? got "20"',
        ),
        (
            {"web": {"gpuMemory": "2GiB"}},
            "services.web.gpuMemory: a GPU memory budget needs a GPU; this service has gpu: none",
        ),
        (
            {"app": {"gpu": ["0:1"], "rollout": "stop-first"}},
            "services.app.gpuMemory: a MIG instance's memory is fixed by its profile; gpuMemory budgets whole "
            "GPUs (gpu: all, a count or GPU indexes)",
        ),
        (
            {"app": {"rollout": "fast"}},
            'services.app.rollout: expected one of "auto", "zero-downtime", "stop-first", got "fast"',
        ),
        (
            {"job": {"image": "ghcr.io/acme/job:1.0.0", "oneShot": True, "rollout": "auto"}},
            "services.job.rollout: a one-shot job runs once: it has no rollout (remove rollout)",
        ),
        (
            {"worker": {"rollout": "zero-downtime"}},
            "services.worker.rollout: zero-downtime needs an HTTP health check (healthcheck.http): the traffic "
            "moves to the new copy once it passes",
        ),
        (
            {"web": {"rollout": "zero-downtime", "ports": None}},
            "services.web.rollout: zero-downtime needs published ports, all TCP (the reverse proxy carries no "
            "UDP): their traffic is what moves to the new copy",
        ),
        (
            {"web": {"rollout": "zero-downtime", "ports": ["127.0.0.1:8080:8080", "127.0.0.1:5353:53/udp"]}},
            "services.web.rollout: zero-downtime needs published ports, all TCP (the reverse proxy carries no "
            "UDP): their traffic is what moves to the new copy",
        ),
        (
            {"proxy": {"image": "ghcr.io/acme/proxy:1.0.0"}},
            "services.proxy: the name of the stack's reverse proxy (container <stack>-proxy): rename the service",
        ),
        (
            {"web": {"ports": ["[::1]:3000:8080"]}},  # the same host port on another address
            "services.web.ports: host port 3000 is published by app too: zero-downtime services reach the host "
            "through the one reverse proxy, which listens on each host port once; use another port or set "
            "services.web.rollout: stop-first",
        ),
    ],
)
def test_budget_and_rollout_keys_are_refused_in_one_line(services: dict[str, Any], expected: str) -> None:
    assert refused(docker(**services)) == f"{NAMESPACE}:{expected}"


def test_target_gpus_defaults_to_one_and_is_docker_only() -> None:
    assert validate(DOCKER).target.gpus == 1  # type: ignore[union-attr]
    raw = docker()
    raw["target"]["gpus"] = 0
    assert refused(raw).startswith(f"{NAMESPACE}:target.gpus: ")
    kubernetes = stack_config("a2")
    k8s = {k.split(":", 1)[1]: v for k, v in kubernetes.items() if k.startswith(f"{NAMESPACE}:")}
    k8s["target"]["gpus"] = 2
    assert refused(k8s).startswith(f"{NAMESPACE}:target.gpus: unknown key")


# ---------------------------------------------------------------- Docker: the plan-time check
def test_budgets_that_do_not_fit_one_gpu_are_refused_naming_services_and_numbers() -> None:
    message = refused(docker(app={"gpuMemory": "16GiB"}, worker={"gpuMemory": "12GiB"}))
    assert message == (
        f"{NAMESPACE}:services.worker.gpuMemory: GPU 0 (22919 MiB) cannot hold app (16384 MiB) + worker "
        "(12288 MiB) = 28672 MiB: lower services.app.gpuMemory or services.worker.gpuMemory, or give the host "
        "more GPUs (target.gpus)"
    )
    # without budgets each takes the whole device: two cannot share it
    assert "set services.app.gpuMemory and services.worker.gpuMemory" in refused(
        docker(app={"gpuMemory": None}, worker={"gpuMemory": None})
    )


def test_a_second_gpu_gives_each_service_its_own_device() -> None:
    raw = docker(app={"gpuMemory": "16GiB"}, worker={"gpuMemory": "12GiB"})
    raw["target"]["gpus"] = 2
    rollouts = docker_rollouts(resolved(raw))
    assert rollouts["app"].mode == STOP_FIRST  # 16384 x 2 does not fit a 22919 MiB P40
    assert rollouts["app"].why.startswith("no room for two copies: GPU ")


def test_devices_beyond_target_gpus_are_refused() -> None:
    message = refused(docker(app={"gpu": [1]}))
    assert message.startswith(
        f"{NAMESPACE}:services.app.gpu: app asks for GPU 1, but there is 1 GPU (index 0)"
    )


def test_docker_rollouts_say_which_mode_and_why() -> None:
    rollouts = docker_rollouts(resolved(DOCKER))
    assert list(rollouts) == ["app", "worker", "web"]
    assert rollouts["app"].as_json() == {
        "mode": ZERO_DOWNTIME,
        "why": "room for two copies: GPU 0 (22919 MiB) holds 8192 MiB x 2 + 4096 MiB of others",
        "interruptionS": 0,
    }
    assert rollouts["worker"].mode == STOP_FIRST
    assert rollouts["worker"].why.startswith("no HTTP health check")
    assert rollouts["web"].mode == ZERO_DOWNTIME
    jobs = docker(job={"image": "ghcr.io/acme/job:1.0.0", "oneShot": True})
    assert "job" not in docker_rollouts(resolved(jobs))


def test_a_forced_zero_downtime_without_room_is_refused() -> None:
    message = refused(docker(app={"gpuMemory": "12GiB", "rollout": "zero-downtime"}))
    assert message == (
        f"{NAMESPACE}:services.app.rollout: app: rollout zero-downtime needs room for two copies, but GPU 0 "
        "(22919 MiB) cannot hold 12288 MiB x 2 + 4096 MiB of others = 28672 MiB: lower services.app.gpuMemory "
        "or set services.app.rollout: stop-first"
    )
    forced = docker_rollouts(resolved(docker(app={"rollout": "stop-first"})))["app"]
    assert (forced.mode, forced.why, forced.interruption_s) == (
        STOP_FIRST,
        "forced by rollout: stop-first",
        60,
    )


def test_profile_auto_places_at_deploy_and_checks_the_detected_card() -> None:
    raw = docker(app={"gpuMemory": "12GiB"}, worker={"gpuMemory": "12GiB"})
    raw["profile"] = "auto"
    raw["target"] = {"kind": "docker", "host": "gpu.example.internal", "hostKey": HOST_KEY, "root": "/srv/b"}
    config = validate(raw)  # the card is unknown: nothing to place yet
    stack = ResolvedStack("budgets", config, None, frozenset())
    assert docker_rollouts(stack)["app"].why == "the card is known only at deploy (profile auto)"
    with pytest.raises(ConfigError, match=r"^gpu-deploy:services\.worker\.gpuMemory: GPU 0 \(15356 MiB\)"):
        resolve_profile(config, "a2")  # what the preflight found: 12288 x 2 does not fit an A2
    assert resolve_profile(config, "h100")[0] == PROFILES["h100"]


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPP40HostKeyPlaceholderReplaceMe000000000000"


# ---------------------------------------------------------------- Kubernetes
def a2(edit: Any = None) -> dict[str, Any]:
    raw = {k.split(":", 1)[1]: v for k, v in stack_config("a2").items() if k.startswith(f"{NAMESPACE}:")}
    if edit is not None:
        edit(raw)
    return raw


def test_time_slicing_refuses_pods_that_do_not_fit_one_gpu_together() -> None:
    def whole(raw: dict[str, Any]) -> None:
        for service in raw["services"].values():
            service.pop("gpuMemory", None)

    assert refused(a2(whole)) == (
        f"{NAMESPACE}:services.faster-whisper.gpuMemory: time-slicing runs any 2 pods on one NVIDIA A2 "
        "(15356 MiB), and kokoro (15356 MiB) + faster-whisper (15356 MiB) = 30712 MiB: set "
        "services.kokoro.gpuMemory and services.faster-whisper.gpuMemory"
    )

    def big(raw: dict[str, Any]) -> None:
        raw["services"]["kokoro"]["gpuMemory"] = "10GiB"
        raw["services"]["faster-whisper"]["gpuMemory"] = "6GiB"

    assert refused(a2(big)).endswith(
        "kokoro (10240 MiB) + faster-whisper (6144 MiB) = 16384 MiB: lower services.kokoro.gpuMemory or "
        "services.faster-whisper.gpuMemory"
    )


def test_a_budget_above_the_card_or_an_mps_share_is_refused() -> None:
    def above(raw: dict[str, Any]) -> None:
        raw["services"]["kokoro"]["gpuMemory"] = "16GiB"

    assert refused(a2(above)) == (
        f"{NAMESPACE}:services.kokoro.gpuMemory: 16384 MiB is more than a NVIDIA A2 holds (15356 MiB)"
    )

    def mps(raw: dict[str, Any]) -> None:
        raw["gpuSharing"] = {"strategy": "mps", "replicas": 2}
        raw["services"]["kokoro"]["gpuMemory"] = "8GiB"

    assert refused(a2(mps)) == (
        f"{NAMESPACE}:services.kokoro.gpuMemory: 8192 MiB is more than an MPS share holds: a NVIDIA A2 "
        "(15356 MiB) / 2 replicas = 7678 MiB: lower it or gpuSharing.replicas"
    )


def test_kubernetes_rollouts_need_a_spare_slice_and_memory_for_the_surge_pod() -> None:
    shipped = kubernetes_rollouts(ResolvedStack("a2", validate(a2()), PROFILES["a2"], frozenset()))
    assert shipped["kokoro"].as_json() == {
        "mode": STOP_FIRST,
        "why": "Recreate: no spare nvidia.com/gpu for a surge pod (2 of 2 in use)",
        "interruptionS": 300,
    }

    def four(raw: dict[str, Any]) -> None:
        raw["gpuSharing"]["replicas"] = 4

    rollouts = kubernetes_rollouts(ResolvedStack("a2", validate(a2(four)), PROFILES["a2"], frozenset()))
    assert rollouts["kokoro"].mode == rollouts["faster-whisper"].mode == ZERO_DOWNTIME
    assert rollouts["faster-whisper"].why == (
        "RollingUpdate maxSurge 1, maxUnavailable 0: a spare nvidia.com/gpu for the surge pod (3 of 4 in use) "
        "and room for its memory"
    )

    def tight(raw: dict[str, Any]) -> None:
        raw["gpuSharing"]["replicas"] = 4
        raw["services"]["kokoro"]["gpuMemory"] = "4GiB"
        raw["services"]["faster-whisper"]["gpuMemory"] = "4GiB"

    # 4096 x 3 (two pods and kokoro's surge pod) fits 15356 MiB; faster-whisper's surge pod would not
    rollouts = kubernetes_rollouts(ResolvedStack("a2", validate(a2(tight)), PROFILES["a2"], frozenset()))
    assert rollouts["kokoro"].mode == ZERO_DOWNTIME
    assert rollouts["faster-whisper"].why == (
        "Recreate: no room for a surge pod: time-slicing runs any 4 pods on one NVIDIA A2 (15356 MiB), and "
        "kokoro (4096 MiB) x 2 + faster-whisper (4096 MiB) x 2 = 16384 MiB"
    )


def test_a_forced_zero_downtime_without_a_spare_slice_is_refused() -> None:
    def forced(raw: dict[str, Any]) -> None:
        raw["services"]["kokoro"]["rollout"] = "zero-downtime"

    assert refused(a2(forced)) == (
        f"{NAMESPACE}:services.kokoro.rollout: zero-downtime needs a surge pod beside the old one, but no spare "
        "nvidia.com/gpu for a surge pod (2 of 2 in use): raise gpuSharing.replicas or gpuSharing.gpusPerNode, "
        "or set services.kokoro.rollout: stop-first"
    )


def test_deployment_strategies() -> None:
    rolling = deployment_strategy("zero-downtime", wants_gpu=True)
    assert rolling is not None
    assert rolling.type == "RollingUpdate"
    update = rolling.rolling_update
    assert isinstance(update, k8s.apps.v1.RollingUpdateDeploymentArgs)
    assert (update.max_surge, update.max_unavailable) == (1, 0)
    for rollout, wants_gpu in (("stop-first", False), ("stop-first", True), (None, True)):
        recreate = deployment_strategy(rollout, wants_gpu=wants_gpu)
        assert recreate is not None
        assert recreate.type == "Recreate"
    assert deployment_strategy(None, wants_gpu=False) is None


def test_the_plan_gives_each_deployment_its_rollout(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["gpu-deploy:gpuSharing"]["replicas"] = 4
        services = config["gpu-deploy:services"]
        services["faster-whisper"]["rollout"] = "stop-first"
        services["web"] = {"image": "nginx:1.27.0", "ports": ["80:80"], "memory": "256m"}
        services["admin"] = {"image": "nginx:1.27.0", "memory": "256m", "rollout": "stop-first"}

    plan = plan_with(tmp_path, "a2", edit)
    strategy = {r.name: r.inputs["spec"].get("strategy") for r in plan.by_type(DEPLOYMENT)}
    assert strategy["kokoro"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert strategy["faster-whisper"] == {"type": "Recreate"}
    assert strategy["kokoro-cpu"] is None  # the CPU fallback keeps the Kubernetes default
    assert strategy["web"] is None
    assert strategy["admin"] == {"type": "Recreate"}
    assert plan.outputs["rollout"]["kokoro"]["mode"] == ZERO_DOWNTIME
    assert plan.outputs["rollout"]["faster-whisper"] == {
        "mode": STOP_FIRST,
        "why": "Recreate: forced by rollout: stop-first",
        "interruptionS": 900,
    }
    assert set(plan.outputs["rollout"]) == {"kokoro", "faster-whisper", "web", "admin"}


def test_a_udp_port_keeps_auto_on_stop_first() -> None:
    """The proxy carries TCP only: under auto a service with a UDP port keeps its own ports."""
    raw = docker(web={"ports": ["127.0.0.1:8080:8080", "127.0.0.1:5353:53/udp"]})
    rollouts = docker_rollouts(resolved(raw))
    assert rollouts["web"].mode == "stop-first"
    assert docker_rollouts(resolved(docker()))["web"].mode == "zero-downtime"
