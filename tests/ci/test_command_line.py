"""The README's commands as a reader on a fresh clone runs them: `python3 -m stacks ...` and
`python3 -m components.host.preflight ...` with whatever Python is first on PATH, no venv activated.

A Python without the project's packages (the interpreter .venv was made from, or the system's) in a
clean environment: `python3 -m stacks list` re-runs itself under .venv (this checkout's, reused: no
install here); without a .venv it sets one up with requirements.txt (here an empty requirements file,
so the run is fast and ends with the one line naming what is still missing, never a traceback); a Python
older than 3.11 with no newer one on PATH gets one sentence. `make plan` installs requirements.txt only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stacks.plan import PROJECT_DIR

VENV = PROJECT_DIR / ".venv"


def real_executable(name: str) -> str | None:
    """The interpreter a command name runs (through a pyenv shim or a symlink), or None."""
    found = shutil.which(name)
    if found is None:
        return None
    probe = [found, "-c", "import sys; print(sys.executable)"]
    result = subprocess.run(probe, capture_output=True, text=True, check=False, timeout=30)
    return result.stdout.strip() or None if result.returncode == 0 else None


def old_pythons() -> list[str]:
    """Pythons older than 3.11 here: on PATH, else pyenv's."""
    named = [real_executable(f"python3.{minor}") for minor in (8, 9, 10)]
    pyenv = sorted(
        str(p)
        for p in Path.home().glob(".pyenv/versions/3.*/bin/python3")
        if p.parts[-3][:4] in {"3.8.", "3.9."} or p.parts[-3].startswith("3.10.")
    )
    return [p for p in [*named, *pyenv] if p]


def lacks_packages(python: str) -> bool:
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('pulumi') is not None)"
    return subprocess.run([python, "-c", probe], capture_output=True, check=False, timeout=30).returncode == 0


def bare_pythons() -> list[str]:
    """Interpreters here without the project's packages: .venv's base Python, the system's, a 3.8."""
    home = ""
    config = VENV / "pyvenv.cfg"
    if config.is_file():
        match = re.search(r"^home\s*=\s*(.+)$", config.read_text(), re.MULTILINE)
        home = match.group(1).strip() if match else ""
    candidates = [f"{home}/python3" if home else "", "/usr/bin/python3", *old_pythons()[:1]]
    found: list[str] = []
    for python in candidates:
        if python and os.access(python, os.X_OK) and python not in found and lacks_packages(python):
            found.append(python)
    return found


def clean_env(path: str = "/usr/local/bin:/usr/bin:/bin") -> dict[str, str]:
    """What a fresh login has: no VIRTUAL_ENV, no PYTHONPATH."""
    return {"PATH": path, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def expected_list() -> str:
    return run([sys.executable, "-m", "stacks", "list"], PROJECT_DIR, {**os.environ}).stdout


@pytest.mark.skipif(not VENV.is_dir(), reason="no .venv in this checkout")
@pytest.mark.parametrize("python", bare_pythons() or ["none"])
def test_a_python_without_the_packages_reruns_under_the_venv(python: str) -> None:
    if python == "none":
        pytest.skip("every Python here has the project's packages")
    result = run([python, "-m", "stacks", "list"], PROJECT_DIR, clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing to say: the venv was there
    assert result.stdout == expected_list()


def copy_of_stacks(tmp_path: Path, requirements: str) -> Path:
    """A checkout with only what the bootstrap reads before it exits: stacks/ and requirements.txt."""
    clone = tmp_path / "clone"
    shutil.copytree(PROJECT_DIR / "stacks", clone / "stacks", ignore=shutil.ignore_patterns("__pycache__"))
    (clone / "requirements.txt").write_text(requirements)
    return clone


def test_without_a_venv_one_is_set_up_from_requirements_txt(tmp_path: Path) -> None:
    pythons = bare_pythons()
    if not pythons:
        pytest.skip("every Python here has the project's packages")
    clone = copy_of_stacks(tmp_path, "# nothing: keeps the test offline and fast\n")
    result = run([pythons[0], "-m", "stacks", "list"], clone, clean_env())
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr
    assert lines[0] == (
        "gpu-deploy: no .venv: creating it with the planning packages (requirements.txt; once, about a minute)"
    )
    assert lines[-1].startswith("error: requirements.txt installed, yet pulumi, ")
    assert result.returncode == 1
    assert (clone / ".venv" / "bin" / "python").exists()
    assert (clone / ".venv" / ".runtime").exists()  # the stamp `make plan` reads: it will not install again


def test_an_old_python_with_no_newer_one_gets_one_sentence(tmp_path: Path) -> None:
    if not old_pythons():
        pytest.skip("no Python older than 3.11 here")
    old = old_pythons()[0]
    clone = copy_of_stacks(tmp_path, "")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(old)
    result = run([str(bin_dir / "python3"), "-m", "stacks", "list"], clone, clean_env(str(bin_dir)))
    assert result.returncode == 1
    assert re.fullmatch(
        r"gpu-deploy: no \.venv: creating it .*\n"
        r"error: gpu-deploy needs Python 3\.11\+ and this is 3\.\d+; no python3\.13, python3\.12, python3\.11 "
        r"on PATH either: install one and run again\n",
        result.stderr,
    ), result.stderr
    assert not (clone / ".venv").exists()


def test_the_pulumi_program_and_tests_are_never_rerun() -> None:
    """Only `python -m stacks` is guarded: importing stacks elsewhere keeps the caller's interpreter."""
    probe = "import sys; sys.argv = ['x']; import stacks.bootstrap as b; b.ensure_runtime(); print('ok')"
    result = run([sys.executable, "-c", probe], PROJECT_DIR, {**os.environ})
    assert result.stdout == "ok\n", result.stderr


def test_the_preflight_runs_under_the_venv_from_a_bare_python() -> None:
    pythons = bare_pythons()
    if not pythons or not VENV.is_dir():
        pytest.skip("no bare Python or no .venv")
    result = run([pythons[0], "-m", "components.host.preflight", "--profile", "a2"], PROJECT_DIR, clean_env())
    # the venv's real pynvml answers (no GPU here: no NVML library), not "the pynvml module is missing"
    assert "pynvml module is missing" not in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def make_dry_run(target: str, tmp_path: Path) -> str:
    venv = tmp_path / "venv"
    result = run(
        ["make", "-n", target, f"VENV={venv}", "SERVICE=api", "OUT=out"], PROJECT_DIR, {**os.environ}
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize(
    "target", ["plan", "list", "diff", "render", "sources", "status", "logs", "tunnel", "preflight"]
)
def test_make_targets_of_the_readme_install_only_the_runtime(target: str, tmp_path: Path) -> None:
    commands = make_dry_run(target, tmp_path)
    assert "-r requirements.txt" in commands
    assert "requirements-dev.txt" not in commands


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_lint_adds_the_dev_toolchain(tmp_path: Path) -> None:
    commands = make_dry_run("lint", tmp_path)
    assert commands.index("-r requirements.txt") < commands.index("-r requirements-dev.txt")
