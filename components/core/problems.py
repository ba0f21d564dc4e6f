"""What a rule finds: the spec field it is about and what is wrong there.

Rules in components/core return a list of `Problem`s instead of raising, so each caller words the field
its own way: the stack configuration maps the field to its key (`gpu-deploy:gpuSharing.replicas`), and a
component raises the first problem as a ValueError. Standard library only (Python 3.8 syntax)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    field: str  # the spec field, dotted below it: `replicas`, `per_product.NVIDIA-A2`, `secret_env.TOKEN`
    message: str


def raise_first(problems: Iterable[Problem], prefix: str = "") -> None:
    """A component's cheap assertion: the first problem, if any, as a ValueError."""
    for problem in problems:
        raise ValueError(f"{prefix}{problem.message}")
