"""DockerHost: one Docker engine, reached through one explicit provider.

Creates, in order:
1. for an SSH host, the pinned host key in a known_hosts file of this project (local command), so the
   Docker CLI's ssh transport refuses any other key;
2. the `docker.Provider` for `ssh://user@host:port` (or the local socket for `host: local`);
3. the bridge network the stack's containers share, so services reach each other by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_command as command
import pulumi_docker as docker

from components import host_scripts
from components.options import child_options

LOCAL_SOCKET = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class SshEndpoint:
    host: str
    user: str
    port: int
    host_key: str

    @property
    def docker_url(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}"


class DockerHost(pulumi.ComponentResource):
    provider: docker.Provider
    network: docker.Network

    def __init__(
        self,
        name: str,
        *,
        ssh: SshEndpoint | None,
        network_name: str,
        known_hosts_dir: str = ".gpu-deploy",
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpu-deploy:docker:DockerHost", name, None, opts)
        child = child_options(self, opts)

        if ssh is None:
            self.provider = docker.Provider(f"{name}-docker", host=LOCAL_SOCKET, opts=child)
        else:
            known_hosts = str(Path(known_hosts_dir) / f"known_hosts-{ssh.host}-{ssh.port}")
            pin = command.local.Command(
                f"{name}-host-key",
                create=host_scripts.command_line(
                    {
                        "KNOWN_HOSTS_FILE": known_hosts,
                        "SSH_HOST": ssh.host,
                        "SSH_PORT": str(ssh.port),
                        "HOST_KEY": ssh.host_key,
                    }
                ),
                stdin=host_scripts.script("pin-host-key"),
                opts=child,
            )
            self.provider = docker.Provider(
                f"{name}-docker",
                host=ssh.docker_url,
                ssh_opts=[
                    "-o",
                    "StrictHostKeyChecking=yes",
                    "-o",
                    f"UserKnownHostsFile={known_hosts}",
                    "-o",
                    "BatchMode=yes",
                ],
                opts=child_options(self, opts, after=[pin]),
            )

        self.network = docker.Network(
            f"{name}-network",
            name=network_name,
            driver="bridge",
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider),
        )
        self.register_outputs({"network": self.network.name})
