"""The whole stack (`gpu-deploy:*`): its model, the rules across services for every target, and
`validate`, which turns the raw values into a StackConfig or one ConfigError naming the key."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator

from components.core.catalog import PROFILES
from stacks.config.budgets import check_budgets
from stacks.config.cards import CardConfig, CardKey, card_keys, own_profiles
from stacks.config.errors import ConfigError, KeyedError, quote, translate
from stacks.config.fields import Model, Name
from stacks.config.metrics import DcgmConfig, check_dcgm
from stacks.config.rules_docker import check_docker
from stacks.config.rules_kubernetes import check_kubernetes, check_kubernetes_gpus
from stacks.config.sections import (
    CudaOverrides,
    DockerTarget,
    GpuNode,
    GpuOperatorConfig,
    GpuSharingConfig,
    ImageConfig,
    KubernetesTarget,
    ProvisionConfig,
)
from stacks.config.service import Service


class StackConfig(Model):
    # a named card of the catalog, one of the stack's own `cards`, "cpu" or "auto" (checked in _cross_checks)
    profile: Annotated[str, Field(min_length=1)]
    cards: dict[CardKey, CardConfig] = Field(default_factory=dict)  # the stack's own cards (cards.py)
    target: Annotated[DockerTarget | KubernetesTarget, Field(discriminator="kind")]
    cuda: CudaOverrides = CudaOverrides()
    image: ImageConfig | None = None
    provision: ProvisionConfig = ProvisionConfig()
    gpu_sharing: GpuSharingConfig | None = None  # kubernetes only
    gpu_operator: GpuOperatorConfig | None = None  # kubernetes only
    nodes: dict[Name, GpuNode] = Field(
        default_factory=dict
    )  # kubernetes only: GPU nodes provisioned over SSH
    services: dict[Name, Service]
    dcgm: DcgmConfig | None = None  # docker: the host's DCGM exporter (metrics.py)

    @field_validator("services")
    @classmethod
    def _at_least_one(cls, services: dict[str, Service]) -> dict[str, Service]:
        if not services:
            raise ValueError("declare at least one service")
        return services

    @model_validator(mode="after")
    def _cards_and_profiles(self) -> StackConfig:
        """The stack's own cards derive (each refusal under its key), and every profile names a card."""
        try:
            own_profiles(self)
        except ConfigError as err:
            raise KeyedError(err.key, err.problem) from None
        known = card_keys(self)
        if self.profile not in (*known, "cpu", "auto"):
            raise KeyedError("profile", _unknown_card(self.profile, [*known, "cpu", "auto"], self))
        for name, node in self.nodes.items():
            if node.profile not in known:
                raise KeyedError(f"nodes.{name}.profile", _unknown_card(node.profile, known, self))
        for name, svc in self.services.items():
            if svc.profile is not None and svc.profile not in known:
                raise KeyedError(f"services.{name}.profile", _unknown_card(svc.profile, known, self))
        return self

    @model_validator(mode="after")
    def _cross_checks(self) -> StackConfig:
        # first: a kubernetes stack explains "build" and volumes its own way
        if isinstance(self.target, KubernetesTarget):
            check_kubernetes(self, self.target)
        else:
            check_docker(self)
        enabled = {n for n, s in self.services.items() if s.enabled}
        for name, svc in self.services.items():
            key = f"services.{name}"
            if svc.image == "build" and self.image is None:
                raise KeyedError(f"{key}.image", '"build" needs an image section (gpu-deploy:image)')
            if svc.build is not None and svc.image != "build":
                raise KeyedError(
                    f"{key}.build", f'only a service with image: "build" is built (image is {svc.image})'
                )
            if (
                isinstance(self.target, DockerTarget)
                and any(v.is_relative for v in svc.volumes)
                and self.target.root is None
            ):
                raise KeyedError(f"{key}.volumes", "relative host paths need target.root")
            missing = svc.missing_requirements() if svc.enabled else []
            if missing:
                raise KeyedError(f"{key}.requires", _missing_text(key, missing))
            if any("http" in check for check in svc.smoke) and not svc.ports:
                raise KeyedError(f"{key}.smoke", "HTTP smoke checks need a published port (ports)")
            if svc.one_shot and svc.smoke:
                raise KeyedError(
                    f"{key}.smoke", "a one-shot job has nothing to smoke-test once it has exited"
                )
            if svc.test is not None and f"{name}-test" in self.services:
                raise KeyedError(
                    f"{key}.test", f"its job is named {name}-test, as another service is: rename that service"
                )
            if svc.one_shot and svc.healthcheck is not None:
                raise KeyedError(
                    f"{key}.healthcheck", "a one-shot job runs to completion; it has no health check"
                )
            for dep, condition in svc.depends_on.items():
                dep_key = f"{key}.dependsOn.{dep}"
                if dep == name:
                    raise KeyedError(dep_key, "a service cannot depend on itself")
                if dep not in self.services:
                    raise KeyedError(dep_key, f"no such service (services: {', '.join(self.services)})")
                target = self.services[dep]
                if svc.enabled and not target.enabled:
                    raise KeyedError(dep_key, f"{dep} is disabled (enabled: false) but {name} needs it")
                if condition == "completed" and not target.one_shot:
                    raise KeyedError(dep_key, f'"completed" needs {dep} to be a oneShot job')
                if target.one_shot and condition != "completed":
                    raise KeyedError(dep_key, f'{dep} is a oneShot job: wait for it with "completed"')
                if condition == "healthy" and target.healthcheck is None:
                    raise KeyedError(dep_key, f'"healthy" needs a healthcheck on {dep}')
        _check_acyclic({n: list(s.depends_on) for n, s in self.services.items() if n in enabled})
        if self.profile == "cpu":
            for name, svc in self.services.items():
                if svc.gpu.wants_gpu:
                    raise KeyedError(
                        f"services.{name}.gpu", 'profile cpu has no GPU: use gpu: none (or profile "auto")'
                    )
        if isinstance(self.target, KubernetesTarget):
            check_kubernetes_gpus(self)
        check_dcgm(self)
        try:  # last: the budgets need every GPU request and the sharing setup valid
            check_budgets(self)
        except ConfigError as err:
            raise KeyedError(err.key, err.problem) from None
        return self


def _missing_text(key: str, missing: list[str]) -> str:
    """One line naming each missing required key and the command that sets it."""
    sets = [
        f"pulumi config set {'--secret ' if name.startswith('secretEnv.') else ''}--path '{key}.{name}' VALUE"
        for name in missing
    ]
    return f"not set: {', '.join(missing)}; set {'them' if len(missing) > 1 else 'it'}: {'; '.join(sets)}"


def _unknown_card(key: str, allowed: list[str], config: StackConfig) -> str:
    own = f"; this stack's cards: {', '.join(config.cards)}" if config.cards else ""
    catalog = ", ".join(k for k in allowed if k in PROFILES or k == "auto")
    return f"expected a card of the catalog ({catalog}) or of the stack's own `cards`{own}, got {quote(key)}"


def _check_acyclic(graph: Mapping[str, list[str]]) -> None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            cycle = [*path[path.index(node) :], node]
            raise KeyedError(f"services.{node}.dependsOn", f"dependency cycle: {' -> '.join(cycle)}")
        state[node] = 1
        for dep in graph.get(node, []):
            if dep in graph:
                visit(dep, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        visit(node, [])


def validate(raw: Mapping[str, Any]) -> StackConfig:
    """Raw `gpu-deploy:` values (keys without the namespace) -> StackConfig, or one ConfigError."""
    if not isinstance(raw, Mapping):
        raise ConfigError("(root)", f"expected a mapping of gpu-deploy keys, got {quote(raw)}")
    try:
        config = StackConfig.model_validate(dict(raw))
    except ValidationError as err:
        raise translate(err, raw, StackConfig) from None
    _check_lines(raw, "")  # after the fields' own checks, which say more where they apply
    return config


# Where a value may span lines: key material, an inline kubeconfig, secret values (a PEM certificate) and
# smoke-test bodies. Everywhere else a line break (or NUL, anywhere) in a key or value is refused: it would
# split a command line, a known_hosts entry, an env file or a log line.
_MULTILINE = (
    re.compile(r"target\.(sshKey|kubeconfig)"),
    re.compile(r"nodes\.[^.]+\.sshKey"),
    re.compile(r"services\.[^.]+\.secretEnv\.[^.]+"),
    re.compile(r"services\.[^.]+\.smoke(\..*)?"),
    re.compile(r"image\.registry\.password"),
)


def _check_lines(value: Any, key: str) -> None:
    """One line without NUL for every key, and every value outside _MULTILINE; NUL nowhere."""
    if isinstance(value, Mapping):
        for child, inner in value.items():
            name = str(child)
            path = f"{key}.{name}" if key else name
            if any(c in name for c in "\0\n\r"):
                raise ConfigError(path, "a key is one line without NUL")
            _check_lines(inner, path)
    elif isinstance(value, list):
        for inner in value:
            _check_lines(inner, key)  # a list's items are named by the list's key, as elsewhere
    elif isinstance(value, str):
        if "\0" in value:
            raise ConfigError(key, "a value may not hold a NUL character")
        if ("\n" in value or "\r" in value) and not any(
            p.fullmatch(re.sub(r"\[\d+\]", "", key)) for p in _MULTILINE
        ):
            raise ConfigError(
                key, "a value here is one line: it would split a command, a file entry or a log line"
            )
