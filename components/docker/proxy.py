"""ReverseProxy: the stack's small reverse proxy (Caddy), which owns the zero-downtime services' ports.

A zero-downtime service runs as copies that come and go (auto-named containers without published ports,
components/docker/container.py); the proxy is what stays. Creates:
- the claim `<name>-claim` (claim-ports.sh), before the container and again whenever the published ports
  change: it stops and removes every other container of the stack that publishes one of them. Those are
  the fixed-name containers of services that stopped first before and roll with zero downtime now: Pulumi
  deletes a replaced container only at the end of the update, after the proxy's create would have failed
  with "port is already allocated". Such a service is interrupted once, when its rollout mode changes:
  from the claim until its first copy is healthy and its route is set (the routes' comments say the same);
- one container `<stack>-proxy` (vocabulary.PROXY_IMAGE, pinned by tag and digest) on the stack network: it
  publishes every zero-downtime service's published TCP ports (host_ip:host_port -> proxy:host_port) and
  carries each such service's network alias, so clients outside and inside the stack reach a service
  through it; a numeric non-root user, every capability dropped, no-new-privileges, unprivileged ports
  from 0 (a network-namespace sysctl) so it may listen on 80, Caddy's state under /tmp, a memory limit;
  it runs `caddy run --resume` on the uploaded main Caddyfile (main_caddyfile), which imports one route
  file per service;
- per zero-downtime service, `route()`: a command `<service>-route` that writes the route to the service's
  current copy (route_caddyfile) into the proxy and reloads Caddy gracefully (proxy-routes.sh). It runs
  again when the proxy or the copy changes; its delete takes the route away unless a newer copy's route
  has replaced it. Services that depend on the service wait for its route.

The copy of the caddy binary: the official image gives /usr/bin/caddy the file capability
cap_net_bind_service=+ep, and a binary with file capabilities its container's bounding set lacks fails
to exec (EPERM) once every capability is dropped (caddyserver/caddy-docker#396, and #466 which proposes
running a copy, since `cp` leaves the capability behind). The proxy runs that copy, /tmp/caddy.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_command as command
import pulumi_docker as docker

from components.core.values import PortMapping
from components.core.vocabulary import (
    LABEL_STACK,
    PROXY_ADMIN,
    PROXY_CADDY,
    PROXY_CONFIG,
    PROXY_IMAGE,
    PROXY_ROUTES_DIR,
)
from components.docker.container import LOG_OPTIONS
from components.docker.host_command import HostCommand, host_command
from components.options import child_options

PROXY_USER = "65534:65534"  # nobody: the proxy needs no files of its own but /tmp
PROXY_MEMORY_MIB = 256
PROXY_STOP_GRACE_S = 10
CLAIM_STOP_GRACE_S = 30  # `docker stop -t` for a container the proxy takes the ports of (a copy's grace)


def main_caddyfile(routes_dir: str = PROXY_ROUTES_DIR) -> str:
    """The main Caddyfile: the admin endpoint inside the container only, no automatic HTTPS (the proxy
    serves plain HTTP on the ports the services published), and every route file. A glob that matches
    nothing yet is no error, so the proxy starts before any route exists."""
    return (
        "# gpu-deploy's reverse proxy: one route file per zero-downtime service (proxy-routes.sh).\n"
        "{\n"
        f"\tadmin {PROXY_ADMIN}\n"
        "\tauto_https off\n"
        "}\n"
        "\n"
        f"import {routes_dir}/*.caddy\n"
    )


def route_caddyfile(service: str, ports: Sequence[PortMapping], upstream: str) -> str:
    """A service's route file: for each published TCP port, the published site `:<host_port>` (what comes in
    from the host) and the stack network's site `http://<service>:<container_port>` (what other services
    call), both proxied to the current copy `<upstream>:<container_port>`."""
    tcp = [p for p in ports if p.protocol == "tcp"]
    if not tcp:
        raise ValueError(f"service {service} publishes no TCP port: the proxy has nothing to route")
    lines = [f"# {service} -> {upstream} (gpu-deploy, proxy-routes.sh)"]
    internal: set[int] = set()
    for port in tcp:
        target = f"{upstream}:{port.container_port}"
        lines += [f":{port.host_port} {{", f"\treverse_proxy {target}", "}"]
        if port.container_port not in internal:
            internal.add(port.container_port)
            lines += [f"http://{service}:{port.container_port} {{", f"\treverse_proxy {target}", "}"]
    return "\n".join(lines) + "\n"


def proxy_command(config: str = PROXY_CONFIG) -> list[str]:
    """The proxy container's command: copy caddy to /tmp (without its file capability), then run it on
    the last config it loaded (`--resume`: the routes survive a restart), else on the main Caddyfile."""
    run = ["run", "--resume", "--config", config, "--adapter", "caddyfile"]
    script = f'cp "$(command -v caddy)" {PROXY_CADDY} && exec {PROXY_CADDY} {shlex.join(run)}'
    return ["sh", "-c", script]


@dataclass(frozen=True)
class ProxyArgs:
    container_name: str  # <stack>-proxy
    network: pulumi.Input[str]
    services: Mapping[str, Sequence[PortMapping]]  # zero-downtime service -> its published ports
    labels: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)


class ReverseProxy(pulumi.ComponentResource):
    claim: HostCommand
    container: docker.Container

    def __init__(
        self,
        name: str,
        args: ProxyArgs,
        *,
        connection: command.remote.ConnectionArgs | None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpu-deploy:docker:ReverseProxy", name, None, opts)
        self._connection = connection
        self._opts = opts
        published = [p for ports in args.services.values() for p in ports if p.protocol == "tcp"]
        self.claim = self._claim(name, args, published)
        self.container = docker.Container(
            name,
            name=args.container_name,
            image=PROXY_IMAGE,
            command=proxy_command(),
            user=PROXY_USER,
            envs=["XDG_CONFIG_HOME=/tmp/caddy-config", "XDG_DATA_HOME=/tmp/caddy-data"],
            uploads=[docker.ContainerUploadArgs(file=PROXY_CONFIG, content=main_caddyfile())],
            ports=[
                docker.ContainerPortArgs(
                    internal=p.host_port, external=p.host_port, ip=p.host_ip or None, protocol="tcp"
                )
                for p in published
            ],
            networks_advanced=[
                docker.ContainerNetworksAdvancedArgs(name=args.network, aliases=sorted(args.services))
            ],
            memory=PROXY_MEMORY_MIB,
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
            security_opts=["no-new-privileges:true"],
            sysctls={"net.ipv4.ip_unprivileged_port_start": "0"},
            restart="unless-stopped",
            must_run=True,
            log_driver="json-file",
            log_opts=LOG_OPTIONS,
            labels=[docker.ContainerLabelArgs(label=k, value=v) for k, v in sorted(args.labels.items())],
            # A fixed name: the old proxy goes before the new one starts (it holds the ports anyway).
            destroy_grace_seconds=PROXY_STOP_GRACE_S,
            opts=child_options(self, opts, after=[self.claim], delete_before_replace=True),
        )
        self.register_outputs({"name": self.container.name, "image": PROXY_IMAGE})

    def _claim(self, name: str, args: ProxyArgs, published: Sequence[PortMapping]) -> HostCommand:
        """`<name>-claim`: the ports the proxy publishes are free of the stack's other containers (a
        service's fixed-name container from before it rolled with zero downtime); run again, replaced,
        whenever that list of ports changes."""
        ports = ",".join(
            sorted({f"{p.host_port}/tcp" for p in published}, key=lambda p: int(p.split("/")[0]))
        )
        env: dict[str, pulumi.Input[str]] = {
            "STACK_LABEL": pulumi.Output.concat(LABEL_STACK, "=", args.labels.get(LABEL_STACK, "")),
            "KEEP": args.container_name,
            "PORTS": ports,
            "STOP_GRACE_S": str(CLAIM_STOP_GRACE_S),
        }
        return host_command(
            f"{name}-claim",
            script="claim-ports",
            env=env,
            connection=self._connection,
            triggers=[ports],
            opts=child_options(self, self._opts),
        )

    def route(self, service: str, ports: Sequence[PortMapping], copy: docker.Container) -> HostCommand:
        """`<service>-route`: the proxy sends the service's traffic to `copy`, once the copy is up (and
        healthy, where it has a health check: the container waits for it). For a service that stopped
        first in the previous deployment, the first route ends its one interruption, which began when
        the claim stopped its fixed-name container; every later rollout of it is without one."""
        text = copy.name.apply(lambda upstream: route_caddyfile(service, ports, upstream))
        env: dict[str, pulumi.Input[str]] = {
            "PROXY_CONTAINER": self.container.name,
            "SERVICE": service,
            "ROUTE": text,
            "ROUTES_DIR": PROXY_ROUTES_DIR,
            "CONFIG": PROXY_CONFIG,
            "CADDY": PROXY_CADDY,
        }
        return host_command(
            f"{service}-route",
            script="proxy-routes",
            env={**env, "ACTION": "set"},
            delete_env={**env, "ACTION": "remove"},
            connection=self._connection,
            triggers=[self.container.id, copy.id],
            opts=child_options(self, self._opts, after=[self.container, copy]),
        )
