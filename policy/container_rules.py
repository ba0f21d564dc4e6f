"""The container rules: a memory limit, a non-root user, no privileges, pinned images, no plain secrets."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from components.core.values import floating_tag, looks_secret
from components.core.vocabulary import LABEL_SERVICE, SECRET_PLACEHOLDER, UNKNOWN_PLACEHOLDER
from policy.context import StackContext
from policy.reading import (
    COMMANDS,
    CONTAINER,
    IMAGE,
    POD_SPEC_PATHS,
    REMOTE_IMAGE,
    as_list,
    as_map,
    command_assignments,
    container_label,
    dig,
    docker_env,
    is_known,
    pod_containers,
    pod_spec,
    resource_labels,
)


# ---------------------------------------------------------------- rule: a memory limit
def check_memory_limit(type_: str, props: Mapping[str, Any], context: StackContext) -> list[str]:
    """Every container has a memory limit (Docker `memory` in MiB, Kubernetes limits.memory)."""
    if type_ == CONTAINER:
        memory = props.get("memory")
        if not is_known(memory) and memory is not None:
            return []
        if isinstance(memory, bool) or not isinstance(memory, (int, float)) or memory <= 0:
            return ["has no memory limit; set services.<name>.memory"]
        return []
    if type_ in POD_SPEC_PATHS:
        return [
            f"{container_label(c)}: has no resources.limits.memory"
            for c in pod_containers(pod_spec(type_, props))
            if not dig(c, "resources", "limits", "memory")
        ]
    return []


# ---------------------------------------------------------------- rule: a non-root user
def check_non_root(type_: str, props: Mapping[str, Any], context: StackContext) -> list[str]:
    """Docker `user` is a numeric uid other than 0; Kubernetes runs as non-root / a uid other than 0."""
    if type_ == CONTAINER:
        user = props.get("user")
        if user is not None and not is_known(user):
            return []
        if not isinstance(user, str) or not user:
            return ["has no user, so it runs as the image's default (often root); set a numeric uid:gid"]
        uid = user.split(":", 1)[0]
        if not uid.isdigit():
            return [f"user {user!r} is not a numeric uid[:gid]; name-based users may resolve to root"]
        if int(uid) == 0:
            return [f"runs as root (user {user!r}); use a non-root uid such as 1001:1001"]
        return []
    if type_ in POD_SPEC_PATHS:
        spec = pod_spec(type_, props)
        pod_ctx = as_map(spec.get("securityContext"))
        problems = []
        for container in pod_containers(spec):
            ctx = as_map(container.get("securityContext"))
            run_as_user = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
            non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
            where = container_label(container)
            if run_as_user is not None:
                if is_known(run_as_user) and str(run_as_user) == "0":
                    problems.append(f"{where}: runAsUser is 0 (root)")
            elif non_root is not True and (non_root is None or is_known(non_root)):
                problems.append(f"{where}: neither runAsNonRoot: true nor a runAsUser other than 0")
        return problems
    return []


# ---------------------------------------------------------------- rule: no privileges
def check_no_privileges(type_: str, props: Mapping[str, Any], context: StackContext) -> list[str]:
    """No privileged mode, no added capabilities, no privilege escalation, not the host's IPC namespace."""
    problems: list[str] = []
    if type_ == CONTAINER:
        if props.get("privileged") is True:
            problems.append("runs privileged; GPUs come from device requests, not privileged mode")
        adds = [a for a in as_list(dig(props, "capabilities", "adds")) if is_known(a)]
        if adds:
            problems.append(f"adds capabilities {', '.join(map(str, adds))}; drop ALL and add none")
        if props.get("ipcMode") == "host":
            problems.append(
                "shares the host's IPC namespace (ipcMode host); give it its own and shmSize for "
                "shared memory"
            )
        return problems
    if type_ in POD_SPEC_PATHS:
        for container in pod_containers(pod_spec(type_, props)):
            ctx = as_map(container.get("securityContext"))
            where = container_label(container)
            if ctx.get("privileged") is True:
                problems.append(f"{where}: runs privileged")
            if ctx.get("allowPrivilegeEscalation") is True:
                problems.append(f"{where}: allows privilege escalation")
            adds = [a for a in as_list(dig(ctx, "capabilities", "add")) if is_known(a)]
            if adds:
                problems.append(f"{where}: adds capabilities {', '.join(map(str, adds))}")
    return problems


# ---------------------------------------------------------------- rule: pinned images
def image_pin_problem(ref: Any) -> str | None:
    """Why an image reference is not pinned (None when it has a tag other than latest, or a digest)."""
    if not isinstance(ref, str) or not is_known(ref):
        return None
    if not ref:
        return "has an empty image reference"
    if re.fullmatch(r"sha256:[0-9a-f]{64}", ref):  # an image ID, as a built image's ref may be
        return None
    tag = floating_tag(ref)
    if tag == "":
        return f"image {ref!r} has no tag (Docker reads that as :latest); pin a version"
    if tag == "@":
        return f"image {ref!r} has a malformed digest; use @sha256:<64 hex digits>"
    if tag is not None:
        return f"image {ref!r} uses the moving tag {tag}; pin a version"
    return None


def check_pinned_images(type_: str, props: Mapping[str, Any], context: StackContext) -> list[str]:
    """Images (run, referenced, built, and built FROM) carry a version tag or a digest."""
    refs: list[tuple[str, Any]] = []
    if type_ == CONTAINER:
        refs.append(("", props.get("image")))
    elif type_ == REMOTE_IMAGE:
        refs.append(("", props.get("name")))
    elif type_ == IMAGE:
        refs.append(("", props.get("imageName")))
        refs.append(("BASE_IMAGE: ", dig(props, "build", "args", "BASE_IMAGE")))
    elif type_ in POD_SPEC_PATHS:
        for container in pod_containers(pod_spec(type_, props)):
            image = container.get("image")
            refs.append((f"{container_label(container)}: ", "" if image is None else image))
    problems = []
    for prefix, ref in refs:
        problem = image_pin_problem(ref)
        if problem:
            problems.append(prefix + problem)
    return problems


# ---------------------------------------------------------------- rule: no plain secrets
def _plain_secret(name: str, value: str) -> bool:
    return looks_secret(name) and value not in ("", SECRET_PLACEHOLDER, UNKNOWN_PLACEHOLDER)


def check_plain_secrets(type_: str, props: Mapping[str, Any], context: StackContext) -> list[str]:
    """No credential-looking env var with a plain value, and no credential-looking build arg."""
    problems: list[str] = []
    if type_ == CONTAINER:
        service = resource_labels(type_, props).get(LABEL_SERVICE)
        service_name = service if isinstance(service, str) and is_known(service) else None
        for name, value in docker_env(props).items():
            if _plain_secret(name, value) and not context.declared_secret(service_name, name):
                problems.append(f"env {name} holds a plain value; set it with services.<name>.secretEnv")
    elif type_ == IMAGE:
        args = dig(props, "build", "args")
        for name in sorted(as_map(args)):
            if looks_secret(name):
                problems.append(
                    f"build arg {name} looks like a credential; the image history keeps build args"
                )
    elif type_ in COMMANDS:
        for name, value in command_assignments(props.get("create")).items():
            if _plain_secret(name, value):
                problems.append(f"command line sets {name} in plain text")
    elif type_ in POD_SPEC_PATHS:
        for container in pod_containers(pod_spec(type_, props)):
            for item in as_list(container.get("env")):
                if not isinstance(item, Mapping):
                    continue
                env_name, plain = str(item.get("name", "")), item.get("value")
                if isinstance(plain, str) and _plain_secret(env_name, plain):
                    problems.append(
                        f"{container_label(container)}: env {env_name} holds a plain value; "
                        "use valueFrom.secretKeyRef"
                    )
    return problems
