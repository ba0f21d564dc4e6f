"""HostDirectories: the host directories behind bind mounts, owned by the user the container runs as.

Creates one command (over SSH, or local for `host: local`) that runs `prepare-dirs.sh`: it makes the
directories, all under the stack's root, with owner uid:gid and mode 0750 — never world-writable — without
following a symlink on the way, and has no delete step, so destroying or replacing a container never
deletes host data.

Without root (`privileged=False`, provision.privileges: unprivileged) the script runs as the deploy user
and never through sudo: the directories are that user's, so `owner` must be the deploy user's own uid:gid
(only root can give a directory to another user), and the root must lie in a directory the user owns
(its home); the script checks both on the host and fails with one line otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_command as command

from components.core.values import UserSpec
from components.host import shell as host_scripts
from components.options import child_options


class HostDirectories(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        *,
        paths: Sequence[str],
        owner: UserSpec,
        root: str,
        connection: command.remote.ConnectionArgs | None,
        privileged: bool = True,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpu-deploy:host:HostDirectories", name, None, opts)
        env = {"ROOT": root, "DIRS": "\n".join(sorted(set(paths))), "OWNER": str(owner), "MODE": "0750"}
        if not privileged:
            env["PRIVILEGES"] = "unprivileged"
        create = host_scripts.command_line(env)
        script = host_scripts.script("prepare-dirs")
        child = child_options(self, opts)
        prepared: command.local.Command | command.remote.Command
        if connection is None:
            prepared = command.local.Command(f"{name}-prepare", create=create, stdin=script, opts=child)
        else:
            prepared = command.remote.Command(
                f"{name}-prepare", connection=connection, create=create, stdin=script, opts=child
            )
        self.done = prepared.stdout
        self.register_outputs({"paths": sorted(set(paths)), "owner": str(owner)})
