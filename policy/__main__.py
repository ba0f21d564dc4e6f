"""The gpu-deploy policy pack: `pulumi preview --policy-pack policy` (or `pulumi up --policy-pack policy`).

Each rule of policy/validators.py becomes one mandatory ResourceValidationPolicy whose callback
(validators.validate_with) copies the engine's props into plain data (unknown values as "[unknown]"),
checks them against the stack context built from the stack's config (the engine passes it in
PULUMI_CONFIG) and reports one violation per message.

Building the PolicyPack starts the analyzer's gRPC server and blocks, so nothing imports this module:
tests/policy/test_policy.py runs the rules directly, and starts this pack as the engine does
(`python -m pulumi.policy ENGINE .` in policy/) to check what it serves over gRPC.

Setup: `python -m venv policy/venv && policy/venv/bin/pip install -r policy/requirements.txt`
(PulumiPolicy.yaml names that virtualenv), then `pulumi preview --policy-pack policy`.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

# The engine runs the pack with policy/ as its working directory; the repository root holds the
# `policy` package and the profile catalog (components/core/catalog.py) the rules read.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pulumi.runtime import get_config_env  # noqa: E402
from pulumi_policy import EnforcementLevel, PolicyPack, ResourceValidationPolicy  # noqa: E402
from pulumi_policy.proxy import UnknownValueError  # noqa: E402

from policy.validators import RULES, StackContext, validate_with  # noqa: E402


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
