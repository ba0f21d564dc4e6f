"""SmokeTest: after the services are healthy, prove one answers like the real thing, where it stands.

Creates, over SSH (or locally for `host: local`), one command that runs the standard-library smoke runner
(components/host/smoke.py, copied to the host by HostRunners and checked before it runs) against the service's
published port and inside its container, with the checks on stdin (request headers never reach a command
line), a deadline and retries while the model warms up. A failed check fails `pulumi up` with the runner's
one line: the check, and the response it got with secret-looking values masked. Exit codes: 1 missing tool,
2 timeout, 3 malformed response, 4 expected file absent, 5 GPU check failed.
It runs again whenever the container it tests is replaced. The container's name may be known only once it
exists (a zero-downtime copy is auto-named): the command line waits for it.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_command as command

from components.host import SMOKE_RUNNER, smoke
from components.options import child_options
from components.remote.runners import HostRunners


@dataclass(frozen=True)
class SmokeSpec:
    service: str
    container_name: pulumi.Input[str]
    base_url: str
    checks: Sequence[dict[str, Any]]
    deadline_s: int = 180
    interval_s: int = 2
    secret: bool = False  # the checks carry a credential (a header from secretEnv): stdin is a secret

    @property
    def in_container(self) -> bool:
        """Whether a check runs inside the container (`file`, `gpu`: docker exec): only then does the
        command line name it, so an HTTP-only check list of a zero-downtime copy stays known in the plan."""
        return any("file" in check or "gpu" in check for check in self.checks)

    def arguments(self) -> pulumi.Output[list[str]]:
        """The checks go in on stdin (`-`): a header from secretEnv never reaches a command line."""
        container = self.container_name if self.in_container else None
        return pulumi.Output.from_input(container).apply(
            lambda name: smoke.command_arguments(
                self.base_url, "-", self.deadline_s, self.interval_s, container=name
            )
        )


class SmokeTest(pulumi.ComponentResource):
    passed: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        spec: SmokeSpec,
        connection: command.remote.ConnectionArgs | None,
        runners: HostRunners | None,
        replaced_with: Sequence[pulumi.Input[Any]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpu-deploy:ops:SmokeTest", name, None, opts)
        text = json.dumps(list(spec.checks), sort_keys=True)
        checks: pulumi.Input[str] = pulumi.Output.secret(text) if spec.secret else text

        if connection is None or runners is None:
            # The machine running Pulumi is the Docker host: run the runner from this checkout.
            run: command.local.Command | command.remote.Command = command.local.Command(
                f"{name}-run",
                create=spec.arguments().apply(
                    lambda args: shlex.join(["python3", os.path.relpath(SMOKE_RUNNER), *args])
                ),
                stdin=checks,
                triggers=list(replaced_with),
                opts=child_options(self, opts),
            )
        else:
            run = command.remote.Command(
                f"{name}-run",
                connection=connection,
                create=spec.arguments().apply(lambda args: runners.command("smoke.py", args)),
                stdin=checks,
                triggers=list(replaced_with),
                opts=child_options(self, opts, after=runners.copies),
            )
        self.passed = run.stdout
        self.register_outputs({"passed": self.passed})
