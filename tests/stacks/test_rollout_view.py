"""How each service rolls, as `python -m stacks plan` and `python -m stacks diff` say it (stacks/rollout_view.py).

On hand-written plans: the plan's `rollout:` section (after the tree, one line a service, the rollout output
left out of the `outputs:` lines), and the diff's `- rollout:` lines for each replaced container or rolled
workload, with the mode from the AFTER plan and a stop-first rollout's expected interruption.
tests/stacks/test_rollout_stacks.py checks the same on the shipped stacks.
"""

from __future__ import annotations

from typing import Any

from stacks.__main__ import render_tree
from stacks.diff import diff_plans, render_text
from stacks.plan import Plan, PlannedResource
from stacks.rollout_view import Rolled, ServiceRollout, duration, plan_section, rolled, rollouts
from tests.plans import CONTAINER

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
COMMAND = "command:remote:Command"
GPU_CONTAINER = "gpu-deploy:docker:GpuContainer"

ZD = {"mode": "zero-downtime", "why": "P40 22919 MiB: 3072 x 2 fit", "interruptionS": 0}
SF = {
    "mode": "stop-first",
    "why": "h100-16c 16384 MiB cannot hold two 12288 MiB copies",
    "interruptionS": 600,
}
SF_NO_HEALTH = {"mode": "stop-first", "why": "no HTTP health check: interruption unknown", "interruptionS": 0}


def urn(name: str, type_: str = CONTAINER) -> str:
    return f"urn:pulumi:s::p::{type_}::{name}"


def res(name: str, type_: str = CONTAINER, *, parent: str | None = None, **inputs: Any) -> dict[str, Any]:
    return {
        "urn": urn(name, type_),
        "type": type_,
        "name": name,
        "parent": parent,
        "custom": True,
        "inputs": inputs,
        "options": {"dependsOn": [], "deleteBeforeReplace": False, "retainOnDelete": False},
    }


def plan(*resources: dict[str, Any], rollout: Any = None) -> dict[str, Any]:
    outputs: dict[str, Any] = {"profile": "p40"}
    if rollout is not None:
        outputs["rollout"] = rollout
    return {"project": "p", "stack": "s", "resources": list(resources), "outputs": outputs}


# ---------------------------------------------------------------- the plan's section
def test_section_lines_up_one_service_a_line_with_mode_interruption_and_why() -> None:
    lines = plan_section({"rollout": {"app": ZD, "vision": SF, "celery": SF_NO_HEALTH}})
    assert lines == [
        "rollout:",
        "  app     zero-downtime                             (P40 22919 MiB: 3072 x 2 fit)",
        "  vision  stop-first, ~600 s (10 min) interruption  (h100-16c 16384 MiB cannot hold two 12288 MiB copies)",
        "  celery  stop-first                                (no HTTP health check: interruption unknown)",
    ]


def test_section_keeps_the_output_order_and_says_when_nothing_is_known() -> None:
    lines = plan_section({"rollout": {"b": ZD, "a": SF}})
    assert [line.split()[0] for line in lines[1:]] == ["b", "a"]  # as exported, without a start order
    ordered = plan_section({"rollout": {"c": ZD, "b": ZD, "a": SF, "x": ZD}, "startOrder": ["a", "b", "c"]})
    assert [line.split()[0] for line in ordered[1:]] == ["a", "b", "c", "x"]  # start order, the rest after
    assert plan_section({"profile": "p40"}) == []  # an older plan: no section at all
    assert plan_section(None) == []
    assert plan_section({"rollout": "[unknown]"}) == ["rollout: decided at deploy (not known offline)"]
    assert plan_section({"rollout": {}}) == ["rollout: no long-running services"]
    assert plan_section({"rollout": {"x": "[unknown]"}}) == ["rollout:", "  x  unknown  (decided at deploy)"]


def test_entries_read_defensively() -> None:
    assert ServiceRollout.from_json("a", {"mode": "sideways", "interruptionS": True}) == ServiceRollout(
        "a", "unknown", "", 0
    )
    assert ServiceRollout.from_json("a", SF).phrase() == "stop-first, ~600 s (10 min) interruption"
    assert (
        ServiceRollout.from_json("a", {**SF, "interruptionS": 45}).phrase()
        == "stop-first, ~45 s interruption"
    )
    assert ServiceRollout.from_json("a", SF_NO_HEALTH).phrase() == "stop-first"
    assert ServiceRollout.from_json("a", ZD).phrase() == "zero-downtime"
    assert [duration(s) for s in (0, 60, 90, 120, 150, 900)] == [
        "0 s",
        "60 s",
        "90 s",
        "120 s (2 min)",
        "150 s",
        "900 s (15 min)",
    ]
    assert rollouts({"rollout": [1, 2]}) is None


def test_plan_text_puts_the_section_after_the_tree_and_not_among_the_outputs() -> None:
    resources = [
        PlannedResource(urn("app"), CONTAINER, "app", None, True, {"image": "a:1"}, {}),
    ]
    outputs = {"rollout": {"app": ZD}, "startOrder": ["app"]}
    text = render_tree(Plan("p", "s", resources, outputs, ["careful"])).splitlines()
    assert text[text.index("rollout:") + 1].startswith("  app  zero-downtime  (")
    assert text.index("rollout:") < text.index("outputs:")
    assert text[-3:] == ["outputs:", '  startOrder: ["app"]', "warning: careful"]
    assert not any(line.startswith("  rollout:") for line in text)
    without = render_tree(Plan("p", "s", resources, {"startOrder": ["app"]}))
    assert "rollout" not in without
    only = render_tree(Plan("p", "s", resources, {"rollout": {"app": ZD}}))
    assert "outputs:" not in only  # no empty outputs heading


# ---------------------------------------------------------------- the diff's rollout lines
def test_a_replaced_container_says_how_its_service_rolls() -> None:
    before = plan(res("app", image="a:1"), res("vision", image="v:1"), rollout={"app": ZD, "vision": SF})
    after = plan(res("app", image="a:2"), res("vision", image="v:2"), rollout={"app": ZD, "vision": SF})
    diff = diff_plans(before, after, "s")
    assert [r.line() for r in diff.rollout] == [
        "app rolls with zero downtime: P40 22919 MiB: 3072 x 2 fit",
        "vision stops first, ~600 s (10 min) interruption (the health check's start period): "
        "h100-16c 16384 MiB cannot hold two 12288 MiB copies",
    ]
    text = render_text(diff).splitlines()
    assert text[text.index("```", 3) + 1 :] == [
        "",
        "- rollout: app rolls with zero downtime: P40 22919 MiB: 3072 x 2 fit",
        "- rollout: vision stops first, ~600 s (10 min) interruption (the health check's start period): "
        "h100-16c 16384 MiB cannot hold two 12288 MiB copies",
        "",
        "0 to create, 2 to replace, 0 to update, 0 to delete, 0 unchanged",
    ]
    assert diff.as_json()["rollout"] == [
        {
            "service": "app",
            "type": CONTAINER,
            "name": "app",
            "mode": "zero-downtime",
            "interruptionS": 0,
            "why": ZD["why"],
        },
        {
            "service": "vision",
            "type": CONTAINER,
            "name": "vision",
            "mode": "stop-first",
            "interruptionS": 600,
            "why": SF["why"],
        },
    ]


def test_the_after_plan_decides_and_a_changed_mode_says_what_it_was() -> None:
    before = plan(res("app", image="a:1"), rollout={"app": SF})
    after = plan(res("app", image="a:2"), rollout={"app": ZD})
    (only,) = diff_plans(before, after).rollout
    assert (only.mode, only.interruption_s, only.was) == ("zero-downtime", 0, "stop-first")
    # the switch interrupts the service once: the proxy takes its port before its first copy is healthy
    assert only.line().endswith(
        "(was stop-first: interrupted this once ~600 s (10 min), from the proxy taking over its port "
        "until its first copy is healthy)"
    )
    assert only.as_json()["interruptionS"] == 0 and only.switch_s == 600
    back = diff_plans(after, before).rollout[0]
    assert (back.mode, back.interruption_s, back.was) == ("stop-first", 600, "zero-downtime")
    assert back.line().endswith("(was zero-downtime)") and back.switch_s == 0


def test_nothing_rolls_without_a_replaced_service_container() -> None:
    rollout = {"app": ZD}
    unchanged = diff_plans(
        plan(res("app", image="a"), rollout=rollout), plan(res("app", image="a"), rollout=rollout)
    )
    assert unchanged.rollout == []
    assert "rollout" not in unchanged.as_json()
    assert "- rollout:" not in render_text(unchanged)
    # a one-shot job runs once (`attach`), a command is no service, a new container replaces nothing
    before = plan(res("migrate", attach=True, image="m:1"), res("c", COMMAND, create="x"), rollout=rollout)
    after = plan(
        res("migrate", attach=True, image="m:2"),
        res("c", COMMAND, create="y"),
        res("app", image="a"),
        rollout={**rollout, "migrate": SF},
    )
    diff = diff_plans(before, after)
    assert {c.action for c in diff.changes} == {"create", "replace"}
    assert diff.rollout == []
    # an after plan without a rollout output (an older program) says nothing about rollouts
    assert diff_plans(plan(res("app", image="a:1")), plan(res("app", image="a:2"))).rollout == []


def test_a_container_is_matched_to_its_service_through_its_component() -> None:
    parent = f"urn:pulumi:s::p::{GPU_CONTAINER}::app"
    before = plan(res("app-copy", image="a:1", parent=parent), rollout={"app": ZD})
    after = plan(res("app-copy", image="a:2", parent=parent), rollout={"app": ZD})
    (only,) = diff_plans(before, after).rollout
    assert (only.service, only.name) == ("app", "app-copy")
    stray = res("other", image="o:2", parent="urn:pulumi:s::p::x:y:Z::app")
    found = rolled(
        [("replace", CONTAINER, "other", stray["urn"])],
        {},
        {stray["urn"]: stray},
        None,
        {"rollout": {"app": ZD}},
    )
    assert found == []  # only a GpuContainer's name stands for its service


def test_a_workload_rolls_when_its_pod_template_changes_not_when_it_scales() -> None:
    rollout = {"kokoro": SF}
    template = {"spec": {"containers": [{"image": "k:1"}]}}
    before = plan(res("kokoro", DEPLOYMENT, spec={"replicas": 1, "template": template}), rollout=rollout)
    new_image = {"spec": {"containers": [{"image": "k:2"}]}}
    after = plan(res("kokoro", DEPLOYMENT, spec={"replicas": 1, "template": new_image}), rollout=rollout)
    diff = diff_plans(before, after)
    assert [c.action for c in diff.changes] == ["update"]
    assert [(r.service, r.type, r.mode) for r in diff.rollout] == [("kokoro", DEPLOYMENT, "stop-first")]
    scaled = plan(res("kokoro", DEPLOYMENT, spec={"replicas": 2, "template": template}), rollout=rollout)
    assert diff_plans(before, scaled).rollout == []
    # the CPU fallback is not in the rollout output: not listed
    cpu_before = plan(res("kokoro-cpu", DEPLOYMENT, spec={"template": template}), rollout=rollout)
    cpu_after = plan(res("kokoro-cpu", DEPLOYMENT, spec={"template": new_image}), rollout=rollout)
    assert diff_plans(cpu_before, cpu_after).rollout == []


def test_lines_follow_the_rollout_order_and_json_keeps_was_only_when_it_changed() -> None:
    rollout = {"z": ZD, "a": SF}
    before = plan(res("a", image="1"), res("z", image="1"), rollout=rollout)
    after = plan(res("a", image="2"), res("z", image="2"), rollout=rollout)
    assert [r.service for r in diff_plans(before, after).rollout] == ["z", "a"]
    assert "was" not in Rolled("a", CONTAINER, "a", "zero-downtime", 0, "").as_json()
    assert Rolled("a", CONTAINER, "a", "unknown", 0, "").line() == "a rolls as decided at deploy"
    assert Rolled("a", CONTAINER, "a", "stop-first", 0, "").line() == "a stops first"
