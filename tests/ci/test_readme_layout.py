"""The README's layout table is true: what it names exists, and every product module is in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PRODUCT_FOLDERS = ("components", "stacks", "policy")
MAX_LINES = 450  # "about 400": a file past this needs splitting by job


def layout_rows() -> list[tuple[str, str]]:
    """(the first cell's path, backticks removed; the rest of the row) for each row of `## Layout`."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Layout\n") :]
    section = section[: section.find("\n## ", 1) if "\n## " in section[1:] else len(section)]
    rows: list[tuple[str, str]] = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) >= 2 and cells[0].startswith("`"):
            rows.append((cells[0].split("`")[1], " | ".join(cells[1:])))
    return rows


def product_modules() -> list[Path]:
    return sorted(
        p.relative_to(ROOT)
        for folder in PRODUCT_FOLDERS
        for p in (ROOT / folder).rglob("*.py")
        if p.name != "__init__.py"
    )


def test_every_path_the_table_names_exists() -> None:
    rows = layout_rows()
    assert len(rows) >= 10
    for path, _ in rows:
        assert (ROOT / path).exists(), f"README layout names {path}, which is not in the tree"


def test_every_product_module_is_in_the_table() -> None:
    """Named in the row of its folder (or a row for itself): a new module means a line in the README."""
    rows = layout_rows()
    missing = []
    for module in product_modules():
        folder = module.parent.as_posix() + "/"
        own_rows = [text for path, text in rows if path == folder]
        if module.as_posix() not in {path for path, _ in rows} and not any(
            re.search(rf"`{re.escape(module.name)}`", text) for text in own_rows
        ):
            missing.append(str(module))
    assert not missing, f"not in the README's layout table: {missing}"


@pytest.mark.parametrize("module", product_modules(), ids=str)
def test_no_product_file_is_far_past_400_lines(module: Path) -> None:
    lines = len((ROOT / module).read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: split it by job"
