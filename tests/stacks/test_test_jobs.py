"""A service's GPU test job (`services.<name>.test`, stacks/docker_tests.py): its keys and one-line
refusals, its budget beside the running copy, and its place in the plan: after what the service waits for,
before the service's container and the gate that stops the old copy."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from components.core.gpu_memory import ZERO_DOWNTIME
from stacks.config import NAMESPACE, ConfigError, ResolvedStack, resolve_profile, validate
from stacks.config.budgets import docker_rollouts
from tests.plans import containers, labels_of, plan_with, shipped_plan

ONE_LINE = re.compile(rf"^{NAMESPACE}:\S+: [^\n]+$")
TEST = {"command": ["pytest", "tests/"]}
BASE: dict[str, Any] = {
    "profile": "p40",  # 22919 MiB
    "target": {"kind": "docker", "host": "local", "root": "/srv/tests"},
    "image": {"repository": "acme-app", "context": ".", "dockerfile": "Dockerfile"},
    "services": {
        "app": {
            "image": "build",
            "gpu": 1,
            "gpuMemory": "8GiB",
            "ports": ["127.0.0.1:3000:3000"],
            "healthcheck": {"http": {"path": "/health", "port": 3000}},
            "test": TEST,
        },
    },
}


def raw_with(**app: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    for key, value in app.items():
        if value is None:
            raw["services"]["app"].pop(key, None)
        else:
            raw["services"]["app"][key] = value
    return raw


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        validate(raw)
    message = str(err.value)
    assert ONE_LINE.match(message), message
    return message


@pytest.mark.parametrize(
    ("app", "message"),
    [
        (
            {"oneShot": True, "healthcheck": None, "ports": None, "gpu": "none", "gpuMemory": None},
            "gpu-deploy:services.app.test: a one-shot job has no test job: it runs once itself (remove test)",
        ),
        (
            {"image": "ghcr.io/acme/app:1.0.0", "test": {**TEST, "target": "test"}},
            "gpu-deploy:services.app.test.target: a test stage is built from the service's source: needs "
            'image: "build" (image is ghcr.io/acme/app:1.0.0)',
        ),
        (
            {"gpu": "none", "gpuMemory": None, "test": {**TEST, "gpuMemory": "2GiB"}},
            "gpu-deploy:services.app.test.gpuMemory: a GPU memory budget needs a GPU; this service has gpu: none",
        ),
        (
            {"gpuMemory": None, "healthcheck": None},
            "gpu-deploy:services.app.test: the test job runs on this service's GPU while the running copy still "
            "holds it, which without gpuMemory takes the whole device: set gpuMemory",
        ),
        ({"test": {"command": []}}, "gpu-deploy:services.app.test.command: expected the test command, e.g. "),
        (
            {"test": {**TEST, "timeout": "5s"}},
            "gpu-deploy:services.app.test.timeout: expected 10s to 24h, got 5s",
        ),
        ({"test": {**TEST, "timeout": "25h"}}, "gpu-deploy:services.app.test.timeout: expected 10s to 24h"),
        (
            {"test": {**TEST, "target": "../x"}},
            "gpu-deploy:services.app.test.target: ",
        ),
    ],
)
def test_refusals_name_the_key(app: dict[str, Any], message: str) -> None:
    assert refused(raw_with(**app)).startswith(message)


def test_a_service_named_like_the_job_is_refused() -> None:
    raw = raw_with()
    raw["services"]["app-test"] = {"image": "ghcr.io/acme/other:1.0.0"}
    assert refused(raw) == (
        "gpu-deploy:services.app.test: its job is named app-test, as another service is: rename that service"
    )


def test_kubernetes_refuses_a_test_job() -> None:
    raw = {
        "profile": "a2",
        "target": {"kind": "kubernetes", "context": "c", "namespace": "apps", "version": "1.30"},
        "services": {"app": {"image": "ghcr.io/acme/app:1.0.0", "memory": "1g", "test": TEST}},
    }
    assert refused(raw).startswith("gpu-deploy:services.app.test: a Docker host setting")


def test_the_command_and_timeout_parse() -> None:
    config = validate(raw_with(test={"command": "python3 -m pytest tests/", "timeout": "15m"}))
    test = config.services["app"].test
    assert test is not None
    assert (test.command_list, test.timeout) == (["python3", "-m", "pytest", "tests/"], 900)


# ---------------------------------------------------------------- the budget beside the running copy
def resolved(raw: dict[str, Any]) -> ResolvedStack:
    config = validate(raw)
    profile, _ = resolve_profile(config, None)
    return ResolvedStack("tests", config, profile, frozenset())


def test_the_test_budget_counts_beside_the_running_copy() -> None:
    # 8 GiB app + 8 GiB test (the service's budget by default) + 8 GiB other = 24576 MiB > 22919 MiB
    raw = raw_with()
    raw["services"]["other"] = {"image": "ghcr.io/acme/o:1", "gpu": 1, "gpuMemory": "8GiB"}
    assert refused(raw) == (
        "gpu-deploy:services.other.gpuMemory: GPU 0 (22919 MiB) cannot hold app (8192 MiB) + app's test "
        "(8192 MiB) + other (8192 MiB) = 24576 MiB: lower services.app.gpuMemory, services.other.gpuMemory or "
        "services.app.test.gpuMemory, or give the host more GPUs (target.gpus)"
    )
    raw["services"]["app"]["test"] = {**TEST, "gpuMemory": "4GiB"}  # its own, smaller budget fits
    assert validate(raw).services["app"].test is not None


def test_its_own_test_has_exited_when_the_new_copy_starts() -> None:
    # 2 x 8 GiB copies + 6 GiB of the other service fit 22919 MiB; the app's own finished test does not count
    raw = raw_with()
    raw["services"]["other"] = {"image": "ghcr.io/acme/o:1", "gpu": 1, "gpuMemory": "6GiB"}
    rollout = docker_rollouts(resolved(raw))["app"]
    assert rollout.mode == ZERO_DOWNTIME, rollout.why
    assert "8192 MiB x 2 + 6144 MiB of others" in rollout.why


# ---------------------------------------------------------------- the plan (the a4000 stack uses it)
def deps(resource: Any) -> set[str]:
    return {urn.rsplit("::", 1)[-1] for urn in resource.options["dependsOn"]}


def test_a4000_runs_the_write_ups_gpu_tests_before_the_backend_is_touched() -> None:
    plan = shipped_plan("a4000")
    found = containers(plan)
    job, backend = found["backend-test"], found["backend"]
    command = job.inputs["command"]
    assert command[:4] == ["timeout", "-k", "10", "900"]
    assert "test/validate_cuda.py" in command[-1] and "pytest tests/" in command[-1]
    assert job.inputs["image"].startswith("nlp-backend-backend-test:a4000-")  # test/Dockerfile.test
    assert job.inputs["attach"] is True and job.inputs["mustRun"] is False and job.inputs["restart"] == "no"
    assert job.inputs["deviceRequests"] == backend.inputs["deviceRequests"]
    assert [m["readOnly"] for m in job.inputs["mounts"]] == [True]  # the models cache, read-only
    assert labels_of(job)["io.gpu-deploy.service"] == "backend-test"
    assert "ignoreChanges" not in job.options or not job.options["ignoreChanges"]
    gate = next(r for r in plan.resources if r.name == "backend-gpu-memory")
    assert "backend-test" in deps(backend) and "backend-test" in deps(gate), "the gate stops the old copy"
    test_gate = next(r for r in plan.resources if r.name == "backend-test-gpu-memory")
    assert "backend-test-gpu-memory" in deps(job)
    assert "backend" not in deps(test_gate)
    images = [r for r in plan.resources if r.type == "docker:index/image:Image"]
    assert {r.name for r in images} == {"image-build", "image-backend-test-build"}


def test_a_rollback_runs_the_test_again_with_the_kept_image(tmp_path: Path) -> None:
    def pin(config: dict[str, Any]) -> None:
        config["gpu-deploy:image"]["tag"] = "a4000-0123456789ab"

    plan = plan_with(tmp_path, "a4000", pin)
    job = containers(plan)["backend-test"]
    assert job.inputs["image"] == "nlp-backend-backend-test:a4000-0123456789ab"
    assert not job.options.get("ignoreChanges"), "a test changes nothing: it runs again on a rollback"


def test_a_test_stage_of_the_services_dockerfile(tmp_path: Path) -> None:
    def stage(config: dict[str, Any]) -> None:
        config["gpu-deploy:services"]["backend"]["test"] = {"target": "test", "command": ["pytest"]}

    plan = plan_with(tmp_path, "a4000", stage)
    assert containers(plan)["backend-test"].inputs["image"].endswith("-test")
    assert containers(plan)["backend-test"].inputs["image"].startswith("nlp-backend:a4000-")
