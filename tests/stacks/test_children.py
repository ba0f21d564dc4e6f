"""One rule on both targets (components.options.child_options): Pulumi does not hand a component's
dependsOn to its children, so each child records its component's dependencies itself."""

from __future__ import annotations

import pytest

from stacks.plan import PROJECT_DIR, list_stacks
from tests.plans import ShippedPlan


@pytest.mark.parametrize("stack", list_stacks(PROJECT_DIR))
def test_children_wait_for_what_their_component_waits_for(shipped_plan: ShippedPlan, stack: str) -> None:
    plan = shipped_plan(stack)
    by_urn = {r.urn: r for r in plan.resources}
    checked = waiting = 0
    for child in plan.resources:
        parent = by_urn.get(child.parent or "")
        if parent is None or parent.custom or not parent.type.startswith("gpu-deploy:"):
            continue
        assert set(parent.options["dependsOn"]) <= set(child.options["dependsOn"]), (parent.name, child.name)
        checked += 1
        waiting += bool(parent.options["dependsOn"])
    assert checked >= 3, "every stack has components with children"
    assert waiting >= 1, "some component waits for something, so the rule is exercised"
