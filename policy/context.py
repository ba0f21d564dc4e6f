"""The stack context: what the rules know about the stack beyond one resource's inputs.

Where it comes from, in order of precedence:
1. the resource itself: containers (Docker labels, Kubernetes metadata labels / annotations) carry
   `io.gpu-deploy.profile` (the resolved profile, so also the one `auto` detected) and
   `io.gpu-deploy.root` (the stack's target.root);
2. the stack configuration: the engine gives a policy pack the stack's config in the PULUMI_CONFIG
   environment variable (`gpu-deploy:profile`, `gpu-deploy:target`, `gpu-deploy:services`).
A value known from neither (a profile `auto` during preview) turns off only the checks that need it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.core.catalog import PROFILES, GpuProfile
from components.core.vocabulary import LABEL_PROFILE, LABEL_ROOT, PROJECT
from policy.reading import as_map, is_known, resource_labels


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
            return _structured(config.get(f"{PROJECT}:{key}"))

        target = get("target")
        services = get("services")
        secret_env: dict[str, frozenset[str]] = {}
        if isinstance(services, Mapping):
            for name, service in services.items():
                declared = service.get("secretEnv") if isinstance(service, Mapping) else None
                secret_env[str(name)] = frozenset(str(key) for key in as_map(declared))
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
