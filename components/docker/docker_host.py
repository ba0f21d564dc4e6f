"""DockerHost: one Docker engine, reached through one explicit provider.

Creates, in order:
1. the `docker.Provider`: `ssh://user@host:port` with the `sshOpts` of components.remote.ssh (the pinned host
   key, the stack's private key and bastion: the same connection the remote commands use), or the local
   socket for `host: local`; with the registry's credentials (`registryAuth`), so a pinned-tag rollback
   pulls from a private registry with them;
2. the bridge network the stack's containers share, so services reach each other by name.
"""

from __future__ import annotations

import pulumi
import pulumi_docker as docker

from components.docker.image import RegistryLogin
from components.options import child_options

LOCAL_SOCKET = "unix:///var/run/docker.sock"


class DockerHost(pulumi.ComponentResource):
    provider: docker.Provider
    network: docker.Network

    def __init__(
        self,
        name: str,
        *,
        docker_url: str | None,
        ssh_opts: pulumi.Input[list[str]] | None,
        network_name: str,
        registry: RegistryLogin | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpu-deploy:docker:DockerHost", name, None, opts)
        self.provider = docker.Provider(
            f"{name}-docker",
            host=docker_url or LOCAL_SOCKET,
            ssh_opts=ssh_opts if docker_url else None,
            registry_auth=[
                docker.ProviderRegistryAuthArgs(
                    address=registry.server,
                    username=registry.username,
                    password=pulumi.Output.secret(registry.password),
                )
            ]
            if registry
            else None,
            opts=child_options(self, opts),
        )
        self.network = docker.Network(
            f"{name}-network",
            name=network_name,
            driver="bridge",
            opts=child_options(self, opts, provider=self.provider),
        )
        self.register_outputs({"network": self.network.name})
