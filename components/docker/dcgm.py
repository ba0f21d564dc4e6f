"""DcgmExporter: NVIDIA's DCGM exporter as one container on the Docker host, every GPU, Prometheus metrics
on one host address (`gpu-deploy:dcgm`; stacks/docker_upkeep.py).

The container: the pinned image (components/core/vocabulary.py DCGM_EXPORTER_IMAGE), a device request for
every GPU, a counters file uploaded before the start and passed with `-f` (the exporter's `--collectors`,
NVIDIA/dcgm-exporter pkg/cmd/app.go), listening on :9400 inside and published only on the chosen host
address (127.0.0.1:9400 by default), a memory limit, json-file log rotation, no-new-privileges.

Without profiling (the default) it runs as uid 1000 with every capability dropped, and the counters file
has no DCGM_FI_PROF_* line: the basic metrics (clocks, temperatures, power, utilisation, framebuffer
memory, XID errors, remapped rows) need neither root nor CAP_SYS_ADMIN (the image's docker/Dockerfile
"For non-root without profiling metrics"). Profiling metrics (DCGM_FI_PROF_*) need CAP_SYS_ADMIN, which
Docker gives only to root, and exist only from Volta (compute capability 7.0) on: a P40 (6.1) has none, and
asking DCGM to watch them there fails, so its counters file never lists them. With `profiling` on a card
that has them, the container runs as root with only SYS_ADMIN added (what the exporter's chart does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_docker as docker

from components.core.vocabulary import DCGM_EXPORTER_COUNTERS
from components.docker.container import LOG_OPTIONS
from components.options import child_options

COUNTERS_FILE = Path(__file__).with_name("dcgm-default-counters.csv")
PROFILING_PREFIX = "DCGM_FI_PROF_"
LISTEN_PORT = 9400  # the exporter's default `-a :9400`, inside the container
NON_ROOT = "1000:1000"  # the image's dcgm-exporter user


def counters(*, profiling: bool) -> str:
    """The counters file the container gets: NVIDIA's default, its DCGM_FI_PROF_* lines dropped unless
    `profiling` (comment lines that name one too, so nothing suggests they are collected)."""
    lines = COUNTERS_FILE.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if profiling or not line.lstrip("# ").startswith(PROFILING_PREFIX)]
    return "\n".join(kept) + "\n"


@dataclass(frozen=True)
class DcgmArgs:
    container_name: str
    image: str
    network: pulumi.Input[str]
    alias: str  # its name on the stack network: a Prometheus there scrapes http://<alias>:9400/metrics
    host_ip: str  # the host address the metrics are published on ("127.0.0.1", "::1", "0.0.0.0")
    host_port: int
    counters: pulumi.Input[str]  # the counters file's text (counters(...))
    profiling: bool = False  # root with CAP_SYS_ADMIN, for the DCGM_FI_PROF_* metrics
    memory_mib: int = 512
    labels: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)


class DcgmExporter(pulumi.ComponentResource):
    container: docker.Container

    def __init__(self, name: str, args: DcgmArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpu-deploy:docker:DcgmExporter", name, None, opts)
        self.container = docker.Container(
            name,
            name=args.container_name,
            image=args.image,
            command=["-f", DCGM_EXPORTER_COUNTERS, "-a", f":{LISTEN_PORT}"],
            user="0:0" if args.profiling else NON_ROOT,
            envs=["NVIDIA_DRIVER_CAPABILITIES=compute,utility,compat32", "NVIDIA_VISIBLE_DEVICES=all"],
            device_requests=[
                docker.ContainerDeviceRequestArgs(driver="nvidia", count=-1, capabilities=["gpu"])
            ],
            uploads=[docker.ContainerUploadArgs(file=DCGM_EXPORTER_COUNTERS, content=args.counters)],
            ports=[
                docker.ContainerPortArgs(
                    internal=LISTEN_PORT, external=args.host_port, ip=args.host_ip, protocol="tcp"
                )
            ],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=args.network, aliases=[args.alias])],
            memory=args.memory_mib,
            restart="unless-stopped",
            must_run=True,
            capabilities=docker.ContainerCapabilitiesArgs(
                drops=["ALL"], adds=["SYS_ADMIN"] if args.profiling else None
            ),
            security_opts=["no-new-privileges:true"],
            log_driver="json-file",
            log_opts=LOG_OPTIONS,
            labels=[docker.ContainerLabelArgs(label=k, value=v) for k, v in sorted(args.labels.items())],
            destroy_grace_seconds=10,
            opts=child_options(self, opts, delete_before_replace=True),  # one name: the old one goes first
        )
        self.register_outputs({"name": self.container.name})
