"""Plain Kubernetes manifests from the inputs of registered pulumi-kubernetes resources.

The engine receives a resource as a type token (`kubernetes:apps/v1:Deployment`) and its inputs in
camelCase, with Pulumi's own encodings mixed in (secrets in a signature object, numbers as floats, during
a preview an "unknown" sentinel). `to_manifest` reads them with components.core.wire's MANIFEST reading
(a secret's value revealed, an unknown value or a reference refused, null fields left out), so the result
can go to `kubectl apply --dry-run`, kubeconform or kubernetes-validate. Helm releases, YAML/Kustomize
groups and providers are not Kubernetes objects: it returns None for them.
"""

from __future__ import annotations

from typing import Any

from components.core.wire import MANIFEST, decode

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


def to_manifest(type_token: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The Kubernetes manifest that the inputs of one registered resource describe, or None for Helm."""
    identity = api_version_kind(type_token)
    if identity is None:
        return None
    api_version, kind = identity
    body: dict[str, Any] = decode(inputs, MANIFEST, kind)
    for key, expected in (("apiVersion", api_version), ("kind", kind)):
        given = body.pop(key, expected)
        if given != expected:
            raise ValueError(f"{type_token}: inputs say {key} {given!r}, the type says {expected!r}")
    return {"apiVersion": api_version, "kind": kind, **body}
