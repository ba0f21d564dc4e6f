"""Every real card of the fake NVML plans through the real program, under `auto` and by name, with the
build arguments its profile derives; a card no supported CUDA serves is refused naming the reason.

The `dev` stack builds the reference image (images/cuda-python) on the local engine, so its image's build
arguments are what a card gets. `auto` runs the real preflight in a subprocess against the fake NVML.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from components.core.catalog import PROFILES, GpuProfile
from stacks.plan import PROJECT_DIR, Plan, make_plan
from tests.fake_nvml import cards
from tests.plans import IMAGE, plan_with
from tests.probe import FAKE_NVML


def on_this_machine(monkeypatch: pytest.MonkeyPatch, card: dict[str, Any]) -> None:
    monkeypatch.setenv("PYTHONPATH", str(FAKE_NVML))
    monkeypatch.setenv("FAKE_NVML_JSON", json.dumps(cards.machine(card)))


def build_args(plan: Plan) -> dict[str, str]:
    (image,) = plan.by_type(IMAGE)
    args: dict[str, str] = image.inputs["build"]["args"]
    return args


def assert_built_for(plan: Plan, profile: GpuProfile) -> None:
    args = build_args(plan)
    assert args["GPU_PROFILE"] == profile.key
    assert args["BASE_IMAGE"] == profile.base_image
    assert args["TORCH_INDEX_URL"] == profile.wheel_index
    assert args["TORCH_CUDA_ARCH_LIST"] == profile.cuda_arch_list
    assert args["CUDA_VERSION"] == profile.cuda_version


@pytest.mark.parametrize(("key", "card"), cards.NAMED, ids=lambda v: v if isinstance(v, str) else v["name"])
def test_a_card_plans_under_auto(monkeypatch: pytest.MonkeyPatch, key: str, card: dict[str, Any]) -> None:
    on_this_machine(monkeypatch, card)
    plan = make_plan("dev")
    assert plan.outputs["profile"] == key
    assert_built_for(plan, PROFILES[key])


@pytest.mark.parametrize("key", sorted({key for key, _ in cards.NAMED}))
def test_a_card_plans_by_name(tmp_path: Path, key: str) -> None:
    plan = plan_with(tmp_path, "dev", lambda config: config.update({"gpu-deploy:profile": key}))
    assert plan.outputs["profile"] == key
    assert_built_for(plan, PROFILES[key])


def test_a_card_outside_the_catalog_is_derived_under_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    on_this_machine(monkeypatch, cards.RTX_5090)
    plan = make_plan("dev")
    key = plan.outputs["profile"]
    assert key not in PROFILES  # derived, named after the card
    args = build_args(plan)
    assert args["GPU_PROFILE"] == key
    assert args["TORCH_CUDA_ARCH_LIST"] == "12.0"
    major, minor = (int(p) for p in args["CUDA_VERSION"].split(".")[:2])
    assert (major, minor) >= (12, 8), "Blackwell needs CUDA 12.8 or newer"


@pytest.mark.parametrize("card", [cards.K80], ids=lambda c: c["name"])
def test_a_card_no_supported_cuda_serves_is_refused_naming_why(
    monkeypatch: pytest.MonkeyPatch, card: dict[str, Any]
) -> None:
    on_this_machine(monkeypatch, card)
    result = subprocess.run(
        [sys.executable, "-m", "stacks", "plan", "dev"],
        capture_output=True,
        text=True,
        cwd=PROJECT_DIR,
        check=False,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("gpu-deploy:profile: auto: found Tesla K80: ")
    assert "Kepler" in line
    assert "not in the profile catalog" not in line
