"""components/core/gpu_memory.py: budget arithmetic, placement and the rollout each service gets.

Examples pin the exact one-line messages; property tests generate demands and devices and check that a
placement never over-commits a device, gives a count distinct devices, is refused only when no placement
exists (brute force over every assignment), and that the zero-downtime set always has room for every
one of its services' second copies."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.core.gpu_memory import (
    STOP_FIRST,
    ZERO_DOWNTIME,
    BudgetError,
    Device,
    GpuDemand,
    Placement,
    RolloutFacts,
    decide_rollouts,
    mib,
    mig_memory_mib,
    place,
)

P40 = 24576


def one_gpu(memory: int = P40) -> list[Device]:
    return [Device("0", memory)]


def count(service: str, budget: int | None, n: int = 1) -> GpuDemand:
    return GpuDemand(service, "count", count=n, budget_mib=budget)


def facts(service: str, requested: str = "auto", *, http: bool = True, ports: bool = True, start: int = 60):
    return RolloutFacts(service, requested, http_health=http, published_ports=ports, start_period_s=start)


# ---------------------------------------------------------------- arithmetic
def test_sizes_read_as_mib() -> None:
    assert mib(16384) == "16384 MiB"
    assert mig_memory_mib("1g.10gb") == 9536  # 10 GB, decimal: never more than the name promises
    assert mig_memory_mib("7g.80gb") == 76293
    with pytest.raises(ValueError, match=r"MIG profile such as 1g\.10gb"):
        mig_memory_mib("10gb")


def test_used_memory_is_the_sum_of_budgets_and_a_service_without_one_takes_the_device() -> None:
    placement = place([count("app", 8192), count("worker", 4096)], one_gpu())
    assert placement.used_mib == {"0": 12288}
    assert placement.memory_mib == {"0": P40}
    whole = place([GpuDemand("app", "all")], [Device("0", 100), Device("1", 200)])
    assert whole.used_mib == {"0": 100, "1": 200}
    assert whole.devices_of == {"app": ("0", "1")}


# ---------------------------------------------------------------- refusals: one line, services and numbers
def test_over_commit_names_the_services_and_the_numbers() -> None:
    with pytest.raises(BudgetError) as err:
        place([count("app", 16384), count("worker", 12288)], one_gpu())
    assert str(err.value) == (
        "GPU 0 (24576 MiB) cannot hold app (16384 MiB) + worker (12288 MiB) = 28672 MiB: lower "
        "services.app.gpuMemory or services.worker.gpuMemory, or give the host more GPUs (target.gpus)"
    )
    assert (err.value.service, err.value.field) == ("worker", "gpuMemory")


def test_a_service_without_a_budget_is_told_to_set_one() -> None:
    with pytest.raises(BudgetError) as err:
        place(
            [count("app", None), GpuDemand("worker", "devices", device_ids=("0",), budget_mib=4096)],
            one_gpu(),
        )
    assert str(err.value) == (
        "GPU 0 (24576 MiB) cannot hold app (24576 MiB: no gpuMemory, the whole device) + worker (4096 MiB) "
        "= 28672 MiB: set services.app.gpuMemory, lower services.worker.gpuMemory, or give "
        "services.worker.gpu another device"
    )


def test_a_budget_above_the_device() -> None:
    with pytest.raises(
        BudgetError,
        match=r"^GPU 0 \(16384 MiB\) cannot hold vision \(20480 MiB\): lower "
        r"services\.vision\.gpuMemory to at most 16384 MiB$",
    ):
        place([count("vision", 20480)], one_gpu(16384))


def test_more_gpus_than_the_host_has() -> None:
    with pytest.raises(BudgetError) as err:
        place([count("train", 4096, n=2)], one_gpu())
    assert str(err.value) == (
        "train asks for 2 distinct GPUs, but there is 1 GPU (index 0): lower services.train.gpu or give the "
        "host more GPUs (target.gpus)"
    )
    assert err.value.field == "gpu"
    with pytest.raises(BudgetError, match=r"asks for GPU 3, but there are 2 GPUs \(indexes 0-1\)"):
        place([GpuDemand("a", "devices", device_ids=("3",))], [Device("0", 10), Device("1", 10)])


# ---------------------------------------------------------------- placement
def test_device_lists_name_ids_or_indexes() -> None:
    devices = [Device("GPU-aaa", P40), Device("GPU-bbb", P40)]
    placement = place(
        [
            GpuDemand("a", "devices", device_ids=("1",), budget_mib=100),
            GpuDemand("b", "devices", device_ids=("GPU-aaa", "0"), budget_mib=200),  # the same device twice
            GpuDemand("m", "devices", device_ids=("0:1",)),  # a MIG instance: its own memory
        ],
        devices,
    )
    assert placement.devices_of == {"a": ("GPU-bbb",), "b": ("GPU-aaa",), "m": ("0:1",)}
    assert placement.used_mib == {"GPU-aaa": 200, "GPU-bbb": 100}


def test_counts_get_distinct_devices_packed_by_budget() -> None:
    devices = [Device(str(i), 16384) for i in range(3)]
    placement = place(
        [count("small", 2048), count("whole", None), count("pair", 8192, n=2), count("mid", 6144)], devices
    )
    # whole devices first, then the largest budgets: best fit, ties in device order
    assert placement.devices_of == {"small": ("1",), "whole": ("0",), "pair": ("1", "2"), "mid": ("1",)}
    assert placement.used_mib == {"0": 16384, "1": 16384, "2": 8192}


def test_packing_backtracks_where_best_fit_alone_does_not_fit() -> None:
    # largest-first best fit puts 5 and 4 apart and cannot place the last 2; 5+3+2 / 4+4+2 fits
    devices = [Device("0", 10), Device("1", 10)]
    demands = [count(n, b) for n, b in [("a", 5), ("b", 4), ("c", 4), ("d", 3), ("e", 2), ("f", 2)]]
    placement = place(demands, devices)
    assert placement.used_mib == {"0": 10, "1": 10}
    assert sorted(placement.devices_of[n][0] for n in "abcdef") == ["0", "0", "0", "1", "1", "1"]


def test_placement_is_deterministic() -> None:
    devices = [Device(str(i), 24576) for i in range(4)]
    demands = [count(f"s{i}", 1024 * (i % 5 + 1), n=1 + i % 3) for i in range(9)]
    first = place(demands, devices)
    assert all(place(demands, devices) == first for _ in range(5))


# ---------------------------------------------------------------- rollouts
def test_rollout_modes_and_why() -> None:
    demands = [count("app", 4096), count("big", 12288)]
    placement = place(demands, one_gpu())
    rollouts = decide_rollouts(
        [facts("app", start=60), facts("big", start=600), facts("web"), facts("redis", http=False, start=0)],
        demands,
        placement,
    )
    assert rollouts["app"].mode == ZERO_DOWNTIME
    assert (
        rollouts["app"].why
        == "room for two copies: GPU 0 (24576 MiB) holds 4096 MiB x 2 + 12288 MiB of others"
    )
    assert rollouts["app"].interruption_s == 0
    # app's second copy took the room big's would need: 12288 x 2 + 4096 x 2 > 24576
    assert rollouts["big"].mode == STOP_FIRST
    assert rollouts["big"].why == (
        "no room for two copies: GPU 0 (24576 MiB) cannot hold 12288 MiB x 2 + 8192 MiB of others = 32768 MiB"
    )
    assert rollouts["big"].interruption_s == 600
    assert rollouts["web"].mode == ZERO_DOWNTIME
    assert rollouts["web"].why == "no GPU: the new copy starts beside the old one"
    assert rollouts["redis"].as_json() == {
        "mode": "stop-first",
        "why": "no HTTP health check: nothing tells the proxy when the new copy is ready; the interruption "
        "is unknown (no health check start period)",
        "interruptionS": 0,
    }


def test_rollout_reasons_for_stopping_first() -> None:
    demands = [count("whole", None), count("auto", 4096)]
    rollouts = decide_rollouts(
        [facts("forced", "stop-first"), facts("closed", ports=False), facts("whole"), facts("auto")],
        demands,
        None,
    )
    assert rollouts["forced"].why == "forced by rollout: stop-first"
    assert rollouts["closed"].why.startswith("no published ports")
    assert rollouts["whole"].why == "no gpuMemory: takes the whole device"
    assert rollouts["auto"].why == "the card is known only at deploy (profile auto)"
    assert {r.mode for r in rollouts.values()} == {STOP_FIRST}
    forced = decide_rollouts([facts("auto", "zero-downtime")], demands, None)["auto"]
    assert forced.mode == ZERO_DOWNTIME
    assert forced.why.startswith("forced by rollout: zero-downtime; the card is known only at deploy")


def test_a_forced_zero_downtime_without_room_is_refused_with_the_numbers() -> None:
    demands = [count("vision", 12288)]
    with pytest.raises(BudgetError) as err:
        decide_rollouts([facts("vision", "zero-downtime")], demands, place(demands, one_gpu(16384)))
    assert str(err.value) == (
        "vision: rollout zero-downtime needs room for two copies, but GPU 0 (16384 MiB) cannot hold 12288 MiB "
        "x 2 + 0 MiB of others = 24576 MiB: lower services.vision.gpuMemory or set services.vision.rollout: "
        "stop-first"
    )
    assert (err.value.service, err.value.field) == ("vision", "rollout")
    with pytest.raises(
        BudgetError, match=r"without gpuMemory it takes the whole device: set services\.w\.gpuMemory"
    ):
        decide_rollouts(
            [facts("w", "zero-downtime")], [count("w", None)], place([count("w", None)], one_gpu())
        )


# ---------------------------------------------------------------- properties
DEVICES = st.lists(st.sampled_from([8, 10, 16, 24]), min_size=1, max_size=3).map(
    lambda sizes: [Device(str(i), size) for i, size in enumerate(sizes)]
)


@st.composite
def demands(draw: st.DrawFn, devices: int) -> list[GpuDemand]:
    made = []
    for index in range(draw(st.integers(0, 4))):
        budget = draw(st.one_of(st.none(), st.integers(1, 14)))
        kind = draw(st.sampled_from(["count", "count", "count", "devices", "all"]))
        if kind == "count":
            made.append(
                GpuDemand(f"s{index}", "count", count=draw(st.integers(1, devices)), budget_mib=budget)
            )
        elif kind == "devices":
            ids = draw(st.lists(st.integers(0, devices - 1), min_size=1, max_size=devices, unique=True))
            made.append(GpuDemand(f"s{index}", "devices", device_ids=tuple(map(str, ids)), budget_mib=budget))
        else:
            made.append(GpuDemand(f"s{index}", "all", budget_mib=budget))
    return made


@st.composite
def stacks(draw: st.DrawFn) -> tuple[list[Device], list[GpuDemand]]:
    devices = draw(DEVICES)
    return devices, draw(demands(len(devices)))


def recount(placement: Placement, demands: Sequence[GpuDemand]) -> dict[str, int]:
    used = dict.fromkeys(placement.memory_mib, 0)
    for demand in demands:
        for device in placement.devices_of[demand.service]:
            memory = placement.memory_mib[device]
            used[device] += memory if demand.budget_mib is None else demand.budget_mib
    return used


def any_fit(devices: Sequence[Device], demands: Sequence[GpuDemand]) -> bool:
    """Brute force: some choice of distinct devices for every count fits every device."""
    ids = [d.id for d in devices]
    options = [
        list(itertools.combinations(ids, d.count))
        if d.mode == "count"
        else [ids if d.mode == "all" else list(d.device_ids)]
        for d in demands
    ]
    memory = {d.id: d.memory_mib for d in devices}
    for choice in itertools.product(*options):
        used = dict.fromkeys(ids, 0)
        for demand, chosen in zip(demands, choice, strict=True):
            for device in chosen:
                used[device] += memory[device] if demand.budget_mib is None else demand.budget_mib
        if all(used[d] <= memory[d] for d in ids):
            return True
    return False


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(stacks())
def test_placement_never_over_commits_and_is_refused_only_when_nothing_fits(
    stack: tuple[list[Device], list[GpuDemand]],
) -> None:
    devices, wanted = stack
    try:
        placement = place(wanted, devices)
    except BudgetError as err:
        assert "\n" not in str(err)
        assert err.service in {d.service for d in wanted}
        assert not any_fit(devices, wanted), f"refused, but a placement exists: {err}"
        return
    assert placement.used_mib == recount(placement, wanted)
    assert all(placement.used_mib[d] <= placement.memory_mib[d] for d in placement.memory_mib)
    for demand in wanted:
        chosen = placement.devices_of[demand.service]
        assert len(set(chosen)) == len(chosen)
        if demand.mode == "count":
            assert len(chosen) == demand.count


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    stacks(),
    st.lists(st.sampled_from(["auto", "auto", "zero-downtime", "stop-first"]), min_size=4, max_size=4),
)
def test_the_zero_downtime_set_always_has_room_for_two_copies(
    stack: tuple[list[Device], list[GpuDemand]], requested: list[str]
) -> None:
    devices, wanted = stack
    try:
        placement = place(wanted, devices)
    except BudgetError:
        return
    given_facts = [facts(d.service, requested[i]) for i, d in enumerate(wanted)]
    by_name = {d.service: d for d in wanted}

    def second_copies(names: Sequence[str]) -> dict[str, int]:
        extra = dict.fromkeys(placement.memory_mib, 0)
        for name in names:
            for device in placement.devices_of[name]:
                budget = by_name[name].budget_mib
                extra[device] += placement.memory_mib[device] if budget is None else budget
        return extra

    try:
        rollouts = decide_rollouts(given_facts, wanted, placement)
    except BudgetError as err:
        # a forced zero downtime was refused: without a budget, or with the zero-downtime services before
        # it, its second copy really does not fit
        forced = list(by_name).index(err.service)
        assert requested[forced] == "zero-downtime"
        prior = decide_rollouts(given_facts[:forced], wanted, placement)
        more = second_copies([*(n for n, r in prior.items() if r.mode == ZERO_DOWNTIME), err.service])
        assert by_name[err.service].budget_mib is None or any(
            placement.used_mib[d] + more[d] > m for d, m in placement.memory_mib.items()
        )
        return
    zero = [n for n, r in rollouts.items() if r.mode == ZERO_DOWNTIME]
    extra = second_copies(zero)
    for device, memory in placement.memory_mib.items():
        assert placement.used_mib[device] + extra[device] <= memory
    for name, rollout in rollouts.items():
        if rollout.why.startswith("no room for two copies"):
            # really no room: with the zero-downtime services before it, its second copy does not fit
            before = [n for n in zero if list(by_name).index(n) < list(by_name).index(name)]
            more = second_copies([*before, name])
            assert any(placement.used_mib[d] + more[d] > m for d, m in placement.memory_mib.items())
