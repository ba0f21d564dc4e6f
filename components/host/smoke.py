#!/usr/bin/env python3
"""Post-deploy smoke checks for a GPU ML service (standard library only).

This file is copied to the GPU host and run there with ``python3`` (3.8 or newer), so it must
not import anything from the rest of the repository or from third-party packages. It also works
on its own against any URL::

    python3 smoke.py --base-url http://127.0.0.1:3000 --checks-file checks.json \
        [--deadline 180] [--interval 2] [--container NAME] [--docker docker] [--verbose]
    python3 smoke.py --base-url http://127.0.0.1:3000 --checks '[{"http": {"path": "/api/health"}}]'
    python3 smoke.py --base-url http://127.0.0.1:3000 --checks-file - < checks.json

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

File and gpu checks run ``<docker> exec <container> test -f PATH`` and
``<docker> exec <container> COMMAND...`` (default command ``nvidia-smi``); they need
``--container``. ``--docker`` is split like a shell word list, so ``--docker "sudo -n docker"``
works.

Behaviour: checks run in order. Every check is retried every ``--interval`` seconds until it
passes or the overall ``--deadline`` (measured from start, for all checks together) would pass
before the next attempt. Each check always gets at least one attempt. An attempt ends after
min(10, remaining) seconds, all of it: connecting, redirects, the headers and the whole body, so a
server that trickles its answer byte by byte is cut off there too. Only a check's first attempt
may run past the deadline: it gets at least 1 s. Proxies from the environment are ignored. The
result of the LAST attempt decides the exit code, unless the deadline cut that attempt short (a
retry left with under 1 s that timed out): then the attempt before it decides.

Every request stays on the origin of ``--base-url`` (same scheme, host and port; http or https):
a redirect anywhere else is not followed (so request headers such as ``Authorization`` never
leave the service) and an absolute URL in a path (``scheme:...`` or ``//host/...``, written in
the checks or filled in from a saved response) that points elsewhere is not requested. Either
fails the check at once with exit 3, naming the refused URL (masked).

Exit codes (1-4 as in the reference smoke-test.sh):
  0  all checks passed
  1  missing tool: docker (first word of --docker) not found although a file/gpu check needs
     it, or python older than 3.8
  2  timeout: the endpoint never answered right within the deadline - last attempt could not
     connect, timed out, or got a 5xx (server not ready / unavailable)
  3  malformed response: it answered, but with an unexpected non-5xx status, a body that is
     not JSON, a missing field or a field of the wrong type
  4  expected file absent inside the container
  5  gpu check command failed inside the container (not in the reference; added here)
  64 usage error: bad arguments or an invalid checks file (argparse's own 2 would collide
     with "timeout")

Output: one ``PASS ...`` line per passed check on stdout; on failure ONE ``FAIL ...`` line on
stderr naming the check and the last response (status and first 300 characters of the body).
Credentials are masked as ``***`` wherever they appear in it (the check's path, the reason, the
body, command output): values of secret-looking keys (authorization, token, password, secret,
key, ...) in JSON at any depth, ``name=value`` / ``name: value`` pairs with such names in any
text (``token=...``, ``Authorization: Bearer ...``, also inside JSON strings), and the user info
of URLs (``http://user:pass@host`` -> ``http://***@host``). ``--verbose`` adds one stderr line
per failed attempt, masked the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_MISSING_TOOL = 1
EXIT_TIMEOUT = 2
EXIT_MALFORMED = 3
EXIT_FILE_ABSENT = 4
EXIT_GPU_FAILED = 5
EXIT_USAGE = 64

MIN_PYTHON = (3, 8)
DEFAULT_DEADLINE = 180.0
DEFAULT_INTERVAL = 2.0
MAX_REQUEST_TIMEOUT = 10.0
MIN_ATTEMPT_TIMEOUT = 1.0  # a check's first attempt, even when the deadline has passed
MAX_COMMAND_TIMEOUT = 60.0
BODY_SNIPPET = 300
MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_GPU_COMMAND = ("nvidia-smi",)
DEFAULT_PORTS = {"http": 80, "https": 443}

JSON_TYPES = ("string", "number", "integer", "boolean", "object", "array", "any")
SECRET_WORDS = ("authorization", "token", "password", "passwd", "secret", "key", "cookie", "credential")

# Outcome kinds of a single attempt.
OK = "ok"
UNREACHABLE = "unreachable"  # no connection, timeout, transport error -> exit 2
NOT_READY = "not-ready"  # 5xx -> exit 2
MALFORMED = "malformed"  # exit 3
FILE_ABSENT = "file-absent"  # exit 4
GPU_FAILED = "gpu-failed"  # exit 5
MISSING_TOOL = "missing-tool"  # exit 1, never retried

EXIT_FOR_KIND = {
    OK: EXIT_OK,
    UNREACHABLE: EXIT_TIMEOUT,
    NOT_READY: EXIT_TIMEOUT,
    MALFORMED: EXIT_MALFORMED,
    FILE_ABSENT: EXIT_FILE_ABSENT,
    GPU_FAILED: EXIT_GPU_FAILED,
    MISSING_TOOL: EXIT_MISSING_TOOL,
}


class ConfigError(ValueError):
    """The command line or the checks file is invalid (exit 64)."""


class UsageError(ConfigError):
    """argparse rejected the command line."""


# --------------------------------------------------------------------------- checks model


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
    from typing import TypeAlias

    Check: TypeAlias = "HttpCheck | FileCheck | GpuCheck"


@dataclass
class Outcome:
    """The result of one attempt at a check."""

    kind: str
    reason: str = ""
    status: int | None = None
    body: str | None = None
    saved: Any = None
    final: bool = False  # retrying cannot help (missing tool, unfillable template, another origin)
    timed_out: bool = False  # the attempt ran out of time (its request or command timed out)

    @property
    def ok(self) -> bool:
        return self.kind == OK


# --------------------------------------------------------------------------- pure helpers


def python_supported(version: tuple[int, ...]) -> bool:
    return tuple(version[:2]) >= MIN_PYTHON


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


def join_url(base_url: str, path: str) -> str:
    """The URL a check's path names. An absolute URL (``scheme:...``, as RFC 3986 reads it: a
    relative path never has a ':' in its first segment) stands as it is and a network-path
    reference (``//host/x``) takes base_url's scheme; the caller holds either to the service's
    origin (url_origin). Anything else is a path under base_url."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", path):
        return path
    if path.startswith("//"):
        return base_url.split("//", 1)[0] + path
    return base_url.rstrip("/") + "/" + path.lstrip("/")


# scheme://host[:port] followed by the end or one of "/?#", exactly where urllib.request splits off
# the host it connects to. No user info, no percent-encoding, no whitespace: such a URL has no origin.
_ORIGIN = re.compile(
    r"(?P<scheme>https?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>[0-9]{1,5}))?(?=[/?#]|\Z)",
    re.IGNORECASE,
)


def url_origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an absolute http(s) URL; None for anything else (other schemes,
    relative references, user info, odd characters in the host)."""
    match = _ORIGIN.match(url)
    if match is None:
        return None
    scheme = match.group("scheme").lower()
    port = int(match.group("port")) if match.group("port") else DEFAULT_PORTS[scheme]
    return scheme, match.group("host").lower(), port


def origin_text(origin: tuple[str, str, int] | None) -> str:
    if origin is None:
        return "(none: the base URL is not an http(s) URL of a host)"
    scheme, host, port = origin
    return f"{scheme}://{host}:{port}"


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


# --------------------------------------------------------------------------- I/O


@dataclass
class HttpResponse:
    status: int
    body: bytes


class Unreachable(Exception):
    """No (complete) HTTP answer in time: refused, timed out, reset, not HTTP."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class OffOrigin(Exception):
    """The service redirected to another origin (scheme, host or port); the redirect was not followed."""

    def __init__(self, target: str, status: int) -> None:
        super().__init__(f"redirect ({status}) to {target}")
        self.target = target
        self.status = status


class _Watch:
    """One request's socket, so that the thread waiting for the request can cut it off in time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._expired = False
        self.status: int | None = None  # set once the status line and headers are in

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self._expired and sock is not None:
                _shut(sock)

    def expire(self) -> None:
        with self._lock:
            self._expired = True
            if self._sock is not None:
                _shut(self._sock)


def _shut(sock: socket.socket) -> None:
    """Shut a socket down at the TCP level (under TLS too): a read blocked on it returns at once."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_WORKER = threading.local()  # .watch: the _Watch of the request this thread is making


def _attach_socket(sock: socket.socket | None) -> None:
    watch = getattr(_WORKER, "watch", None)
    if watch is not None:
        watch.attach(sock)


class _WatchedHTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _attach_socket(self.sock)


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_WatchedHTTPConnection, req)


_HANDLERS: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({}), _WatchedHTTPHandler()]

if hasattr(http.client, "HTTPSConnection") and hasattr(urllib.request, "HTTPSHandler"):  # Python with ssl

    class _WatchedHTTPSConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            _attach_socket(self.sock)

    class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
        def do_open(
            self, http_class: Any, req: urllib.request.Request, **http_conn_args: Any
        ) -> http.client.HTTPResponse:
            return super().do_open(_WatchedHTTPSConnection, req, **http_conn_args)

    _HANDLERS.append(_WatchedHTTPSHandler())


def _redirect_target(req: urllib.request.Request, headers: Any) -> str | None:
    for name in ("location", "uri"):  # as HTTPRedirectHandler reads them
        if name in headers:
            return urllib.parse.urljoin(req.full_url, str(headers[name]))
    return None


class _RedirectWithinOrigin(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the origin (scheme, host, port) of the request it answers, so the
    request's headers (Authorization, API keys) never go anywhere else; any other target, another
    scheme such as file: or ftp: included, raises OffOrigin before urllib looks at it."""

    def _check(self, req: urllib.request.Request, target: str | None, code: int, fp: Any) -> None:
        if target is None:
            return
        origin = url_origin(req.full_url)
        if origin is None or url_origin(target) != origin:
            fp.close()
            raise OffOrigin(target, code)

    def http_error_302(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any) -> Any:
        self._check(req, _redirect_target(req, headers), code, fp)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(  # noqa: PLR0917 (urllib's signature)
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        self._check(req, newurl, code, fp)  # the URL exactly as urllib would request it
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(*_HANDLERS, _RedirectWithinOrigin())


def http_request(
    url: str, method: str, body: bytes | None, headers: dict[str, str], timeout: float
) -> HttpResponse:
    """One HTTP request, all of it within `timeout` seconds: connecting, redirects within the URL's
    origin, the headers and the whole body (a server trickling its answer is cut off too). Any
    status is returned; transport failures and the timeout raise Unreachable, a redirect to another
    origin raises OffOrigin."""
    if url_origin(url) is None:
        raise Unreachable(f"unsupported URL {url!r}")
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310
    watch = _Watch()
    result: list[HttpResponse | Exception] = []
    worker = threading.Thread(
        target=_request_in_thread, args=(request, timeout, watch, result), name="smoke-http", daemon=True
    )
    worker.start()
    worker.join(timeout)
    if not result:
        watch.expire()  # the worker's read fails at once and it ends; its answer is not waited for
        if watch.status is not None:
            raise Unreachable(
                f"timed out after {timeout:.1f}s: status {watch.status} came, the body did not finish",
                timed_out=True,
            )
        raise Unreachable(f"timed out after {timeout:.1f}s", timed_out=True)
    answer = result[0]
    if isinstance(answer, Exception):
        raise answer
    return answer


def _request_in_thread(
    request: urllib.request.Request,
    timeout: float,
    watch: _Watch,
    result: list[HttpResponse | Exception],
) -> None:
    _WORKER.watch = watch
    try:
        # The socket's own timeout is a little longer than the waiting thread's, which decides.
        result.append(_request(request, timeout + 0.5, watch))
    except Exception as error:  # handed to the waiting thread
        result.append(error)


def _request(request: urllib.request.Request, timeout: float, watch: _Watch) -> HttpResponse:
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            watch.status = response.status
            return HttpResponse(response.status, _read_capped(response))
    except urllib.error.HTTPError as error:
        watch.status = error.code
        try:
            data = _read_capped(error)
        except (OSError, ValueError):
            data = b""
        return HttpResponse(error.code, data)
    except urllib.error.URLError as error:
        raise Unreachable(str(error.reason), timed_out=_is_timeout(error.reason)) from error
    except TimeoutError as error:
        raise Unreachable(f"timed out after {timeout:.1f}s", timed_out=True) from error
    except (OSError, ValueError) as error:  # resets, http.client.HTTPException subclasses
        raise Unreachable(f"{type(error).__name__}: {error}", timed_out=_is_timeout(error)) from error


def _is_timeout(error: object) -> bool:
    """TimeoutError, or socket.timeout (not yet an alias of it on Python 3.8 and 3.9)."""
    return isinstance(error, (TimeoutError, getattr(socket, "timeout", TimeoutError)))


def _read_capped(response: Any) -> bytes:
    data = response.read(MAX_BODY_BYTES + 1)
    return bytes(data)


@dataclass
class CommandResult:
    returncode: int
    output: str
    timed_out: bool = False


class ToolMissing(Exception):
    pass


def run_command(argv: Sequence[str], timeout: float) -> CommandResult:
    """Run a command; returncode 124 on timeout, ToolMissing when the program is not found."""
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as error:
        raise ToolMissing(f"{argv[0]} not found") from error
    except subprocess.TimeoutExpired as error:
        out = (error.stdout or b"") + (error.stderr or b"")
        text = out.decode("utf-8", "replace") if isinstance(out, bytes) else str(out)
        return CommandResult(124, f"timed out after {timeout:.1f}s {text}".strip(), timed_out=True)
    text = (proc.stderr + proc.stdout).decode("utf-8", "replace")
    return CommandResult(proc.returncode, text)


def find_tool(docker: Sequence[str]) -> str | None:
    """Path of the docker program (first word of --docker), or None."""
    if not docker:
        return None
    return shutil.which(docker[0])


# --------------------------------------------------------------------------- runner


class SmokeRunner:
    """Runs checks in order with retries against one overall deadline.

    clock/sleep/http/run are injectable so tests can drive time and I/O.
    """

    def __init__(
        self,
        checks: Sequence[Check],
        base_url: str,
        *,
        deadline: float = DEFAULT_DEADLINE,
        interval: float = DEFAULT_INTERVAL,
        container: str | None = None,
        docker: Sequence[str] = ("docker",),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        http: Callable[[str, str, bytes | None, dict[str, str], float], HttpResponse] = http_request,
        run: Callable[[Sequence[str], float], CommandResult] = run_command,
        out: TextIO | None = None,
        err: TextIO | None = None,
        verbose: bool = False,
    ) -> None:
        self.checks = list(checks)
        self.base_url = base_url
        self.origin = url_origin(base_url)
        self.deadline = deadline
        self.interval = interval
        self.container = container
        self.docker = list(docker)
        self.clock = clock
        self.sleep = sleep
        self.http = http
        self.run_cmd = run
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.verbose = verbose
        self.saved: dict[str, Any] = {}
        self.deadline_at = 0.0

    # -- driving

    def run(self) -> int:
        self.deadline_at = self.clock() + self.deadline
        needs_docker = any(isinstance(c, (FileCheck, GpuCheck)) for c in self.checks)
        if needs_docker and find_tool(self.docker) is None:
            name = self.docker[0] if self.docker else "docker"
            self._fail_line(
                "preflight",
                EXIT_MISSING_TOOL,
                f"'{name}' not found on PATH but file/gpu checks need it",
            )
            return EXIT_MISSING_TOOL
        for check in self.checks:
            code = self._run_check(check)
            if code != EXIT_OK:
                return code
        return EXIT_OK

    def _run_check(self, check: Check) -> int:
        started = self.clock()
        attempts = 0
        decisive: tuple[Outcome, str] | None = None  # the last attempt the deadline did not cut short
        while True:
            attempts += 1
            remaining = self.deadline_at - self.clock()
            # Only a check's first attempt may run past the deadline (it gets MIN_ATTEMPT_TIMEOUT).
            budget = max(remaining, MIN_ATTEMPT_TIMEOUT) if decisive is None else max(remaining, 0.0)
            outcome, label = self._attempt(check, budget)
            if outcome.ok:
                if isinstance(check, HttpCheck) and check.save_as:
                    self.saved[check.save_as] = outcome.saved
                took = self.clock() - started
                status = f" {outcome.status}" if outcome.status is not None else ""
                tries = f" ({attempts} attempts)" if attempts > 1 else ""
                print(f"PASS {label}{status} in {took:.1f}s{tries}", file=self.out, flush=True)
                return EXIT_OK
            if decisive is not None and outcome.timed_out and budget < MIN_ATTEMPT_TIMEOUT:
                outcome, label = decisive  # the deadline cut this retry short: the attempt before decides
            else:
                decisive = outcome, label
            remaining = self.deadline_at - self.clock()
            if outcome.final or remaining <= self.interval:
                code = EXIT_FOR_KIND[outcome.kind]
                self._fail_line(label, code, self._describe(outcome, attempts))
                return code
            if self.verbose:
                print(
                    f"retry {label}: {one_line(mask_text(outcome.reason))} ({remaining:.0f}s left)",
                    file=self.err,
                    flush=True,
                )
            self.sleep(self.interval)

    def _attempt(self, check: Check, budget: float) -> tuple[Outcome, str]:
        label = check.label()
        try:
            if isinstance(check, HttpCheck):
                path = render_template(check.path, self.saved)
                label = f"http {check.method} {one_line(mask_url(path))}"
                return self._attempt_http(check, path, min(MAX_REQUEST_TIMEOUT, budget)), label
            if isinstance(check, FileCheck):
                path = render_template(check.path, self.saved)
                label = f"file {one_line(mask_url(path))}"
                return self._attempt_file(path, min(MAX_COMMAND_TIMEOUT, budget)), label
            return self._attempt_gpu(check, min(MAX_COMMAND_TIMEOUT, budget)), label
        except KeyError as error:
            reason = f"cannot fill path template: {error.args[0]}"
            return Outcome(MALFORMED, reason, final=True), label

    def _attempt_http(self, check: HttpCheck, path: str, timeout: float) -> Outcome:
        headers = dict(check.headers)
        data: bytes | None = None
        if check.body is not None:
            data = json.dumps(check.body).encode("utf-8")
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        if check.json_spec is not None and not any(k.lower() == "accept" for k in headers):
            headers["Accept"] = "application/json"
        url = join_url(self.base_url, path)
        if self.origin is None or url_origin(url) != self.origin:
            reason = f"refused to request a URL off the service's origin {origin_text(self.origin)}: {url}"
            return Outcome(MALFORMED, reason, final=True)
        try:
            response = self.http(url, check.method, data, headers, timeout)
        except Unreachable as error:
            return Outcome(UNREACHABLE, f"no answer ({error})", timed_out=error.timed_out)
        except OffOrigin as error:
            reason = (
                f"refused redirect ({error.status}) off the service's origin {origin_text(self.origin)}, "
                f"not followed: {error.target}"
            )
            return Outcome(MALFORMED, reason, error.status, final=True)
        text = response.body[:MAX_BODY_BYTES].decode("utf-8", "replace")
        status = response.status
        if status not in check.status:
            kind = NOT_READY if 500 <= status <= 599 else MALFORMED
            wanted = "/".join(str(s) for s in check.status)
            return Outcome(kind, f"expected status {wanted}, got {status}", status, text)
        if len(response.body) > MAX_BODY_BYTES:
            return Outcome(MALFORMED, f"body larger than {MAX_BODY_BYTES} bytes", status, text)
        parsed: Any = None
        if check.json_spec is not None or check.equals is not None or check.save_as:
            try:
                parsed = json.loads(text)
            except ValueError:
                return Outcome(MALFORMED, "body is not JSON", status, text)
            problems = validate_json(parsed, check.json_spec or {}) + validate_equals(
                parsed, check.equals or {}
            )
            if problems:
                return Outcome(MALFORMED, "; ".join(problems), status, text)
        return Outcome(OK, status=status, body=text, saved=parsed)

    def _docker_exec(self, args: Sequence[str], timeout: float) -> CommandResult:
        if not self.container:
            raise ToolMissing("no --container given")
        return self.run_cmd([*self.docker, "exec", self.container, *args], timeout)

    def _attempt_file(self, path: str, timeout: float) -> Outcome:
        failure = "file not found in container {container} (docker exec exit {code})"
        return self._attempt_in_container(["test", "-f", path], timeout, FILE_ABSENT, failure)

    def _attempt_gpu(self, check: GpuCheck, timeout: float) -> Outcome:
        failure = "command failed in container {container} (exit {code})"
        return self._attempt_in_container(check.command, timeout, GPU_FAILED, failure)

    def _attempt_in_container(
        self, args: Sequence[str], timeout: float, failed: str, failure: str
    ) -> Outcome:
        try:
            result = self._docker_exec(args, timeout)
        except ToolMissing as error:
            return Outcome(MISSING_TOOL, str(error), final=True)
        if result.returncode == 0:
            return Outcome(OK)
        message = failure.format(container=self.container, code=result.returncode)
        return Outcome(failed, message, body=result.output, timed_out=result.timed_out)

    # -- reporting

    def _describe(self, outcome: Outcome, attempts: int) -> str:
        parts = [one_line(mask_text(outcome.reason))]
        if outcome.status is not None:
            parts.append(f"status {outcome.status}")
        if outcome.body is not None:
            parts.append(f"body: {snippet(outcome.body)}")
        if outcome.kind in (UNREACHABLE, NOT_READY):
            parts.append(f"deadline {self.deadline:g}s reached after {attempts} attempt(s)")
        return "; ".join(parts)

    def _fail_line(self, label: str, code: int, message: str) -> None:
        print(f"FAIL {label}: {message} (exit {code})", file=self.err, flush=True)


# --------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="smoke.py",
        description="Post-deploy smoke checks. Exit codes: 0 ok, 1 missing tool, 2 timeout, "
        "3 malformed response, 4 file absent in container, 5 gpu check failed, 64 usage error.",
    )
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:3000")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checks-file", help="JSON file with the list of checks")
    source.add_argument("--checks", help="the list of checks as a JSON string")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE, help="overall seconds")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between tries")
    parser.add_argument("--container", help="container for file/gpu checks (docker exec)")
    parser.add_argument("--docker", default="docker", help='docker command, e.g. "sudo -n docker"')
    parser.add_argument("-v", "--verbose", action="store_true", help="log each failed attempt")
    return parser


def load_config(argv: Sequence[str]) -> tuple[argparse.Namespace, list[Check]]:
    args = build_parser().parse_args(list(argv))
    if url_origin(args.base_url) is None:
        raise ConfigError(
            f"--base-url must be an http(s) URL of a host and port, without user info, "
            f"got {mask_url(args.base_url)!r}"
        )
    if args.deadline <= 0 or args.interval < 0:
        raise ConfigError("--deadline must be > 0 and --interval >= 0")
    if args.checks_file == "-":  # from stdin: keeps request headers off the command line
        text = sys.stdin.read()
    elif args.checks_file is not None:
        try:
            with open(args.checks_file, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as error:
            raise ConfigError(f"cannot read --checks-file: {error}") from error
    else:
        text = args.checks
    try:
        raw = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"checks are not valid JSON: {error}") from error
    checks = parse_checks(raw)
    if any(isinstance(c, (FileCheck, GpuCheck)) for c in checks) and not args.container:
        raise ConfigError("file/gpu checks need --container")
    try:
        args.docker_argv = shlex.split(args.docker)
    except ValueError as error:
        raise ConfigError(f"--docker: {error}") from error
    if not args.docker_argv:
        raise ConfigError("--docker must not be empty")
    return args, checks


def main(argv: Sequence[str] | None = None) -> int:
    if not python_supported(tuple(sys.version_info[:3])):
        found = ".".join(str(v) for v in sys.version_info[:3])
        print(f"FAIL preflight: python {found} is too old, need 3.8+ (exit 1)", file=sys.stderr)
        return EXIT_MISSING_TOOL
    try:
        args, checks = load_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as error:
        print(f"smoke.py: error: {error} (exit {EXIT_USAGE})", file=sys.stderr)
        return EXIT_USAGE
    runner = SmokeRunner(
        checks,
        args.base_url,
        deadline=args.deadline,
        interval=args.interval,
        container=args.container,
        docker=args.docker_argv,
        verbose=args.verbose,
    )
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
