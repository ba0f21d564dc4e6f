"""Turns a validated stack configuration into a deployment: one module per target kind."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import Any

from stacks.bootstrap import ensure_runtime

ensure_runtime()  # `python -m stacks` with a Python lacking the packages: re-run under .venv (or set it up)

import pulumi  # noqa: E402 (after the guard: its packages may only exist in .venv)

from stacks.config import (  # noqa: E402
    ConfigError,
    ResolvedStack,
    read_pulumi_config,
    resolve_profile,
    secure_paths,
    validate_with_secrets,
)


def deploy(stack: ResolvedStack) -> None:
    """Hand the stack to its target's module, imported on use: a stack loads only its own provider SDK."""
    importlib.import_module(f"stacks.{stack.config.target.kind}").deploy(stack)


def detect_local_card() -> dict[str, Any]:
    """The preflight's auto-detection on this machine (the Docker host for `host: local`): its JSON report,
    which names the card it found (named, or derived from what NVML reports)."""
    result = subprocess.run(
        [sys.executable, "-m", "components.host.preflight", "--profile", "auto", "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise ConfigError("profile", f"auto: the preflight failed: {result.stderr.strip()}") from None
    if report.get("profile") is None:  # a card no supported CUDA serves: the preflight says why
        names = ", ".join(g["name"] for g in report.get("gpus", [])) or "no GPU"
        why = "; ".join(report.get("problems") or []) or "no profile matches it"
        raise ConfigError("profile", f"auto: found {names}: {why}")
    return dict(report)


def load() -> ResolvedStack:
    """Read, validate and resolve this stack's config; raises ConfigError before any resource exists."""
    raw, secret_keys = read_pulumi_config()
    config = validate_with_secrets(raw, secret_keys, secure_paths(pulumi.get_stack()))
    detected = None
    if config.profile == "auto" and config.target.is_local:
        detected = detect_local_card()
    profile, warnings = resolve_profile(config, detected)
    return ResolvedStack(
        stack=pulumi.get_stack(),
        config=config,
        profile=profile,
        secret_keys=secret_keys,
        warnings=tuple(warnings),
    )


def main() -> None:
    """The program `pulumi up` runs: validate everything, then hand the stack to its target."""
    try:
        stack = load()
    except ConfigError as err:
        raise pulumi.RunError(str(err)) from None
    for warning in stack.warnings:
        pulumi.log.warn(warning)
    deploy(stack)
