"""A stack configuration mistake as one line naming its key, and pydantic's errors translated to it.

`ConfigError("services.app.gpu", problem)` reads `gpu-deploy:services.app.gpu: problem`. A validator that
finds the mistake under another key than its own raises `KeyedError` with the key relative to its field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from components.core.vocabulary import PROJECT

NAMESPACE = PROJECT  # the stack file's config namespace


class ConfigError(Exception):
    """A stack configuration mistake: one line, naming the key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{NAMESPACE}:{_one_line(key)}: {_one_line(problem)}")


def _one_line(text: str) -> str:
    """Escape line breaks and other unprintable characters (a YAML key may hold them)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def quote(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        pass
    try:
        return repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        return "a number too large to show"


class KeyedError(ValueError):
    """Raised inside validators when the offending key is not the field being validated."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


def translate(err: ValidationError, raw: Mapping[str, Any], root: type[BaseModel]) -> ConfigError:
    """Pydantic's first error as one line naming the stack key: `root` is the model `raw` was checked by."""
    first = err.errors(include_url=False)[0]
    loc = _real_keys(first["loc"], raw)
    kind = first["type"]
    ctx = first.get("ctx") or {}
    given = first.get("input")
    exc = ctx.get("error")
    if isinstance(exc, KeyedError):
        prefix = ".".join(loc)
        key = f"{prefix}.{exc.key}" if prefix else exc.key
        return ConfigError(key, exc.problem)
    key = ".".join(loc) or "(root)"
    if kind == "missing":
        return ConfigError(key, "required")
    if kind == "extra_forbidden":
        parent = loc[:-1]
        allowed = _allowed_keys(root, parent, raw)
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return ConfigError(key, f"unknown key{hint}")
    if kind in ("union_tag_not_found", "union_tag_invalid"):  # target.kind picks the target model
        field = str(ctx.get("discriminator", "kind")).strip("'")
        if kind == "union_tag_not_found":
            return ConfigError(f"{key}.{field}", "required")
        tags = ", ".join(f'"{t}"' for t in re.findall(r"'([^']*)'", str(ctx.get("expected_tags", ""))))
        return ConfigError(f"{key}.{field}", f"expected one of {tags}, got {quote(ctx.get('tag'))}")
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        choices = ", ".join(f'"{e}"' for e in expected)
        return ConfigError(key, f"expected one of {choices}, got {quote(given)}")
    if kind == "string_pattern_mismatch":
        return ConfigError(key, f"expected a value matching {ctx.get('pattern')}, got {quote(given)}")
    message = str(first["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in ("value_error", "assertion_error"):
        return ConfigError(key, message)
    return ConfigError(key, f"{message[0].lower()}{message[1:]}, got {quote(given)}")


_BRANCH_TAG = re.compile(r"function-.*|str|list\[str\]|int|bool|dict\[.*\]|.*-.*\[.*\]")


def _real_keys(loc: tuple[int | str, ...], raw: Any) -> list[str]:
    """Pydantic's error location without the union/validator branch tags it adds.

    A tag is dropped only where the input has no such key, so a service or variable named
    e.g. "str" or "int" keeps its name; "[key]" (the key itself is invalid) is dropped too."""
    keys: list[str] = []
    node: Any = raw
    for part in loc:
        in_mapping = isinstance(node, Mapping) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_mapping or in_list:
            node = node[part]
        elif (
            part == "[key]"
            or (isinstance(part, str) and _BRANCH_TAG.fullmatch(part))
            or (isinstance(node, Mapping) and node.get("kind") == part)  # a discriminated union's tag
        ):
            continue
        else:
            node = None
        keys.append(str(part))
    return keys


def _allowed_keys(root: type[BaseModel], loc: list[str], raw: Any = None) -> list[str]:
    """The keys a mapping at `loc` accepts, for the 'unknown key' message."""
    node: Any = root
    given: Any = raw  # the input at the same place: its `kind` picks a discriminated union's model
    for part in loc:
        node = _unwrap(node, given)
        given = given.get(part) if isinstance(given, Mapping) else None
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = next((f for n, f in node.model_fields.items() if (f.alias or n) == part), None)
            if field is None:
                return []
            node = field.annotation
        elif get_origin(node) is dict:
            node = get_args(node)[1]
        else:
            return []
    node = _unwrap(node, given)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return sorted((f.alias or n) for n, f in node.model_fields.items())
    return []


def _unwrap(annotation: Any, given: Any = None) -> Any:
    """Optional[X] / Annotated[X, ...] -> X (the model or dict inside); of several models, the one
    whose `kind` is the input's."""
    if get_origin(annotation) is Annotated:
        return _unwrap(get_args(annotation)[0], given)
    if get_origin(annotation) in (Union, UnionType):
        kind = given.get("kind") if isinstance(given, Mapping) else None
        for arg in get_args(annotation):
            field = (
                arg.model_fields.get("kind") if isinstance(arg, type) and issubclass(arg, BaseModel) else None
            )
            if kind is not None and field is not None and kind in get_args(field.annotation):
                return arg
        for arg in get_args(annotation):
            inner = _unwrap(arg)
            if (isinstance(inner, type) and issubclass(inner, BaseModel)) or get_origin(inner) is dict:
                return inner
    return annotation
