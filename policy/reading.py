"""Reading a resource's inputs the way the engine hands them to a policy pack.

The inputs are camelCase, as the engine receives them, with the offline plan's placeholders for what a
policy cannot see: "[secret]" and "[unknown]" (components/core/vocabulary.py). These helpers find what the
rules check, for both targets: Docker containers, images and commands, and the Kubernetes kinds that run
pods (POD_SPEC_PATHS says where their pod spec sits).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from components.core.vocabulary import (
    GPU_RESOURCE,
    MIG_RESOURCE_PREFIX,
    SECRET_PLACEHOLDER,
    UNKNOWN_PLACEHOLDER,
)

CONTAINER = "docker:index/container:Container"
IMAGE = "docker:index/image:Image"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
COMMANDS = ("command:remote:Command", "command:local:Command")
# Kubernetes kinds that run pods, and where their pod spec sits.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "kubernetes:core/v1:Pod": ("spec",),
    "kubernetes:apps/v1:Deployment": ("spec", "template", "spec"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:ReplicaSet": ("spec", "template", "spec"),
    "kubernetes:batch/v1:Job": ("spec", "template", "spec"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}

_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)


def is_known(value: Any) -> bool:
    """False for the placeholders of values a policy cannot see (unknown until deploy, or secret)."""
    return value is not None and value not in (UNKNOWN_PLACEHOLDER, SECRET_PLACEHOLDER)


def dig(value: Any, *path: str) -> Any:
    """value[path[0]][path[1]]...; None where a step is missing or not a mapping."""
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def as_list(value: Any) -> list[Any]:
    """A sequence's items ([] for anything else, a string included)."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []


def as_map(value: Any) -> Mapping[str, Any]:
    """A mapping ({} for anything else)."""
    return value if isinstance(value, Mapping) else {}


def resource_labels(type_: str, props: Mapping[str, Any]) -> dict[str, Any]:
    """Docker labels ([{label, value}]) or Kubernetes metadata labels and annotations (object and pod)."""
    if type_ == CONTAINER:
        items = [item for item in as_list(props.get("labels")) if isinstance(item, Mapping)]
        return {str(item.get("label")): item.get("value") for item in items}
    if type_ in POD_SPEC_PATHS:
        found: dict[str, Any] = {}
        template = POD_SPEC_PATHS[type_][:-1]
        for meta in (dig(props, "metadata"), dig(props, *template, "metadata") if template else None):
            found.update(as_map(dig(meta, "annotations")))
            found.update(as_map(dig(meta, "labels")))
        return found
    return {}


def is_gpu_resource(key: str) -> bool:
    """nvidia.com/gpu, nvidia.com/gpu.shared (renamed time-slicing) or nvidia.com/mig-<profile>."""
    return key == GPU_RESOURCE or key.startswith((f"{GPU_RESOURCE}.", MIG_RESOURCE_PREFIX))


def pod_spec(type_: str, props: Mapping[str, Any]) -> Mapping[str, Any]:
    return as_map(dig(props, *POD_SPEC_PATHS[type_]))


def pod_containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [
        c
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in as_list(spec.get(key))
        if isinstance(c, Mapping)
    ]


def container_label(container: Mapping[str, Any]) -> str:
    return f"container {container.get('name') or '?'}"


def docker_env(props: Mapping[str, Any]) -> dict[str, str]:
    """`envs` ("NAME=value" strings) -> {NAME: value}; "[secret]" entries have no name to show."""
    env: dict[str, str] = {}
    for item in as_list(props.get("envs")):
        if isinstance(item, str) and "=" in item:
            name, value = item.split("=", 1)
            env[name] = value
    return env


def command_assignments(create: Any) -> dict[str, str]:
    """NAME=value words of a command line (`env DIRS='...' MODE=0750 bash -s`) -> {NAME: value}."""
    if not isinstance(create, str) or not is_known(create):
        return {}
    try:
        words = shlex.split(create)
    except ValueError:
        words = create.split()
    return {m.group(1): m.group(2) for m in (_ASSIGNMENT.match(w) for w in words) if m}


def describe(type_: str, props: Mapping[str, Any], name: str = "") -> str:
    """How a message names the resource: its kind, Pulumi name and, when different, its own name."""
    kind = type_.rsplit(":", 1)[-1]
    own = props.get("name") if type_ in (CONTAINER, REMOTE_IMAGE) else props.get("imageName")
    if type_ in POD_SPEC_PATHS:
        own = dig(props, "metadata", "name")
    own_text = own if isinstance(own, str) and is_known(own) else ""
    if name and own_text and own_text != name:
        return f"{kind} {name} ({own_text})"
    return f"{kind} {name or own_text or '?'}"
