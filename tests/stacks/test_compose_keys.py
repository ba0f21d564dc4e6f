"""Issue 15 on a Docker host: the CPU switch (`runOn: cpu`, `cpuImage`, `cpuEnv`, `cpuBuild`), required
settings (`requires`) and compose's `entrypoint`, `cpus`, `ulimits` and `ipc`: the config (one-line
errors naming the key) and the planned docker.Container inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stacks.config import validate
from stacks.config.fields import go_cpus_text
from tests.plans import ShippedPlan, containers, env_of, plan_with, stack_config
from tests.stacks.test_config import changed, rejected

APP = "services.app"


# ---------------------------------------------------------------- the CPU switch
def test_run_on_cpu_is_a_gpu_less_service_with_its_cpu_env() -> None:
    config = validate(changed((f"{APP}.runOn", "cpu"), (f"{APP}.cpuEnv", {"KOKORO_DEVICE": "cpu"})))
    app = config.services["app"]
    assert not app.gpu.wants_gpu and app.gpu_memory is None and app.image == "build"
    assert app.env["KOKORO_DEVICE"] == "cpu" and app.env["NODE_ENV"] == "production"


def test_cpu_image_and_cpu_build() -> None:
    pinned = "example/app-cpu:1.0@sha256:" + "a" * 64
    config = validate(changed((f"{APP}.runOn", "cpu"), (f"{APP}.cpuImage", pinned)))
    assert config.services["app"].image == pinned and config.services["app"].build is None
    config = validate(changed((f"{APP}.runOn", "cpu"), (f"{APP}.cpuBuild", {"target": "cpu"})))
    built = config.services["app"]
    assert built.image == "build" and built.build is not None and built.build.target == "cpu"
    # declared but switched off: the GPU service as it was
    config = validate(changed((f"{APP}.cpuBuild", {"target": "cpu"})))
    assert config.services["app"].gpu.wants_gpu and config.services["app"].build is None


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        (
            [("services.admin.runOn", "cpu")],
            "services.admin.runOn",
            "the CPU switch of a GPU service; this one has gpu: none and runs on the CPU already",
        ),
        (
            [("services.admin.cpuEnv", {"X": "1"})],
            "services.admin.cpuEnv",
            "the CPU switch of a GPU service; this one has gpu: none and runs on the CPU already",
        ),
        (
            [(f"{APP}.cpuImage", "example/app-cpu:1.0"), (f"{APP}.cpuBuild", {"target": "cpu"})],
            f"{APP}.cpuBuild",
            "only a built CPU image has a build (cpuImage: build); the CPU image is example/app-cpu:1.0",
        ),
        (
            [(f"{APP}.secretEnv", {"MODEL_URL": "x"}), (f"{APP}.cpuEnv", {"MODEL_URL": "y"})],
            f"{APP}.cpuEnv.MODEL_URL",
            "also in secretEnv: a plain value would stand beside the secret one",
        ),
        (
            [(f"{APP}.runOn", "tpu")],
            f"{APP}.runOn",
            "",
        ),
    ],
)
def test_cpu_switch_errors(changes: list[tuple[str, Any]], key: str, message: str) -> None:
    rejected(changed(*changes), key, message)


def test_prod_switches_to_the_cpu_in_one_line_and_nothing_else_changes(
    tmp_path: Path, shipped_plan: ShippedPlan
) -> None:
    before = shipped_plan("prod")

    def switch(config: dict[str, Any]) -> None:
        config["gpu-deploy:services"]["app"]["runOn"] = "cpu"

    after = plan_with(tmp_path, "prod", switch)
    app = containers(after)["app"]
    assert app.inputs.get("deviceRequests", []) == []
    env = env_of(app)
    assert env["KOKORO_DEVICE"] == "cpu" and not any(k.startswith("NVIDIA_") for k in env)
    assert "app-gpu-memory" not in {r.name for r in after.resources}
    assert "app-gpu-memory" in {r.name for r in before.resources}
    # the same image (the GPU build stays as it was): nothing else is rebuilt or replaced
    assert app.inputs["image"] == containers(before)["app"].inputs["image"]
    assert containers(after)["migrate"].inputs == containers(before)["migrate"].inputs
    assert after.outputs["rollout"]["app"]["why"].startswith("no GPU")


# ---------------------------------------------------------------- required settings
def test_requires_names_each_missing_key_in_one_line() -> None:
    raw = changed(
        (f"{APP}.requires", {"env": ["DATABASE_URL", "KOKORO_VOICE"], "secretEnv": ["JWT_SECRET"]}),
        (f"{APP}.env.DATABASE_URL", ""),
    )
    message = rejected(
        raw, f"{APP}.requires", "not set: env.DATABASE_URL, env.KOKORO_VOICE, secretEnv.JWT_SECRET"
    )
    assert message == (
        "gpu-deploy:services.app.requires: not set: env.DATABASE_URL, env.KOKORO_VOICE, secretEnv.JWT_SECRET; "
        "set them: pulumi config set --path 'services.app.env.DATABASE_URL' VALUE; "
        "pulumi config set --path 'services.app.env.KOKORO_VOICE' VALUE; "
        "pulumi config set --secret --path 'services.app.secretEnv.JWT_SECRET' VALUE"
    )


def test_requires_is_met_by_set_values_cpu_env_and_disabled_services() -> None:
    validate(
        changed(
            (f"{APP}.requires", {"env": ["NODE_ENV"], "secretEnv": ["JWT"]}),
            (f"{APP}.secretEnv", {"JWT": "x"}),
        )
    )
    validate(
        changed(
            (f"{APP}.requires", {"env": ["KOKORO_DEVICE"]}),
            (f"{APP}.runOn", "cpu"),
            (f"{APP}.cpuEnv", {"KOKORO_DEVICE": "cpu"}),
        )
    )
    validate(changed(("services.admin.requires", {"secretEnv": ["ADMIN_TOKEN"]})))  # disabled: not deployed
    rejected(
        changed((f"{APP}.requires", {"env": ["lower case"]})),
        f"{APP}.requires.env.0",
        "an environment variable name",
    )
    rejected(changed((f"{APP}.requires", {"files": ["x"]})), f"{APP}.requires.files", "")


def test_prod_requires_what_the_write_up_verifies(tmp_path: Path) -> None:
    def drop(config: dict[str, Any]) -> None:
        del config["gpu-deploy:services"]["app"]["env"]["DATABASE_URL"]

    with pytest.raises(Exception, match=r"services\.app\.requires: not set: env\.DATABASE_URL"):
        plan_with(tmp_path, "prod", drop)


# ---------------------------------------------------------------- compose's keys
@pytest.mark.parametrize(
    ("value", "planned"), [("1.5", "1.5"), (2, "2.0"), (1.25, "1.25"), ("0.5", "0.5"), (10, "10.")]
)
def test_cpus_is_planned_as_the_provider_reads_it_back(value: Any, planned: str) -> None:
    assert validate(changed((f"{APP}.cpus", value))).services["app"].cpus == planned


def test_go_cpus_text_matches_the_provider() -> None:
    # terraform-provider-docker v4.5.0 helpers.go nanoInt64ToDecimalString, worked by hand
    assert [go_cpus_text(n) for n in (10**9, 15 * 10**8, 10**10, 12 * 10**9, 25 * 10**7, 10**7)] == [
        "1.0", "1.5", "10.", "12.0", "0.25", "0.0",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("cpus", "two", 'expected a number of CPUs such as "1.5" or 2, got "two"'),
        ("cpus", 0, "expected between 0.01 and 1024 CPUs, got 0"),
        ("cpus", "-1", 'expected a number of CPUs such as "1.5" or 2, got "-1"'),
        ("cpus", 4096, "expected between 0.01 and 1024 CPUs, got 4096"),
        ("cpus", "1.0000000001", "at most 9 decimal places (Docker counts nano-CPUs), got 1.0000000001"),
        (
            "cpus",
            "0.01",
            "terraform-provider-docker reads 0.01 back as 0.0 and would replace the container on every "
            "update: use a value with another last digit",
        ),
        ("ulimits.memlok", -1, "not a ulimit Docker sets (one of core, cpu, data,"),
        ("ulimits.memlock", -2, "expected -1 (unlimited) or 0 to 4611686018427387904, got -2"),
        (
            "ulimits.nofile",
            {"soft": 2048, "hard": 1024},
            "the soft limit (2048) is above the hard limit (1024)",
        ),
        ("ulimits.nofile", {"soft": -1, "hard": 1024}, "the soft limit (-1) is above the hard limit (1024)"),
        ("ulimits.stack", "64m", "expected whole numbers (-1: unlimited)"),
        ("ulimits.stack", {"soft": 1}, "expected a number (-1: unlimited) or {soft, hard}"),
        ("ipc", "container:db", 'expected one of "private", "shareable", "host", "none", got "container:db"'),
        ("entrypoint", [], "an empty entrypoint keeps the image's: remove the key, or name the program"),
    ],
)
def test_compose_key_errors(key: str, value: Any, message: str) -> None:
    rejected(changed((f"{APP}.{key}", value)), f"{APP}.{key}", message)


def test_ipc_without_its_own_shm_refuses_shm_size() -> None:
    rejected(
        changed((f"{APP}.ipc", "host")),
        f"{APP}.shmSize",
        "sizes the container's own /dev/shm; with ipc: host it has the host's /dev/shm",
    )
    rejected(
        changed((f"{APP}.ipc", "none")),
        f"{APP}.shmSize",
        "sizes the container's own /dev/shm; with ipc: none it has no /dev/shm at all",
    )
    validate(changed((f"{APP}.ipc", "shareable")))


def _compose(config: dict[str, Any]) -> None:
    app = config["gpu-deploy:services"]["app"]
    app.update(
        entrypoint="/usr/bin/tini -g --",
        cpus="1.5",
        ulimits={"memlock": -1, "stack": 67108864, "nofile": {"soft": 1024, "hard": 4096}},
        ipc="shareable",
    )


def test_planned_container_inputs(tmp_path: Path) -> None:
    app = containers(plan_with(tmp_path, "prod", _compose))["app"].inputs
    assert app["entrypoints"] == ["/usr/bin/tini", "-g", "--"]
    assert app["cpus"] == "1.5"
    assert app["ipcMode"] == "shareable"
    assert app["ulimits"] == [
        {"name": "memlock", "soft": -1, "hard": -1},
        {"name": "nofile", "soft": 1024, "hard": 4096},
        {"name": "stack", "soft": 67108864, "hard": 67108864},
    ]


def test_shipped_h100_uses_nvidias_ulimits_and_a_cpu_limit(shipped_plan: ShippedPlan) -> None:
    planned = containers(shipped_plan("h100"))
    assert planned["vision"].inputs["ulimits"] == [
        {"name": "memlock", "soft": -1, "hard": -1},
        {"name": "stack", "soft": 67108864, "hard": 67108864},
    ]
    assert planned["celery"].inputs["cpus"] == "4.0"
    unset = planned["redis"].inputs
    assert "cpus" not in unset and "ipcMode" not in unset and not unset.get("ulimits")


def test_docker_keys_are_refused_on_kubernetes(tmp_path: Path) -> None:
    raw = {
        k.removeprefix("gpu-deploy:"): v for k, v in stack_config("a2").items() if k.startswith("gpu-deploy:")
    }
    name = next(iter(raw["services"]))
    raw["services"][name]["cpus"] = 2
    rejected(raw, f"services.{name}.cpus", "a docker setting; target.kind is kubernetes")
