"""What is copied to and runs on a GPU host: the preflight, the smoke runner, the shell scripts.

Standard library only, and the oldest Python the hosts have (3.8): `make lint` checks both (ruff with
target py38 and vermin on this folder, and tests/host/test_host_python.py imports and runs each runner
under `python -I -S`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
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

REEXECUTED = "GPU_DEPLOY_BOOTSTRAPPED"  # as stacks/bootstrap.py sets it: never a second exec


def rerun_in_checkout_venv() -> None:
    """`python -m components.host.preflight` in a checkout, with a Python that lacks pynvml: run again under
    the checkout's .venv when it has one (`make preflight` or any `python -m stacks` sets it up), so the
    README's command reads the GPU instead of reporting no bindings. Only while `-m` locates a module of
    this package (sys.argv[0] is "-m" then), only a named one (Python 3.10+: sys.orig_argv); a copy on a
    host has no package and no .venv."""
    original = getattr(sys, "orig_argv", None)
    if sys.argv[:1] != ["-m"] or not original or "-m" not in original[1:]:
        return
    module = original[original.index("-m", 1) + 1 :][:1]
    venv = HOST_DIR.parent.parent / ".venv"
    python = venv / "bin" / "python"
    if module != ["components.host.preflight"] or importlib.util.find_spec("pynvml") is not None:
        return
    if python.exists() and Path(sys.prefix).resolve() != venv.resolve() and not os.environ.get(REEXECUTED):
        os.environ[REEXECUTED] = "1"
        os.execv(str(python), [str(python), "-m", module[0], *sys.argv[1:]])  # noqa: S606 (the checkout's own)


rerun_in_checkout_venv()
