"""components/core/workload_rules.py: what a service must be to run on Kubernetes, one owner per rule.

Each rule returns Problems naming the service field; the stack configuration turns the field into its
key (tests/stacks/test_kubernetes_stack.py, tests/kubernetes/test_smoke_job.py) and the components raise
the first (tests/kubernetes/test_components.py)."""

from __future__ import annotations

import pytest

from components.core.problems import Problem, raise_first
from components.core.workload_rules import (
    env_overlap_problems,
    fallback_problems,
    in_cluster_smoke_problems,
    mig_count_problems,
    probe_kind_problems,
    probe_timing_problems,
)


def test_a_probe_is_http_or_a_command() -> None:
    assert probe_kind_problems(has_http=True, has_command=False) == []
    assert probe_kind_problems(has_http=False, has_command=True) == []
    for both in (True, False):
        (problem,) = probe_kind_problems(has_http=both, has_command=both)
        assert problem.field == "healthcheck" and "exactly one" in problem.message


@pytest.mark.parametrize(
    ("interval", "timeout", "ok"), [(10, 5, True), (2, 1, True), (5, 5, False), (5, 0, False)]
)
def test_a_probe_times_out_before_its_next_period(interval: int, timeout: int, ok: bool) -> None:
    problems = probe_timing_problems(interval_s=interval, timeout_s=timeout)
    expected = f"a probe's timeout is at least 1s and shorter than its interval ({interval}s)"
    assert problems == ([] if ok else [Problem("healthcheck.timeout", expected)])


def test_a_variable_is_plain_or_secret() -> None:
    assert env_overlap_problems({"A": "1"}, {"B": "2"}) == []
    problems = env_overlap_problems({"B": "1", "A": "1", "C": "1"}, {"A": "x", "B": "y"})
    assert [p.field for p in problems] == ["secret_env.B", "secret_env.A"]  # in env's order
    assert {p.message for p in problems} == {"also set in env; keep one"}


def test_a_mig_profile_needs_a_count() -> None:
    assert mig_count_problems(None, 0) == []
    assert mig_count_problems("1g.10gb", 2) == []
    assert mig_count_problems("1g.10gb", 0) == [
        Problem("mig_profile", "needs gpu: the count of MIG instances")
    ]


def test_the_cpu_fallback_belongs_to_a_gpu_service() -> None:
    assert fallback_problems(cpu_fallback=True, wants_gpu=True, fallback_settings=["cpu_image"]) == []
    (no_gpu,) = fallback_problems(cpu_fallback=True, wants_gpu=False, fallback_settings=[])
    assert no_gpu == Problem("cpu_fallback", "is for a GPU service; this one has gpu: none")
    off = fallback_problems(cpu_fallback=False, wants_gpu=True, fallback_settings=["cpu_env", "run_on"])
    assert off == [
        Problem("cpu_env", "needs cpuFallback: true"),
        Problem("run_on", "needs cpuFallback: true"),
    ]


def test_only_http_checks_run_in_a_job() -> None:
    http = {"http": {"path": "/"}}
    assert in_cluster_smoke_problems([http, http]) == []
    problems = in_cluster_smoke_problems([http, {"file": {"path": "/x"}}, {"gpu": None}], start=3)
    assert [p.field for p in problems] == ["smoke", "smoke"]
    assert "check #4 is a file check" in problems[0].message
    assert "check #5 is a gpu check" in problems[1].message
    assert problems[0].message.startswith("on kubernetes only http checks run in-cluster")


def test_a_component_raises_the_first_problem() -> None:
    raise_first([])
    with pytest.raises(ValueError, match=r"^app: one$"):
        raise_first([Problem("a", "one"), Problem("b", "two")], "app: ")
