"""What `python -m stacks status` and `logs` run on a Docker host and how they read it: the stack's
containers found by their labels (LABEL_STACK, LABEL_SERVICE; never by name: a zero-downtime replacement
runs beside the old copy under a name the engine chose), one row each: state, health, image tag, GPU."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from components.core.vocabulary import LABEL_SERVICE, LABEL_STACK
from stacks.config import StackConfig

STATUS_COLUMNS = ("service", "container", "state", "health", "tag", "gpu")
INSPECT_MARK = "--- gpu-deploy inspect"


def _label_filter(stack: str, service: str | None = None) -> str:
    words = ["--filter", f"label={LABEL_STACK}={stack}"]
    if service is not None:
        words += ["--filter", f"label={LABEL_SERVICE}={service}"]
    return shlex.join(words)


def status_script(stack: str, service: str | None = None) -> str:
    """One session: `docker ps -a` of the stack's containers as JSON lines, then `docker inspect` of them."""
    filters = _label_filter(stack, service)
    return "\n".join(
        [
            "set -e",
            f"docker ps -a --no-trunc {filters} --format '{{{{json .}}}}'",
            f"echo {shlex.quote(INSPECT_MARK)}",
            f"ids=$(docker ps -a -q --no-trunc {filters})",
            'if [ -n "$ids" ]; then docker inspect $ids; else echo "[]"; fi',
        ]
    )


def image_tag(reference: str) -> str:
    """The tag (or short digest) of an image reference: `app:rel-1` -> `rel-1`, `redis` -> `latest`."""
    if "@" in reference:
        return "@" + reference.split("@", 1)[1][:19]
    last = reference.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def gpu_of(host_config: Mapping[str, Any]) -> str:
    """The container's GPU request as the plan writes it: `all`, a count, `devices:0,1`; `-` for none."""
    parts = []
    for request in host_config.get("DeviceRequests") or []:
        capabilities = [c for group in request.get("Capabilities") or [] for c in group]
        if request.get("Driver") not in (None, "", "nvidia") and "gpu" not in capabilities:
            continue
        if request.get("DeviceIDs"):
            parts.append("devices:" + ",".join(request["DeviceIDs"]))
        else:
            count = request.get("Count", 0)
            parts.append("all" if count == -1 else str(count))
    return " ".join(parts) or "-"


def created_key(text: str) -> str:
    """Docker's RFC 3339 UTC time (`2026-01-02T03:04:05.123456789Z`, fraction of any length) as a string
    that sorts in time order."""
    head, _, rest = text.rstrip("Z").partition(".")
    return f"{head}.{rest.ljust(9, '0')}"


def parse_status(stack: str, output: str) -> list[dict[str, Any]]:
    """The status script's output -> one row per container, newest first within a service."""
    ps_text, _, inspect_text = output.partition(INSPECT_MARK + "\n")
    ps_rows = {}
    for line in ps_text.splitlines():
        if line.strip():
            row = json.loads(line)
            ps_rows[str(row.get("ID", ""))] = row
    rows = []
    for item in json.loads(inspect_text or "[]"):
        config, state = item.get("Config") or {}, item.get("State") or {}
        labels = config.get("Labels") or {}
        if labels.get(LABEL_STACK) != stack:
            continue
        status = str(state.get("Status", "?"))
        if status == "exited":
            status = f"exited ({state.get('ExitCode')})"
        rows.append(
            {
                "service": labels.get(LABEL_SERVICE, "?"),
                "container": str(item.get("Name", "")).lstrip("/"),
                "id": str(item.get("Id", ""))[:12],
                "state": status,
                "running": bool(state.get("Running")),
                "health": (state.get("Health") or {}).get("Status", "-"),
                "image": config.get("Image", ""),
                "tag": image_tag(str(config.get("Image", ""))),
                "gpu": gpu_of(item.get("HostConfig") or {}),
                "created": item.get("Created", ""),
                "status": (ps_rows.get(str(item.get("Id", ""))) or {}).get("Status", ""),
            }
        )
    rows.sort(key=lambda r: created_key(r["created"]), reverse=True)  # newest first
    rows.sort(key=lambda r: (r["service"], not r["running"]))  # stable: running first, then the rest
    return rows


def with_missing(rows: list[dict[str, Any]], config: StackConfig) -> list[dict[str, Any]]:
    """Every enabled service the host runs no container of, as a row `not deployed`."""
    present = {row["service"] for row in rows}
    missing = [
        {
            "service": name,
            "container": "-",
            "id": "",
            "state": "not deployed",
            "running": False,
            "health": "-",
            "image": "",
            "tag": "-",
            "gpu": "-",
            "created": "",
            "status": "",
        }
        for name, service in config.services.items()
        if service.enabled and name not in present
    ]
    return sorted(rows + missing, key=lambda r: r["service"]) if missing else rows


def render_table(rows: Sequence[Mapping[str, Any]]) -> str:
    header = [c.upper() if c != "tag" else "IMAGE TAG" for c in STATUS_COLUMNS]
    cells = [[str(row.get(c, "")) for c in STATUS_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    lines = [
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *cells]
    ]
    return "\n".join(lines)


def logs_script(container_id: str, *, follow: bool, tail: str | None) -> str:
    words = [
        "docker",
        "logs",
        *(["--follow"] if follow else []),
        *(["--tail", tail] if tail else []),
        container_id,
    ]
    return shlex.join(words)


def pick_container(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The newest running container, else the newest (parse_status sorts them so)."""
    return rows[0] if rows else None
