"""The Docker health check's HTTP probe: a `CMD-SHELL` command that works with whatever the image has."""

from __future__ import annotations

import shlex

# The HTTP health probe, tried in this order with whatever the image has. `nvidia/cuda` runtime images and
# slim images ship none of curl, wget, python3 or node, but they have bash: its /dev/tcp speaks HTTP/1.0.
# An image with none of them gets a health log line that says what to set instead.
_BASH_HTTP_GET = (
    'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1; '
    'printf "GET %s HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n" "$2" >&3; '
    'read -r _ code _ <&3; case "$code" in 2??|3??) exit 0;; esac; '
    'echo "GET $2 answered HTTP status ${code:-(none)}"; exit 1'
)
_PYTHON_HTTP_GET = (
    "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]))"
)
_NODE_HTTP_GET = (
    'require("http").get(process.argv[1], (r) => process.exit(r.statusCode < 400 ? 0 : 1))'
    '.on("error", (e) => { console.log(String(e)); process.exit(1); })'
)
NO_PROBE_TOOL = (
    "no curl, wget, python3, node or bash in this image to probe HTTP: "
    "set healthcheck.command to a check the image can run"
)


def http_probe(path: str, port: int, timeout_s: int = 10) -> str:
    """A `CMD-SHELL` health probe (run by the image's /bin/sh) that works with curl, wget, python3, node
    or bash alone; an HTTP status of 400 or more, or no answer, is unhealthy."""
    q = shlex.quote
    url = f"http://127.0.0.1:{port}{path}"
    tries = [
        ("curl", f"curl -fsS -o /dev/null --max-time {timeout_s} {q(url)}"),
        ("wget", f"wget -q -O /dev/null -T {timeout_s} {q(url)}"),
        ("python3", f"python3 -c {q(_PYTHON_HTTP_GET)} {q(url)} {timeout_s}"),
        ("node", f"node -e {q(_NODE_HTTP_GET)} {q(url)}"),
        ("bash", f"bash -c {q(_BASH_HTTP_GET)} probe {port} {q(path)}"),
    ]
    steps = [f"if command -v {tool} >/dev/null 2>&1; then exec {run}; fi" for tool, run in tries]
    return "; ".join([*steps, f"echo {q(NO_PROBE_TOOL)}; exit 1"])
