"""The gpu-deploy policy rules as plain functions over resource inputs, and the rule set the pack serves.

Every rule reads a resource's inputs the way the engine hands them to a policy pack (camelCase
property names; the offline plan's "[secret]" / "[unknown]" placeholders for secret and
not-yet-known values) plus a `StackContext` (policy/context.py): the stack's GPU profile, its host root
directory and the env names it declares secret. policy/__main__.py serves these rules to
`pulumi preview --policy-pack`; the tests run them over the offline plans (`python -m stacks plan STACK
--json`). The rules themselves: policy/gpu_rules.py, policy/container_rules.py, policy/host_rules.py.

The policy pack imports only the standard-library core of the repository (components/core) besides its
own modules and the policy SDK: its virtualenv holds no Pulumi provider SDK.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from components.core.wire import POLICY, decode
from policy.container_rules import (
    check_memory_limit,
    check_no_privileges,
    check_non_root,
    check_pinned_images,
    check_plain_secrets,
)
from policy.context import StackContext
from policy.gpu_rules import check_cuda_fits_card, check_gpu_requests, check_mig
from policy.host_rules import check_dir_mode, check_host_paths
from policy.reading import describe

# The pack's API: the rule set, and the context a rule runs with (its owner is policy/context.py).
__all__ = [
    "RULES",
    "RULES_BY_NAME",
    "Check",
    "ReportViolation",
    "Rule",
    "StackContext",
    "check_resource",
    "check_rule",
    "to_plain",
    "validate_with",
]


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
    components.core.wire's POLICY reading copies item by item and turns each such value into the
    placeholder the offline plan uses, so one unknown field does not stop a rule from checking the rest.
    """
    return decode(value, replace(POLICY, unknown_errors=unknown_errors))
