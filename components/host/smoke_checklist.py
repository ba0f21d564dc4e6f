"""The smoke runner's checks file: its checks, their parsing, what a response must hold, path templates,
and the masking of credentials in everything the runner reports. Standard library only, Python 3.8+:
shipped beside smoke.py (see smoke.py).

Checks file: a JSON list; each item holds exactly one of ``http``, ``file`` or ``gpu``::

    {"http": {"method": "POST", "path": "/api/tts",          # method defaults to GET
              "body": {"text": "hello"},                      # any JSON, sent as application/json;
                                                              #   null or absent: no body
              "headers": {"Authorization": "Bearer ..."},     # optional request headers
              "status": 200,                                  # int or list of ints, default 200
              "json": {"audioUrl": "string", "duration": "number", "data.items": "array"},
              "equals": {"status": "ok"},                     # fields that must have exactly this value
              "saveAs": "tts"}}                               # remember the parsed JSON body
    {"file": {"path": "/app/public{tts.audioUrl}"}}           # must exist in the container
    {"gpu": {"command": ["nvidia-smi"]}}                      # must exit 0 in the container

``json`` maps required fields to types. Field names may be dotted paths ("data.items"); a
numeric segment indexes a list ("items.0.id"). Types: string, number (int or float, not bool),
integer (not bool), boolean, object, array, any (present, any value, null included). Giving
``"json": {}`` only requires the body to be JSON; leaving ``json`` out does not parse the body.
``saveAs`` may also sit next to ``http`` instead of inside it.

Templating (http ``path`` and file ``path``): ``{name.field.path}`` is replaced by that field of
the JSON body remembered by an earlier check's ``saveAs: "name"``; ``{name.field|basename}``
keeps only the part after the last ``/`` (query string and fragment dropped first). ``{{`` and
``}}`` are literal braces. References to names no earlier check saves are rejected up front.

Masking: credentials are masked as ``***`` wherever they appear in what is reported (the check's
path, the reason, the body, command output): values of secret-looking keys (authorization, token,
password, secret, key, ...) in JSON at any depth, ``name=value`` / ``name: value`` pairs with such
names in any text (``token=...``, ``Authorization: Bearer ...``, also inside JSON strings), and the
user info of URLs (``http://user:pass@host`` -> ``http://***@host``).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

BODY_SNIPPET = 300
DEFAULT_GPU_COMMAND = ("nvidia-smi",)
JSON_TYPES = ("string", "number", "integer", "boolean", "object", "array", "any")
SECRET_WORDS = ("authorization", "token", "password", "passwd", "secret", "key", "cookie", "credential")


class ConfigError(ValueError):
    """The command line or the checks file is invalid (exit 64)."""


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class HttpCheck:
    path: str
    method: str = "GET"
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    status: tuple[int, ...] = (200,)
    json_spec: dict[str, str] | None = None
    equals: dict[str, Any] | None = None
    save_as: str | None = None

    def label(self) -> str:
        return f"http {self.method} {one_line(mask_url(self.path))}"


@dataclass(frozen=True)
class FileCheck:
    path: str

    def label(self) -> str:
        return f"file {one_line(mask_url(self.path))}"


@dataclass(frozen=True)
class GpuCheck:
    command: tuple[str, ...] = DEFAULT_GPU_COMMAND

    def label(self) -> str:
        return "gpu " + one_line(mask_url(shlex.join(self.command)))


if TYPE_CHECKING:
    from typing import TypeAlias  # novermin (type checkers only)

    Check: TypeAlias = "HttpCheck | FileCheck | GpuCheck"


# --------------------------------------------------------------------------- responses, masking, templates


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def matches_type(value: Any, expected: str) -> bool:
    if expected == "any":
        return True
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return type_name(value) == expected


_MISSING = object()


def lookup(body: Any, dotted: str) -> Any:
    """Value at a dotted path ("data.items.0"), or the _MISSING sentinel."""
    current = body
    for part in dotted.split("."):
        if isinstance(current, dict):
            if part not in current:
                return _MISSING
            current = current[part]
        elif isinstance(current, list) and part.isdigit():
            index = int(part)
            if index >= len(current):
                return _MISSING
            current = current[index]
        else:
            return _MISSING
    return current


def _field_problems(
    body: Any, spec: dict[str, Any], mismatch: Callable[[str, Any, Any], str | None]
) -> list[str]:
    """Walk the dotted fields of `spec` in a parsed JSON body: missing ones, then `mismatch`'s verdicts."""
    problems: list[str] = []
    for dotted, expected in spec.items():
        value = lookup(body, dotted)
        problem = f"missing field '{dotted}'" if value is _MISSING else mismatch(dotted, value, expected)
        if problem:
            problems.append(problem)
    return problems


def validate_json(body: Any, spec: dict[str, str]) -> list[str]:
    """Problems with a parsed JSON body against {"dotted.field": "type"}; empty when it fits."""
    return _field_problems(
        body,
        spec,
        lambda dotted, value, expected: (
            None
            if matches_type(value, expected)
            else f"field '{dotted}' is {type_name(value)}, expected {expected}"
        ),
    )


def validate_equals(body: Any, expected: dict[str, Any]) -> list[str]:
    """Problems with a parsed JSON body against {"dotted.field": exact value}; e.g. {"cuda": true}.

    Values of fields on a secret-looking path ("auth.token") are not shown."""

    def mismatch(dotted: str, value: Any, wanted: Any) -> str | None:
        if value == wanted and isinstance(value, bool) == isinstance(wanted, bool):
            return None
        if any(is_secret_name(part) for part in dotted.split(".")):
            return f"field '{dotted}' is not the expected value (a secret-looking field: values not shown)"
        return f"field '{dotted}' is {json.dumps(value)}, expected {json.dumps(wanted)}"

    return _field_problems(body, expected, mismatch)


def is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def mask_json(value: Any) -> Any:
    """A copy of parsed JSON with values of secret-looking keys replaced by "***" and every other
    string (keys included) masked as free text (mask_url)."""
    if isinstance(value, dict):
        return {mask_url(str(k)): "***" if is_secret_name(str(k)) else mask_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_json(v) for v in value]
    if isinstance(value, str):
        return mask_url(value)
    return value


_SECRET_NAME = r"[\w.-]*(?:" + "|".join(SECRET_WORDS) + r")[\w.-]*"
# name=value / name: value / "name": "value" with a secret-looking name. An unquoted value runs to
# whitespace, '&', a quote or '<>' (over-masking a trailing ',' or ';' rather than leaking a part).
_SECRET_TEXT = re.compile(
    r"(?P<q>\\?[\"']?)(?P<name>" + _SECRET_NAME + r")(?P=q)(?P<sep>\s*[:=]\s*)"
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"?"  # "double-quoted", escapes included
    r"|\\\"(?:(?!\\\").)*(?:\\\")?"  # \"quoted inside a JSON string\" (truncated JSON)
    r"|'[^']*'?"  # 'single-quoted'
    r"|(?:(?:Bearer|Basic|Token|Digest)\s+)?[^\s&\"'<>]+)",
    re.IGNORECASE | re.DOTALL,
)
# scheme://user:password@host (also JSON-escaped :\/\/): everything up to the last '@' of the authority.
_USERINFO = re.compile(r"(?P<slashes>//|\\/\\/)[^/?#\s]*@")


def _mask_text_match(match: re.Match[str]) -> str:
    value = match.group("value")
    masked = (
        '"***"'
        if value.startswith('"')
        else '\\"***\\"'
        if value.startswith('\\"')
        else "'***'"
        if value.startswith("'")
        else "***"
    )
    return match.group("q") + match.group("name") + match.group("q") + match.group("sep") + masked


def mask_url(text: str) -> str:
    """Mask credentials in free text (a URL, a path, a message, a form or header dump): the user
    info of URLs and the values of secret-looking name=value / name: value pairs."""
    return _SECRET_TEXT.sub(_mask_text_match, _USERINFO.sub(r"\g<slashes>***@", text))


def mask_text(text: str) -> str:
    """Mask credentials in a body: JSON is parsed, masked (mask_json) and re-serialised, anything
    else (truncated JSON, HTML, form data, header dumps) is masked as free text (mask_url)."""
    try:
        parsed = json.loads(text)
        if isinstance(parsed, (dict, list)):
            return json.dumps(mask_json(parsed), ensure_ascii=False)
    except (ValueError, RecursionError):
        pass
    return mask_url(text)


def one_line(text: str) -> str:
    """Escape control characters so a message stays on one line."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text).replace("\\x0a", "\\n")


def snippet(text: str | None) -> str:
    if text is None:
        return ""
    return one_line(mask_text(text)[:BODY_SNIPPET])


_TEMPLATE = re.compile(r"\{\{|\}\}|\{([A-Za-z_][\w-]*)((?:\.[\w-]+)+)?(\|basename)?\}")


def template_refs(template: str) -> list[str]:
    """saveAs names a template refers to."""
    return [m.group(1) for m in _TEMPLATE.finditer(template) if m.group(1)]


def render_template(template: str, saved: dict[str, Any]) -> str:
    """Fill {name.field.path} and {name.field|basename}; raises KeyError naming what is missing."""

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole in ("{{", "}}"):
            return whole[0]
        name, dotted, basename = match.group(1), match.group(2), match.group(3)
        if name not in saved:
            raise KeyError(f"nothing saved as '{name}'")
        value = saved[name] if not dotted else lookup(saved[name], dotted[1:])
        if value is _MISSING or value is None or isinstance(value, (dict, list)):
            raise KeyError(f"'{name}{dotted or ''}' is not a saved scalar value")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if basename:
            text = re.split(r"[?#]", text, maxsplit=1)[0].rstrip("/").rsplit("/", 1)[-1]
        return text

    return _TEMPLATE.sub(replace, template)


# --------------------------------------------------------------------------- parsing checks


def _expect(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{where}: {message}")


def _save_name(value: Any, where: str) -> str | None:
    if value is None:
        return None
    _expect(
        isinstance(value, str) and re.fullmatch(r"[A-Za-z_][\w-]*", value) is not None,
        where,
        "saveAs must be a name of letters, digits, '_' or '-'",
    )
    return str(value)


def parse_checks(raw: Any) -> list[Check]:
    """Validate decoded checks JSON and build HttpCheck/FileCheck/GpuCheck objects."""
    _expect(isinstance(raw, list), "checks", "must be a JSON list")
    checks: list[Check] = []
    saved_names: set[str] = set()
    for index, item in enumerate(raw):
        where = f"check #{index + 1}"
        _expect(isinstance(item, dict), where, "must be an object")
        kinds = [k for k in ("http", "file", "gpu") if k in item]
        _expect(len(kinds) == 1, where, "needs exactly one of 'http', 'file', 'gpu'")
        extra = set(item) - {kinds[0], "saveAs"}
        _expect(not extra, where, f"unknown keys {sorted(extra)}")
        kind = kinds[0]
        spec = item[kind]
        if kind == "gpu" and spec is None:
            spec = {}
        _expect(isinstance(spec, dict), where, f"'{kind}' must be an object")
        check: Check
        if kind == "http":
            check = _parse_http(spec, item.get("saveAs"), where)
            refs = template_refs(check.path)
        elif kind == "file":
            _expect(set(spec) <= {"path"}, where, f"unknown keys {sorted(set(spec) - {'path'})}")
            path = spec.get("path")
            _expect(isinstance(path, str) and bool(path), where, "file needs a 'path' string")
            check = FileCheck(path=path)
            refs = template_refs(path)
            _expect(item.get("saveAs") is None, where, "saveAs only applies to http checks")
        else:
            _expect(set(spec) <= {"command"}, where, f"unknown keys {sorted(set(spec) - {'command'})}")
            command = spec.get("command", list(DEFAULT_GPU_COMMAND))
            _expect(
                isinstance(command, list) and bool(command) and all(isinstance(c, str) for c in command),
                where,
                "gpu 'command' must be a non-empty list of strings",
            )
            check = GpuCheck(command=tuple(command))
            refs = []
            _expect(item.get("saveAs") is None, where, "saveAs only applies to http checks")
        for ref in refs:
            _expect(ref in saved_names, where, f"path refers to '{ref}', which no earlier check saves")
        if isinstance(check, HttpCheck) and check.save_as:
            saved_names.add(check.save_as)
        checks.append(check)
    return checks


def _parse_http(spec: dict[str, Any], outer_save: Any, where: str) -> HttpCheck:
    known = {"method", "path", "body", "headers", "status", "json", "equals", "saveAs"}
    _expect(set(spec) <= known, where, f"unknown http keys {sorted(set(spec) - known)}")
    path = spec.get("path")
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: http needs a 'path' string")
    method = spec.get("method", "GET")
    _expect(isinstance(method, str) and method.isalpha(), where, "http 'method' must be a word like GET")
    headers = spec.get("headers") or {}
    _expect(
        isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values()),
        where,
        "http 'headers' must map names to strings",
    )
    status = spec.get("status", 200)
    statuses = status if isinstance(status, list) else [status]
    _expect(
        bool(statuses) and all(isinstance(s, int) and not isinstance(s, bool) for s in statuses),
        where,
        "http 'status' must be an integer or a list of integers",
    )
    json_spec = spec.get("json")
    if json_spec is not None:
        _expect(isinstance(json_spec, dict), where, "http 'json' must map field names to types")
        for name, expected in json_spec.items():
            _expect(
                expected in JSON_TYPES,
                where,
                f"field '{name}': type must be one of {', '.join(JSON_TYPES)}",
            )
    equals = spec.get("equals")
    _expect(equals is None or isinstance(equals, dict), where, "http 'equals' must map field names to values")
    inner_save = spec.get("saveAs")
    _expect(inner_save is None or outer_save is None, where, "give saveAs once")
    save_as = _save_name(inner_save if inner_save is not None else outer_save, where)
    return HttpCheck(
        path=path,
        method=method.upper(),
        body=spec.get("body"),
        headers=dict(headers),
        status=tuple(statuses),
        json_spec=dict(json_spec) if json_spec is not None else None,
        equals=dict(equals) if equals is not None else None,
        save_as=save_as,
    )
