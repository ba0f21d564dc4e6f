"""Where the offline diff's plans come from besides this checkout: the repository at a git ref.

`python -m stacks diff STACK --against GIT_REF` plans the stack from a detached worktree of GIT_REF (its
code and its config), in a fresh interpreter, and compares that plan with the working tree's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stacks.plan import PlanError


class DiffError(PlanError):
    """A plan for the diff could not be made: exit code 1."""


class DiffConfigError(Exception):
    """A config error in one of the plans (the one line): exit code 2."""


def _git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise DiffError(f"git {' '.join(args)}: {lines[-1] if lines else f'exit {result.returncode}'}")
    return result.stdout.strip()


@contextlib.contextmanager
def checkout(project_dir: Path, ref: str) -> Iterator[Path]:
    """The project directory as it is at `ref`: a detached worktree, removed afterwards."""
    top = Path(_git(project_dir, "rev-parse", "--show-toplevel"))
    prefix = _git(project_dir, "rev-parse", "--show-prefix")
    holder = Path(tempfile.mkdtemp(prefix="gpu-deploy-diff-"))
    tree = holder / "tree"
    try:
        _git(top, "worktree", "add", "--detach", str(tree), ref)
        try:
            yield tree / prefix
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)], cwd=top, capture_output=True, check=False
            )
    finally:
        shutil.rmtree(holder, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=top, capture_output=True, check=False)


def plan_json(project_dir: Path, stack: str, where: str) -> dict[str, Any]:
    """`python -m stacks plan STACK --json` run in `project_dir` with this interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the code at project_dir, only
    result = subprocess.run(
        [sys.executable, "-m", "stacks", "plan", stack, "--json"],
        cwd=project_dir,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    if result.returncode == 2:  # the plan's config-error exit code
        raise DiffConfigError(f"{errors[-1] if errors else 'config error'} ({where})")
    if result.returncode != 0:
        raise DiffError(f"the plan {where} failed: {errors[-1] if errors else f'exit {result.returncode}'}")
    try:
        plan: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError as err:
        raise DiffError(f"the plan {where} printed no JSON: {err}") from None
    return plan


def empty_plan(stack: str) -> dict[str, Any]:
    return {"stack": stack, "resources": [], "outputs": {}}


def plan_at(project_dir: Path, ref: str, stack: str) -> dict[str, Any] | None:
    """The plan of `stack` from the code and config at git `ref`; None when the stack is not there."""
    with checkout(project_dir, ref) as tree:
        if not (tree / f"Pulumi.{stack}.yaml").is_file():
            return None
        return plan_json(tree, stack, f"Pulumi.{stack}.yaml at {ref}")
