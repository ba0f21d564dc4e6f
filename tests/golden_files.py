"""The golden files under tests/golden/ (see its README.md): compare what the program makes with them, or
rewrite them (`--update-golden`, GOLDEN_UPDATE=1; the `golden` fixture of tests/conftest.py)."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
HOW_TO_UPDATE = (
    "if the change is intended, rewrite the golden files with `GOLDEN_UPDATE=1 make unit` (or "
    "`pytest tests/stacks/test_golden.py --update-golden`) and review them in `git diff tests/golden`"
)


class Golden:
    """Compares text the program makes with the files under tests/golden/, or rewrites those files."""

    def __init__(self, update: bool) -> None:
        self.update = update

    def check_tree(self, folder: str, files: dict[str, str]) -> None:
        """`files` (relative path -> text) are exactly the files under tests/golden/<folder>/."""
        root = GOLDEN_DIR / folder
        if self.update:
            for stale in [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []:
                stale.unlink()
            for name, text in files.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_text(text, encoding="utf-8")
            return
        golden = (
            {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
            if root.is_dir()
            else {}
        )
        problems = [f"new file, no golden: {folder}/{name}" for name in sorted(set(files) - set(golden))]
        problems += [
            f"golden file no longer made: {folder}/{name}" for name in sorted(set(golden) - set(files))
        ]
        for name in sorted(set(files) & set(golden)):
            expected = golden[name].read_text(encoding="utf-8")
            if expected != files[name]:
                diff = difflib.unified_diff(
                    expected.splitlines(keepends=True),
                    files[name].splitlines(keepends=True),
                    fromfile=f"tests/golden/{folder}/{name} (golden)",
                    tofile=f"{folder}/{name} (made now)",
                )
                problems.append("".join(diff))
        if problems:
            pytest.fail("\n".join([*problems, HOW_TO_UPDATE]), pytrace=False)
