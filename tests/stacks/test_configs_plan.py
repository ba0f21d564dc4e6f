"""Property: every stack configuration that validates also plans, for both targets.

Configurations are generated from building blocks (a target, a profile, a built image or not, and
services with GPUs, GPU memory budgets, rollouts, ports, volumes, env, health checks, smoke checks, dependencies, CPU fallbacks and
storage). Those `stacks.config.validate` refuses are counted and set aside (a refusal is one line
naming a `gpu-deploy:` key); each one it accepts is planned offline (`make_plan`, as `python -m stacks
plan` does) and must plan without an error. The examples are derandomized and bounded, so CI runs the
same ones every time; the test also checks that enough of them validate for the property to mean
something.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacks.config import NAMESPACE, ConfigError, validate
from stacks.plan import make_plan

EXAMPLES = 40  # per target: 10-15 s each (a plan takes 0.2-0.4 s in-process)
MIN_VALID = 20  # of them, at least this many must validate (and so be planned)
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPP40HostKeyPlaceholderReplaceMe000000000000"
NAMES = ("api", "worker", "cache", "web")
ONE_LINE_ERROR = re.compile(rf"^{NAMESPACE}:\S+: [^\n]+$")

DOCKER_TARGETS = st.one_of(
    st.just({"kind": "docker", "host": "local", "root": "/srv/prop"}),
    st.fixed_dictionaries(
        {
            "kind": st.just("docker"),
            "host": st.just("gpu.example.internal"),
            "hostKey": st.just(HOST_KEY),
            "root": st.just("/srv/prop"),
        },
        optional={"user": st.just("deploy"), "port": st.sampled_from([22, 2222])},
    ),
)
KUBERNETES_TARGETS = st.fixed_dictionaries(
    {
        "kind": st.just("kubernetes"),
        "context": st.just("prop"),
        "namespace": st.sampled_from(["ai", "prop-apps"]),
        "version": st.sampled_from(["1.29", "1.30", "1.31"]),
    },
    optional={
        "createNamespace": st.booleans(),
        "distribution": st.sampled_from(["microk8s", "generic"]),
        "storageClass": st.just("fast-ssd"),
    },
)
IMAGE_SECTION = {"repository": "prop/app", "context": "images", "dockerfile": "cuda-python/Dockerfile"}


@st.composite
def services(draw: st.DrawFn, kind: str, built: bool) -> dict[str, Any]:
    count = draw(st.integers(1, len(NAMES)))
    spec: dict[str, Any] = {}
    for index, name in enumerate(NAMES[:count]):
        images = ["redis:7.2.4", "ghcr.io/acme/api:1.4.2"] + (["build"] if built else [])
        service: dict[str, Any] = {
            "image": draw(st.sampled_from(images)),
            "gpu": draw(st.sampled_from([1, "none"] if kind == "kubernetes" else [1, "none", "all"])),
        }
        port = 8000 + index
        if draw(st.booleans()):
            service["ports"] = [f"{port}:{port}" if kind == "kubernetes" else f"127.0.0.1:{port}:{port}"]
        if draw(st.booleans()):
            if kind == "kubernetes":
                service["volumes"] = ["data:/data"]
                service["storage"] = {"data": "1Gi"}
            else:
                service["volumes"] = [f"data/{name}:/data"]
        env = draw(
            st.dictionaries(st.sampled_from(["MODE", "LOG_LEVEL"]), st.sampled_from(["a", "1", "x y"]))
        )
        if env:
            service["env"] = env
        if draw(st.booleans()):
            service["healthcheck"] = {"http": {"path": "/health", "port": port}}
        if "ports" in service and draw(st.booleans()):
            service["smoke"] = [{"http": {"path": "/health"}}]
        if index and draw(st.booleans()):
            service["dependsOn"] = {NAMES[0]: draw(st.sampled_from(["started", "healthy"]))}
        if kind == "kubernetes" or draw(st.booleans()):  # required on kubernetes
            service["memory"] = draw(st.sampled_from(["512m", "2g"]))
        if kind == "kubernetes" and service["gpu"] == 1 and draw(st.booleans()):
            service["cpuFallback"] = True
        if service["gpu"] != "none" and draw(st.integers(0, 3)):  # mostly a budget: GPUs are shared
            service["gpuMemory"] = draw(st.sampled_from(["2GiB", "3g", "3072MiB", "1536Mi"]))
        rollouts = ["auto", "stop-first"]
        if "healthcheck" in service and "ports" in service:
            rollouts.append("zero-downtime")
        if draw(st.booleans()):
            service["rollout"] = draw(st.sampled_from(rollouts))
        spec[name] = service
    return spec


@st.composite
def stack_configs(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """`gpu-deploy:` keys without the namespace, as `validate` takes them."""
    if kind == "docker":
        config: dict[str, Any] = {
            "profile": draw(st.sampled_from(["p40", "a2", "a4000", "h100", "cpu"])),
            "target": {**draw(DOCKER_TARGETS), "gpus": draw(st.sampled_from([1, 1, 2]))},
        }
    else:
        config = {"profile": draw(st.sampled_from(["a2", "a4000"])), "target": draw(KUBERNETES_TARGETS)}
        if draw(st.booleans()):
            config["gpuSharing"] = {"strategy": "time-slicing", "replicas": draw(st.sampled_from([2, 4]))}
    built = kind == "docker" and draw(st.booleans())
    if built:
        config["image"] = IMAGE_SECTION
    config["services"] = draw(services(kind, built))
    return config


def stack_file(config: dict[str, Any]) -> dict[str, Any]:
    keys = {f"{NAMESPACE}:{key}": value for key, value in config.items()}
    return {"config": {"pulumi:disable-default-providers": ["docker", "kubernetes"], **keys}}


@pytest.mark.parametrize("kind", ["docker", "kubernetes"])
def test_every_config_that_validates_also_plans(kind: str, tmp_path: Path) -> None:
    counts: Counter[str] = Counter()
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(config=stack_configs(kind))
    def validates_then_plans(config: dict[str, Any]) -> None:
        counts["tried"] += 1
        try:
            validate(config)
        except ConfigError as err:
            assert ONE_LINE_ERROR.match(str(err)), str(err)
            counts["refused"] += 1
            return
        path = tmp_path / f"Pulumi.prop-{kind}.yaml"
        path.write_text(yaml.safe_dump(stack_file(config)))
        plan = make_plan(f"prop-{kind}", config_file=path)  # raises where `plan` would not exit 0
        assert plan.resources
        counts["planned"] += 1

    validates_then_plans()
    print(f"{kind}: {dict(counts)} in {time.monotonic() - started:.1f} s")
    assert counts["planned"] >= MIN_VALID, f"too few generated {kind} configs validate: {dict(counts)}"
