"""Fixtures the whole unit suite shares: the shipped stacks' plans, the fake NVML with its cards, the
GPU probe service, and the golden-file switch.

- `shipped_plan(stack, preview=False)`: the offline plan of a shipped stack, made once a session
  (tests/plans.py holds the one cache). Tests read it and never change it; at the end of the session
  the suite fails if one did.
- `fake_nvml(machine)`: a fresh fake `pynvml` (tests/fake_nvml/pynvml.py) in sys.modules describing
  `machine` (tests/fake_nvml/cards.py builds one from the shared cards); returns the module.
- `gpu_probe`: images/gpu-probe/server.py running on a free local port, no driver and no torch.
- `--update-golden` (or GOLDEN_UPDATE=1): rewrite tests/golden/ from what the program makes now.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.fake_nvml.cards import FakeNvml
from tests.golden_files import Golden
from tests.plans import ShippedPlan, changed_shipped_plans
from tests.plans import shipped_plan as _shipped_plan
from tests.probe import FAKE_NVML, RunningProbe, running_probe


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the golden files under tests/golden/ instead of comparing with them",
    )


@pytest.fixture(scope="session")
def golden(request: pytest.FixtureRequest) -> Golden:
    update = bool(request.config.getoption("--update-golden")) or os.environ.get("GOLDEN_UPDATE") == "1"
    return Golden(update)


@pytest.fixture(scope="session")
def shipped_plan() -> ShippedPlan:
    return _shipped_plan


@pytest.fixture(scope="session", autouse=True)
def _shared_plans_stay_unchanged() -> Iterator[None]:
    yield
    changed = changed_shipped_plans()
    assert not changed, f"a test changed the shared plan of {', '.join(changed)}: deepcopy it first"


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    """Put a fresh fake pynvml in sys.modules; returns a function that describes the host (None: no
    driver) and gives back the module."""
    spec = importlib.util.spec_from_file_location("pynvml", FAKE_NVML / "pynvml.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monkeypatch.delenv("FAKE_NVML_JSON", raising=False)

    def describe(machine: dict[str, Any] | None) -> ModuleType:
        if machine is None:
            monkeypatch.delenv("FAKE_NVML_JSON", raising=False)
        else:
            monkeypatch.setenv("FAKE_NVML_JSON", json.dumps(machine))
        return module

    return describe


@pytest.fixture
def gpu_probe(tmp_path: Path) -> Iterator[RunningProbe]:
    """The real GPU probe service on a free local port, on a machine without a driver or torch."""
    with running_probe(tmp_path, None) as running:
        yield running
