"""The host rules: host paths lie under the stack's root, host directories are never world-writable."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from policy.context import StackContext
from policy.reading import (
    COMMANDS,
    CONTAINER,
    POD_SPEC_PATHS,
    as_list,
    command_assignments,
    dig,
    is_known,
    pod_spec,
)


# ---------------------------------------------------------------- rule: host paths under the root
def under_root(path: str, root: str) -> bool:
    if not path.startswith("/") or ".." in PurePosixPath(path).parts:
        return False
    normal = posixpath.normpath(path)
    return normal == root or normal.startswith(root.rstrip("/") + "/")


def _host_paths(type_: str, props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(what, host path) for every host directory a resource binds or creates."""
    paths: list[tuple[str, str]] = []
    if type_ == CONTAINER:
        for mount in as_list(props.get("mounts")):
            if isinstance(mount, Mapping) and mount.get("type") == "bind" and is_known(mount.get("source")):
                paths.append((f"bind mount -> {mount.get('target')}", str(mount.get("source"))))
        for volume in as_list(props.get("volumes")):
            if isinstance(volume, Mapping) and is_known(volume.get("hostPath")) and volume.get("hostPath"):
                paths.append((f"volume -> {volume.get('containerPath')}", str(volume.get("hostPath"))))
    elif type_ in COMMANDS:
        dirs = command_assignments(props.get("create")).get("DIRS")
        if dirs is not None:
            paths += [("host directory", line.strip()) for line in dirs.splitlines() if line.strip()]
    elif type_ in POD_SPEC_PATHS:
        for volume in as_list(pod_spec(type_, props).get("volumes")):
            path = dig(volume, "hostPath", "path")
            if is_known(path) and path:
                paths.append((f"hostPath volume {volume.get('name')}", str(path)))
    return paths


def check_host_paths(type_: str, props: Mapping[str, Any], context: StackContext) -> list[str]:
    """Bind sources and the directories the host-dirs command creates lie under the stack's root."""
    problems = []
    for what, path in _host_paths(type_, props):
        if context.root is None:
            problems.append(f"{what}: {path} is a host path, but the stack has no target.root to hold it")
        elif not under_root(path, context.root):
            problems.append(f"{what}: {path} is outside the stack's root {context.root}")
    return problems


# ---------------------------------------------------------------- rule: no world-writable host directories
def check_dir_mode(type_: str, props: Mapping[str, Any], context: StackContext) -> list[str]:
    """The host-dirs command (a Command whose line sets MODE=) never makes directories world-writable."""
    if type_ not in COMMANDS:
        return []
    mode = command_assignments(props.get("create")).get("MODE")
    if mode is None:
        return []
    if not re.fullmatch(r"0?[0-7]{3,4}", mode):
        return [f"MODE={mode} is not an octal mode such as 0750"]
    if int(mode, 8) & 0o002:
        return [f"MODE={mode} makes the host directories world-writable; use 0750 or 0755"]
    return []
