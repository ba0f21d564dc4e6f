"""A stack's own cards (`gpu-deploy:cards.<key>`): a card the catalog lacks, or a named card adjusted (a vGPU
or MIG slice with less memory than the full card), each made a profile by the catalog's one derivation
(components.core.catalog.derive_profile) and used like a named profile: `profile: <key>` on a Docker host,
`profile` of a Kubernetes stack, a node or a service; `auto` matches it by NVML name before the catalog.

```yaml
gpu-deploy:cards:
  h100-16c:                 # a time-sliced H100 vGPU with 16 GB (NVIDIA vGPU type H100-16C)
    base: h100              # the named card it is a slice of: compute capability, names, MIG profiles
    nvmlNames: ["NVIDIA H100-16C"]
    memoryMib: 16384
  l20:                      # a card the catalog lacks
    nvmlNames: ["NVIDIA L20"]
    computeCapability: "8.9"
    memoryMib: 46068
```
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from components.core import catalog
from components.core.catalog import PROFILES, GpuProfile
from stacks.config.errors import ConfigError, quote
from stacks.config.fields import Model

if TYPE_CHECKING:
    from stacks.config.stack import StackConfig

CardKey = Annotated[str, Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$", max_length=40)]
MIN_MEMORY_MIB = 512  # the smallest vGPU types NVIDIA lists have 1 GB or more
MAX_MEMORY_MIB = 1 << 20  # 1 TiB: far above any card (an H200 has 141 GB)
# MIG exists from compute capability 8.0 on (A100, A30, H100, H200, B200, ...), never on an older card
# (https://docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-gpus.html)
MIG_FROM = (8, 0)
_CAPABILITY = re.compile(r"^(\d{1,2})\.(\d)$")


def parse_capability(value: Any) -> tuple[int, int]:
    """'8.9' -> (8, 9); a YAML number 8.9 is read as its text."""
    text = str(value) if isinstance(value, (str, float)) and not isinstance(value, bool) else ""
    match = _CAPABILITY.match(text)
    if not match:
        raise ValueError(f'expected a compute capability such as "8.9", got {quote(value)}')
    return int(match.group(1)), int(match.group(2))


Capability = Annotated[tuple[int, int], BeforeValidator(parse_capability)]


class CardConfig(Model):
    """One stack card: `base` (a named card it adjusts) or the facts of a card the catalog lacks."""

    base: str | None = None  # a named card of the catalog
    display_name: str | None = None
    nvml_names: list[Annotated[str, Field(min_length=1, max_length=96)]] | None = None
    compute_capability: Capability | None = None  # "8.9"
    memory_mib: int | None = Field(default=None, ge=MIN_MEMORY_MIB, le=MAX_MEMORY_MIB)
    mig: bool | None = None  # MIG capable; with a base whose memory is cut (a slice): false
    mig_profiles: dict[Annotated[str, Field(pattern=r"^\d+g\.\d+gb$")], int] | None = None
    kubernetes_sharing: Literal["none", "time-slicing", "mps", "mig"] | None = None
    kernel_modules: Literal["proprietary", "open"] | None = None

    @field_validator("nvml_names", mode="before")
    @classmethod
    def _one_name(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("base")
    @classmethod
    def _named_card(cls, value: str | None) -> str | None:
        if value is not None and (value not in PROFILES or not PROFILES[value].is_gpu):
            cards = ", ".join(k for k, p in PROFILES.items() if p.is_gpu)
            raise ValueError(f"expected a named card of the catalog ({cards}), got {quote(value)}")
        return value


def _base_card(key: str) -> catalog.Card:
    return next(card for card in catalog.CARDS if card.key == key)


def card_of(key: str, own: CardConfig) -> catalog.Card:
    """The catalog Card a stack card describes; ConfigError naming the key of what is wrong."""
    where = f"cards.{key}"
    if key in PROFILES or key == "auto":
        raise ConfigError(
            where,
            f"{key} is the catalog's own name: name your card apart (e.g. {key}-16gb) and adjust "
            f"the catalog's with base: {key}",
        )
    if own.base is None:
        for field, value in (
            ("nvmlNames", own.nvml_names),
            ("computeCapability", own.compute_capability),
            ("memoryMib", own.memory_mib),
        ):
            if value is None:
                raise ConfigError(f"{where}.{field}", "required for a card without a base")
        assert own.nvml_names is not None and own.memory_mib is not None
        assert own.compute_capability is not None
        capability = own.compute_capability
        mig = bool(own.mig)
        card = catalog.Card(
            key=key,
            display_name=own.display_name or own.nvml_names[0],
            nvml_names=tuple(own.nvml_names),
            compute_capability=capability,
            memory_mib=own.memory_mib,
            mig_capable=mig,
            mig_profiles=dict(own.mig_profiles or {}),
            source="the stack's own card",
        )
    else:
        base = _base_card(own.base)
        if own.compute_capability is not None and own.compute_capability != base.compute_capability:
            cc = f"{base.compute_capability[0]}.{base.compute_capability[1]}"
            raise ConfigError(
                f"{where}.computeCapability",
                f"a {base.display_name} is {cc}: a card of another compute capability has no base",
            )
        memory = own.memory_mib if own.memory_mib is not None else base.memory_mib
        if memory > base.memory_mib:
            raise ConfigError(
                f"{where}.memoryMib",
                f"at most the {base.display_name}'s {base.memory_mib} MiB (a slice has less), got {memory}",
            )
        sliced = memory < base.memory_mib
        # a vGPU or MIG slice cannot itself be split into MIG instances: MIG is the full card's
        mig = own.mig if own.mig is not None else (base.mig_capable and not sliced)
        if mig and not base.mig_capable:
            raise ConfigError(f"{where}.mig", f"the {base.display_name} has no MIG")
        profiles = own.mig_profiles if own.mig_profiles is not None else (base.mig_profiles if mig else {})
        names = tuple(own.nvml_names) if own.nvml_names else base.nvml_names
        card = dataclasses.replace(
            base,
            key=key,
            display_name=own.display_name or (f"{base.display_name} {memory} MiB" if sliced else names[0]),
            nvml_names=names,
            memory_mib=memory,
            mig_capable=mig,
            mig_profiles=dict(profiles),
            source=f"the stack's own card, based on {base.key}",
        )
    if card.mig_capable and card.compute_capability < MIG_FROM:
        raise ConfigError(f"{where}.mig", "MIG exists from compute capability 8.0 (Ampere) on")
    if card.mig_profiles and not card.mig_capable:
        raise ConfigError(f"{where}.migProfiles", "MIG profiles need mig: true")
    sharing = own.kubernetes_sharing or ("none" if own.base is None else card.k8s_sharing)
    if sharing == "mig" and not card.mig_capable:
        raise ConfigError(f"{where}.kubernetesSharing", "mig needs a MIG-capable card (mig: true)")
    return dataclasses.replace(
        card, k8s_sharing=sharing, kernel_modules=own.kernel_modules or card.kernel_modules
    )


def own_profile(key: str, own: CardConfig) -> GpuProfile:
    """The profile of a stack card: the catalog's derivation of its Card, refusals naming the key."""
    card = card_of(key, own)
    try:
        return catalog.derive_profile(card)
    except ValueError as err:
        field = "kernelModules" if "kernel modules" in str(err) else "computeCapability"
        if own.base is not None and field == "computeCapability":
            field = "base"
        raise ConfigError(f"cards.{key}.{field}", str(err).removeprefix(f"card {key}: ")) from None


def own_profiles(config: StackConfig) -> dict[str, GpuProfile]:
    """Every stack card's profile, by key (checked when the stack is validated)."""
    return {key: own_profile(key, own) for key, own in config.cards.items()}


def card_profile(config: StackConfig, key: str) -> GpuProfile:
    """The profile a card key names: the stack's own card first, else the catalog's."""
    if key in config.cards:
        return own_profile(key, config.cards[key])
    return PROFILES[key]


def card_keys(config: StackConfig) -> list[str]:
    """The GPU cards a stack may name: the catalog's, then its own."""
    return [*(k for k, p in PROFILES.items() if p.is_gpu), *config.cards]


def own_card_for_gpu(config: StackConfig, name: str) -> str | None:
    """`auto`: the stack card NVML calls `name` (matched before the catalog), or None."""
    for key in config.cards:
        if name in card_profile(config, key).nvml_names:
            return key
    return None


def card_json_of(config: StackConfig, key: str) -> Mapping[str, Any] | None:
    """The card a host's preflight checks (`--card JSON`) when `key` is a stack card; None for the catalog's
    (the preflight knows those by key)."""
    if key not in config.cards:
        return None
    return catalog.card_json(card_profile(config, key))
