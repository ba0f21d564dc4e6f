"""What is copied to and runs on a GPU host: the preflight, the smoke runner, the shell scripts.

Standard library only, and the oldest Python the hosts have (3.8): `make lint` checks both (ruff with
target py38 and vermin on this folder, and tests/host/test_host_python.py imports and runs each runner
under `python -I -S`).
"""

from __future__ import annotations

from pathlib import Path

HOST_DIR = Path(__file__).resolve().parent
PREFLIGHT = HOST_DIR / "preflight.py"
NVML_FACTS = HOST_DIR / "nvml_facts.py"  # what the preflight imports from beside itself, besides the catalog
SMOKE_RUNNER = HOST_DIR / "smoke.py"
# The smoke runner and the modules it imports from beside itself: they travel together (to a host's
# runner folder, into a smoke Job's ConfigMap), name in that folder -> file here.
SMOKE_FILES: dict[str, Path] = {
    path.name: path for path in (SMOKE_RUNNER, HOST_DIR / "smoke_checklist.py", HOST_DIR / "smoke_io.py")
}
