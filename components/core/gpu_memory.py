"""GPU memory budgets, placement and the rollout each service gets (standard library, Python 3.8).

A service may declare `gpuMemory` (its budget per GPU it is given); without one it takes the whole device.
`place` gives every service its devices (a count gets distinct devices, packed by budget) and refuses
budgets that do not fit; `decide_rollouts` says per service whether a changed copy starts beside the old
one (zero downtime, through the stack's reverse proxy) or the old copy stops first, and why.

Old copies of zero-downtime services are deleted at the end of `pulumi up` (the engine creates every
replacement, updates what depends on it, then deletes the replaced resources: pulumi/pulumi#9979), so every
zero-downtime service on a device may hold two copies at once during one update: the room rule counts them
all together.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Sequence

from components.core.values import is_mig_device

ROLLOUT_MODES = ("auto", "zero-downtime", "stop-first")
ZERO_DOWNTIME = "zero-downtime"
STOP_FIRST = "stop-first"


class BudgetError(ValueError):
    """Budgets that do not fit their devices: one line naming the services and the numbers.

    `service` and `field` say which key the stack should name (`services.<service>.<field>`): the
    service that no longer fits and its `gpuMemory`, `gpu` or `rollout`; empty when not one service's."""

    def __init__(self, message: str, *, service: str = "", field: str = "") -> None:
        super().__init__(message)
        self.service = service
        self.field = field


@dataclass(frozen=True)
class Device:
    id: str  # what a Docker device request takes: an index ("0") or a UUID ("GPU-...")
    memory_mib: int


@dataclass(frozen=True)
class GpuDemand:
    service: str
    mode: str  # "all" | "count" | "devices"
    count: int = 0  # mode "count"
    device_ids: tuple[str, ...] = ()  # mode "devices"
    budget_mib: int | None = None  # per device; None: the whole device
    # the service's test job (services.<name>.test), on the same devices beside the running copy: placed
    # with it, like a one-shot job, so it holds its budget there too (0: no test job)
    test_mib: int = 0


@dataclass(frozen=True)
class Placement:
    devices_of: dict[str, tuple[str, ...]]  # service -> device ids
    used_mib: dict[str, int]  # device id -> budgets placed on it (whole devices count as their memory)
    memory_mib: dict[str, int]  # device id -> its memory


@dataclass(frozen=True)
class RolloutFacts:
    service: str
    requested: str  # one of ROLLOUT_MODES
    http_health: bool  # an HTTP health check: the proxy hands traffic over once it passes
    published_ports: bool  # published TCP ports the proxy can own
    start_period_s: int  # the health check's start period: a stop-first rollout's expected interruption


@dataclass(frozen=True)
class Rollout:
    mode: str  # ZERO_DOWNTIME | STOP_FIRST
    why: str
    interruption_s: int  # 0 for zero downtime

    def as_json(self) -> dict[str, object]:
        return {"mode": self.mode, "why": self.why, "interruptionS": self.interruption_s}


SEARCH_LIMIT = 20000  # placements tried before the first attempt's overflow is reported as the problem


def mib(value: int) -> str:
    """A memory size as the messages write it: `16384 MiB`."""
    return f"{value} MiB"


_MIG_PROFILE = re.compile(r"^(\d+)g\.(\d+)gb$")


def mig_memory_mib(profile: str) -> int:
    """What a MIG instance of `profile` ("1g.10gb") holds at least: the name's size read as decimal
    gigabytes, in whole MiB (10 GB = 9536 MiB). NVIDIA rounds the name's size, so the budget rule stays on
    the safe side by not counting more than the name promises."""
    match = _MIG_PROFILE.match(profile)
    if not match:
        raise ValueError(f"expected a MIG profile such as 1g.10gb, got {profile!r}")
    return int(match.group(2)) * 10**9 // 2**20


def _need(demand: GpuDemand, memory_mib: int) -> int:
    """What a demand holds on one device: its budget, or the whole device without one; and its test job's."""
    return (memory_mib if demand.budget_mib is None else demand.budget_mib) + demand.test_mib


def _largest_first(demand: GpuDemand) -> tuple[int, int]:
    """Count demands are packed largest first: whole devices, then by budget (a stable sort keeps ties in
    the order given)."""
    return (0, 0) if demand.budget_mib is None else (1, -demand.budget_mib)


class _State:
    """Devices (in their order), their memory and what is placed on each so far."""

    def __init__(self, devices: Sequence[Device]) -> None:
        self.order = [d.id for d in devices]
        self.memory = {d.id: d.memory_mib for d in devices}
        if len(self.memory) != len(self.order):
            raise ValueError(f"device ids repeat: {self.order}")
        self.used = {d: 0 for d in self.order}
        self.holders: dict[str, list[str]] = {d: [] for d in self.order}

    def free(self, device: str) -> int:
        return self.memory[device] - self.used[device]

    def ranked(self, demand: GpuDemand) -> list[int]:
        """Device indexes, best fit first: devices it fits on by the least memory left after it, then
        those it does not by the least overflow; ties in device order."""

        def key(index: int) -> tuple[int, int, int]:
            device = self.order[index]
            spare = self.free(device) - _need(demand, self.memory[device])
            return (0, spare, index) if spare >= 0 else (1, -spare, index)

        return sorted(range(len(self.order)), key=key)

    def add(self, demand: GpuDemand, devices: Sequence[str], sign: int = 1) -> None:
        for device in devices:
            if device in self.memory:  # a MIG instance is its own memory: not budgeted here
                self.used[device] += sign * _need(demand, self.memory[device])


def _fixed_devices(demand: GpuDemand, state: _State) -> tuple[str, ...]:
    """The devices of an `all` or `devices` demand: a listed id is a device's id or its index; MIG ids pass
    through (a MIG instance's memory is its own partition, not the GPU's to budget)."""
    if demand.mode == "all":
        return tuple(state.order)
    if demand.mode != "devices":
        raise ValueError(f"{demand.service}: unknown GPU demand mode {demand.mode!r}")
    found: list[str] = []
    for wanted in demand.device_ids:
        if wanted in state.memory or is_mig_device(wanted):
            device = wanted
        elif wanted.isdigit() and int(wanted) < len(state.order):
            device = state.order[int(wanted)]
        else:
            raise BudgetError(
                f"{demand.service} asks for GPU {wanted}, but there {_gpus(len(state.order))}: name one of "
                f"them in services.{demand.service}.gpu or give the host more GPUs (target.gpus)",
                service=demand.service,
                field="gpu",
            )
        if device not in found:
            found.append(device)
    return tuple(found)


def _gpus(count: int) -> str:
    """`are 2 GPUs (indexes 0-1)`, `is 1 GPU (index 0)`, `are no GPUs`."""
    if count == 0:
        return "are no GPUs"
    if count == 1:
        return "is 1 GPU (index 0)"
    return f"are {count} GPUs (indexes 0-{count - 1})"


class _SearchLimit(Exception):
    pass


def _search(counts: Sequence[GpuDemand], state: _State) -> list[tuple[str, ...]] | None:
    """Distinct devices for each count demand so that no device is over-committed, best fit first (so the
    greedy placement when it fits); None when none exists. Devices with the same memory and the same
    load are interchangeable, so only one of them is tried at each step."""
    steps = [0]

    def visit(index: int) -> list[tuple[str, ...]] | None:
        if index == len(counts):
            return []
        demand = counts[index]
        fitting = [
            i
            for i in state.ranked(demand)
            if state.free(state.order[i]) >= _need(demand, state.memory[state.order[i]])
        ]
        tried = set()
        for combo in itertools.combinations(fitting, demand.count):
            steps[0] += 1
            if steps[0] > SEARCH_LIMIT:
                raise _SearchLimit
            devices = tuple(state.order[i] for i in sorted(combo))
            signature = tuple(sorted((state.memory[d], state.used[d]) for d in devices))
            if signature in tried:
                continue
            tried.add(signature)
            state.add(demand, devices)
            rest = visit(index + 1)
            state.add(demand, devices, -1)
            if rest is not None:
                return [devices, *rest]
        return None

    try:
        return visit(0)
    except _SearchLimit:
        return None


def _greedy(counts: Sequence[GpuDemand], state: _State) -> list[tuple[str, ...]]:
    """Best fit without backtracking, over-committing where nothing fits: the attempt a refusal names."""
    chosen: list[tuple[str, ...]] = []
    for demand in counts:
        devices = tuple(state.order[i] for i in sorted(state.ranked(demand)[: demand.count]))
        state.add(demand, devices)
        chosen.append(devices)
    for demand, devices in zip(counts, chosen):
        state.add(demand, devices, -1)
    return chosen


def _join(items: Sequence[str], word: str) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {word} {items[-1]}"


def _alternatives(hints: Sequence[str]) -> str:
    """`a`, `a or b`, `a, b, or c`: what the stack can change, each a whole clause."""
    return hints[0] if len(hints) == 1 else f"{', '.join(hints[:-1])}, or {hints[-1]}"


def _overflow(device: str, state: _State, demands: dict[str, GpuDemand]) -> BudgetError:
    """One over-committed device: what it holds, service by service, and what the stack can change."""
    memory = state.memory[device]
    names = state.holders[device]
    parts = []
    for name in names:
        budget = demands[name].budget_mib
        parts.append(
            f"{name} ({mib(memory)}: no gpuMemory, the whole device)"
            if budget is None
            else f"{name} ({mib(budget)})"
        )
        if demands[name].test_mib:
            parts.append(f"{name}'s test ({mib(demands[name].test_mib)})")
    whole = [f"services.{n}.gpuMemory" for n in names if demands[n].budget_mib is None]
    budgeted = [f"services.{n}.gpuMemory" for n in names if demands[n].budget_mib is not None]
    budgeted += [f"services.{n}.test.gpuMemory" for n in names if demands[n].test_mib]
    hints: list[str] = []
    if whole:
        hints.append(f"set {_join(whole, 'and')}")
    if budgeted:
        hints.append(
            f"lower {_join(budgeted, 'or')}" + (f" to at most {mib(memory)}" if len(parts) == 1 else "")
        )
    last = demands[names[-1]]
    if len(names) > 1 and last.mode == "devices":
        hints.append(f"give services.{last.service}.gpu another device")
    elif len(names) > 1 and last.mode == "count":
        hints.append("give the host more GPUs (target.gpus)")
    total = f" = {mib(state.used[device])}" if len(parts) > 1 else ""
    return BudgetError(
        f"GPU {device} ({mib(memory)}) cannot hold {' + '.join(parts)}{total}: {_alternatives(hints)}",
        service=last.service,
        field="gpuMemory",
    )


def place(demands: Sequence[GpuDemand], devices: Sequence[Device]) -> Placement:
    """Every demand's devices: `all` every device, `devices` those named (by id or index), a count that
    many distinct devices packed by budget (largest first, best fit, ties in device order; backtracking
    where best fit alone does not fit). Each device holds the budgets placed on it, a demand without a
    budget its whole memory; a device asked for more raises BudgetError naming the services and numbers."""
    state = _State(devices)
    by_service = {d.service: d for d in demands}
    if len(by_service) != len(demands):
        raise ValueError("a service has two GPU demands")
    chosen: dict[str, tuple[str, ...]] = {}
    for demand in demands:
        if demand.mode != "count":
            chosen[demand.service] = _fixed_devices(demand, state)
            state.add(demand, chosen[demand.service])
    counts = sorted((d for d in demands if d.mode == "count"), key=_largest_first)
    for demand in counts:
        if not 1 <= demand.count <= len(state.order):
            raise BudgetError(
                f"{demand.service} asks for {demand.count} distinct GPUs, but there "
                f"{_gpus(len(state.order))}: lower services.{demand.service}.gpu or give the host more "
                "GPUs (target.gpus)",
                service=demand.service,
                field="gpu",
            )
    found = _search(counts, state)
    for demand, picked in zip(counts, found if found is not None else _greedy(counts, state)):
        chosen[demand.service] = picked
        state.add(demand, picked)
    for name in by_service:
        for device in chosen[name]:
            if device in state.holders:
                state.holders[device].append(name)
    for device in state.order:
        if state.used[device] > state.memory[device]:
            raise _overflow(device, state, by_service)
    return Placement(
        devices_of={d.service: chosen[d.service] for d in demands},
        used_mib=dict(state.used),
        memory_mib=dict(state.memory),
    )


def stop_first(fact: RolloutFacts, why: str) -> Rollout:
    """The old copy stops first: the interruption is the health check's start period (unknown without one)."""
    if fact.start_period_s == 0:
        why += "; the interruption is unknown (no health check start period)"
    return Rollout(STOP_FIRST, why, fact.start_period_s)


def decide_rollouts(
    facts: Sequence[RolloutFacts], demands: Sequence[GpuDemand], placement: Placement | None
) -> dict[str, Rollout]:
    """Per service (in start order; one-shot jobs are not among `facts`), the rollout it gets and why.

    Zero downtime needs an HTTP health check and published ports (the proxy hands the traffic over once the
    new copy is healthy) and, on a GPU, a budget and room on every device it uses for its second copy
    beside everything placed there and the second copies of the services before it that roll with zero
    downtime (all of them may hold two copies at once during one update). Otherwise the old copy stops
    first; a forced zero downtime that cannot have it raises BudgetError naming the numbers."""
    demand_of = {d.service: d for d in demands}
    doubled: dict[str, int] = {}  # device -> budgets of the zero-downtime services placed on it so far
    rollouts: dict[str, Rollout] = {}
    for fact in facts:
        rollouts[fact.service] = _decide(fact, demand_of.get(fact.service), placement, doubled)
    return rollouts


def _refuse(fact: RolloutFacts, why: str, hint: str) -> BudgetError:
    return BudgetError(
        f"{fact.service}: rollout zero-downtime {why}: {hint} or set services.{fact.service}.rollout: "
        "stop-first",
        service=fact.service,
        field="rollout",
    )


def _decide(
    fact: RolloutFacts, demand: GpuDemand | None, placement: Placement | None, doubled: dict[str, int]
) -> Rollout:
    if fact.requested not in ROLLOUT_MODES:
        raise ValueError(
            f"{fact.service}: rollout is one of {', '.join(ROLLOUT_MODES)}, got {fact.requested!r}"
        )
    forced = fact.requested == ZERO_DOWNTIME
    if fact.requested == STOP_FIRST:
        return stop_first(fact, "forced by rollout: stop-first")
    if not (fact.http_health and fact.published_ports):
        missing = "an HTTP health check" if not fact.http_health else "published ports"
        if forced:
            raise _refuse(
                fact,
                f"needs {missing}",
                f"add services.{fact.service}." + ("healthcheck.http" if not fact.http_health else "ports"),
            )
        reason = (
            "no HTTP health check: nothing tells the proxy when the new copy is ready"
            if not fact.http_health
            else "no published ports: no traffic for the proxy to hand over"
        )
        return stop_first(fact, reason)
    prefix = "forced by rollout: zero-downtime; " if forced else ""
    if demand is None:
        return Rollout(ZERO_DOWNTIME, f"{prefix}no GPU: the new copy starts beside the old one", 0)
    budget = demand.budget_mib
    if budget is None:
        if forced:
            raise _refuse(
                fact,
                "needs room for two copies, but without gpuMemory it takes the whole device",
                f"set services.{fact.service}.gpuMemory",
            )
        return stop_first(fact, "no gpuMemory: takes the whole device")
    devices = placement.devices_of.get(fact.service) if placement is not None else None
    known = devices is not None and placement is not None and all(d in placement.memory_mib for d in devices)
    if devices is None or placement is None or not known:
        where = (
            "the card is known only at deploy (profile auto)"
            if placement is None
            else "its devices are known only at deploy"
        )
        if forced:
            return Rollout(ZERO_DOWNTIME, f"{prefix}{where}, which checks the room", 0)
        return stop_first(fact, where)
    fits: list[str] = []
    for device in devices:
        memory = placement.memory_mib[device]
        # its own test job has exited before the new copy starts: the others' tests still count
        others = placement.used_mib[device] - budget - demand.test_mib + doubled.get(device, 0)
        total = others + 2 * budget
        numbers = f"{mib(budget)} x 2 + {mib(others)} of others"
        if total > memory:
            why = f"GPU {device} ({mib(memory)}) cannot hold {numbers} = {mib(total)}"
            if forced:
                raise _refuse(
                    fact, f"needs room for two copies, but {why}", f"lower services.{fact.service}.gpuMemory"
                )
            return stop_first(fact, f"no room for two copies: {why}")
        fits.append(f"GPU {device} ({mib(memory)}) holds {numbers}")
    for device in devices:
        doubled[device] = doubled.get(device, 0) + budget
    return Rollout(ZERO_DOWNTIME, f"{prefix}room for two copies: {', '.join(fits)}", 0)
