"""When a provider replaces a resource instead of updating it in place: the offline diff's REPLACE rules.

A change to a resource's inputs is an UPDATE unless its provider cannot make it in place: then the engine
deletes the resource and creates it again (REPLACE). stacks/diff.py asks `replaces` and
`kubernetes_force_new` which one a change is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Types whose provider replaces the resource on any input change (no in-place update).
REPLACE_ON_ANY_CHANGE: dict[str, str] = {
    "docker:index/container:Container": "the Docker provider recreates a container for nearly every argument",
    "docker:index/image:Image": "a different build is a different image",
    "docker:index/remoteImage:RemoteImage": "a different reference is a different image",
    "docker:index/network:Network": "a Docker network cannot be changed in place",
}

# Types replaced when one of these input keys changes (an update for any other key).
COMMAND_REPLACE_KEYS = frozenset({"create", "stdin", "environment", "triggers"})
REPLACE_ON_KEYS: dict[str, frozenset[str]] = {
    # No `update` step is set here, so the command provider replaces (runs `create` again) instead.
    "command:remote:Command": COMMAND_REPLACE_KEYS,
    "command:local:Command": COMMAND_REPLACE_KEYS,
    # pulumi-command v1.2.1 provider/pkg/provider/remote/copyController.go: triggers replace; a new source
    # or remotePath is an update that copies again (a source of the same content copies nothing).
    "command:remote:CopyToRemote": frozenset({"triggers"}),
}
# pulumi-kubernetes replaces (delete and create, never patch) an object when one of these fields changes
# (provider/pkg/provider/diff.go forceNewProperties, v4.32+): its name or namespace for every kind, and the
# kind's immutable fields. ConfigMap and Secret data too: the provider's enableConfigMapMutable and
# enableSecretMutable are off by default. A claim replaced this way is a new, empty volume.
K8S_FORCE_NEW_ALL = ("metadata.name", "metadata.namespace")
K8S_FORCE_NEW: dict[str, tuple[str, ...]] = {
    "kubernetes:core/v1:PersistentVolumeClaim": (
        "spec.accessModes",
        "spec.selector",
        "spec.storageClassName",
        "spec.volumeName",
    ),
    "kubernetes:apps/v1:Deployment": ("spec.selector",),
    "kubernetes:apps/v1:DaemonSet": ("spec.selector",),
    "kubernetes:apps/v1:StatefulSet": (
        "spec.podManagementPolicy",
        "spec.revisionHistoryLimit",
        "spec.selector",
        "spec.serviceName",
        "spec.volumeClaimTemplates",
    ),
    "kubernetes:batch/v1:Job": ("spec.completions", "spec.parallelism", "spec.selector", "spec.template"),
    "kubernetes:core/v1:Service": ("spec.clusterIP",),
    "kubernetes:core/v1:ConfigMap": ("data", "binaryData"),
    "kubernetes:core/v1:Secret": ("type", "stringData", "data"),
}


_MISSING = object()


def _at(inputs: Mapping[str, Any], path: str) -> Any:
    value: Any = inputs
    for part in path.split("."):
        value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
    return value


def kubernetes_force_new(type_: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """The fields whose change makes pulumi-kubernetes replace this object."""
    if not type_.startswith("kubernetes:") or type_.startswith("kubernetes:helm.sh/"):
        return []
    paths = (*K8S_FORCE_NEW_ALL, *K8S_FORCE_NEW.get(type_, ()))
    return [p for p in paths if _at(before, p) != _at(after, p)]


PROVIDER_PREFIX = "pulumi:providers:"
PROVIDER_REPLACE_KEYS = frozenset({"host"})  # a provider for another host is another provider


def replaces(type_: str, keys: set[str] | frozenset[str], after_inputs: Mapping[str, Any]) -> bool:
    """Whether a change to `keys` of a resource of `type_` makes the provider replace it."""
    if type_ in REPLACE_ON_ANY_CHANGE:
        return True
    if type_ in REPLACE_ON_KEYS:
        if "triggers" in keys:
            return True
        # With an `update` step the command provider runs it instead of replacing.
        return "update" not in after_inputs and bool(keys & REPLACE_ON_KEYS[type_])
    if type_.startswith(PROVIDER_PREFIX):
        return bool(keys & PROVIDER_REPLACE_KEYS)
    return False
