"""The one reader of `Pulumi.yaml` and `Pulumi.<stack>.yaml`: YAML as the Pulumi CLI accepts it.

PyYAML's `safe_load` is laxer than the CLI's parser and than what the CLI keeps as config:

- a repeated key silently keeps the last value; the CLI refuses the file. Refused here at any depth;
- a date (`2024-01-01`), `!!binary`, `!!set` or another tag makes a value that is not a string or JSON,
  an integer may be beyond 64 bits and a float may be NaN or infinite; the CLI keeps config values as
  strings or JSON. Refused, naming the key: quote the value;
- nested aliases ("billion laughs") expand exponentially once anything walks the value. Aliases are
  allowed (the CLI allows them) up to ALIAS_BUDGET nodes in all, counted while the document is
  composed, before anything is expanded.

Every refusal is a `ConfigError` (exit 2 in `python -m stacks`), one line: a value's problem as
`gpu-deploy:<key>: <problem> (<file>:<line>:<column>)` when the value is one of the project's config
keys, otherwise `gpu-deploy: <file>:<line>:<column>: <problem>`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar, Protocol

import yaml
from yaml.error import Mark
from yaml.events import AliasEvent, CollectionStartEvent, Event, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from stacks.config import NAMESPACE, ConfigError

# Nodes that aliases may add to a document, each alias counting the whole value it repeats. The shipped
# stacks use none; a few hundred is a generous reuse of a block, a bomb needs millions.
ALIAS_BUDGET = 10_000
# Nesting deeper than this is no configuration (and would exhaust Python's recursion further on).
MAX_DEPTH = 100
# Digits past which an integer is refused unread (Python refuses to read more than 4300).
_MAX_INT_CHARS = 100
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _TIMESTAMP = f"{_TAG}str", f"{_TAG}int", f"{_TAG}float", f"{_TAG}timestamp"
# What a value may become: JSON's types. `=` (the "value" key) is a plain string, as in YAML 1.2.
_ALLOWED_TAGS = frozenset(
    f"{_TAG}{name}" for name in ("null", "bool", "int", "float", "str", "seq", "map", "merge")
)
_TAG_MEANS = {
    f"{_TAG}binary": "binary data",
    f"{_TAG}timestamp": "a date/time",
    f"{_TAG}set": "a set",
    f"{_TAG}omap": "an ordered map",
    f"{_TAG}pairs": "a list of pairs",
}
_QUOTE_IT = "the Pulumi CLI keeps config values as strings or JSON: quote it"


class _Mark(Protocol):  # where PyYAML says something is (0-based), its own or libyaml's
    @property
    def line(self) -> int: ...
    @property
    def column(self) -> int: ...


class StackFileError(ConfigError):
    """A stack or project file the CLI would not read: one line naming the file, line and column."""

    def __init__(self, file: str, mark: _Mark | None, problem: str) -> None:
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else file
        # not ConfigError's "gpu-deploy:<key>: ...": the problem is in the file, not under one key
        Exception.__init__(self, f"{NAMESPACE}: {_one_line(where)}: {_one_line(problem)}")
        self.key = ""
        self.problem = problem
        self.file = file
        self.mark = mark


def _one_line(text: str) -> str:
    """Line breaks and other unprintable characters escaped (a key, a file name may hold them)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _show(text: str, limit: int = 60) -> str:
    """A key or value as a quoted, one-line, bounded string."""
    shown = (
        text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 4 :]} ({len(text)} chars)"
    )
    return _one_line(json.dumps(shown, ensure_ascii=False))


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses, while composing, what the Pulumi CLI would not keep.

    The checks sit in `compose_node`, the one place every node passes (and every alias, before it is
    followed): repeated keys, explicit tags, non-JSON scalars, alias expansion and depth. The
    constructor only knows JSON's types, so anything that slipped through is still refused.
    """

    yaml_constructors: ClassVar[dict[Any, Any]] = {
        tag: constructor
        for tag, constructor in yaml.SafeLoader.yaml_constructors.items()
        if tag in _ALLOWED_TAGS
    }

    def __init__(self, text: str, file: str, namespace: str | None) -> None:
        super().__init__(text)
        self.file = file
        self.namespace = namespace  # config keys in this namespace are named as ConfigError names them
        self.path: list[str] = []
        self.sizes: dict[int, int] = {}  # id(node) -> nodes it stands for, aliases expanded
        self.expanded = 0  # nodes added by aliases so far
        self.seen: dict[
            int, dict[str, tuple[str, _Mark | None]]
        ] = {}  # id(mapping) -> wire key -> (text, mark)

    # ------------------------------------------------------------ errors
    def _fail(self, mark: _Mark | None, problem: str) -> StackFileError:
        return StackFileError(self.file, mark, problem)

    def _value_error(self, path: list[str], mark: _Mark | None, problem: str) -> ConfigError:
        """A value's problem, named by its key the way ConfigError names config keys."""
        where = f"{self.file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else self.file
        if self.namespace and len(path) >= 2 and path[0] == "config":
            top = path[1]
            if ":" not in top or top.startswith(f"{self.namespace}:"):
                key = ".".join([top.removeprefix(f"{self.namespace}:"), *path[2:]])
                return ConfigError(key, f"{problem} ({_one_line(where)})")
        return self._fail(mark, f"{'.'.join(path) or '(root)'}: {problem}")

    # ------------------------------------------------------------ composing
    def _peek(self) -> Event:
        event: Event = self.peek_event()  # type: ignore[no-untyped-call]
        return event

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        mapping = parent if isinstance(parent, MappingNode) and index is None else None  # composing its key
        segment: str | None = None
        if isinstance(parent, SequenceNode):
            segment = str(index)
        elif isinstance(parent, MappingNode) and isinstance(index, Node):
            segment = str(index.value) if isinstance(index, ScalarNode) else "?"
        if segment is not None:
            self.path.append(segment)
        try:
            at = self._peek().start_mark  # an alias's own place (its node has the anchor's)
            node = self._alias() if self.check_event(AliasEvent) else self._compose_new(parent, index)
            if mapping is not None and node is not None:
                self._check_key(mapping, node, at)
            return node
        finally:
            if segment is not None:
                self.path.pop()

    def _compose_new(self, parent: Node | None, index: Any) -> Node | None:
        """A node that is not an alias: checked, and its size (aliases inside it expanded) kept."""
        event = self._peek()
        if len(self.path) > MAX_DEPTH:
            raise self._fail(event.start_mark, f"nested more than {MAX_DEPTH} levels deep")
        tag = getattr(event, "tag", None)
        if tag is not None and isinstance(event, (ScalarEvent, CollectionStartEvent)):
            short = f"!!{tag.removeprefix(_TAG)}" if tag.startswith(_TAG) else tag
            means = _TAG_MEANS.get(tag)
            what = f"{short} ({means})" if means else short
            raise self._value_error(
                self.path,
                event.start_mark,
                f"explicit YAML tag {what}: config values are strings or JSON; "
                "drop the tag (quote the value to keep it a string)",
            )
        is_key = isinstance(parent, MappingNode) and index is None
        node = super().compose_node(parent, index)
        if isinstance(node, ScalarNode):
            self._check_scalar(node, is_key=is_key)
            size = 1
        elif isinstance(node, SequenceNode):
            size = 1 + sum(self.sizes[id(item)] for item in node.value)
        elif isinstance(node, MappingNode):
            size = 1 + sum(self.sizes[id(k)] + self.sizes[id(v)] for k, v in node.value)
            self.seen.pop(id(node), None)
        else:  # a composer always makes one of the three
            raise self._fail(event.start_mark, "not a YAML node")
        self.sizes[id(node)] = size
        return node

    def _alias(self) -> Node | None:
        event = self._peek()
        assert isinstance(event, AliasEvent)
        target = self.anchors.get(event.anchor)
        if target is not None:
            size = self.sizes.get(id(target))
            if size is None:  # the anchored value is still being composed: it would contain itself
                raise self._fail(
                    event.start_mark, f"alias *{event.anchor} inside its own anchor (a recursive value)"
                )
            self.expanded += size
            if self.expanded > ALIAS_BUDGET:
                raise self._fail(
                    event.start_mark,
                    f"aliases expand to more than {ALIAS_BUDGET} values (an alias bomb?): write them out",
                )
        return super().compose_node(None, None)  # type: ignore[arg-type]  # PyYAML's: undefined alias

    def _check_key(self, mapping: MappingNode, key: Node, at: _Mark | None) -> None:
        if not isinstance(key, ScalarNode):
            raise self._value_error(self.path, at, "a mapping key must be a string, not a list or map")
        wire = self._wire_key(key)
        seen = self.seen.setdefault(id(mapping), {})
        if wire in seen:
            first_text, first_mark = seen[wire]
            same = "" if first_text == key.value else f" (the same key as {_show(first_text)})"
            first = f" (first on line {first_mark.line + 1})" if first_mark is not None else ""
            raise self._fail(
                at,
                f"duplicate key {_show(key.value)}{same} in {'.'.join(self.path) or '(root)'}{first}; "
                "the Pulumi CLI refuses duplicate keys",
            )
        seen[wire] = (key.value, at)

    def _wire_key(self, key: ScalarNode) -> str:
        """The key as the program receives it inside JSON: `1`, `"1"` and `0x1` are one key there."""
        if key.tag in (_STR, f"{_TAG}merge"):
            return str(key.value)
        value = self.construct_object(key)
        self.constructed_objects.pop(key, None)
        if isinstance(value, bool) or value is None:
            return json.dumps(value)
        return repr(value) if isinstance(value, float) else str(value)

    def _check_scalar(self, node: ScalarNode, *, is_key: bool) -> None:
        path = [*self.path, node.value] if is_key else self.path
        what = "key" if is_key else "value"
        text = str(node.value)
        if node.tag == f"{_TAG}value":  # `=`: YAML 1.1's "value" key; the CLI reads a string
            node.tag = _STR
        if node.tag == _TIMESTAMP:
            raise self._value_error(
                path, node.start_mark, f"the {what} {_show(text)} is a YAML date; {_QUOTE_IT}"
            )
        if node.tag == _INT:
            digits = text.lstrip("+-").replace("_", "").lstrip("0")
            number = None if len(digits) > _MAX_INT_CHARS else self.construct_yaml_int(node)
            if number is None or not _INT64_MIN <= number <= _UINT64_MAX:
                raise self._value_error(
                    path, node.start_mark, f"the integer {_show(text)} is beyond 64 bits; {_QUOTE_IT}"
                )
        elif node.tag == _FLOAT and not math.isfinite(self.construct_yaml_float(node)):
            raise self._value_error(
                path,
                node.start_mark,
                f"{_show(text)} is not a finite number (JSON has no NaN or infinity); {_QUOTE_IT}",
            )
        elif node.tag == _STR and any("\ud800" <= c <= "\udfff" for c in text):
            raise self._value_error(
                path, node.start_mark, f"the {what} holds a lone UTF-16 surrogate (not text)"
            )
        elif node.tag not in _ALLOWED_TAGS:
            raise self._value_error(path, node.start_mark, f"a YAML {node.tag} {what}; {_QUOTE_IT}")

    def construct_undefined(self, node: Node) -> Any:
        raise self._fail(node.start_mark, f"a YAML {node.tag} value: config values are strings or JSON")


def _display(path: Path) -> str:
    """The file as the user would name it: relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _line_column(text: str, position: int) -> Mark:
    line = text.count("\n", 0, position)
    column = position - (text.rfind("\n", 0, position) + 1)
    return Mark("", position, line, column, "", 0)


def read(path: Path, *, namespace: str | None = NAMESPACE) -> Any:
    """The YAML document in `path` (None when empty), refused as the Pulumi CLI would refuse it.

    `namespace`: config keys under `config:` in it are named as ConfigError names them (a stack
    file); None names every value by its path in the file (e.g. the project file).
    """
    file = _display(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        before = raw[: err.start].decode("utf-8", "replace")
        mark = _line_column(before, len(before))
        raise StackFileError(file, mark, f"not UTF-8 text (byte 0x{raw[err.start]:02x})") from None
    loader: _Loader | None = None
    try:
        # Syntax first, as a parser that reads the whole file before its content: the events only
        # (linear in the text, nothing composed), so a broken file is named as such.
        for _ in yaml.parse(text, Loader=yaml.SafeLoader):
            pass
        loader = _Loader(text, file, namespace)
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        found: _Mark | None = err.problem_mark or err.context_mark
        problem = err.problem or err.context or "invalid YAML"
        if err.context and err.problem:
            start = (
                f" from {err.context_mark.line + 1}:{err.context_mark.column + 1}"
                if err.context_mark and err.problem_mark
                else ""
            )
            problem = f"{problem} ({err.context}{start})"
        raise StackFileError(file, found, problem) from None
    except yaml.reader.ReaderError as err:
        char = f"#x{err.character:04x}" if isinstance(err.character, int) else repr(err.character)
        mark = _line_column(text, err.position)
        raise StackFileError(file, mark, f"unacceptable character {char}: {err.reason}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_project(path: Path) -> Any:
    """`Pulumi.yaml`."""
    return read(path, namespace=None)


def read_stack(path: Path) -> Any:
    """`Pulumi.<stack>.yaml` (or a `--config-file`)."""
    return read(path)
