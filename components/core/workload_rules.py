"""What a service must be to run as a Kubernetes workload (and its checks in a Job beside it).

Both the stack configuration (stacks/config, which names the key) and the Kubernetes components (which
assert their arguments) check these; each rule returns `Problem`s whose field is the service's field as
the stack's Service model spells it (`cpu_fallback`, `secret_env.TOKEN`, `healthcheck.timeout`), and
whose message is what the stack's user reads after the key. Standard library only (Python 3.8)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from components.core.problems import Problem


def probe_kind_problems(*, has_http: bool, has_command: bool) -> list[Problem]:
    """A health check is an HTTP GET or a command, exactly one."""
    if has_http == has_command:
        return [Problem("healthcheck", 'give exactly one of "http" (path and port) or "command"')]
    return []


def probe_timing_problems(*, interval_s: int, timeout_s: int) -> list[Problem]:
    """A probe's timeout: at least a second (the kubelet's unit) and shorter than its period."""
    if not 1 <= timeout_s < interval_s:
        return [
            Problem(
                "healthcheck.timeout",
                f"a probe's timeout is at least 1s and shorter than its interval ({interval_s}s)",
            )
        ]
    return []


def env_overlap_problems(env: Mapping[str, Any], secret_env: Mapping[str, Any]) -> list[Problem]:
    """A variable is plain or secret, not both (the container would get one of them, silently)."""
    return [Problem(f"secret_env.{key}", "also set in env; keep one") for key in env if key in secret_env]


def mig_count_problems(mig_profile: str | None, gpu_count: int) -> list[Problem]:
    """A MIG profile needs a count: the pod asks for that many instances of it."""
    if mig_profile is not None and gpu_count < 1:
        return [Problem("mig_profile", "needs gpu: the count of MIG instances")]
    return []


def fallback_problems(
    *, cpu_fallback: bool, wants_gpu: bool, fallback_settings: Iterable[str]
) -> list[Problem]:
    """The CPU fallback is a second Deployment of a GPU service; its own settings need it on.
    `fallback_settings`: the fields of the fallback (`cpu_image`, `cpu_env`, `run_on`) that are set."""
    if cpu_fallback:
        return [] if wants_gpu else [Problem("cpu_fallback", "is for a GPU service; this one has gpu: none")]
    return [Problem(field, "needs cpuFallback: true") for field in fallback_settings]


def in_cluster_smoke_problems(checks: Sequence[Mapping[str, Any]], start: int = 1) -> list[Problem]:
    """Smoke checks run from a Job beside the pods (components/kubernetes/smoke_job.py): HTTP only.
    `start`: the number of the first check, in the messages."""
    problems: list[Problem] = []
    for index, check in enumerate(checks, start=start):
        kind = next((k for k in ("file", "gpu") if k in check), None)
        if kind is not None:
            problems.append(
                Problem(
                    "smoke",
                    "on kubernetes only http checks run in-cluster (a Job beside the pods has no docker "
                    f"exec into the service's container): check #{index} is a {kind} check; prove the GPU "
                    "through an HTTP endpoint instead (whenGpu: true keeps it to GPU pods)",
                )
            )
    return problems
