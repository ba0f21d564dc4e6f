"""components/core/sharing.py: every sharing rule names the spec field it is about, in the caller's words.

The messages themselves, as a direct caller reads them, are asserted in tests/kubernetes/test_components.py
(validate_sharing) and, as a stack's user reads them, in tests/stacks/test_kubernetes_stack.py."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from components.core.catalog import PROFILES, GpuProfile
from components.core.problems import Problem
from components.core.sharing import SPEC_WORDS, SharingSpec, gpu_capacity, sharing_problems, validate_sharing
from stacks.config.rules_kubernetes import SHARING_KEYS, SHARING_WORDS
from stacks.config.sections import GpuSharingConfig

A2, H100, CPU = PROFILES["a2"], PROFILES["h100"], PROFILES["cpu"]


@pytest.mark.parametrize(
    ("spec", "profile", "field", "fragment"),
    [
        (SharingSpec("time-slicing", 0), A2, "replicas", "sharing.replicas must be at least 1"),
        (
            SharingSpec("time-slicing", 1),
            A2,
            "replicas",
            "sharing.replicas must be at least 2 with time-slicing",
        ),
        (SharingSpec("none", 2), A2, "replicas", "sharing.replicas/per_product only apply"),
        (SharingSpec("none", per_product={"NVIDIA-A2": 2}), A2, "per_product", "replicas/per_product only"),
        (SharingSpec("time-slicing", 2, per_product={"NVIDIA A2": 4}), A2, "per_product.NVIDIA A2", "key"),
        (SharingSpec("mps", 2, per_product={"default": 4}), A2, "per_product.default", "not a GPU product"),
        (SharingSpec("mps", 2, per_product={"NVIDIA-A2": 1}), A2, "per_product.NVIDIA-A2", "at least 2"),
        (SharingSpec(rename_by_default=True), A2, "rename_by_default", "needs strategy time-slicing or mps"),
        (
            SharingSpec("mps", 2, fail_requests_greater_than_one=True),
            A2,
            "fail_requests_greater_than_one",
            "sharing.fail_requests_greater_than_one is a time-slicing setting; strategy is 'mps'",
        ),
        (SharingSpec("mps", 2, mig_strategy="mixed"), H100, "mig_strategy", "MPS does not work on MIG"),
        (SharingSpec("mig"), H100, "mig_strategy", "strategy mig needs mig_strategy single or mixed"),
        (SharingSpec("mig", mig_strategy="single"), A2, "strategy", "a NVIDIA A2 has no MIG"),
        (SharingSpec("time-slicing", 2, mig_strategy="single"), A2, "mig_strategy", "has no MIG"),
        (SharingSpec("time-slicing", 2), CPU, "strategy", "profile has no GPU"),
    ],
)
def test_a_setup_problem_names_its_field(
    spec: SharingSpec, profile: GpuProfile, field: str, fragment: str
) -> None:
    problems = sharing_problems(spec, profile)
    assert problems, spec
    assert problems[0].field == field
    assert fragment in problems[0].message
    with pytest.raises(ValueError, match="^" + re.escape(problems[0].message)):
        validate_sharing(spec, profile, 0)  # the component raises the first


def test_a_request_problem_is_about_gpu_or_mig_profile() -> None:
    shared = SharingSpec("time-slicing", 2)
    assert sharing_problems(shared, A2, 2) == []
    (over,) = sharing_problems(shared, A2, 3)
    assert over.field == "gpu" and "at most 2" in over.message and "Raise sharing.replicas" in over.message
    assert [p.field for p in sharing_problems(SharingSpec(), CPU, 1)] == ["gpu"]
    mixed = SharingSpec("mig", mig_strategy="mixed")
    assert sharing_problems(mixed, H100, 0, mig_requests={"3g.40gb": 2}) == []
    assert [p.field for p in sharing_problems(mixed, H100, 0, mig_requests={"3g.40gb": 3})] == ["gpu"]
    assert [p.field for p in sharing_problems(mixed, H100, 0, mig_requests={"5g.50gb": 1})] == ["mig_profile"]
    single = replace(mixed, mig_strategy="single")
    (only_mixed,) = sharing_problems(single, H100, 0, mig_requests={"nvidia.com/mig-1g.10gb": 1})
    assert only_mixed == Problem(
        "mig_profile",
        "MIG resource 'nvidia.com/mig-1g.10gb' exists only with mig_strategy mixed (got 'single'); "
        "with single, MIG instances are advertised as nvidia.com/gpu",
    )


def test_the_messages_take_the_callers_words() -> None:
    words = {**SPEC_WORDS, "replicas": "R", "per_product": "x.PP", "mig_strategy": "MS"}
    (none,) = sharing_problems(SharingSpec("none", 2), A2, words=words)
    assert none.message.startswith("R/PP only apply to time-slicing or mps")
    (mps,) = sharing_problems(SharingSpec("mps", 2, mig_strategy="mixed"), H100, words=words)
    assert "strategy mps needs MS none" in mps.message
    (over,) = sharing_problems(SharingSpec("mps", 2), A2, 3, words=words)
    assert "Raise R, add GPUs" in over.message


def test_the_stack_names_every_sharing_field_by_its_key() -> None:
    """config's table: every field a rule names is a gpuSharing key, spelled as the model spells it."""
    for field, key in SHARING_KEYS.items():
        assert key == f"gpuSharing.{GpuSharingConfig.model_fields[field].alias}"
    assert set(SPEC_WORDS) <= set(SHARING_WORDS)
    assert SHARING_WORDS["mig_strategy"] == "migStrategy"  # the messages have always said it so


def test_capacity_takes_the_largest_replicas_of_the_card() -> None:
    spec = SharingSpec("time-slicing", 2, per_product={A2.gpu_products[0]: 4, "NVIDIA-OTHER": 8})
    assert gpu_capacity(spec, A2) == 4
    assert gpu_capacity(spec, A2, gpus_per_node=2) == 8
    assert gpu_capacity(SharingSpec("mig", mig_strategy="mixed"), H100) == max(H100.mig_profiles.values())
