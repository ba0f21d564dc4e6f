"""The host provisioning scripts (components/host/scripts/*.sh) as text to run over SSH.

Each script sources common.sh when run from disk. `script()` inlines common.sh in place of that
`source` line, so the text is self-contained and runs as `bash -s` with the script on stdin:

    command.remote.Command(create=command_line(env), stdin=script(name))

run-verified.sh, which guards the programs copied to the host, travels on the command line instead
(`command_with_script`), since those programs read stdin themselves.

Exit codes are shared by all scripts and documented in common.sh's header.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

SCRIPTS_DIR: Path = Path(__file__).resolve().parent / "scripts"
COMMON = "common.sh"
SOURCE_LINE = 'source "$(dirname "${BASH_SOURCE[0]}")/common.sh"'
SELF_CONTAINED = frozenset({"run-verified"})  # sent on a command line: kept small, common.sh not inlined

_ENV_KEY = re.compile(r"[A-Z_][A-Z0-9_]*")


def script_names() -> tuple[str, ...]:
    """The runnable scripts, without the .sh suffix: ('configure-runtime', 'install-driver', ...)."""
    return tuple(sorted(p.stem for p in SCRIPTS_DIR.glob("*.sh") if p.name != COMMON))


def _common_body() -> str:
    lines = (SCRIPTS_DIR / COMMON).read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("#!"):
        lines = lines[1:]
    return "\n".join(lines)


def script(name: str) -> str:
    """The self-contained text of scripts/<name>.sh, with common.sh inlined."""
    if name not in script_names():
        raise ValueError(f"unknown host script {name!r} (known: {', '.join(script_names())})")
    text = (SCRIPTS_DIR / f"{name}.sh").read_text(encoding="utf-8")
    lines = text.splitlines()
    if name in SELF_CONTAINED:
        return text
    if lines.count(SOURCE_LINE) != 1:
        raise ValueError(f"{name}.sh must contain the line {SOURCE_LINE!r} exactly once")
    index = lines.index(SOURCE_LINE)
    body = [
        *lines[:index],
        f"# --- begin {COMMON} (inlined) ---",
        _common_body(),
        f"# --- end {COMMON} ---",
        *lines[index + 1 :],
    ]
    return "\n".join(body) + "\n"


def _env_words(env: Mapping[str, str]) -> list[str]:
    words: list[str] = []
    for key, value in env.items():
        if not _ENV_KEY.fullmatch(key):
            raise ValueError(f"environment variable names are [A-Z_][A-Z0-9_]*, got {key!r}")
        if not isinstance(value, str):
            raise TypeError(f"the value of {key} must be a string, got {type(value).__name__}")
        if "\0" in value:
            raise ValueError(f"the value of {key} contains a NUL byte")
        words.append(f"{key}={shlex.quote(value)}")
    return ["env", *words] if words else []


def command_line(env: Mapping[str, str]) -> str:
    """`env KEY='value' ... bash -s`: runs the script given on stdin with these variables."""
    return " ".join([*_env_words(env), "bash", "-s"])


def command_with_script(name: str, env: Mapping[str, str], args: Sequence[str]) -> str:
    """`env KEY='value' ... bash -c '<scripts/NAME.sh>' NAME ARG...`: the script travels on the command line,
    so stdin stays free for the program it runs. Every word is quoted here, and only here."""
    for arg in args:
        if "\0" in arg:
            raise ValueError(f"argument {arg!r} contains a NUL byte")
    quoted = [shlex.quote(arg) for arg in args]
    return " ".join([*_env_words(env), "bash", "-c", shlex.quote(script(name)), name, *quoted])
