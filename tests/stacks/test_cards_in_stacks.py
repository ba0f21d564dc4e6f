"""A stack's own cards (`gpu-deploy:cards.<key>`) and build arguments per image, planned through the real
program: a GPU image and a CPU image of one stack get different build args, a team's version matrix shows
in the plan and is checked against the card, a stack card plans on both targets with the args its
architecture gives, and every mistake is one line naming the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from components.core.catalog import CPU_PROFILE, PROFILES, profile_for_gpu
from components.docker.image import BuildRecipe, release_tag
from stacks.config import ConfigError, resolve_profile, validate
from stacks.config.builds import ImageBuild
from stacks.config.sections import CudaOverrides
from stacks.docker_args import declared_args, image_build_args
from stacks.plan import Plan
from tests.plans import IMAGE, REMOTE_COMMAND, plan_with, stack_config

NS = "gpu-deploy:"
CUDA_ARGS = ("BASE_IMAGE", "TORCH_INDEX_URL", "TORCH_CUDA_ARCH_LIST", "CUDA_VERSION")


def build_args(plan: Plan, resource: str) -> dict[str, str]:
    return dict(plan.named(IMAGE, resource).inputs["build"]["args"])


def preflight_line(plan: Plan) -> str:
    return str(plan.named(REMOTE_COMMAND, "gpu-host-preflight").inputs["create"])


def whole(config: dict[str, Any]) -> dict[str, Any]:
    """The gpu-deploy keys of a stack file, without the namespace (what validate() reads)."""
    return {k.removeprefix(NS): v for k, v in config.items() if k.startswith(NS)}


def config_error(raw: dict[str, Any], key: str, fragment: str) -> str:
    with pytest.raises(ConfigError) as info:
        resolve_profile(validate(raw), None)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{NS}{key}: "), message
    assert fragment in message, message
    return message


def h100_with(**cards: dict[str, Any]) -> dict[str, Any]:
    raw = whole(stack_config("h100"))
    raw["cards"] = {**raw.get("cards", {}), **cards}
    return raw


# ---------------------------------------------------------------- build args per image
def test_the_gpu_image_and_the_cpu_image_of_one_stack_get_different_args(tmp_path: Path) -> None:
    """h100: the vision service runs on the GPU, the queue worker and Celery (own context) do not."""
    plan = plan_with(tmp_path, "h100", lambda config: None)
    vision, worker = build_args(plan, "image-build"), build_args(plan, "image-queue-worker-build")
    card = PROFILES["h100"]
    assert vision["BASE_IMAGE"] == card.base_image
    assert vision["TORCH_CUDA_ARCH_LIST"] == card.cuda_arch_list
    assert worker == CPU_PROFILE.build_args(1001)
    assert not worker["BASE_IMAGE"].startswith("nvidia/cuda")
    assert worker["TORCH_INDEX_URL"].endswith("/cpu")
    # one release tag for both images: a rollback pins one value
    tags = {str(r.inputs["imageName"]).rsplit(":", 1)[1] for r in plan.by_type(IMAGE)}
    assert len(tags) == 1


def test_a_cpu_image_gets_gpu_args_once_a_service_runs_it_on_the_gpu(tmp_path: Path) -> None:
    def celery_on_gpu(config: dict[str, Any]) -> None:
        config[f"{NS}services"]["celery"]["gpu"] = 1
        config[f"{NS}services"]["celery"]["gpuMemory"] = "2GiB"  # beside vision's 12 GiB on the 16 GB card

    plan = plan_with(tmp_path, "h100", celery_on_gpu)
    worker = build_args(plan, "image-queue-worker-build")
    assert worker["BASE_IMAGE"].startswith("nvidia/cuda:")
    assert worker["TORCH_CUDA_ARCH_LIST"] == "9.0"


def test_another_stage_of_a_gpu_dockerfile_keeps_the_gpu_args(tmp_path: Path) -> None:
    """prod: the migrate job (gpu none) runs the `deps` stage of the app's Dockerfile, one build graph."""
    plan = plan_with(tmp_path, "prod", lambda config: None)
    assert build_args(plan, "image-deps-build") == build_args(plan, "image-build")


def test_the_team_matrix_shows_in_the_plan_and_is_checked(tmp_path: Path) -> None:
    plan = plan_with(tmp_path, "h100", lambda config: None)
    vision = build_args(plan, "image-build")
    own = stack_config("h100")[f"{NS}services"]["vision"]["build"]["args"]
    for name, value in own.items():
        assert vision[name] == str(value)
    assert vision["TORCH_INDEX_URL"] != PROFILES["h100"].wheel_index  # the team's, not the card's


@pytest.mark.parametrize(
    ("args", "key", "fragment"),
    [
        ({"TORCH_INDEX_URL": "https://download.pytorch.org/whl/cu999"}, "TORCH_INDEX_URL", "unknown PyTorch"),
        ({"CUDA_VERSION": "13.0.0"}, "CUDA_VERSION", "CUDA 13.0"),
        ({"TORCH_CUDA_ARCH_LIST": "8.0;8.6"}, "TORCH_CUDA_ARCH_LIST", "holds no code"),
        (
            {"BASE_IMAGE": "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04", "CUDA_VERSION": "12.6.3"},
            "BASE_IMAGE",
            "says",
        ),
    ],
)
def test_a_matrix_the_card_cannot_run_is_refused(args: dict[str, str], key: str, fragment: str) -> None:
    raw = whole(stack_config("prod"))  # a P40: Pascal, CUDA 12.x only, no cu128+ kernels
    raw["services"]["app"]["build"] = {"args": args}
    config_error(raw, f"services.app.build.args.{key}", fragment)


def test_a_p40_matrix_on_wheels_without_its_kernels_is_refused() -> None:
    raw = whole(stack_config("prod"))
    raw["services"]["app"]["build"] = {"args": {"TORCH_INDEX_URL": "https://download.pytorch.org/whl/cu129"}}
    config_error(raw, "services.app.build.args.TORCH_INDEX_URL", "sm_61")


def test_services_of_one_image_must_ask_for_the_same_args() -> None:
    raw = whole(stack_config("h100"))
    raw["services"]["celery"]["build"]["args"] = {"PYTHON_VERSION": "3.12"}
    config_error(raw, "services.celery.build.args", "queue-worker")


def test_only_the_args_a_dockerfile_declares_are_sent(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "# escape=\\\nARG BASE_IMAGE=python:3.11\nFROM ${BASE_IMAGE} AS base\n"
        "# ARG COMMENTED\narg PYTHON_VERSION=3.11 \\\n    EXTRA=1\nRUN echo hi\n"
    )
    recipe = BuildRecipe(str(tmp_path), "Dockerfile", None)
    assert declared_args(recipe) == frozenset({"BASE_IMAGE", "PYTHON_VERSION", "EXTRA"})
    build = ImageBuild(str(tmp_path), "Dockerfile", None, ("app",), True, {"TEAM": "x"}, {})
    sent = image_build_args(PROFILES["h100"].build_args(1001), build, declared_args(recipe))
    assert set(sent) == {"BASE_IMAGE", "PYTHON_VERSION", "TEAM"}
    assert declared_args(BuildRecipe(str(tmp_path / "absent"), "Dockerfile", None)) is None


def test_the_reference_dockerfile_declares_every_profile_arg() -> None:
    recipe = BuildRecipe("images", "cuda-python/Dockerfile", "gpu-probe")
    assert declared_args(recipe) == frozenset(PROFILES["cpu"].build_args())


def test_the_release_tag_is_unchanged_when_every_image_takes_the_stack_args(tmp_path: Path) -> None:
    recipes = [
        BuildRecipe(str(tmp_path / "a"), "Dockerfile", None),
        BuildRecipe(str(tmp_path / "b"), "D", None),
    ]
    args = PROFILES["h100"].build_args()
    same = release_tag(profile="h100", recipes=recipes, build_args=args)
    assert (
        release_tag(profile="h100", recipes=recipes, build_args=args, image_args=dict.fromkeys(recipes, args))
        == same
    )
    cpu = {recipes[1]: CPU_PROFILE.build_args()}
    assert release_tag(profile="h100", recipes=recipes, build_args=args, image_args=cpu) != same


# ---------------------------------------------------------------- a stack's own card
def test_the_write_ups_16gb_h100_is_a_card_of_the_stack(tmp_path: Path) -> None:
    """h100: the write-up's "H100 16GB" (a 16 GB vGPU) as a card based on the H100."""
    plan = plan_with(tmp_path, "h100", lambda config: None)
    own = stack_config("h100")[f"{NS}cards"][stack_config("h100")[f"{NS}profile"]]
    assert own["base"] == "h100" and own["memoryMib"] < PROFILES["h100"].memory_mib
    vision = build_args(plan, "image-build")
    assert vision["TORCH_CUDA_ARCH_LIST"] == PROFILES["h100"].cuda_arch_list
    assert vision["BASE_IMAGE"] == PROFILES["h100"].base_image
    line = preflight_line(plan)
    card = json.loads(line.split("--card ", 1)[1].split(" --", 1)[0].strip("'"))
    assert card["memory_mib"] == own["memoryMib"] and card["mig_capable"] is False
    assert card["compute_capability"] == list(PROFILES["h100"].compute_capability or ())


def test_a_16gb_h100_slice_plans_in_another_stack_with_the_h100_args(tmp_path: Path) -> None:
    def slice_of_h100(config: dict[str, Any]) -> None:
        config[f"{NS}cards"] = {"h100-16gb": {"base": "h100", "memoryMib": 16384}}
        config[f"{NS}profile"] = "h100-16gb"
        config.pop(f"{NS}cuda")

    plan = plan_with(tmp_path, "prod", slice_of_h100)
    args = build_args(plan, "image-build")
    h100 = PROFILES["h100"]
    assert {k: args[k] for k in CUDA_ARGS} == {k: h100.build_args()[k] for k in CUDA_ARGS}
    assert args["GPU_PROFILE"] == "h100-16gb"
    assert "--card" in preflight_line(plan) and "--profile" not in preflight_line(plan)


def test_a_card_the_catalog_lacks_plans_on_docker(tmp_path: Path) -> None:
    def l20(config: dict[str, Any]) -> None:
        config[f"{NS}cards"] = {
            "l20": {"nvmlNames": ["NVIDIA L20"], "computeCapability": "8.9", "memoryMib": 46068}
        }
        config[f"{NS}profile"] = "l20"
        config.pop(f"{NS}cuda")

    plan = plan_with(tmp_path, "prod", l20)
    expected = profile_for_gpu("NVIDIA L20", 46068, (8, 9), False)  # what `auto` would derive
    args = build_args(plan, "image-build")
    assert {k: args[k] for k in CUDA_ARGS} == {k: expected.build_args()[k] for k in CUDA_ARGS}
    assert args["TORCH_CUDA_ARCH_LIST"] == "8.9"


def test_a_card_of_the_stack_plans_on_kubernetes(tmp_path: Path) -> None:
    def l20(config: dict[str, Any]) -> None:
        config[f"{NS}cards"] = {
            "l20": {
                "nvmlNames": "NVIDIA L20",
                "computeCapability": "8.9",
                "memoryMib": 46068,
                "kubernetesSharing": "time-slicing",
            }
        }
        config[f"{NS}profile"] = "l20"

    plan = plan_with(tmp_path, "a2", l20)
    text = json.dumps(plan.as_json())
    check = next(r for r in plan.resources if r.name.startswith("gpu-check-l20"))
    derived = profile_for_gpu("NVIDIA L20", 46068, (8, 9), False)  # the catalog's one derivation
    assert derived.base_image in json.dumps(check.inputs)
    assert "NVIDIA-L20" in text and "NVIDIA-A2" not in text


@pytest.mark.parametrize(
    ("card", "key", "fragment"),
    [
        ({"base": "h100", "memoryMib": 163840}, "cards.x.memoryMib", "at most"),
        ({"base": "h100", "memoryMib": 100}, "cards.x.memoryMib", "512"),
        ({"base": "v100"}, "cards.x.base", "expected a named card"),
        ({"base": "h100", "computeCapability": "8.0"}, "cards.x.computeCapability", "9.0"),
        ({"nvmlNames": ["X"], "memoryMib": 8192}, "cards.x.computeCapability", "required"),
        ({"computeCapability": "8.9", "memoryMib": 8192}, "cards.x.nvmlNames", "required"),
        ({"nvmlNames": ["X"], "computeCapability": "8.9"}, "cards.x.memoryMib", "required"),
        (
            {"nvmlNames": ["X"], "computeCapability": "eight", "memoryMib": 8192},
            "cards.x.computeCapability",
            "8.9",
        ),
        (
            {"nvmlNames": ["Tesla K80"], "computeCapability": "3.7", "memoryMib": 11441},
            "cards.x.computeCapability",
            "3.7",
        ),
        (
            {"nvmlNames": ["X"], "computeCapability": "7.5", "memoryMib": 8192, "mig": True},
            "cards.x.mig",
            "8.0",
        ),
        ({"base": "a2", "mig": True}, "cards.x.mig", "no MIG"),
        ({"base": "h100", "bogus": 1}, "cards.x.bogus", "unknown key"),
        (
            {"base": "h100", "kubernetesSharing": "mig", "memoryMib": 16384},
            "cards.x.kubernetesSharing",
            "MIG",
        ),
    ],
)
def test_an_invalid_card_is_one_line_naming_the_key(card: dict[str, Any], key: str, fragment: str) -> None:
    config_error(h100_with(x=card), key, fragment)


def test_a_card_may_not_take_a_catalog_name() -> None:
    config_error(h100_with(h100={"base": "h100", "memoryMib": 16384}), "cards.h100", "catalog's own name")


def test_a_profile_naming_no_card_lists_the_stacks_cards() -> None:
    raw = h100_with()
    raw["profile"] = "h100-8c"
    message = config_error(raw, "profile", "h100-16c")
    assert "auto" in message


def test_auto_matches_a_stack_card_by_nvml_name_before_the_catalog() -> None:
    raw = whole(stack_config("edu-gpu"))
    raw["cards"] = {"h100-16gb": {"base": "h100", "nvmlNames": ["NVIDIA H100 PCIe"], "memoryMib": 16384}}
    config = validate(raw)
    report = {
        "gpus": [{"name": "NVIDIA H100 PCIe", "memory_mib": 16384, "compute_capability": "9.0", "mig": None}]
    }
    profile, _ = resolve_profile(config, report)
    assert profile is not None and profile.key == "h100-16gb" and profile.memory_mib == 16384
    other = {"gpus": [{"name": "NVIDIA A2", "memory_mib": 15356, "compute_capability": "8.6", "mig": None}]}
    named, _ = resolve_profile(config, other)
    assert named is not None and named.key == "a2"


def test_the_cuda_section_still_applies_to_a_stack_card() -> None:
    raw = h100_with()
    raw["cuda"] = {"version": "12.6.3", "wheelIndex": "cu126", "torchVersion": "2.7.1"}
    raw["services"]["vision"].pop("build")
    profile, _ = resolve_profile(validate(raw), None)
    assert profile is not None and profile.key == "h100-16c" and profile.cuda_version == "12.6.3"
    assert CudaOverrides().version is None
