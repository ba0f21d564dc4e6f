"""The plan as text: the resource tree in the order the program deploys it, each line saying what that
resource will be, whole (`python -m stacks plan STACK`; `--json` is the interface and stays as it was).

- Order: each parent's children in the order the program constructs them (stacks/plan.py records it in
  `engine["order"]`), which is the deploy order the program is written in: runners, GPU host, Docker
  host, directories, images, proxy, containers, smoke tests.
- Commands: a host script by its name and its settings (`script=install-driver.sh DRIVER_ACTION=verify
  ...`), a runner by the program it runs; never a command line cut mid-word. A setting of several lines
  is shown as its items (`DIRS=/srv/a,/srv/b`), a runner's pinned files by name.
- Containers and Kubernetes workloads: image, GPU (devices, a count or `nvidia.com/gpu: N`), memory.
- GpuHost: the driver the host needs (the card's minimum for the stack's CUDA) and when the runtime step
  restarts Docker (or the cluster's runtime), from the component's registered outputs.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from functools import cache
from typing import Any

from components.core.vocabulary import UNKNOWN_PLACEHOLDER
from components.host import shell as host_scripts
from stacks.plan import Plan, PlannedResource

_PINNED_FILE = re.compile(r"^[0-9a-f]{64}  (.+)$")  # a runner's RUNNER_FILES line: sha256, two spaces, name


def ordered_children(plan: Plan) -> dict[str | None, list[PlannedResource]]:
    """Each parent's children (None: the roots) in the order the program constructed them."""
    children: dict[str | None, list[PlannedResource]] = {}
    for resource in sorted(plan.resources, key=lambda r: (r.engine.get("order", -1), r.urn)):
        children.setdefault(resource.parent, []).append(resource)
    return children


def _short_type(type_: str) -> str:
    return type_.rsplit(":", maxsplit=1)[-1]


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


@cache
def _scripts() -> dict[str, str]:
    """The text each host script is sent as -> its name."""
    return {host_scripts.script(name): name for name in host_scripts.script_names()}


def _value(key: str, value: str) -> str:
    """One setting, whole: several lines as their items, a runner's pinned files by name."""
    lines = [line for line in value.splitlines() if line]
    if len(lines) > 1 or "\n" in value:
        pinned = [m.group(1) for line in lines if (m := _PINNED_FILE.match(line))]
        if pinned and len(pinned) == len(lines):
            return f"{key}={','.join(pinned)} (sha256-pinned)"
        return f"{key}={','.join(shlex.quote(line) for line in lines)}"
    return f"{key}={shlex.quote(value)}"


def _command(inputs: Mapping[str, Any]) -> str:
    """A command as what it runs: a host script with its settings, a runner with its program and arguments,
    or the command line itself, every word whole."""
    create = str(inputs.get("create") or "")
    script = _scripts().get(str(inputs.get("stdin") or ""))
    head = f"script={script}.sh" if script else ""
    if create == UNKNOWN_PLACEHOLDER or not create:
        return f"{head or 'run'} (settings known at deploy)"
    try:
        words = shlex.split(create)
    except ValueError:
        return f"run={create}" if "\n" not in create else f"run=({len(create.splitlines())} lines)"
    settings: list[str] = []
    if words[:1] == ["env"]:
        words = words[1:]
        while words and "=" in words[0] and re.fullmatch(r"[A-Z_][A-Z0-9_]*", words[0].split("=", 1)[0]):
            key, value = words.pop(0).split("=", 1)
            settings.append(_value(key, value))
    if words[:2] == ["bash", "-s"] and script:
        return " ".join([head, *settings])
    if words[:2] == ["bash", "-c"] and words[3:4] == ["run-verified"]:  # the runner guard, then its program
        return " ".join(["run-verified:", shlex.join(words[4:]), *settings])
    return " ".join([f"run={shlex.join(words)}", *settings])


def _container(inputs: Mapping[str, Any]) -> list[str]:
    parts = [f"image={inputs.get('image')}"]
    for request in inputs.get("deviceRequests") or []:
        devices = request.get("deviceIds")
        if isinstance(devices, list):
            parts.append(f"gpu=devices:{','.join(str(d) for d in devices)}")
        elif devices is not None:
            parts.append("gpu=devices:(placed from the host's preflight)")
        else:
            parts.append(f"gpu={'all' if request.get('count') == -1 else _number(request.get('count'))}")
    for port in inputs.get("ports") or []:
        if isinstance(port, Mapping) and "external" in port:
            address = f"{port['ip']}:" if port.get("ip") else ""
            parts.append(f"port={address}{_number(port['external'])}->{_number(port['internal'])}")
    parts += [
        f"mount={m['source']}:{m['target']}{':ro' if m.get('readOnly') else ''}"
        for m in inputs.get("mounts") or []
        if isinstance(m, Mapping)
    ]
    parts.append(f"user={inputs.get('user')}")
    if inputs.get("memory"):
        parts.append(f"memory={_number(inputs['memory'])}m")
    if inputs.get("attach"):
        parts.append("one-shot")
    return parts


def _pod(spec: Mapping[str, Any]) -> list[str]:
    """A pod template's containers: image, GPU and other extended resources, memory."""
    parts: list[str] = []
    for container in spec.get("containers") or []:
        parts.append(f"image={container.get('image')}")
        resources = container.get("resources") or {}
        limits = {**(resources.get("requests") or {}), **(resources.get("limits") or {})}
        parts += [f"gpu={key}:{_number(value)}" for key, value in sorted(limits.items()) if "/" in key]
        if "/" not in "".join(limits) and container.get("image"):
            parts.append("gpu=none")
        if limits.get("memory"):
            parts.append(f"memory={limits['memory']}")
    return parts


def _kubernetes(kind: str, inputs: Mapping[str, Any]) -> list[str]:
    spec = inputs.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet"):
        parts = [f"replicas={_number(spec['replicas'])}"] if "replicas" in spec else []
        parts += _pod((spec.get("template") or {}).get("spec") or {})
        strategy = (spec.get("strategy") or {}).get("type")
        return [*parts, f"strategy={strategy}"] if strategy else parts
    if kind == "Job":
        return _pod((spec.get("template") or {}).get("spec") or {})
    if kind == "Service":
        return [
            f"port={_number(p.get('port'))}->{_number(p.get('targetPort'))}" for p in spec.get("ports") or []
        ]
    if kind == "PersistentVolumeClaim":
        return [f"storage={((spec.get('resources') or {}).get('requests') or {}).get('storage')}"]
    if kind == "Release":
        return [
            f"chart={inputs.get('chart')} version={inputs.get('version')} namespace={inputs.get('namespace')}"
        ]
    return []


def summary(resource: PlannedResource) -> str:
    """What a resource will be, on one line (after two spaces), or nothing."""
    inputs = resource.inputs
    kind = _short_type(resource.type)
    parts: list[str] = []
    if kind == "Container":
        parts = _container(inputs)
    elif kind == "Image":
        parts.append(f"image={inputs.get('imageName')}")
        if (inputs.get("build") or {}).get("target"):
            parts.append(f"stage={inputs['build']['target']}")
    elif kind == "RemoteImage":
        parts.append(f"image={inputs.get('name')} (pinned, no build)")
    elif resource.type == "pulumi:providers:kubernetes":
        parts.append(f"context={inputs.get('context')} namespace={inputs.get('namespace')}")
    elif resource.type.startswith("pulumi:providers:"):
        parts.append(f"host={inputs.get('host')}")
    elif kind == "Network":
        parts.append(f"name={inputs.get('name')}")
    elif kind == "Command":
        parts.append(_command(inputs))
    elif kind == "CopyToRemote":
        parts.append(f"to={inputs.get('remotePath')}")
    elif resource.type.startswith("kubernetes:"):
        parts = _kubernetes(kind, inputs)
    elif resource.type == "gpu-deploy:host:GpuHost":
        notes = (resource.engine.get("outputs") or {}).get("plan") or {}
        if notes:
            parts.append(f"driver: {notes.get('minDriver')}; {notes.get('restart')}")
    return "  " + " ".join(parts) if parts else ""
