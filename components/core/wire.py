"""Pulumi's wire encoding of property values, and the one decoder of it (standard library only).

The engine sees a resource's inputs as a protobuf Struct with Pulumi's own encodings mixed in: a secret,
an asset, an archive, a resource reference and an output value are objects marked by a signature; a value
not known until the deployment runs is a sentinel string; every number is a float (a Struct has no
integers). `decode` turns such a value into plain data, the way one reader needs it (a `Reading`):

- PLAN (stacks/plan.py): secrets as "[secret]", unknown values as "[unknown]", a resource reference as its
  URN, an asset or archive as its path, text, uri and content hash;
- MANIFEST (stacks/wire.py, for `python -m stacks render`): a secret's own value (it belongs in the Secret
  object), no unknown value and no reference (a manifest has no room for either), null fields left out;
- POLICY (policy/): the policy SDK has unwrapped the signatures already and its proxy raises on an unknown
  value; those become "[unknown]", so one unknown field does not stop a rule from checking the rest.

The signature values are the SDK's own (pulumi/runtime/rpc.py `_special_*_sig` and `UNKNOWN`), restated
here so that the policy pack needs no Pulumi import: tests/stacks/test_pulumi_sdk.py checks that they are
still the SDK's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core.vocabulary import SECRET_PLACEHOLDER, UNKNOWN_PLACEHOLDER

SIG_KEY = "4dabf18193072939515e22adb298388d"  # the key of an object's signature
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # noqa: S105 - a signature, not a password
RESOURCE_SIG = "5cf8f73096256a8f31e491e813e4eb8e"
OUTPUT_SIG = "d0e6a833031e9bbcd3f4e8bde6ca49a4"
ASSET_SIG = "c44067f5952c0a294b673a41bacd8c17"
ARCHIVE_SIG = "0def7320c3a5731c473e5ecbe6d01bc7"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # a value known only when the deployment runs

_ASSET_FIELDS = ("path", "text", "uri", "hash")


class WireError(ValueError):
    """A value this reader has no plain form for (an unknown value in a manifest, say)."""


@dataclass(frozen=True)
class Reading:
    """How one reader takes what plain data has no room for."""

    reveal_secrets: bool  # a secret's own value, or the "[secret]" placeholder
    refuse_unknown: bool  # a value known only at deploy time is an error, or the "[unknown]" placeholder
    references: bool  # resource references, output values, assets and archives read, or refused
    drop_nulls: bool = False  # leave out null fields and the SDK's "__" keys
    # What reading an unknown value raises, where a proxy raises instead of handing it over.
    unknown_errors: tuple[type[BaseException], ...] = ()


PLAN = Reading(reveal_secrets=False, refuse_unknown=False, references=True)
MANIFEST = Reading(reveal_secrets=True, refuse_unknown=True, references=False, drop_nulls=True)
POLICY = Reading(reveal_secrets=True, refuse_unknown=False, references=True)


def decode(value: Any, reading: Reading, path: str = "value") -> Any:
    """A wire value -> plain data (dicts, lists, strings, ints, floats, booleans, None) for `reading`.

    `path` names the value in an error (`Deployment.spec.replicas`).
    """
    if isinstance(value, Mapping):
        if SIG_KEY in value:
            return _signed(value, reading, path)
        result: dict[str, Any] = {}
        for key in list(value):
            name = str(key)
            where = f"{path}.{name}"
            try:
                item = value[key]
            except reading.unknown_errors:
                result[name] = _unknown(reading, where)
                continue
            if reading.drop_nulls and (item is None or name.startswith("__")):
                continue
            result[name] = decode(item, reading, where)
        return result
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        items: list[Any] = []
        for index in range(len(value)):
            where = f"{path}[{index}]"
            try:
                items.append(decode(value[index], reading, where))
            except reading.unknown_errors:
                items.append(_unknown(reading, where))
        return items
    if isinstance(value, str) and value == UNKNOWN:
        return _unknown(reading, path)
    if isinstance(value, float) and value.is_integer():
        return int(value)  # the Struct made every number a float
    return value


def _unknown(reading: Reading, path: str) -> str:
    if reading.refuse_unknown:
        raise WireError(f"{path} is not known until the update runs (a preview value)")
    return UNKNOWN_PLACEHOLDER


def _signed(value: Mapping[str, Any], reading: Reading, path: str) -> Any:
    """An object marked by a signature: a secret, an output value, a reference, an asset or an archive."""
    sig = value[SIG_KEY]
    if sig == SECRET_SIG:
        return decode(value.get("value"), reading, path) if reading.reveal_secrets else SECRET_PLACEHOLDER
    if not reading.references:
        raise WireError(f"{path}: an asset, archive or resource reference is not manifest data")
    if sig == OUTPUT_SIG:
        secret = bool(value.get("secret"))
        if "value" in value and (reading.reveal_secrets or not secret):
            return decode(value["value"], reading, path)
        return SECRET_PLACEHOLDER if secret else _unknown(reading, path)
    if sig == RESOURCE_SIG:
        return value.get("urn")
    if sig in (ASSET_SIG, ARCHIVE_SIG):
        asset = {k: decode(v, reading, f"{path}.{k}") for k, v in value.items() if k in _ASSET_FIELDS}
        if "hash" not in asset and sig == ASSET_SIG and Path(str(asset.get("path", ""))).is_file():
            # the engine's asset hash: sha256 of the file's bytes (what a copy compares)
            asset["hash"] = hashlib.sha256(Path(str(asset["path"])).read_bytes()).hexdigest()
        return asset
    raise WireError(f"{path}: unknown Pulumi signature {sig!r} (a newer SDK? see components/core/wire.py)")
