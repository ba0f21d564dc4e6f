"""Each shipped stack's plan says how each service rolls, its stack file says the same in its comments, and the
offline diff of a rollback (a pinned image.tag) says which containers roll with zero downtime and which stop
first, with the interruption to expect.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.core.gpu_memory import STOP_FIRST, ZERO_DOWNTIME
from stacks.__main__ import render_tree
from stacks.diff import diff_plans, render_text
from stacks.plan import PROJECT_DIR, make_plan
from stacks.rollout_view import rollouts
from tests.fake_nvml import cards
from tests.plans import CONTAINER, ShippedPlan, plan_with, stack_config
from tests.probe import FAKE_NVML

NS = "gpu-deploy:"
STACKS = ["prod", "a4000", "edu-gpu", "h100", "dev", "a2"]
DOCKER_STACKS = [s for s in STACKS if s != "a2"]

# How each shipped service rolls, and why (the budgets and comments in Pulumi.*.yaml say the same).
EXPECTED: dict[str, dict[str, str]] = {
    "prod": {"app": ZERO_DOWNTIME},  # 3 GiB on a 22919 MiB P40: two copies fit
    "a4000": {"backend": ZERO_DOWNTIME},  # 6 GiB on a 16376 MiB A4000: two copies fit
    "edu-gpu": {"asr-api": STOP_FIRST, "frontend": ZERO_DOWNTIME},  # auto: the card is known only at deploy
    "h100": {  # 12 GiB vision on a 16384 MiB slice: no room for two
        "redis": STOP_FIRST,  # a command health check, no HTTP
        "vision": STOP_FIRST,
        "queue-worker": ZERO_DOWNTIME,
        "celery": STOP_FIRST,  # no health check, no ports
    },
    "dev": {"probe": ZERO_DOWNTIME},  # auto on this machine: no GPU here (a card of 4 GiB+: room for two)
    "a2": {"kokoro": STOP_FIRST, "faster-whisper": STOP_FIRST},  # both time-slices in use: no surge pod
}


def seconds(text: str) -> int:
    value, unit = re.fullmatch(r"(\d+)([smh])", text).groups()  # type: ignore[union-attr]
    return int(value) * {"s": 1, "m": 60, "h": 3600}[unit]


def services(stack: str) -> dict[str, dict[str, Any]]:
    return dict(stack_config(stack)[f"{NS}services"])


def long_running(stack: str) -> list[str]:
    return [n for n, s in services(stack).items() if s.get("enabled", True) and not s.get("oneShot")]


@pytest.mark.parametrize("stack", STACKS)
def test_every_shipped_plan_says_how_each_service_rolls(shipped_plan: ShippedPlan, stack: str) -> None:
    plan = shipped_plan(stack)
    found = rollouts(plan.outputs)
    assert found is not None, f"{stack}: no rollout output"
    assert sorted(found) == sorted(long_running(stack))
    assert list(found) == [s for s in plan.outputs["startOrder"] if s in found], "in start order"
    assert {name: r.mode for name, r in found.items()} == EXPECTED[stack]
    for name, entry in found.items():
        assert entry.why, f"{stack}.{name}: a rollout says why"
        health = services(stack)[name].get("healthcheck") or {}
        if entry.mode == ZERO_DOWNTIME:
            assert entry.interruption_s == 0
        elif "startPeriod" in health:
            assert entry.interruption_s == seconds(health["startPeriod"]), f"{stack}.{name}"
    text = render_tree(plan).splitlines()
    section = text[text.index("rollout:") + 1 : text.index("rollout:") + 1 + len(found)]
    assert [line.split()[0] for line in section] == list(found)
    for line, entry in zip(section, found.values(), strict=True):
        assert line.split()[1].rstrip(",") == entry.mode
        assert line.endswith(f"({entry.why})")
    assert not any(line.startswith("  rollout: ") for line in text), "shown once, as its own section"


def test_the_h100_vision_service_stops_first_for_its_ten_minute_start(shipped_plan: ShippedPlan) -> None:
    text = render_tree(shipped_plan("h100"))
    (vision,) = [line for line in text.splitlines() if line.startswith("  vision ")]
    assert "stop-first, ~600 s (10 min) interruption" in vision
    assert "16384" in vision, vision  # the card's memory is named


def stack_file_block(stack: str, service: str) -> str:
    """The text of Pulumi.<stack>.yaml from the service's key to the next service's, comments included, as
    one line (comment markers and line breaks made single spaces)."""
    lines = (PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text().splitlines()
    start = lines.index(f"    {service}:")
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(r"    [\w-]+:", lines[i])),
        len(lines),
    )
    return " ".join(re.sub(r"^\s*#?\s*", "", line) for line in lines[start:end])


@pytest.mark.parametrize("stack", STACKS)
def test_each_stack_file_says_how_its_services_roll_and_where_budgets_come_from(
    shipped_plan: ShippedPlan, stack: str
) -> None:
    found = rollouts(shipped_plan(stack).outputs) or {}
    for name, entry in found.items():
        block = stack_file_block(stack, name)
        other = STOP_FIRST if entry.mode == ZERO_DOWNTIME else ZERO_DOWNTIME
        assert f"rolls {entry.mode}" in block, f"{stack}.{name}: the comment names its rollout"
        assert f"rolls {other}" not in block, f"{stack}.{name}: the comment contradicts the plan"
        config = services(stack)[name]
        if config.get("gpu", "none") != "none":
            assert "gpuMemory" in config, f"{stack}.{name}: a GPU service has a budget"
            assert "nvidia-smi" in block, f"{stack}.{name}: the budget says how to check it"


# ---------------------------------------------------------------- dev: the card of this machine
def test_dev_on_this_machine_without_a_gpu_rolls_the_probe_with_zero_downtime(
    shipped_plan: ShippedPlan,
) -> None:
    """The dev stack is `auto` on `host: local`: the plan reads this machine's card. Here there is none, so
    the probe runs on the CPU and rolls with zero downtime because it has no GPU (not because two copies
    fit a card): no device request, no memory gate, the proxy owning 127.0.0.1:8080."""
    plan = shipped_plan("dev")
    assert plan.outputs["profile"] == "cpu", "the shared plans are made on a machine without a GPU"
    assert plan.outputs["rollout"] == {
        "probe": {
            "mode": ZERO_DOWNTIME,
            "why": "no GPU: the new copy starts beside the old one",
            "interruptionS": 0,
        }
    }
    by_name = {r.name: r for r in plan.resources if r.type == CONTAINER}
    probe, proxy = by_name["probe"], by_name["proxy"]
    assert (
        not probe.inputs.get("deviceRequests") and "name" not in probe.inputs and probe.inputs["ports"] == []
    )
    assert proxy.inputs["ports"] == [
        {"internal": 8080, "external": 8080, "ip": "127.0.0.1", "protocol": "tcp"}
    ]
    names = {r.name for r in plan.resources}
    assert not names & {"probe-gpu-memory", "probe-handover"}, "no GPU and no stop: nothing before the copy"


@pytest.mark.parametrize(
    ("card", "mode", "why", "interruption"),
    [
        (
            {"name": "NVIDIA RTX A4000", "memory_mib": 16376, "cc": [8, 6], "mig": None},
            ZERO_DOWNTIME,
            "room for two copies: GPU 0 (16376 MiB) holds 2048 MiB x 2 + 0 MiB of others",
            0,
        ),
        (
            {"name": "NVIDIA T400 4GB", "memory_mib": 3911, "cc": [7, 5], "mig": None},
            STOP_FIRST,
            "no room for two copies: GPU 0 (3911 MiB) cannot hold 2048 MiB x 2 + 0 MiB of others = 4096 MiB",
            20,
        ),
    ],
)
def test_dev_on_a_machine_with_a_card_rolls_by_its_memory(
    monkeypatch: pytest.MonkeyPatch, card: dict[str, Any], mode: str, why: str, interruption: int
) -> None:
    """What the stack file's comment says for other machines: two 2 GiB copies fit a card of 4 GiB or
    more; under that the probe stops first, ~20 s (its start period). Made here (the fake NVML in the
    preflight the plan runs), not shared: it depends on the environment."""
    monkeypatch.setenv("PYTHONPATH", str(FAKE_NVML))
    monkeypatch.setenv("FAKE_NVML_JSON", json.dumps(cards.machine(card)))
    plan = make_plan("dev")
    assert plan.outputs["rollout"] == {"probe": {"mode": mode, "why": why, "interruptionS": interruption}}
    names = {r.name for r in plan.resources}
    assert "probe-gpu-memory" in names
    assert ("proxy" in names) is (mode == ZERO_DOWNTIME)


# ---------------------------------------------------------------- the diff of a rollback
def pin(tag: str) -> Any:
    def edit(config: dict[str, Any]) -> None:
        config[f"{NS}image"]["tag"] = tag

    return edit


def test_a_rollback_of_prod_rolls_the_app_with_zero_downtime(
    tmp_path: Path, shipped_plan: ShippedPlan
) -> None:
    after = plan_with(tmp_path, "prod", pin("p40-0123456789ab"))
    diff = diff_plans(shipped_plan("prod").as_json(), after.as_json(), "prod")
    assert [(r.service, r.type, r.mode, r.interruption_s) for r in diff.rollout] == [
        ("app", CONTAINER, ZERO_DOWNTIME, 0)
    ]
    assert "- rollout: app rolls with zero downtime: " in render_text(diff)


def test_a_rollback_of_h100_says_which_stop_first_and_for_how_long(
    tmp_path: Path, shipped_plan: ShippedPlan
) -> None:
    after = plan_with(tmp_path, "h100", pin("h100-0123456789ab"))
    diff = diff_plans(shipped_plan("h100").as_json(), after.as_json(), "h100")
    rolled = {r.service: (r.mode, r.interruption_s) for r in diff.rollout}
    # redis runs a pinned third-party image: a rollback leaves it alone
    assert rolled == {
        "vision": (STOP_FIRST, 600),
        "queue-worker": (ZERO_DOWNTIME, 0),
        "celery": (STOP_FIRST, 0),
    }
    assert [r.service for r in diff.rollout] == ["vision", "queue-worker", "celery"], "start order"
    lines = [line for line in render_text(diff).splitlines() if line.startswith("- rollout: ")]
    assert lines[0].startswith(
        "- rollout: vision stops first, ~600 s (10 min) interruption (the health check's start period): "
    )
    assert lines[1].startswith("- rollout: queue-worker rolls with zero downtime")
    assert lines[2].startswith("- rollout: celery stops first: ")


# ---------------------------------------------------------------- the CLI
def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stacks", *args],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_cli_plan_text_has_the_section_and_json_keeps_its_format() -> None:
    text = run_cli("plan", "h100")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert "rollout:" in lines
    assert lines.index("rollout:") < lines.index("outputs:")
    as_json = run_cli("plan", "h100", "--json")
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert set(doc) == {"project", "stack", "resources", "outputs"}
    assert doc["outputs"]["rollout"]["vision"] == {
        "mode": STOP_FIRST,
        "why": doc["outputs"]["rollout"]["vision"]["why"],
        "interruptionS": 600,
    }


def test_cli_diff_of_a_rollback_prints_the_rollout_lines(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.prod.pinned.yaml"
    doc = yaml.safe_load((PROJECT_DIR / "Pulumi.prod.yaml").read_text())
    doc["config"][f"{NS}image"]["tag"] = "p40-0123456789ab"
    path.write_text(yaml.safe_dump(doc))
    result = run_cli("diff", "prod", "--config-file", str(path))
    assert result.returncode == 0, result.stderr
    assert any(
        line.startswith("- rollout: app rolls with zero downtime") for line in result.stdout.splitlines()
    )
    data = json.loads(run_cli("diff", "prod", "--config-file", str(path), "--json").stdout)
    assert [(r["service"], r["mode"]) for r in data["rollout"]] == [("app", ZERO_DOWNTIME)]
