"""GPU memory budgets at plan time, and the rollout each service gets, for both targets.

The arithmetic is components/core/gpu_memory's; here the stack's services become its demands and facts,
and each refusal a ConfigError naming the key (`gpu-deploy:services.app.gpuMemory: GPU 0 (24576 MiB) cannot
hold ...`), raised while the stack is validated, before any resource exists (stacks/config/stack.py; for
`profile: auto` on this machine, once the preflight has named the card: resolution.resolve_profile).

Docker: the host has `target.gpus` GPUs of the stack's card; every GPU service (jobs too: one that runs
again during an update holds its memory beside the services; a service's test job beside its running copy,
on its devices: GpuDemand.test_mib) is placed on them by `gpu_memory.place`, and
`gpu_memory.decide_rollouts` gives every long-running service its rollout. Under `auto` on an SSH host the
card is known only at deploy: no placement now (stacks/docker.py places on the preflight's devices then).

Kubernetes, per card type (each card's nodes hold its own services), with R the time-slicing or MPS
replicas of one GPU (the largest of gpuSharing.replicas and the card's perProduct override, as
sharing.gpu_capacity counts them) and G = gpuSharing.gpusPerNode:
- a budget is at most the card's memory; with a migProfile at most that MIG instance's memory
  (gpu_memory.mig_memory_mib); with MPS at most the card's memory / R (MPS gives each client that share);
- time-slicing: the device plugin may put any R pods on one GPU and isolates no memory, so the R largest
  pod budgets (a pod without one: the whole card; a pod asking for n GPUs counts n times) must fit one GPU;
- per node: the budgets of all GPU pods (MPS: a pod without one holds its share) fit G GPUs.
MIG instances are left out of the sums (each is its own memory), as is everything under migStrategy single
(which instance a pod gets is the node's partition, unknown here).
A GPU workload rolls with zero downtime (RollingUpdate, maxSurge 1, maxUnavailable 0: the surge pod starts
beside the old one) only when a spare GPU resource is left for its surge pod, beside those of the workloads
before it that roll so too, and the surge pods' budgets fit by the same rules; else Recreate, the old pod
stops first. A workload without a GPU keeps the Kubernetes default rolling update unless its rollout is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from components.core.catalog import PROFILES, GpuProfile
from components.core.gpu_memory import (
    STOP_FIRST,
    ZERO_DOWNTIME,
    BudgetError,
    Device,
    GpuDemand,
    Placement,
    Rollout,
    RolloutFacts,
    decide_rollouts,
    mib,
    mig_memory_mib,
    place,
    stop_first,
)
from components.core.sharing import SHARED_STRATEGIES, SharingSpec, gpu_capacity
from components.core.vocabulary import mig_resource
from stacks.config.cards import card_profile
from stacks.config.errors import ConfigError
from stacks.config.resolution import (
    ResolvedStack,
    kubernetes_gpu_demand,
    kubernetes_sharing,
    service_card,
    start_order,
)
from stacks.config.sections import DockerTarget, GpuSharingConfig
from stacks.config.service import Service

if TYPE_CHECKING:
    from stacks.config.stack import StackConfig


def rollout_facts(config: StackConfig) -> list[RolloutFacts]:
    """What decides each long-running service's rollout, in start order (one-shot jobs run once)."""
    facts = []
    for name in start_order(config):
        svc = config.services[name]
        if not svc.one_shot:
            check = svc.healthcheck
            facts.append(
                RolloutFacts(
                    service=name,
                    requested=svc.rollout,
                    http_health=check is not None and check.http is not None,
                    # the proxy carries TCP only: a UDP port keeps the service on its own ports (stop first)
                    published_ports=bool(svc.ports) and all(port.protocol == "tcp" for port in svc.ports),
                    start_period_s=check.start_period if check is not None else 0,
                )
            )
    return facts


# ---------------------------------------------------------------- Docker
def docker_gpu_demands(config: StackConfig, profile: GpuProfile | None) -> list[GpuDemand]:
    """Every enabled GPU service's demand, jobs included, in start order; none where the card has no GPU
    (the cpu profile, or `auto` that found none: the services run on the CPU)."""
    if profile is not None and not profile.is_gpu:
        return []
    demands = []
    for name in start_order(config):
        svc = config.services[name]
        if svc.gpu.wants_gpu:
            request = svc.gpu
            test = (svc.test.gpu_memory or svc.gpu_memory or 0) if svc.test is not None else 0
            demands.append(
                GpuDemand(name, request.mode, request.count, request.device_ids, svc.gpu_memory, test)
            )
    return demands


def plan_devices(config: StackConfig, profile: GpuProfile | None) -> list[Device] | None:
    """The GPUs the plan assumes: `target.gpus` of the stack's card; None while the card is unknown."""
    target = config.target
    if profile is None or not profile.is_gpu or not isinstance(target, DockerTarget):
        return None
    return [Device(str(index), profile.memory_mib) for index in range(target.gpus)]


def _known_at_plan(demand: GpuDemand) -> bool:
    """A device list of GPU UUIDs names devices only the host's preflight knows."""
    return demand.mode != "devices" or all(
        d.isdigit() or d.startswith("MIG-") or ":" in d for d in demand.device_ids
    )


def docker_decisions(config: StackConfig, profile: GpuProfile | None) -> dict[str, Rollout]:
    """Place the GPU services on the plan's devices and decide every rollout; a refusal is a ConfigError
    naming the service's key (gpuMemory, gpu or rollout)."""
    demands = docker_gpu_demands(config, profile)
    devices = plan_devices(config, profile)
    try:
        placement: Placement | None = None
        if devices is not None:
            placement = place([d for d in demands if _known_at_plan(d)], devices)
        return decide_rollouts(rollout_facts(config), demands, placement)
    except BudgetError as err:
        key = f"services.{err.service}.{err.field}" if err.service else "target.gpus"
        raise ConfigError(key, str(err)) from None


def docker_rollouts(stack: ResolvedStack) -> dict[str, Rollout]:
    """Every long-running service's rollout on a Docker host (start order), by the stack's resolved card."""
    return docker_decisions(stack.config, stack.profile)


# ---------------------------------------------------------------- Kubernetes
@dataclass(frozen=True, eq=False)
class _Card:
    """One card type's GPU workloads and what its nodes offer."""

    profile: GpuProfile
    sharing: SharingSpec
    gpus: int  # per node
    services: dict[str, Service]  # its GPU workloads, in start order

    @property
    def replicas(self) -> int:
        """How many pods one GPU runs at once (1 without time-slicing or MPS)."""
        if self.sharing.strategy not in SHARED_STRATEGIES:
            return 1
        products = self.profile.gpu_products
        overrides = [self.sharing.per_product[p] for p in products if p in self.sharing.per_product]
        return max([self.sharing.replicas, *overrides])

    @property
    def capacity(self) -> int:
        return gpu_capacity(self.sharing, self.profile, self.gpus)

    def summed(self, svc: Service) -> bool:
        """Whether a service's pods hold memory of the card's GPUs (not of MIG instances)."""
        return self.sharing.mig_strategy == "none" and svc.mig_profile is None

    def pod_mib(self, svc: Service) -> int:
        """What one of a service's GPU resources holds: its budget; without one the whole card, or the
        MPS share."""
        if svc.gpu_memory is not None:
            return svc.gpu_memory
        memory = self.profile.memory_mib
        return memory // self.replicas if self.sharing.strategy == "mps" else memory


def _cards(config: StackConfig) -> list[_Card]:
    demand = kubernetes_gpu_demand(config)
    gpus = (config.gpu_sharing or GpuSharingConfig()).gpus_per_node
    order = [n for n in start_order(config) if n in demand and config.services[n].gpu.count > 0]
    cards: list[_Card] = []
    for key in dict.fromkeys(service_card(config, n) for n in order):
        profile = card_profile(config, key)
        own = {n: config.services[n] for n in order if service_card(config, n) == key}
        cards.append(_Card(profile, kubernetes_sharing(config, profile), gpus, own))
    return cards


def _slices(card: _Card, extra: Sequence[tuple[str, int]] = ()) -> list[tuple[str, int]]:
    """(service, MiB) per GPU resource the card's pods hold (plus `extra`), largest first, ties in order."""
    held = [
        (name, card.pod_mib(svc))
        for name, svc in card.services.items()
        if card.summed(svc)
        for _ in range(svc.gpu.count * svc.replicas)
    ]
    return sorted([*held, *extra], key=lambda s: -s[1])


def _named(slices: Sequence[tuple[str, int]]) -> str:
    """`kokoro (8192 MiB) x 2 + whisper (4096 MiB)`."""
    counted: dict[tuple[str, int], int] = {}
    for item in slices:
        counted[item] = counted.get(item, 0) + 1
    return " + ".join(f"{n} ({mib(m)})" + (f" x {c}" if c > 1 else "") for (n, m), c in counted.items())


def _memory_problem(card: _Card, extra: Sequence[tuple[str, int]] = ()) -> tuple[list[str], str] | None:
    """(the services named, why) when the pods' budgets do not fit: the R largest on one GPU with
    time-slicing, all of them on a node's GPUs."""
    slices = _slices(card, extra)
    name, memory = card.profile.display_name, card.profile.memory_mib
    if card.sharing.strategy == "time-slicing":
        top = slices[: card.replicas]
        if sum(m for _, m in top) > memory:
            return list(dict.fromkeys(n for n, _ in top)), (
                f"time-slicing runs any {card.replicas} pods on one {name} ({mib(memory)}), and "
                f"{_named(top)} = {mib(sum(m for _, m in top))}"
            )
    total = sum(m for _, m in slices)
    if total > card.gpus * memory:
        return list(dict.fromkeys(n for n, _ in slices)), (
            f"a node's {card.gpus} x {name} ({mib(card.gpus * memory)}) cannot hold {_named(slices)} = "
            f"{mib(total)}"
        )
    return None


def _memory_hint(card: _Card, names: Sequence[str]) -> tuple[str, str]:
    """(the key to name, what to change): the budgets the named services lack, else theirs to lower."""
    unset = [n for n in names if n in card.services and card.services[n].gpu_memory is None]
    if unset:
        keys = " and ".join(f"services.{n}.gpuMemory" for n in unset)
        return f"services.{unset[-1]}.gpuMemory", f"set {keys}"
    keys = " or ".join(f"services.{n}.gpuMemory" for n in names)
    return f"services.{names[-1]}.gpuMemory", f"lower {keys}"


def kubernetes_budget_problems(config: StackConfig) -> list[ConfigError]:
    """Every budget that does not fit its card, its MIG instance, its MPS share, a time-sliced GPU or a
    node, each naming the key to change."""
    problems: list[ConfigError] = []
    for card in _cards(config):
        name, memory = card.profile.display_name, card.profile.memory_mib
        for service, svc in card.services.items():
            key, budget = f"services.{service}.gpuMemory", svc.gpu_memory
            if budget is None:
                continue
            if budget > memory:
                problems.append(
                    ConfigError(key, f"{mib(budget)} is more than a {name} holds ({mib(memory)})")
                )
            elif svc.mig_profile is not None and budget > mig_memory_mib(svc.mig_profile):
                problems.append(
                    ConfigError(
                        key,
                        f"{mib(budget)} is more than a {svc.mig_profile} MIG instance holds "
                        f"({mib(mig_memory_mib(svc.mig_profile))}): lower it or pick a larger "
                        f"services.{service}.migProfile",
                    )
                )
            elif card.summed(svc) and card.sharing.strategy == "mps" and budget > memory // card.replicas:
                problems.append(
                    ConfigError(
                        key,
                        f"{mib(budget)} is more than an MPS share holds: a {name} ({mib(memory)}) / "
                        f"{card.replicas} replicas = {mib(memory // card.replicas)}: lower it or "
                        "gpuSharing.replicas",
                    )
                )
        found = _memory_problem(card)
        if found is not None:
            key, hint = _memory_hint(card, found[0])
            problems.append(ConfigError(key, f"{found[1]}: {hint}"))
    return problems


def _resource(card: _Card, svc: Service) -> str:
    return mig_resource(svc.mig_profile) if svc.mig_profile else card.sharing.resource_name


def _in_use(card: _Card, resource: str) -> tuple[int, int]:
    """(GPU resources of this kind the card's pods ask for, the most a node advertises)."""
    used = sum(s.gpu.count * s.replicas for s in card.services.values() if _resource(card, s) == resource)
    if resource == card.sharing.resource_name:
        return used, card.capacity
    mig = resource.removeprefix("nvidia.com/mig-")
    return used, card.gpus * card.profile.mig_profiles.get(mig, 0)


def kubernetes_decisions(config: StackConfig) -> dict[str, Rollout]:
    """Every workload's rollout, in start order; a forced zero downtime without room is a ConfigError."""
    cards = _cards(config)
    card_of = {name: index for index, card in enumerate(cards) for name in card.services}
    surge: dict[int, list[tuple[str, int]]] = {i: [] for i in range(len(cards))}  # surge pods' (svc, MiB)
    surge_count: dict[tuple[int, str], int] = {}  # (card index, resource) -> surge GPU resources so far
    rollouts: dict[str, Rollout] = {}
    for fact in rollout_facts(config):
        index = card_of.get(fact.service)
        if index is None:
            rollouts[fact.service] = _without_gpu(fact)
        else:
            rollouts[fact.service] = _gpu_rollout(fact, cards[index], surge[index], surge_count, index)
    return rollouts


RECREATE = "Recreate: "  # how the whys on a cluster begin: the Deployment strategy
ROLLING = "RollingUpdate maxSurge 1, maxUnavailable 0: "


def _without_gpu(fact: RolloutFacts) -> Rollout:
    if fact.requested == STOP_FIRST:
        return stop_first(fact, f"{RECREATE}forced by rollout: stop-first")
    if fact.requested == ZERO_DOWNTIME:
        return Rollout(ZERO_DOWNTIME, f"{ROLLING}forced by rollout: zero-downtime", 0)
    return Rollout(ZERO_DOWNTIME, "no GPU: Kubernetes' default rolling update starts the new pod first", 0)


def _gpu_rollout(
    fact: RolloutFacts,
    card: _Card,
    surge: list[tuple[str, int]],
    surge_count: dict[tuple[int, str], int],
    index: int,
) -> Rollout:
    svc = card.services[fact.service]
    forced = fact.requested == ZERO_DOWNTIME
    if fact.requested == STOP_FIRST:
        return stop_first(fact, f"{RECREATE}forced by rollout: stop-first")
    if not fact.http_health:
        return stop_first(fact, f"{RECREATE}no HTTP health check: nothing tells when the new pod is ready")
    if not fact.published_ports:
        return stop_first(fact, f"{RECREATE}no ports: no traffic to move to a new pod")
    resource = _resource(card, svc)
    used, most = _in_use(card, resource)
    extra = surge_count.get((index, resource), 0)
    own = [(fact.service, card.pod_mib(svc))] * svc.gpu.count if card.summed(svc) else []
    found = _memory_problem(card, [*surge, *own])
    key, hint = f"services.{fact.service}.rollout", "raise gpuSharing.gpusPerNode"
    if card.sharing.strategy in SHARED_STRATEGIES and resource == card.sharing.resource_name:
        hint = "raise gpuSharing.replicas or gpuSharing.gpusPerNode"
    if used + extra + svc.gpu.count > most:
        problem = f"no spare {resource} for a surge pod ({used + extra} of {most} in use)"
    elif card.summed(svc) and card.sharing.strategy == "time-slicing" and svc.gpu_memory is None:
        problem, hint = "no gpuMemory: takes the whole device", f"set services.{fact.service}.gpuMemory"
    elif found is not None:
        problem, hint = f"no room for a surge pod: {found[1]}", _memory_hint(card, found[0])[1]
    else:
        surge.extend(own)
        surge_count[(index, resource)] = extra + svc.gpu.count
        prefix = "forced by rollout: zero-downtime; " if forced else ""
        return Rollout(
            ZERO_DOWNTIME,
            f"{ROLLING}{prefix}a spare {resource} for the surge pod ({used + extra} of {most} in use) and "
            "room for its memory",
            0,
        )
    if forced:
        raise ConfigError(
            key,
            f"zero-downtime needs a surge pod beside the old one, but {problem}: {hint}, or set "
            f"services.{fact.service}.rollout: stop-first",
        )
    return stop_first(fact, f"{RECREATE}{problem}")


def kubernetes_rollouts(stack: ResolvedStack) -> dict[str, Rollout]:
    """Every workload's rollout on the cluster (start order)."""
    return kubernetes_decisions(stack.config)


# ---------------------------------------------------------------- the plan-time check
def check_budgets(config: StackConfig, profile: GpuProfile | None = None) -> None:
    """Refuse budgets that do not fit, and a forced zero downtime without room, as one ConfigError: on a
    Docker host by `profile` (the stack's named card when not given; nothing to place under `auto`), on a
    cluster by each service's card."""
    if isinstance(config.target, DockerTarget):
        if profile is None and config.profile != "auto":
            profile = PROFILES["cpu"] if config.profile == "cpu" else card_profile(config, config.profile)
        proxy_rules(config, docker_decisions(config, profile))
        return
    for problem in kubernetes_budget_problems(config):
        raise problem
    kubernetes_decisions(config)


def proxy_rules(config: StackConfig, decisions: dict[str, Rollout]) -> None:
    """What the reverse proxy (components/docker/proxy.py) cannot carry, refused before any resource: a
    service named `proxy` (the proxy's container is `<stack>-proxy`), and one host port published on two
    addresses by zero-downtime services (the proxy listens on the host port inside its container, once)."""
    if "proxy" in config.services:
        raise ConfigError(
            "services.proxy",
            "the name of the stack's reverse proxy (container <stack>-proxy): rename the service",
        )
    seen: dict[tuple[int, str], str] = {}
    for name, svc in config.services.items():
        if not svc.enabled or name not in decisions or decisions[name].mode != ZERO_DOWNTIME:
            continue
        for port in svc.ports:
            key = (port.host_port, port.protocol)
            if key in seen:
                raise ConfigError(
                    f"services.{name}.ports",
                    f"host port {port.host_port} is published by {seen[key]} too: zero-downtime services "
                    "reach the host through the one reverse proxy, which listens on each host port once; "
                    f"use another port or set services.{name}.rollout: stop-first",
                )
            seen[key] = name
