"""Every key a stack file may hold is documented: each field of the config models (stacks/config/*.py,
walked from StackConfig) and each smoke check key appears, in backticks, in a row of the README's
"Stack config" table whose first cell is the key's top-level section (`target`, `services.<name>`, ...)."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from components.host import smoke_checklist
from stacks.config.stack import StackConfig

README = Path(__file__).resolve().parents[2] / "README.md"
# the smoke checks are a list of plain mappings (components/host/smoke_checklist.py parses them)
SMOKE_KEYS = (
    *("http", "file", "gpu", "whenGpu", "saveAs"),
    *("method", "path", "body", "headers", "status", "json", "equals", "command"),
)


def _models(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def config_keys(model: type[BaseModel] = StackConfig, prefix: str = "") -> list[str]:
    """Every stack key as a dotted path of its camelCase names: `target.bastion.hostKey`, ..."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{field.alias or name}"
        keys.append(path)
        for inner in _models(field.annotation):
            keys += config_keys(inner, f"{path}.")
    return keys


def table_rows(text: str) -> dict[str, str]:
    """The Stack config table: the first cell's key (backticks off, `<name>` parts kept) -> the row."""
    section = text.split("\n## Stack config", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        match = re.match(r"\|\s*`([^`]+)`", line)
        if match:
            rows[match.group(1)] = rows.get(match.group(1), "") + line
    return rows


def undocumented(text: str) -> list[str]:
    rows = table_rows(text)
    missing: list[str] = []
    smoke = {f"services.smoke.{key}" for key in SMOKE_KEYS}
    for key in [*config_keys(), *sorted(smoke)]:
        top, *rest = key.split(".")
        leaf = key.rsplit(".", 1)[-1]
        row = " ".join(v for k, v in rows.items() if k.split(".")[0].split(" ")[0] == top)
        quoted = re.findall(r"[A-Za-z][A-Za-z0-9]*", " ".join(re.findall(r"`([^`]*)`", row)))
        if not row or (rest and leaf not in quoted):
            missing.append(key)
    return missing


def test_the_smoke_keys_are_the_runners() -> None:
    """SMOKE_KEYS holds what the runner knows (its http keys and its kinds), so none goes undocumented."""
    source = Path(smoke_checklist.__file__).read_text()
    known = re.search(r"known = \{([^}]*)\}", source)
    assert known is not None
    http_keys = set(re.findall(r'"(\w+)"', known.group(1)))
    assert http_keys <= set(SMOKE_KEYS)


def test_every_config_key_is_in_the_readme() -> None:
    # Passes once the lead has merged the helpers' README texts (the keys of issues 14 and 15).
    assert undocumented(README.read_text()) == []
