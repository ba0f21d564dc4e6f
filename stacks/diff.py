"""What a change would do: two offline plans compared resource by resource, the way the engine would.

`python -m stacks diff STACK --config-file OTHER` compares the plan of `Pulumi.STACK.yaml` (before) with
the plan of OTHER (after); `--against GIT_REF` compares the plan of the repository at GIT_REF (code and
config) with the working tree's. The classification is pure: two plan JSON objects (`Plan.as_json()` or
`python -m stacks plan STACK --json`) in, a `Diff` out; stacks/diff_sources.py makes the plan at a git ref.

Rules, with resources keyed by URN:

- only in the after plan: CREATE; only in the before plan: DELETE, noted "(kept on the host)" when the
  resource has `retainOnDelete` (a built image leaves the state, not the host);
- in both: the top-level input keys that differ, leaving out the keys in the AFTER resource's
  `ignoreChanges` (the engine ignores those). No key: unchanged. Otherwise REPLACE when the type (and
  key) is one its provider cannot change in place (stacks/replacement.py), else UPDATE;
- a value that is `[unknown]` (known only during a deployment) on either side is a possible change,
  shown "(unknown until deploy)". An input whose unknown value is the same on both sides comes from a
  resource that exists in the state already, so the engine knows it: it is a possible change only when
  one of the resource's dependencies (after plan `dependsOn`) is created, replaced or updated;
- the mocks give every resource a fixed id (`NAME-id`); an input holding the id of a dependency that is
  created or replaced is a possible change too (a real replacement has a new id: a `triggers` entry
  naming a replaced container's id re-runs the command);
- component resources (custom false) are groupings, never changes themselves: they are not counted
  anywhere (their children are). The unchanged count is of custom resources;
- what a change rolls (a replaced container, a workload whose pod template changes) is listed with the
  rollout its service gets in the after plan's `rollout` output: zero downtime, or stop first with the
  expected interruption (stacks/rollout_view.py).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from components.core.vocabulary import UNKNOWN_PLACEHOLDER
from stacks.plan import mock_id
from stacks.replacement import kubernetes_force_new, replaces
from stacks.rollout_view import Rolled, rolled

UNKNOWN = UNKNOWN_PLACEHOLDER
Action = Literal["create", "replace", "update", "delete"]
ACTIONS: tuple[Action, ...] = ("create", "replace", "update", "delete")

_SHORT = 80  # longest scalar shown as before -> after


@dataclass(frozen=True)
class Change:
    action: Action
    urn: str
    type: str
    name: str
    changed: tuple[str, ...] = ()
    details: tuple[str, ...] = ()  # per changed key, what the text line shows
    kept: bool = False  # a delete of a retainOnDelete resource
    unknown: tuple[str, ...] = ()  # the changed keys whose values are known only during a deployment

    @property
    def certain(self) -> bool:
        """False when every changed key is only a possible change (unknown until deploy)."""
        return self.action in ("create", "delete") or bool(set(self.changed) - set(self.unknown))

    def as_json(self) -> dict[str, Any]:
        return {"urn": self.urn, "type": self.type, "name": self.name, "changed": list(self.changed)}

    def line(self) -> str:
        text = f"{self.action:<7}  {self.type}  {self.name}"
        if self.details:
            text += f"  ({', '.join(self.details)})"
        if self.kept:
            text += "  (kept on the host)"
        return text


@dataclass
class Diff:
    stack: str
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    data: list[str] = field(default_factory=list)  # where a change leaves data behind, said plainly
    rollout: list[Rolled] = field(default_factory=list)  # what rolls, and how (zero downtime / stop first)

    def of(self, action: Action) -> list[Change]:
        return [c for c in self.changes if c.action == action]

    @property
    def empty(self) -> bool:
        return not self.changes

    def as_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {"stack": self.stack}
        for action in ACTIONS:
            result[action] = [c.as_json() for c in self.of(action)]
        result["unchanged"] = self.unchanged
        if self.data:
            result["data"] = list(self.data)
        if self.rollout:
            result["rollout"] = [r.as_json() for r in self.rollout]
        return result

    def summary(self) -> str:
        counts = ", ".join(f"{len(self.of(a))} to {a}" for a in ACTIONS)
        return f"{counts}, {self.unchanged} unchanged"


# ---------------------------------------------------------------- classification
def has_unknown(value: Any) -> bool:
    if isinstance(value, str):
        return value == UNKNOWN
    if isinstance(value, Mapping):
        return any(has_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(has_unknown(v) for v in value)
    return False


def _is_short_scalar(value: Any) -> bool:
    if isinstance(value, str):
        return "\n" not in value and len(value) <= _SHORT
    return value is None or isinstance(value, (bool, int, float))


_MISSING = object()


def _show(value: Any) -> str:
    return "(unset)" if value is _MISSING else json.dumps(value)


def _detail(key: str, before: Any, after: Any, *, unknown: bool) -> str:
    if unknown:
        return f"{key} (unknown until deploy)"
    if _is_short_scalar(None if before is _MISSING else before) and _is_short_scalar(
        None if after is _MISSING else after
    ):
        return f"{key}: {_show(before)} -> {_show(after)}"
    return key


def mentions(value: Any, needle: str) -> bool:
    """Whether `needle` (a mock id) is a whole word in `value` or anything inside it."""
    if isinstance(value, str):
        return re.search(rf"(?<![\w.-]){re.escape(needle)}(?![\w.-])", value) is not None
    if isinstance(value, Mapping):
        return any(mentions(v, needle) for v in value.values())
    if isinstance(value, list):
        return any(mentions(v, needle) for v in value)
    return False


def same_content(a: Any, b: Any) -> bool:
    """Equal values; two file assets are equal when their content is (the plan records its hash), wherever
    the checkout that holds them lies."""
    if isinstance(a, dict) and isinstance(b, dict) and "hash" in a and "hash" in b:
        return bool(a["hash"] == b["hash"])
    return bool(a == b)


def input_changes(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    *,
    moving: Collection[str] = (),
    new_ids: Collection[str] = (),
) -> list[tuple[str, str, bool]]:
    """(key, detail, unknown) for each top-level input key that changes, minus the after side's ignoreChanges.

    `before`/`after` are resources as in a plan JSON. A value the same on both sides is still a possible
    change ("unknown until deploy") when it holds `[unknown]` and a resource the key's value comes from is
    in `moving` (created, replaced or updated, so what it hands on is computed again: the key's property
    dependencies, or every dependency where a plan has none recorded), or when it holds one of
    `new_ids`, the ids of dependencies that are created or replaced (the mocks' ids never change; a real
    replacement gets a new id, e.g. a `triggers` entry naming a container's id).
    """
    options = after.get("options") or {}
    ignored = set(options.get("ignoreChanges") or [])
    by_key: Mapping[str, Collection[str]] | None = options.get("propertyDependencies")
    every = options.get("dependsOn") or []
    old: Mapping[str, Any] = before.get("inputs") or {}
    new: Mapping[str, Any] = after.get("inputs") or {}
    result: list[tuple[str, str, bool]] = []
    for key in sorted(set(old) | set(new)):
        if key in ignored:
            continue
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if same_content(a, b):
            sources = every if by_key is None else by_key.get(key, ())
            dependency_changed = any(d in moving for d in sources)
            unknown = (dependency_changed and has_unknown(b)) or any(mentions(b, i) for i in new_ids)
            if not unknown:
                continue
        else:
            unknown = has_unknown(a) or has_unknown(b)
        result.append((key, _detail(key, a, b, unknown=unknown), unknown))
    return result


def _by_urn(plan: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(r["urn"]): r for r in plan.get("resources") or [] if r.get("custom")}


def diff_plans(before: Mapping[str, Any], after: Mapping[str, Any], stack: str | None = None) -> Diff:
    """Classify every custom resource of two plans (JSON objects) as create/replace/update/delete."""
    old, new = _by_urn(before), _by_urn(after)
    diff = Diff(stack=stack or str(after.get("stack") or before.get("stack") or ""))
    changes: dict[str, Change] = {}
    for urn in sorted(set(new) - set(old)):
        changes[urn] = Change("create", urn, str(new[urn]["type"]), str(new[urn]["name"]))
    for urn in sorted(set(old) - set(new)):
        kept = bool((old[urn].get("options") or {}).get("retainOnDelete"))
        changes[urn] = Change("delete", urn, str(old[urn]["type"]), str(old[urn]["name"]), kept=kept)

    both = sorted(set(old) & set(new))
    # A dependency that changes makes the outputs it hands on unknown again: repeat until stable.
    while True:
        moved = False
        for urn in both:
            deps = (new[urn].get("options") or {}).get("dependsOn") or []
            moving = [changes[d] for d in deps if d in changes and changes[d].action != "delete"]
            keys = input_changes(
                old[urn],
                new[urn],
                moving={c.urn for c in moving},
                new_ids=[mock_id(c.name) for c in moving if c.action in ("create", "replace")],
            )
            if not keys:
                continue
            type_ = str(new[urn]["type"])
            names = tuple(k for k, _, _ in keys)
            after_inputs = new[urn].get("inputs") or {}
            forced = kubernetes_force_new(type_, old[urn].get("inputs") or {}, after_inputs)
            replace = replaces(type_, set(names), after_inputs) or bool(forced)
            action: Action = "replace" if replace else "update"
            change = Change(
                action,
                urn,
                type_,
                str(new[urn]["name"]),
                names,
                details=tuple(d for _, d, _ in keys),
                unknown=tuple(k for k, _, u in keys if u),
            )
            if changes.get(urn) != change:
                changes[urn] = change
                moved = True
        if not moved:
            break

    diff.data = data_notes(old, new, changes) + secret_notes(before, after, old, new, changes)
    order = {a: i for i, a in enumerate(ACTIONS)}
    diff.changes = sorted(changes.values(), key=lambda c: (order[c.action], c.type, c.name, c.urn))
    diff.rollout = rolled(
        ((c.action, c.type, c.name, c.urn) for c in diff.changes),
        old,
        new,
        before.get("outputs"),
        after.get("outputs"),
    )
    diff.unchanged = sum(1 for urn in both if urn not in changes)
    return diff


_ROOT_VAR = re.compile(r"(?:^|\s)ROOT=(\S+)")
CLAIM_TYPE = "kubernetes:core/v1:PersistentVolumeClaim"


def data_notes(
    old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]], changes: Mapping[str, Change]
) -> list[str]:
    """No deploy deletes data (host directories have no delete step, claims are retained), but some changes
    move the services away from it: a new root or host, a new claim. Say so plainly."""
    notes: list[str] = []

    def roots(plan: Mapping[str, Mapping[str, Any]]) -> set[str]:
        found = set()
        for resource in plan.values():
            create = str((resource.get("inputs") or {}).get("create", ""))
            if resource.get("type") == "command:remote:Command" and "DIRS=" in create:
                found |= {shlex.split(m)[0] for m in _ROOT_VAR.findall(create)}
        return found

    def hosts(plan: Mapping[str, Mapping[str, Any]]) -> set[str]:
        return {
            str((r.get("inputs") or {}).get("host"))
            for r in plan.values()
            if r.get("type") == "pulumi:providers:docker"
            and str((r.get("inputs") or {}).get("host", "")).startswith("ssh://")
        }

    for before in sorted(roots(old) - roots(new)):
        notes.append(
            f"the services no longer use {before}: its directories and their data stay there, untouched; "
            f"the new ones ({', '.join(sorted(roots(new))) or 'none'}) start empty (copy the data first)"
        )
    for before in sorted(hosts(old) - hosts(new)):
        notes.append(
            f"the services move from {before}: the data there stays on that host, untouched; the new host's "
            "directories start empty (copy the data first)"
        )
    for urn, change in sorted(changes.items()):
        if change.type == CLAIM_TYPE and change.action in ("replace", "delete"):
            name = str(((old[urn].get("inputs") or {}).get("metadata") or {}).get("name", change.name))
            notes.append(
                f"claim {name} is kept with its data (retainOnDelete)"
                + ("; its replacement starts empty" if change.action == "replace" else "")
            )
    return notes


def secret_notes(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    old: Mapping[str, Mapping[str, Any]],
    new: Mapping[str, Mapping[str, Any]],
    changes: dict[str, Change],
) -> list[str]:
    """A rotated secret is shown as "[secret]" on both sides of a plan; the plans' ciphertext digests say
    it changed. A Docker container that takes it in its env is replaced with it (its env is ForceNew)."""
    was, now = before.get("secrets") or {}, after.get("secrets") or {}
    notes = []
    for path in sorted(set(was) | set(now)):
        if was.get(path) == now.get(path):
            continue
        verb = "is new" if path not in was else "is removed" if path not in now else "is rotated"
        notes.append(f"secret {path} {verb}")
        parts = path.split(".")
        if len(parts) == 4 and parts[0] == "services" and parts[2] in ("secretEnv", "env"):
            for urn, resource in new.items():
                if resource.get("type") != "docker:index/container:Container" or urn not in old:
                    continue
                if str(resource.get("name")) != parts[1] or urn in changes:
                    continue
                changes[urn] = Change(
                    "replace", urn, str(resource["type"]), parts[1], ("envs",), (f"envs ({path} {verb})",)
                )
    return notes


def render_text(diff: Diff) -> str:
    """Markdown for a job summary: a heading, the changes in a fenced block, how each replaced service
    rolls and where data stays (a list), the counts."""
    lines = [c.line() for c in diff.changes] or ["no changes"]
    notes = [f"- rollout: {r.line()}" for r in diff.rollout] + [f"- data: {note}" for note in diff.data]
    return "\n".join(
        [f"### {diff.stack}", "", "```", *lines, "```", "", *notes, *([""] if notes else []), diff.summary()]
    )
