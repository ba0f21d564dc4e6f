"""One host script (components/host/scripts/<name>.sh) run as a Pulumi command on the Docker host.

Over SSH with a connection (`command.remote.Command`), on this machine without one (`host: local`): the
same text either way, `env KEY='value' ... bash -s` with the script on stdin (components/host/shell.py
quotes every value; HostDirectories runs prepare-dirs.sh the same way). Values may be Outputs (a
container's generated name): the command line then waits for them.

pulumi-command (provider/pkg/provider/local/commandController.go, commandOutputs.go `run`): a changed
`create` is an update that runs `create` again (no `update` is given here), a changed trigger replaces the
command (the new one is created, then the old one's `delete` runs), and `delete` gets the same stdin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi_command as command

from components.host import shell as host_scripts

HostCommand = command.local.Command | command.remote.Command


def _line(env: Mapping[str, pulumi.Input[str]]) -> pulumi.Output[str]:
    keys = list(env)
    return pulumi.Output.all(*env.values()).apply(
        lambda values: host_scripts.command_line(dict(zip(keys, values, strict=True)))
    )


def host_command(
    name: str,
    *,
    script: str,
    env: Mapping[str, pulumi.Input[str]],
    connection: command.remote.ConnectionArgs | None,
    opts: pulumi.ResourceOptions,
    delete_env: Mapping[str, pulumi.Input[str]] | None = None,
    triggers: Sequence[pulumi.Input[Any]] = (),
) -> HostCommand:
    """`script` with `env` on create (and with `delete_env` on delete, when given); replaced, so run again,
    whenever a trigger changes."""
    stdin = host_scripts.script(script)
    create = _line(env)
    delete = _line(delete_env) if delete_env is not None else None
    if connection is None:
        return command.local.Command(
            name, create=create, delete=delete, stdin=stdin, triggers=list(triggers), opts=opts
        )
    return command.remote.Command(
        name,
        connection=connection,
        create=create,
        delete=delete,
        stdin=stdin,
        triggers=list(triggers),
        opts=opts,
    )
