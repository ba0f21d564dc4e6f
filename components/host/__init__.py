"""What is copied to and runs on a GPU host: the preflight, the smoke runner, the shell scripts.

Standard library only, and the oldest Python the hosts have (3.8): `make lint` checks both (ruff with
target py38 on this folder, and tests/host/test_host_python.py imports each runner under `python -I -S`).
"""

from __future__ import annotations

from pathlib import Path

HOST_DIR = Path(__file__).resolve().parent
PREFLIGHT = HOST_DIR / "preflight.py"
SMOKE_RUNNER = HOST_DIR / "smoke.py"
