"""Plain Kubernetes manifests from the inputs of registered pulumi-kubernetes resources.

The engine receives a resource as a type token (`kubernetes:apps/v1:Deployment`) and its inputs in
camelCase, with Pulumi's own encodings mixed in: secrets wrapped in a signature object, numbers as
floats (protobuf Struct has no integers) and, during a preview, an "unknown" sentinel string.
`to_manifest` undoes that, so the result can go to `kubectl apply --dry-run`, kubeconform or
kubernetes-validate. Helm releases, YAML/Kustomize groups and providers are not Kubernetes objects:
it returns None for them.
"""

from __future__ import annotations

from typing import Any

from pulumi.runtime import rpc

# Pulumi's property-value signatures, as the SDK defines them.
SIG_KEY: str = rpc._special_sig_key
SECRET_SIG: str = rpc._special_secret_sig
UNKNOWN: str = rpc.UNKNOWN

# Type-token groups that are Pulumi constructs rather than Kubernetes API objects.
NON_OBJECT_GROUPS = ("helm.sh/", "yaml/", "kustomize/")


def api_version_kind(type_token: str) -> tuple[str, str] | None:
    """'kubernetes:apps/v1:Deployment' -> ('apps/v1', 'Deployment'); core/v1 -> 'v1'; None for Helm & co."""
    parts = type_token.split(":")
    if len(parts) != 3 or parts[0] != "kubernetes":
        raise ValueError(f"not a pulumi-kubernetes resource type: {type_token!r}")
    _, group_version, kind = parts
    if group_version.startswith(NON_OBJECT_GROUPS) or "/" not in group_version:
        return None
    group, version = group_version.split("/", 1)
    return (version if group == "core" else f"{group}/{version}"), kind


def _plain(value: Any, path: str) -> Any:
    if isinstance(value, dict):
        if SIG_KEY in value:
            if value[SIG_KEY] != SECRET_SIG:
                raise ValueError(f"{path}: an asset, archive or resource reference is not manifest data")
            return _plain(value.get("value"), path)
        return {
            k: _plain(v, f"{path}.{k}") for k, v in value.items() if v is not None and not k.startswith("__")
        }
    if isinstance(value, list):
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value == UNKNOWN:
        raise ValueError(f"{path} is not known until the update runs (a preview value)")
    return value


def to_manifest(type_token: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The Kubernetes manifest that the inputs of one registered resource describe, or None for Helm."""
    identity = api_version_kind(type_token)
    if identity is None:
        return None
    api_version, kind = identity
    body = _plain(inputs, kind)
    for key, expected in (("apiVersion", api_version), ("kind", kind)):
        given = body.pop(key, expected)
        if given != expected:
            raise ValueError(f"{type_token}: inputs say {key} {given!r}, the type says {expected!r}")
    return {"apiVersion": api_version, "kind": kind, **body}
