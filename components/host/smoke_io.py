"""The smoke runner's I/O: HTTP requests held to one origin and one deadline, and commands (docker exec).
Standard library only, Python 3.8+: shipped beside smoke.py (see smoke.py).

An HTTP attempt ends after its timeout, all of it: connecting, redirects, the headers and the whole
body, so a server that trickles its answer byte by byte is cut off there too. Proxies from the
environment are ignored.

Every request stays on the origin of the base URL (same scheme, host and port; http or https):
a redirect anywhere else is not followed (so request headers such as ``Authorization`` never
leave the service) and an absolute URL in a path (``scheme:...`` or ``//host/...``) that points
elsewhere is not requested (smoke.py holds a check's URL to the origin with url_origin).
"""

from __future__ import annotations

import contextlib
import http.client
import re
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_PORTS = {"http": 80, "https": 443}


# --------------------------------------------------------------------------- origins


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


# --------------------------------------------------------------------------- HTTP


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


# --------------------------------------------------------------------------- commands


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
