"""The gpu-deploy policy pack: `pulumi preview --policy-pack policy` (or `pulumi up --policy-pack policy`).

Each rule of policy/validators.py (RULES) becomes one mandatory ResourceValidationPolicy whose callback
(validators.validate_with) copies the engine's props into plain data (unknown values as "[unknown]"),
checks them against the stack context built from the stack's config (the engine passes it in
PULUMI_CONFIG) and reports one violation per message.

Building the PolicyPack starts the analyzer's gRPC server and blocks, so nothing imports this module:
tests/policy/test_policy.py runs the rules directly, and starts this pack as the engine does
(`python -m pulumi.policy ENGINE .` in policy/) to check what it serves over gRPC.

Setup: `python -m venv policy/venv`, then `pip install -r requirements.txt` run IN policy/ (as the Pulumi
CLI runs it when it makes the pack's virtualenv: PulumiPolicy.yaml names it): its `-e ..` line installs this
repository's standard-library core (components.core, and this `policy` package) into the virtualenv, so the
pack imports them like any other package. Then `pulumi preview --policy-pack policy`.
"""

from __future__ import annotations

import functools
import os

from pulumi.runtime import get_config_env
from pulumi_policy import EnforcementLevel, PolicyPack, ResourceValidationPolicy
from pulumi_policy.proxy import UnknownValueError

from policy.context import StackContext
from policy.validators import RULES, validate_with


@functools.cache
def stack_context() -> StackContext:
    """The stack's config as the engine handed it to this process."""
    return StackContext.from_config(get_config_env(), stack=os.environ.get("PULUMI_STACK", ""))


PolicyPack(
    name="gpu-deploy",
    enforcement_level=EnforcementLevel.MANDATORY,
    description="Guardrails for gpu-deploy: GPU requests, users, privileges, images, host paths, secrets.",
    policies=[
        ResourceValidationPolicy(
            name=rule.name,
            description=rule.description,
            validate=validate_with(rule, stack_context, (UnknownValueError,)),
        )
        for rule in RULES
    ],
)
