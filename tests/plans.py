"""Helpers for tests that run the real program (__main__.py) under mocks through the offline plan."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Protocol

import yaml

from stacks.plan import PROJECT_DIR, Plan, PlannedResource, make_plan

CONTAINER = "docker:index/container:Container"
IMAGE = "docker:index/image:Image"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
REMOTE_COMMAND = "command:remote:Command"
LOCAL_COMMAND = "command:local:Command"
DOCKER_PROVIDER = "pulumi:providers:docker"


class ShippedPlan(Protocol):
    """The type of the `shipped_plan` fixture (shipped_plan below)."""

    def __call__(self, stack: str, *, preview: bool = False) -> Plan: ...


_SHIPPED: dict[tuple[str, bool], tuple[Plan, str]] = {}  # (stack, preview) -> (plan, its JSON when made)


def shipped_plan(stack: str, *, preview: bool = False) -> Plan:
    """The offline plan of a shipped stack as its file stands, made once a test session and shared (the
    `shipped_plan` fixture of tests/conftest.py hands this out): do not change it, copy.deepcopy it
    first. A plan that depends on the environment (the dev stack's `auto` profile under a faked GPU)
    is made with make_plan() instead."""
    key = (stack, preview)
    if key not in _SHIPPED:
        plan = make_plan(stack, preview=preview)
        _SHIPPED[key] = (plan, plan_text(plan))
    return _SHIPPED[key][0]


def changed_shipped_plans() -> list[str]:
    """The shared plans that a test changed after they were made (there must be none)."""
    return [
        f"{stack}{' (preview)' if preview else ''}"
        for (stack, preview), (plan, made) in _SHIPPED.items()
        if plan_text(plan) != made
    ]


def stack_config(stack: str) -> dict[str, Any]:
    doc = yaml.safe_load((PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text())
    return dict(doc["config"])


def write_config(tmp_path: Path, edit: Any, stack: str = "prod") -> Path:
    """`stack`'s config changed by `edit(config)`, as a copy in a temp file."""
    config = copy.deepcopy(stack_config(stack))
    edit(config)
    path = tmp_path / f"Pulumi.{stack}.edited.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    return path


def plan_with(tmp_path: Path, stack: str, edit: Any, *, preview: bool = False) -> Plan:
    """Plan `stack` with its config changed by `edit(config)` (a copy, written to a temp file)."""
    return make_plan(stack, config_file=write_config(tmp_path, edit, stack), preview=preview)


def containers(plan: Plan) -> dict[str, PlannedResource]:
    return {r.name: r for r in plan.by_type(CONTAINER)}


def env_of(container: PlannedResource) -> dict[str, str]:
    return dict(e.split("=", 1) for e in container.inputs.get("envs", []) if "=" in e)


def labels_of(container: PlannedResource) -> dict[str, str]:
    return {item["label"]: item["value"] for item in container.inputs.get("labels", [])}


def plan_text(plan: Plan) -> str:
    return json.dumps(plan.as_json(), sort_keys=True)


def urn_of(plan: Plan, type_: str, name: str) -> str:
    return plan.named(type_, name).urn
