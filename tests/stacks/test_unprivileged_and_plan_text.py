"""A deploy user without root (provision.privileges: unprivileged), and the plan as text that reads like
what will happen (stacks/plan_view.py): deploy order, whole words, what each resource will be."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from stacks.__main__ import main, render_tree
from stacks.config import ConfigError
from tests.plans import ShippedPlan, plan_with
from tests.stacks.test_config import changed, load, rejected

COMMAND = "command:remote:Command"
SCRIPTED = ("driver", "toolkit", "runtime")  # gpu-host steps whose settings are known in the plan


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "provision.driver",
            "install",
            'gpu-deploy:provision.driver: "install" needs root, and provision.privileges is unprivileged: use '
            '"verify" (an administrator installs the NVIDIA driver)',
        ),
        (
            "provision.toolkit",
            "install",
            'gpu-deploy:provision.toolkit: "install" needs root, and provision.privileges is unprivileged: use '
            '"verify" (an administrator installs the toolkit)',
        ),
        (
            "provision.runtime",
            "containerd",
            "gpu-deploy:provision.runtime: containerd needs root for its GPU check (ctr), and "
            "provision.privileges is unprivileged: only a Docker host can be deployed without root",
        ),
        (
            "provision.reboot",
            "if-needed",
            'gpu-deploy:provision.reboot: "if-needed" needs root, and provision.privileges is unprivileged: '
            'use "never"',
        ),
    ],
)
def test_unprivileged_refuses_what_needs_root(path: str, value: str, message: str) -> None:
    raw = changed(("provision.privileges", "unprivileged"), (path, value))
    key = path
    assert rejected(raw, key, "needs root") == message


def test_privileges_is_root_or_unprivileged() -> None:
    rejected(changed(("provision.privileges", "sudo")), "provision.privileges", "unprivileged")
    config, _, _ = load(changed(("provision.privileges", "unprivileged")))
    assert config.provision.privileges == "unprivileged"
    assert load(changed())[0].provision.privileges == "root"


def test_driver_hold_is_on_by_default_and_one_key_turns_it_off(tmp_path: Path) -> None:
    """provision.driverHold: the hint of the driver step (install-driver.sh) names it."""
    (tmp_path / "held").mkdir()
    (tmp_path / "free").mkdir()
    held = plan_with(tmp_path / "held", "prod", lambda config: None)
    assert "DRIVER_HOLD=yes" in held.named(COMMAND, "gpu-host-driver").inputs["create"]

    def off(config: dict[str, Any]) -> None:
        config.setdefault("gpu-deploy:provision", {})["driverHold"] = False

    free = plan_with(tmp_path / "free", "prod", off)
    assert "DRIVER_HOLD=no" in free.named(COMMAND, "gpu-host-driver").inputs["create"]
    rejected(changed(("provision.driverHold", "maybe")), "provision.driverHold", "bool")


# ---------------------------------------------------------------- the edu-gpu stack: without root
def test_edu_gpu_steps_run_unprivileged_verify_only_and_never_hold(shipped_plan: ShippedPlan) -> None:
    plan = shipped_plan("edu-gpu")
    for step in SCRIPTED:
        create = plan.named(COMMAND, f"gpu-host-{step}").inputs["create"]
        assert "PRIVILEGES=unprivileged" in create, create
        assert "install" not in create
    assert "DRIVER_HOLD=no" in plan.named(COMMAND, "gpu-host-driver").inputs["create"]
    assert "PRIVILEGES=unprivileged" in plan.named(COMMAND, "dirs-1001-1001-prepare").inputs["create"]
    [note] = [w for w in plan.warnings if w.startswith("left to an administrator")]
    for task in (
        "NVIDIA driver",
        "apt-mark hold",
        "Container Toolkit",
        "nvidia-ctk runtime configure",
        "r03i18",
    ):
        assert task in note


def test_stacks_with_root_keep_their_command_lines(shipped_plan: ShippedPlan) -> None:
    """The key's default changes nothing a deployed root stack runs (no replacement of its host steps)."""
    plan = shipped_plan("prod")
    for resource in plan.by_type(COMMAND):
        assert "PRIVILEGES" not in str(resource.inputs.get("create")), resource.name
    assert not [w for w in plan.warnings if "administrator" in w]


def test_the_plan_command_prints_what_is_left_to_an_administrator(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "edu-gpu"]) == 0
    out = capsys.readouterr().out
    assert "warning: left to an administrator (provision.privileges: unprivileged): " in out
    assert "Docker is never restarted (unprivileged: its nvidia runtime is only verified)" in out


# ---------------------------------------------------------------- the plan as text
def _tree(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("├", "└", "│", " "))]


def _top_level(text: str) -> list[str]:
    return [line.split()[2] for line in _tree(text) if line.startswith(("├─ ", "└─ "))]


def test_the_tree_is_in_deploy_order(shipped_plan: ShippedPlan) -> None:
    names = _top_level(render_tree(shipped_plan("h100")))
    order = [
        "runners",
        "gpu-host",
        "host",
        "dirs-999-999",
        "image",
        "proxy",
        "redis",
        "vision",
        "smoke-vision",
    ]
    assert [n for n in names if n in order] == order
    steps = re.findall(r"Command (gpu-host-\w+)", render_tree(shipped_plan("h100")))
    assert steps == [f"gpu-host-{s}" for s in ("driver", "preflight", "toolkit", "runtime", "verify")]


def test_the_tree_is_the_same_on_every_run(shipped_plan: ShippedPlan) -> None:
    from stacks.plan import make_plan

    assert render_tree(make_plan("h100")) == render_tree(shipped_plan("h100"))


@pytest.mark.parametrize("stack", ["prod", "a4000", "edu-gpu", "h100", "dev"])
def test_command_lines_are_never_cut_mid_word(stack: str, shipped_plan: ShippedPlan) -> None:
    plan = shipped_plan(stack)
    text = render_tree(plan)
    for resource in plan.by_type(COMMAND):
        [line] = [line for line in text.splitlines() if f"{COMMAND} {resource.name}  " in line]
        shown = line.split(f"{resource.name}  ", 1)[1]
        assert shown.startswith(("script=", "run-verified: ", "run=", "run (settings known at deploy)")), (
            shown
        )
        create = str(resource.inputs.get("create"))
        for word in re.findall(r"\b([A-Z_]+)=", shown):
            assert f"{word}=" in create  # every setting shown is one the command line has, whole
        if shown.startswith("script=") and "settings known at deploy" not in shown:
            keys = re.findall(r"(?:^env | )([A-Z_][A-Z0-9_]*)=", create.split(" bash -", 1)[0])
            assert keys == re.findall(r" ([A-Z_][A-Z0-9_]*)=", shown)  # all of them, in order


def test_gpu_host_line_says_the_driver_and_when_docker_restarts(shipped_plan: ShippedPlan) -> None:
    [line] = [line for line in render_tree(shipped_plan("prod")).splitlines() if "GpuHost gpu-host" in line]
    plan = shipped_plan("prod")
    profile_driver = re.search(r"driver: (\d+\.\d+(\.\d+)?) or newer", line)
    assert profile_driver, line
    assert "Docker is restarted only if /etc/docker/daemon.json changes" in line
    assert plan.named("gpu-deploy:host:GpuHost", "gpu-host").inputs == {}  # --json unchanged: no new inputs


def test_kubernetes_lines_show_image_gpu_and_memory(shipped_plan: ShippedPlan) -> None:
    text = render_tree(shipped_plan("a2")).splitlines()
    [kokoro] = [line for line in text if "apps/v1:Deployment kokoro " in line]
    assert "image=ghcr.io/remsky/kokoro-fastapi-gpu:v0.2.4" in kokoro
    assert "gpu=nvidia.com/gpu:1" in kokoro and re.search(r"memory=\d+Mi", kokoro)
    [fallback] = [line for line in text if "apps/v1:Deployment kokoro-cpu " in line]
    assert "gpu=none" in fallback and "replicas=0" in fallback


def test_a_device_list_known_at_deploy_is_said_so(shipped_plan: ShippedPlan) -> None:
    text = render_tree(shipped_plan("edu-gpu"))
    assert "gpu=devices:(placed from the host's preflight)" in text
    assert "[,u,n,k" not in text


# ---------------------------------------------------------------- hints the program accepts
def test_the_capacity_hint_names_values_config_accepts(tmp_path: Path) -> None:
    def over(config: dict[str, Any]) -> None:
        config["gpu-deploy:services"]["kokoro"]["gpu"] = 2

    with pytest.raises(Exception, match="runOn: cpu where it has a CPU fallback, else gpu: none") as info:
        plan_with(tmp_path, "a2", over)
    assert "gpu 0" not in str(info.value)

    def without_gpu(config: dict[str, Any]) -> None:
        config["gpu-deploy:services"]["kokoro"]["gpu"] = "none"
        for key in ("gpuMemory", "cpuFallback", "cpuImage", "cpuEnv"):  # a GPU service's keys
            config["gpu-deploy:services"]["kokoro"].pop(key, None)

    plan_with(tmp_path, "a2", without_gpu)  # the hint's own value: accepted

    def on_cpu(config: dict[str, Any]) -> None:
        config["gpu-deploy:services"]["kokoro"]["runOn"] = "cpu"

    plan_with(tmp_path, "a2", on_cpu)


def test_the_no_gpu_hint_names_a_value_config_accepts() -> None:
    with pytest.raises(ConfigError) as info:
        load(changed(("profile", "cpu")))
    assert "gpu 0" not in str(info.value) and "gpu: none" in str(info.value)
