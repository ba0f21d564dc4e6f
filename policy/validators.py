"""The gpu-deploy policy rules as plain functions over resource inputs.

Every rule reads a resource's inputs the way the engine hands them to a policy pack (camelCase
property names; the offline plan's "[secret]" / "[unknown]" placeholders for secret and
not-yet-known values) plus a `StackContext`: the stack's GPU profile, its host root directory and the
env names it declares secret. policy/__main__.py serves these rules to `pulumi preview --policy-pack`;
the tests run them over the offline plans (`python -m stacks plan STACK --json`).

Where the context comes from, in order of precedence:
1. the resource itself: containers (Docker labels, Kubernetes metadata labels / annotations) carry
   `io.gpu-deploy.profile` (the resolved profile, so also the one `auto` detected) and
   `io.gpu-deploy.root` (the stack's target.root);
2. the stack configuration: the engine gives a policy pack the stack's config in the PULUMI_CONFIG
   environment variable (`gpu-deploy:profile`, `gpu-deploy:target`, `gpu-deploy:services`).
A value known from neither (a profile `auto` during preview) turns off only the checks that need it.

Card facts (which profile has MIG, the newest CUDA a card runs) come from the profile catalog,
components/core/catalog.py, never from a copy here.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from components.core.catalog import PROFILES, WHEEL_CUDA, GpuProfile
from components.core.values import floating_tag, is_mig_device, looks_secret
from components.core.vocabulary import (
    GPU_RESOURCE,
    LABEL_PROFILE,
    LABEL_ROOT,
    LABEL_SERVICE,
    MIG_RESOURCE_PREFIX,
    PRODUCT_LABEL,
    PROJECT,
    SECRET_PLACEHOLDER,
    UNKNOWN_PLACEHOLDER,
)

NAMESPACE = PROJECT
SECRET = SECRET_PLACEHOLDER
UNKNOWN = UNKNOWN_PLACEHOLDER

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
K8S_GPU = GPU_RESOURCE  # also nvidia.com/gpu.shared when time-slicing renames the resource
K8S_MIG_PREFIX = MIG_RESOURCE_PREFIX
K8S_GPU_PRODUCT = PRODUCT_LABEL

# The same names stacks/config.py refuses in plain env (kept in step by tests/policy/test_policy.py).
_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
_CUDA_TAG = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?(?:-|$)")
_WHEEL_FLAVOUR = re.compile(r"/(cu(\d+))/?$")


def is_known(value: Any) -> bool:
    """False for the placeholders of values a policy cannot see (unknown until deploy, or secret)."""
    return value is not None and value not in (UNKNOWN, SECRET)


# ---------------------------------------------------------------- the stack context
def _structured(value: Any) -> Any:
    """A config value as the engine passes it (objects as JSON text) -> Python data."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _profile_key(value: Any) -> str | None:
    """A catalog key, or None where the profile is not known (auto, unknown, a typo)."""
    return value if isinstance(value, str) and value in PROFILES else None


def _root(value: Any) -> str | None:
    if not isinstance(value, str) or not is_known(value) or not value.startswith("/"):
        return None
    return value.rstrip("/") or None


@dataclass(frozen=True)
class StackContext:
    """What the rules know about the stack beyond one resource's inputs."""

    stack: str = ""
    profile: str | None = None  # a key of components.core.catalog.PROFILES; None: not known
    root: str | None = None  # target.root: bind sources and host directories live under it
    secret_env: Mapping[str, frozenset[str]] = field(default_factory=dict)  # service -> secretEnv names

    @property
    def gpu_profile(self) -> GpuProfile | None:
        return PROFILES[self.profile] if self.profile else None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], stack: str = "") -> StackContext:
        """From the stack config as the engine passes it (PULUMI_CONFIG: full keys, objects as JSON)."""

        def get(key: str) -> Any:
            return _structured(config.get(f"{NAMESPACE}:{key}"))

        target = get("target")
        services = get("services")
        secret_env: dict[str, frozenset[str]] = {}
        if isinstance(services, Mapping):
            for name, service in services.items():
                declared = service.get("secretEnv") if isinstance(service, Mapping) else None
                secret_env[str(name)] = frozenset(str(key) for key in _map(declared))
        return cls(
            stack=stack,
            profile=_profile_key(get("profile")),
            root=_root(target.get("root")) if isinstance(target, Mapping) else None,
            secret_env=secret_env,
        )

    def for_resource(self, type_: str, props: Mapping[str, Any]) -> StackContext:
        """This context with what the resource's own labels say (they win where known)."""
        labels = resource_labels(type_, props)
        profile = _profile_key(labels.get(LABEL_PROFILE))
        root = _root(labels.get(LABEL_ROOT))
        return StackContext(
            stack=self.stack,
            profile=profile or self.profile,
            root=root or self.root,
            secret_env=self.secret_env,
        )

    def declared_secret(self, service: str | None, name: str) -> bool:
        """Whether `name` is in the service's secretEnv (any service's, when the service is unknown)."""
        if service is not None and service in self.secret_env:
            return name in self.secret_env[service]
        return any(name in names for names in self.secret_env.values())


# ---------------------------------------------------------------- reading inputs
def _dig(value: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def resource_labels(type_: str, props: Mapping[str, Any]) -> dict[str, Any]:
    """Docker labels ([{label, value}]) or Kubernetes metadata labels and annotations (object and pod)."""
    if type_ == CONTAINER:
        items = [item for item in _list(props.get("labels")) if isinstance(item, Mapping)]
        return {str(item.get("label")): item.get("value") for item in items}
    if type_ in POD_SPEC_PATHS:
        found: dict[str, Any] = {}
        template = POD_SPEC_PATHS[type_][:-1]
        for meta in (_dig(props, "metadata"), _dig(props, *template, "metadata") if template else None):
            found.update(_map(_dig(meta, "annotations")))
            found.update(_map(_dig(meta, "labels")))
        return found
    return {}


def is_gpu_resource(key: str) -> bool:
    """nvidia.com/gpu, nvidia.com/gpu.shared (renamed time-slicing) or nvidia.com/mig-<profile>."""
    return key == K8S_GPU or key.startswith((f"{K8S_GPU}.", K8S_MIG_PREFIX))


def pod_spec(type_: str, props: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(_dig(props, *POD_SPEC_PATHS[type_]))


def pod_containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [
        c
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in _list(spec.get(key))
        if isinstance(c, Mapping)
    ]


def _container_label(container: Mapping[str, Any]) -> str:
    return f"container {container.get('name') or '?'}"


def docker_env(props: Mapping[str, Any]) -> dict[str, str]:
    """`envs` ("NAME=value" strings) -> {NAME: value}; "[secret]" entries have no name to show."""
    env: dict[str, str] = {}
    for item in _list(props.get("envs")):
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
        own = _dig(props, "metadata", "name")
    own_text = own if isinstance(own, str) and is_known(own) else ""
    if name and own_text and own_text != name:
        return f"{kind} {name} ({own_text})"
    return f"{kind} {name or own_text or '?'}"


# ---------------------------------------------------------------- rule: GPU requests match the profile
def _docker_gpu_problems(props: Mapping[str, Any], profile: GpuProfile | None) -> list[str]:
    problems: list[str] = []
    device_requests = [r for r in _list(props.get("deviceRequests")) if isinstance(r, Mapping)]
    visible = docker_env(props).get("NVIDIA_VISIBLE_DEVICES")
    if is_known(props.get("gpus")) and props.get("gpus"):
        problems.append("uses the legacy `gpus` string; request GPUs with deviceRequests (driver nvidia)")
    if profile is not None and not profile.is_gpu:
        if device_requests:
            problems.append(f"profile {profile.key} has no GPU, but the container has device requests")
        if is_known(visible) and visible not in ("", "void", "none"):
            problems.append(f"profile {profile.key} has no GPU, but NVIDIA_VISIBLE_DEVICES={visible}")
    for request in device_requests:
        count, given_ids = request.get("count"), request.get("deviceIds")
        # device ids placed at deploy time (from the host's preflight) are unknown in a preview, yet present
        ids_unknown = given_ids is not None and not is_known(given_ids)
        ids = [] if ids_unknown else _list(given_ids)
        if request.get("driver") != "nvidia":
            problems.append(f"device request driver is {request.get('driver')!r}, not 'nvidia'")
        capabilities = _list(request.get("capabilities"))
        if "gpu" not in capabilities and not any("gpu" in _list(c) for c in capabilities):
            problems.append("device request lacks the 'gpu' capability")
        if (ids or ids_unknown) and count not in (None, 0):
            problems.append("device request sets both a count and device ids")
        elif not (ids or ids_unknown) and not (isinstance(count, int) and (count == -1 or count >= 1)):
            problems.append(f"device request count must be -1 (all) or >= 1, got {count!r}")
        if isinstance(count, int) and count >= 1 and visible == "all":
            problems.append(f"NVIDIA_VISIBLE_DEVICES=all exposes every GPU and defeats count {count}")
        elif (ids or ids_unknown) and visible == "all":
            problems.append("NVIDIA_VISIBLE_DEVICES=all exposes every GPU and defeats the device ids")
        known_ids = [str(i) for i in ids if is_known(i)]
        if known_ids and is_known(visible) and visible != ",".join(known_ids):
            problems.append(f"NVIDIA_VISIBLE_DEVICES={visible} differs from the device ids {known_ids}")
    return problems


def _k8s_gpu_problems(spec: Mapping[str, Any], profile: GpuProfile | None) -> list[str]:
    problems: list[str] = []
    wants_gpu = False
    for container in pod_containers(spec):
        resources = _map(container.get("resources"))
        limits, asks = _map(resources.get("limits")), _map(resources.get("requests"))
        where = _container_label(container)
        for key in sorted({str(k) for k in (*limits, *asks)}):
            if not is_gpu_resource(key):
                continue
            wants_gpu = True
            limit = limits.get(key)
            if limit is None:
                problems.append(f"{where}: {key} is requested without a limit (extended resources need one)")
                continue
            if not is_known(limit):
                continue
            if not re.fullmatch(r"[1-9]\d*", str(limit)):
                problems.append(f"{where}: {key} limit must be a whole number >= 1, got {limit!r}")
            if key in asks and is_known(asks[key]) and str(asks[key]) != str(limit):
                problems.append(f"{where}: {key} request {asks[key]!r} differs from its limit {limit!r}")
            if profile is not None and not profile.is_gpu:
                problems.append(f"{where}: profile {profile.key} has no GPU, but it asks for {key}")
    selected = _map(spec.get("nodeSelector")).get(K8S_GPU_PRODUCT)
    if (
        wants_gpu
        and profile is not None
        and profile.is_gpu
        and is_known(selected)
        and selected
        and not any(_labels_card(str(selected), p) for p in profile.gpu_products)
    ):
        problems.append(
            f"nodeSelector {K8S_GPU_PRODUCT}={selected} is not a {profile.display_name} "
            f"({', '.join(profile.gpu_products)})"
        )
    return problems


def _labels_card(label: str, product: str) -> bool:
    """A GPU feature discovery product label of this card: the product, `-MIG-<profile>` with MIG single,
    `-SHARED` when time-sliced or MPS-shared without renaming (k8s-device-plugin v0.17.1 internal/lm)."""
    base = label.removesuffix("-SHARED")
    return base == product or base.startswith(f"{product}-MIG-")


def check_gpu_requests(type_: str, props: Mapping[str, Any], context: StackContext) -> list[str]:
    """Docker device requests / Kubernetes nvidia.com/gpu limits are well-formed and fit the profile."""
    if type_ == CONTAINER:
        return _docker_gpu_problems(props, context.gpu_profile)
    if type_ in POD_SPEC_PATHS:
        return _k8s_gpu_problems(pod_spec(type_, props), context.gpu_profile)
    return []


# ---------------------------------------------------------------- rule: MIG only where the card has it
def check_mig(type_: str, props: Mapping[str, Any], context: StackContext) -> list[str]:
    """MIG device ids (Docker) and nvidia.com/mig-* resources (Kubernetes) only on a MIG-capable profile."""
    profile = context.gpu_profile
    if profile is None or profile.mig_capable:
        return []
    capable = ", ".join(k for k, p in PROFILES.items() if p.mig_capable)
    found: list[str] = []
    if type_ == CONTAINER:
        for request in _list(props.get("deviceRequests")):
            ids = _list(request.get("deviceIds")) if isinstance(request, Mapping) else []
            found += [str(i) for i in ids if is_known(i) and is_mig_device(str(i))]
    elif type_ in POD_SPEC_PATHS:
        for container in pod_containers(pod_spec(type_, props)):
            resources = _map(container.get("resources"))
            keys = {*_map(resources.get("limits")), *_map(resources.get("requests"))}
            found += sorted(k for k in keys if k.startswith(K8S_MIG_PREFIX))
    if not found:
        return []
    where = f"a {profile.display_name} (profile {profile.key})"
    return [f"MIG {', '.join(found)} requested on {where}; MIG exists only on {capable}"]


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
            f"{_container_label(c)}: has no resources.limits.memory"
            for c in pod_containers(pod_spec(type_, props))
            if not _dig(c, "resources", "limits", "memory")
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
        pod_ctx = _map(spec.get("securityContext"))
        problems = []
        for container in pod_containers(spec):
            ctx = _map(container.get("securityContext"))
            run_as_user = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
            non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
            where = _container_label(container)
            if run_as_user is not None:
                if is_known(run_as_user) and str(run_as_user) == "0":
                    problems.append(f"{where}: runAsUser is 0 (root)")
            elif non_root is not True and (non_root is None or is_known(non_root)):
                problems.append(f"{where}: neither runAsNonRoot: true nor a runAsUser other than 0")
        return problems
    return []


# ---------------------------------------------------------------- rule: no privileges
def check_no_privileges(type_: str, props: Mapping[str, Any], context: StackContext) -> list[str]:
    """No privileged mode, no added capabilities, no privilege escalation."""
    problems: list[str] = []
    if type_ == CONTAINER:
        if props.get("privileged") is True:
            problems.append("runs privileged; GPUs come from device requests, not privileged mode")
        adds = [a for a in _list(_dig(props, "capabilities", "adds")) if is_known(a)]
        if adds:
            problems.append(f"adds capabilities {', '.join(map(str, adds))}; drop ALL and add none")
        return problems
    if type_ in POD_SPEC_PATHS:
        for container in pod_containers(pod_spec(type_, props)):
            ctx = _map(container.get("securityContext"))
            where = _container_label(container)
            if ctx.get("privileged") is True:
                problems.append(f"{where}: runs privileged")
            if ctx.get("allowPrivilegeEscalation") is True:
                problems.append(f"{where}: allows privilege escalation")
            adds = [a for a in _list(_dig(ctx, "capabilities", "add")) if is_known(a)]
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
        refs.append(("BASE_IMAGE: ", _dig(props, "build", "args", "BASE_IMAGE")))
    elif type_ in POD_SPEC_PATHS:
        for container in pod_containers(pod_spec(type_, props)):
            image = container.get("image")
            refs.append((f"{_container_label(container)}: ", "" if image is None else image))
    problems = []
    for prefix, ref in refs:
        problem = image_pin_problem(ref)
        if problem:
            problems.append(prefix + problem)
    return problems


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
        for mount in _list(props.get("mounts")):
            if isinstance(mount, Mapping) and mount.get("type") == "bind" and is_known(mount.get("source")):
                paths.append((f"bind mount -> {mount.get('target')}", str(mount.get("source"))))
        for volume in _list(props.get("volumes")):
            if isinstance(volume, Mapping) and is_known(volume.get("hostPath")) and volume.get("hostPath"):
                paths.append((f"volume -> {volume.get('containerPath')}", str(volume.get("hostPath"))))
    elif type_ in COMMANDS:
        dirs = command_assignments(props.get("create")).get("DIRS")
        if dirs is not None:
            paths += [("host directory", line.strip()) for line in dirs.splitlines() if line.strip()]
    elif type_ in POD_SPEC_PATHS:
        for volume in _list(pod_spec(type_, props).get("volumes")):
            path = _dig(volume, "hostPath", "path")
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


# ---------------------------------------------------------------- rule: no plain secrets
def _plain_secret(name: str, value: str) -> bool:
    return looks_secret(name) and value not in ("", SECRET, UNKNOWN)


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
        args = _dig(props, "build", "args")
        for name in sorted(_map(args)):
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
            for item in _list(container.get("env")):
                if not isinstance(item, Mapping):
                    continue
                env_name, plain = str(item.get("name", "")), item.get("value")
                if isinstance(plain, str) and _plain_secret(env_name, plain):
                    problems.append(
                        f"{_container_label(container)}: env {env_name} holds a plain value; "
                        "use valueFrom.secretKeyRef"
                    )
    return problems


# ---------------------------------------------------------------- rule: CUDA within the card's limits
def _cuda_major(text: str) -> tuple[int, int] | None:
    match = _CUDA_TAG.match(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _wheel_cuda(url: str) -> tuple[int, int] | None:
    match = _WHEEL_FLAVOUR.search(url)
    if not match:
        return None
    known = WHEEL_CUDA.get(match.group(1))
    if known:
        major, minor = known.split(".")
        return int(major), int(minor)
    digits = match.group(2)
    return (int(digits[:-1]), int(digits[-1])) if len(digits) >= 2 else None


def _cuda_problems(profile: GpuProfile, base_image: Any, cuda_version: Any, index_url: Any) -> list[str]:
    problems: list[str] = []
    card = f"a {profile.display_name} (profile {profile.key})"
    if profile.max_cuda_major is not None:
        limit = profile.max_cuda_major
        if isinstance(base_image, str) and is_known(base_image):
            repository, _, tag = base_image.rpartition(":")
            version = _cuda_major(tag) if repository.endswith("nvidia/cuda") else None
            if version and version[0] > limit:
                cuda = f"{version[0]}.{version[1]}"
                problems.append(f"BASE_IMAGE {base_image} is CUDA {cuda}; {card} needs {limit}.x")
        if isinstance(cuda_version, str) and is_known(cuda_version):
            version = _cuda_major(cuda_version)
            if version and version[0] > limit:
                problems.append(f"CUDA_VERSION {cuda_version} is newer than {card} runs ({limit}.x)")
    if profile.max_wheel_cuda is not None and isinstance(index_url, str) and is_known(index_url):
        wheel = _wheel_cuda(index_url)
        major, minor = (int(p) for p in profile.max_wheel_cuda.split("."))
        if wheel and wheel > (major, minor):
            arch = profile.cuda_arch_list.replace(".", "")
            problems.append(
                f"TORCH_INDEX_URL {index_url} wheels carry no sm_{arch} kernels for {card}; "
                f"use cu{profile.max_wheel_cuda.replace('.', '')} or older"
            )
    return problems


def check_cuda_fits_card(type_: str, props: Mapping[str, Any], context: StackContext) -> list[str]:
    """Images built for a card stay within its CUDA limits (a Tesla P40: CUDA 12.x, cu126 wheels or older)."""
    if type_ == IMAGE:
        args = _map(_dig(props, "build", "args"))
        profile = PROFILES.get(str(args.get("GPU_PROFILE"))) or context.gpu_profile
        if profile is None:
            return []
        return _cuda_problems(
            profile, args.get("BASE_IMAGE"), args.get("CUDA_VERSION"), args.get("TORCH_INDEX_URL")
        )
    if type_ in COMMANDS and context.gpu_profile is not None:
        image = command_assignments(props.get("create")).get("CUDA_IMAGE")
        return _cuda_problems(context.gpu_profile, image, None, None) if image else []
    return []


# ---------------------------------------------------------------- the rule set
Check = Callable[[str, Mapping[str, Any], StackContext], list[str]]


@dataclass(frozen=True)
class Rule:
    name: str  # the policy name `pulumi preview` reports
    description: str
    check: Check


RULES: tuple[Rule, ...] = (
    Rule(
        "gpu-requests-match-profile",
        "GPU containers and pods request NVIDIA GPUs the way the profile allows (none on cpu).",
        check_gpu_requests,
    ),
    Rule("mig-only-on-h100", "MIG devices are requested only on a MIG-capable profile (H100).", check_mig),
    Rule("memory-limit", "Every container and pod container has a memory limit.", check_memory_limit),
    Rule("non-root-user", "Containers run as a numeric non-root user.", check_non_root),
    Rule(
        "no-privileges",
        "No privileged mode, no added capabilities, no privilege escalation.",
        check_no_privileges,
    ),
    Rule(
        "pinned-images",
        "Images are pinned to a version tag or digest (never latest).",
        check_pinned_images,
    ),
    Rule(
        "host-paths-under-root",
        "Bind mounts and created host directories lie under the stack's target.root.",
        check_host_paths,
    ),
    Rule(
        "host-dirs-not-world-writable",
        "Host directories are never created world-writable.",
        check_dir_mode,
    ),
    Rule(
        "no-plain-secrets",
        "No credential in plain env, command lines or image build args.",
        check_plain_secrets,
    ),
    Rule(
        "cuda-fits-card",
        "Images stay within the card's CUDA limits (Tesla P40: CUDA 12.x, PyTorch cu126 wheels or older).",
        check_cuda_fits_card,
    ),
)
RULES_BY_NAME: dict[str, Rule] = {rule.name: rule for rule in RULES}


def check_rule(
    rule: Rule, type_: str, props: Mapping[str, Any], context: StackContext, *, name: str = ""
) -> list[str]:
    """One rule's violation messages for one resource, each naming the resource."""
    problems = rule.check(type_, props, context.for_resource(type_, props))
    label = describe(type_, props, name)
    return [f"{label}: {problem}" for problem in problems]


def check_resource(
    type_: str, props: Mapping[str, Any], context: StackContext, *, name: str = ""
) -> list[str]:
    """Every rule's violation messages for one resource ([] when it complies)."""
    return [message for rule in RULES for message in check_rule(rule, type_, props, context, name=name)]


# ---------------------------------------------------------------- the policy SDK side
ReportViolation = Callable[[str, "str | None"], None]


def validate_with(
    rule: Rule,
    context: Callable[[], StackContext],
    unknown_errors: tuple[type[BaseException], ...] = (),
) -> Callable[[Any, ReportViolation], None]:
    """A pulumi_policy `validate` callback for `rule`: args.props -> plain data -> check_rule -> reports."""

    def validate(args: Any, report_violation: ReportViolation) -> None:
        props = to_plain(args.props, unknown_errors)
        for message in check_rule(rule, args.resource_type, props, context(), name=args.name):
            report_violation(message, None)

    return validate


# ---------------------------------------------------------------- engine values -> plain data
def to_plain(value: Any, unknown_errors: tuple[type[BaseException], ...] = ()) -> Any:
    """Copy a policy SDK props proxy into plain dicts/lists, with unknown values as "[unknown]".

    The SDK's proxy raises (UnknownValueError) when a rule touches a value not known during preview;
    copying item by item turns each such value into the placeholder the offline plan uses, so one
    unknown field does not stop a rule from checking the rest.
    """

    def item(container: Any, key: Any) -> Any:
        try:
            return to_plain(container[key], unknown_errors)
        except unknown_errors:
            return UNKNOWN

    if isinstance(value, Mapping):
        return {str(key): item(value, key) for key in list(value)}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [item(value, index) for index in range(len(value))]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
