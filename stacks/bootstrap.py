"""`python -m stacks ...` with whatever Python the reader has: the project's packages found, or set up.

stacks/__init__.py calls `ensure_runtime()` before its first third-party import. Only the command line is
guarded (`sys.argv[0]` is "-m" while `python -m stacks` imports the package); the Pulumi program, the tests
and any other importer get their own interpreter's packages untouched.

- The packages are there (Python 3.11+): nothing happens (a few `find_spec` lookups).
- This is not the project's `.venv` and `.venv/bin/python` exists: re-executed under it, arguments kept.
- There is no `.venv`: one line on stderr, then `python -m venv .venv` (with a Python 3.11+: this one, else
  python3.13, 3.12 or 3.11 on PATH) and `pip install -r requirements.txt` (the runtime packages, what
  planning needs, not the lint-and-test toolchain of requirements-dev.txt), the `.venv/.runtime` stamp
  `make` keeps too, then re-executed under it.
- The project's `.venv` lacks a package: the same install into it, then the command goes on.

Standard library only, Python 3.8 syntax (vermin, in `make lint`): an older interpreter gets this far and
then a sentence, not a SyntaxError. Failures are one line on stderr and exit 1.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
VENV = PROJECT_DIR / ".venv"
REQUIREMENTS = PROJECT_DIR / "requirements.txt"
RUNTIME_STAMP = ".runtime"  # in the venv; the Makefile's stamp for requirements.txt
MINIMUM = (3, 11)
# the import names of requirements.txt's packages
MODULES = (
    "pulumi",
    "pulumi_docker",
    "pulumi_command",
    "pulumi_kubernetes",
    "pynvml",
    "pydantic",
    "yaml",
    "docker",
)
REEXECUTED = "GPU_DEPLOY_BOOTSTRAPPED"  # set for the re-executed process: never a second exec
NEWER_PYTHONS = ("python3.13", "python3.12", "python3.11")


class BootstrapError(Exception):
    """One line for stderr; exit 1."""


def missing_modules() -> list[str]:
    return [name for name in MODULES if importlib.util.find_spec(name) is None]


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def in_venv(venv: Path = VENV) -> bool:
    return Path(sys.prefix).resolve() == venv.resolve()


def module_argv() -> list[str]:
    """`-m MODULE ARGS...` of this run (`stacks` unless the interpreter says otherwise)."""
    original = getattr(sys, "orig_argv", None)  # Python 3.10+
    module = "stacks"
    if original and "-m" in original[1:]:
        index = original.index("-m", 1)
        if index + 1 < len(original):
            module = original[index + 1]
    return ["-m", module, *sys.argv[1:]]


def version_text(info: tuple[object, ...]) -> str:
    return ".".join(str(part) for part in info[:2])


def new_enough_python() -> str:
    """This interpreter when it is 3.11+, else the newest python3.1x on PATH that is."""
    if sys.version_info >= MINIMUM:
        return sys.executable
    for name in NEWER_PYTHONS:
        found = shutil.which(name)
        if found:
            return found
    raise BootstrapError(
        f"gpu-deploy needs Python {version_text(MINIMUM)}+ and this is {version_text(sys.version_info)}; "
        f"no {', '.join(NEWER_PYTHONS)} on PATH either: install one and run again"
    )


def _run(argv: Sequence[str], what: str) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit status {result.returncode}"
        raise BootstrapError(f"{what} failed: {last}")


def install_runtime(python: Path, venv: Path = VENV, requirements: Path = REQUIREMENTS) -> None:
    """requirements.txt into the venv, then the stamp `make` reads."""
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(requirements),
        ],
        f"pip install -r {requirements.name} into {venv.name}",
    )
    (venv / RUNTIME_STAMP).touch()


def create_venv(venv: Path = VENV) -> Path:
    base = new_enough_python()
    _run([base, "-m", "venv", str(venv)], f"{Path(base).name} -m venv {venv.name}")
    return venv_python(venv)


def say(message: str) -> None:
    print(f"gpu-deploy: {message}", file=sys.stderr, flush=True)


def ensure_runtime() -> None:
    """See the module docstring; returns when the command can go on, exits 1 with one line otherwise."""
    if sys.argv[:1] != ["-m"]:  # imported, not the command line
        return
    if sys.version_info >= MINIMUM and not missing_modules():
        return
    try:
        _ensure_runtime()
    except BootstrapError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def _ensure_runtime() -> None:
    rel = os.path.relpath(VENV)
    if in_venv():
        if sys.version_info < MINIMUM:
            raise BootstrapError(
                f"{rel} is Python {version_text(sys.version_info)}; gpu-deploy needs "
                f"{version_text(MINIMUM)}+: remove {rel} (make clean) and run again"
            )
        missing = missing_modules()
        say(f"{rel} lacks {', '.join(missing)}: installing {REQUIREMENTS.name} into it (once)")
        install_runtime(Path(sys.executable))
        importlib.invalidate_caches()
        still = missing_modules()
        if still:
            raise BootstrapError(f"{REQUIREMENTS.name} installed, yet {', '.join(still)} is missing")
        return
    if os.environ.get(REEXECUTED):
        raise BootstrapError(f"{venv_python()} did not start as {rel}'s Python: remove {rel} and run again")
    python = venv_python()
    if not python.exists():
        say(f"no {rel}: creating it with the planning packages ({REQUIREMENTS.name}; once, about a minute)")
        python = create_venv()
        install_runtime(python)
    os.environ[REEXECUTED] = "1"
    sys.stdout.flush()
    os.execv(str(python), [str(python), *module_argv()])  # noqa: S606 (the project's own interpreter)
