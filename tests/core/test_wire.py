"""components/core/wire.py: one decoder of Pulumi wire values, three readings (plan, manifest, policy).

That its signatures are still the SDK's, and that the SDK's own encodings decode as the plan shows them:
tests/stacks/test_pulumi_sdk.py. The readings at work: the plans (tests/stacks), to_manifest
(tests/kubernetes/test_components.py) and the policy pack's proxy copying (tests/policy).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from components.core.vocabulary import SECRET_PLACEHOLDER, UNKNOWN_PLACEHOLDER
from components.core.wire import (
    ARCHIVE_SIG,
    ASSET_SIG,
    MANIFEST,
    OUTPUT_SIG,
    PLAN,
    POLICY,
    RESOURCE_SIG,
    SECRET_SIG,
    SIG_KEY,
    UNKNOWN,
    WireError,
    decode,
)

SECRET = {SIG_KEY: SECRET_SIG, "value": {"token": "s3cret"}}
REFERENCE = {SIG_KEY: RESOURCE_SIG, "urn": "urn:pulumi:s::p::t::r", "id": "r-id"}


def output(**fields: Any) -> dict[str, Any]:
    return {SIG_KEY: OUTPUT_SIG, **fields}


def test_the_plan_masks_secrets_and_unknowns_and_keeps_integers() -> None:
    value = {"a": SECRET, "b": [UNKNOWN, 2.0, 2.5, True, None], "ref": REFERENCE, "__defaults": []}
    assert decode(value, PLAN) == {
        "a": SECRET_PLACEHOLDER,
        "b": [UNKNOWN_PLACEHOLDER, 2, 2.5, True, None],
        "ref": "urn:pulumi:s::p::t::r",
        "__defaults": [],
    }
    assert isinstance(decode(2.0, PLAN), int)


@pytest.mark.parametrize(
    ("value", "plan", "revealed"),
    [
        (output(value=3.0), 3, 3),
        (output(value="x", secret=True), SECRET_PLACEHOLDER, "x"),
        (output(secret=True), SECRET_PLACEHOLDER, SECRET_PLACEHOLDER),  # a secret not known yet
        (output(dependencies=["urn:a"]), UNKNOWN_PLACEHOLDER, UNKNOWN_PLACEHOLDER),
    ],
    ids=["known", "secret", "unknown secret", "unknown"],
)
def test_output_values(value: dict[str, Any], plan: Any, revealed: Any) -> None:
    assert decode(value, PLAN) == plan
    assert decode(value, replace(PLAN, reveal_secrets=True)) == revealed


def test_assets_and_archives_show_where_they_come_from(tmp_path: Path) -> None:
    file = tmp_path / "f.txt"
    file.write_bytes(b"content")
    asset = decode({SIG_KEY: ASSET_SIG, "path": str(file), "extra": 1}, PLAN)
    # the engine's hash: sha256 of the bytes
    assert asset == {
        "path": str(file),
        "hash": "ed7002b439e9ac845f22357d822bac1444730fbdb6016d3ec9432297b9ec9f73",
    }
    given = {SIG_KEY: ASSET_SIG, "text": "t", "hash": "h"}
    assert decode(given, PLAN) == {"text": "t", "hash": "h"}
    assert decode({SIG_KEY: ARCHIVE_SIG, "path": str(tmp_path)}, PLAN) == {"path": str(tmp_path)}


def test_the_manifest_reveals_secrets_and_refuses_what_it_cannot_hold() -> None:
    assert decode({"data": SECRET, "labels": None, "__defaults": [], "n": 1.0}, MANIFEST, "Secret") == {
        "data": {"token": "s3cret"},
        "n": 1,
    }
    with pytest.raises(WireError, match=r"^Secret\.data\.items\[1\] is not known until the update runs"):
        decode({"data": {"items": ["a", UNKNOWN]}}, MANIFEST, "Secret")
    for signed in (REFERENCE, output(value=1), {SIG_KEY: ASSET_SIG, "text": "t"}):
        with pytest.raises(WireError, match=r"^Pod\.spec: an asset, archive or resource reference"):
            decode({"spec": signed}, MANIFEST, "Pod")


def test_a_signature_it_does_not_know_is_an_error() -> None:
    """A newer SDK's encoding fails loudly instead of passing as plain data."""
    for reading in (PLAN, POLICY):
        with pytest.raises(WireError, match="unknown Pulumi signature 'new'"):
            decode({"x": {SIG_KEY: "new"}}, reading)


class Unknown(Exception):
    pass


class Proxy(Mapping[str, Any]):
    """Like pulumi_policy's proxy: reading an unknown value raises."""

    def __init__(self, items: dict[str, Any]) -> None:
        self.items_ = items

    def __getitem__(self, key: str) -> Any:
        if self.items_[key] == "?":
            raise Unknown(key)
        return self.items_[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.items_)

    def __len__(self) -> int:
        return len(self.items_)


def test_the_policy_reads_what_the_proxy_raises_on_as_unknown() -> None:
    props = Proxy({"image": "?", "nested": Proxy({"memory": 2048.0, "user": "?"}), "envs": ["A=1"]})
    reading = replace(POLICY, unknown_errors=(Unknown,))
    assert decode(props, reading) == {
        "image": UNKNOWN_PLACEHOLDER,
        "nested": {"memory": 2048, "user": UNKNOWN_PLACEHOLDER},
        "envs": ["A=1"],
    }
    with pytest.raises(Unknown):
        decode(props, POLICY)  # without the proxy's error, nothing is swallowed
