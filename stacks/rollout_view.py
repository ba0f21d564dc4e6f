"""How each service rolls, as the offline plan and the offline diff say it: read from the plan's `rollout`
stack output ({service: {"mode", "why", "interruptionS"}}, in start order; components/core/gpu_memory.py
decides it, the targets export it).

- `plan_section(outputs)`: the `rollout:` lines `python -m stacks plan` prints after the tree, one a
  service: its mode, the expected interruption of a stop-first rollout, and why.
- `rolled(...)`: for a diff, each container or workload the change rolls (a replaced container, a
  Deployment whose pod template changes) with the mode its service gets in the AFTER plan, the expected
  interruption (the health check's start period; 0 for zero downtime) and why. A service whose mode
  differs in the before plan says what it was; one that stopped first before and rolls with zero downtime
  now is interrupted this once (the proxy's claim stops its fixed-name container, which held the port,
  until its first copy is healthy and routed: components/docker/proxy.py). One-shot jobs are not services
  that roll (they run once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from components.core.gpu_memory import STOP_FIRST, ZERO_DOWNTIME

ROLLOUT_OUTPUT = "rollout"
UNKNOWN_MODE = "unknown"

CONTAINER = "docker:index/container:Container"
# pulumi-kubernetes updates these in place; a changed pod template makes the controller roll new pods.
WORKLOADS = frozenset({"kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet"})


@dataclass(frozen=True)
class ServiceRollout:
    service: str
    mode: str  # ZERO_DOWNTIME | STOP_FIRST | UNKNOWN_MODE (not known offline)
    why: str
    interruption_s: int

    @classmethod
    def from_json(cls, service: str, value: Any) -> ServiceRollout:
        if not isinstance(value, Mapping):  # "[unknown]": decided during the deployment
            return cls(service, UNKNOWN_MODE, "decided at deploy", 0)
        mode = value.get("mode")
        seconds = value.get("interruptionS")
        return cls(
            service,
            mode if mode in (ZERO_DOWNTIME, STOP_FIRST) else UNKNOWN_MODE,
            str(value.get("why") or ""),
            seconds if isinstance(seconds, int) and not isinstance(seconds, bool) else 0,
        )

    def phrase(self) -> str:
        """The mode, with a stop-first rollout's expected interruption: `stop-first, ~600 s interruption`."""
        if self.mode == STOP_FIRST and self.interruption_s > 0:
            return f"{STOP_FIRST}, ~{duration(self.interruption_s)} interruption"
        return self.mode


def duration(seconds: int) -> str:
    """`45 s`, `600 s (10 min)`: whole minutes said too from two minutes on."""
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds} s ({seconds // 60} min)"
    return f"{seconds} s"


def rollouts(outputs: Mapping[str, Any] | None) -> dict[str, ServiceRollout] | None:
    """The `rollout` output, service by service in start order (the `startOrder` output: a stack output's
    keys cross the wire as a protobuf Struct, whose order is not kept); None when the plan has none (an
    older plan, or a stack whose rollout is not known offline at all: an unknown output)."""
    value = (outputs or {}).get(ROLLOUT_OUTPUT)
    if not isinstance(value, Mapping):
        return None
    start = (outputs or {}).get("startOrder")
    order = {str(name): index for index, name in enumerate(start if isinstance(start, list) else [])}
    names = sorted(value, key=lambda name: order.get(str(name), len(order)))  # stable: the rest as given
    return {str(name): ServiceRollout.from_json(str(name), value[name]) for name in names}


def plan_section(outputs: Mapping[str, Any] | None) -> list[str]:
    """`rollout:` and a line a service, columns lined up; nothing when the plan has no rollout output."""
    if ROLLOUT_OUTPUT not in (outputs or {}):
        return []
    found = rollouts(outputs)
    if found is None:
        return ["rollout: decided at deploy (not known offline)"]
    if not found:
        return ["rollout: no long-running services"]
    name_width = max(len(r.service) for r in found.values())
    mode_width = max(len(r.phrase()) for r in found.values())
    lines = ["rollout:"]
    for entry in found.values():
        line = f"  {entry.service:<{name_width}}  {entry.phrase():<{mode_width}}"
        lines.append(f"{line}  ({entry.why})" if entry.why else line.rstrip())
    return lines


# ---------------------------------------------------------------- the diff
@dataclass(frozen=True)
class Rolled:
    """A container or workload the change rolls, and how its service rolls."""

    service: str
    type: str
    name: str  # the resource's logical name
    mode: str
    interruption_s: int
    why: str
    was: str | None = None  # the service's mode in the before plan, where it was another
    switch_s: int = 0  # stop-first -> zero-downtime: the one interruption of the switch (before plan's)

    def as_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "service": self.service,
            "type": self.type,
            "name": self.name,
            "mode": self.mode,
            "interruptionS": self.interruption_s,
            "why": self.why,
        }
        if self.was is not None:
            result["was"] = self.was
        return result

    def line(self) -> str:
        if self.mode == ZERO_DOWNTIME:
            text = f"{self.service} rolls with zero downtime"
        elif self.mode == STOP_FIRST:
            text = f"{self.service} stops first"
            if self.interruption_s > 0:
                text += f", ~{duration(self.interruption_s)} interruption (the health check's start period)"
        else:
            text = f"{self.service} rolls as decided at deploy"
        if self.why:
            text += f": {self.why}"
        if self.was == STOP_FIRST and self.mode == ZERO_DOWNTIME:
            once = f" ~{duration(self.switch_s)}" if self.switch_s > 0 else ""
            text += (
                f" (was {STOP_FIRST}: interrupted this once{once}, from the proxy taking over its port "
                "until its first copy is healthy)"
            )
        elif self.was is not None:
            text += f" (was {self.was})"
        return text


def _at(value: Any, *path: str) -> Any:
    for part in path:
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _rolls(action: str, type_: str, before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> bool:
    """Whether this change starts new copies of a service: a replaced container (not a one-shot job, which
    runs once: `attach`), a replaced workload, or an updated one whose pod template changes."""
    if type_ == CONTAINER:
        return action == "replace" and not _at(after, "inputs", "attach")
    if type_ in WORKLOADS:
        if action == "replace":
            return True
        old_template = _at(before, "inputs", "spec", "template")
        return action == "update" and old_template != _at(after, "inputs", "spec", "template")
    return False


def _service_of(resource: Mapping[str, Any], known: Mapping[str, ServiceRollout]) -> str | None:
    """The service a resource runs: its own name, or (a container) its GpuContainer component's."""
    name = str(resource.get("name"))
    if name in known:
        return name
    parent = str(resource.get("parent") or "")
    owner = parent.rsplit("::", 1)[-1] if "GpuContainer::" in parent else ""
    return owner if owner in known else None


def rolled(
    changes: Iterable[tuple[str, str, str, str]],
    old: Mapping[str, Mapping[str, Any]],
    new: Mapping[str, Mapping[str, Any]],
    before_outputs: Mapping[str, Any] | None,
    after_outputs: Mapping[str, Any] | None,
) -> list[Rolled]:
    """(action, type, name, urn) of each change -> what rolls, in the after plan's service order.

    `old`/`new` are the plans' resources by URN. Nothing when the after plan has no rollout output; a
    resource whose service is not in it (a Kubernetes CPU fallback) is left out.
    """
    after = rollouts(after_outputs)
    if after is None:
        return []
    before = rollouts(before_outputs) or {}
    order = {service: index for index, service in enumerate(after)}
    found: list[Rolled] = []
    for action, type_, _name, urn in changes:
        resource = new.get(urn)
        if resource is None or not _rolls(action, type_, old.get(urn), resource):
            continue
        service = _service_of(resource, after)
        if service is None:
            continue
        entry = after[service]
        previous = before.get(service)
        was = previous.mode if previous is not None and previous.mode != entry.mode else None
        interruption = entry.interruption_s if entry.mode == STOP_FIRST else 0
        switch = previous.interruption_s if previous is not None and was == STOP_FIRST else 0
        found.append(
            Rolled(service, type_, str(resource["name"]), entry.mode, interruption, entry.why, was, switch)
        )
    return sorted(found, key=lambda r: (order[r.service], r.type, r.name))
