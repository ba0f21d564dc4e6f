"""`gpu-deploy:dcgm`: the Docker host's DCGM exporter (components/docker/dcgm.py), and its rules.

A stack-level section, not a service: it watches every GPU of the host, whatever runs there, and is no
part of the services' start order, budgets or rollouts (DCGM holds no CUDA context). On Kubernetes the
exporter is the GPU Operator's (`gpuOperator.dcgm`), so the section is refused there.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator

from components.core.vocabulary import DCGM_EXPORTER_IMAGE
from stacks.config.cards import card_profile
from stacks.config.errors import KeyedError, quote
from stacks.config.fields import ImageRefField, Model, SizeField
from stacks.config.sections import DockerTarget

if TYPE_CHECKING:
    from stacks.config.stack import StackConfig


def parse_address(value: Any) -> tuple[str, int]:
    """`127.0.0.1:9400`, `[::1]:9400` or `0.0.0.0:9400` -> (IP, port)."""
    problem = f"expected IP:port, e.g. 127.0.0.1:9400 or [::1]:9400, got {quote(value)}"
    if isinstance(value, tuple):
        return value
    text = value if isinstance(value, str) else ""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(problem)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(problem) from None
    return (str(address), int(port))


EXPORTER = "dcgm-exporter"  # its resource name, network alias and service label on the host
PROFILING_MIN_CC = (7, 0)  # Volta: DCGM's profiling (DCP) metrics start there


def has_profiling(compute_capability: tuple[int, int] | None) -> bool:
    """Whether a card has DCGM's profiling metrics (DCGM_FI_PROF_*: Volta and newer)."""
    return compute_capability is not None and compute_capability >= PROFILING_MIN_CC


AddressField = Annotated[tuple[str, int], BeforeValidator(parse_address)]


class DcgmConfig(Model):
    enabled: bool = True
    address: AddressField = ("127.0.0.1", 9400)  # where the host publishes /metrics
    image: ImageRefField = DCGM_EXPORTER_IMAGE  # pinned; add @sha256:... to pin the digest
    profiling: bool = False  # DCGM_FI_PROF_* metrics: root with CAP_SYS_ADMIN, Volta and newer only
    memory: SizeField = 512

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


def check_dcgm(config: StackConfig) -> None:
    """The exporter needs a Docker host with a GPU, profiling a card that has it, and its own host port."""
    dcgm = config.dcgm
    if dcgm is None or not dcgm.enabled:
        return
    if not isinstance(config.target, DockerTarget):
        raise KeyedError("dcgm", "a Docker host setting; on kubernetes the exporter is gpuOperator.dcgm")
    if config.profile == "cpu":
        raise KeyedError(
            "dcgm", "the cpu profile has no GPU to watch: remove dcgm or set dcgm.enabled: false"
        )
    if dcgm.profiling and config.profile != "auto":
        profile = card_profile(config, config.profile)
        if not has_profiling(profile.compute_capability):
            need = ".".join(map(str, PROFILING_MIN_CC))
            raise KeyedError(
                "dcgm.profiling",
                f"profiling metrics (DCGM_FI_PROF_*) need compute capability {need} (Volta) or newer; "
                f"{profile.key} has {profile.cuda_arch_list}: remove dcgm.profiling",
            )
    if EXPORTER in config.services:
        raise KeyedError(
            f"services.{EXPORTER}", "the name of the host's DCGM exporter (dcgm): rename the service"
        )
    host, port = dcgm.address
    for name, svc in config.services.items():
        for published in svc.ports if svc.enabled else []:
            wildcard = {"", "0.0.0.0", "::"}  # noqa: S104 - bind addresses compared, not bound
            same_ip = published.host_ip == host or published.host_ip in wildcard or host in wildcard
            if published.protocol == "tcp" and published.host_port == port and same_ip:
                raise KeyedError(
                    "dcgm.address",
                    f"host port {port}/tcp on {host}: services.{name}.ports has it already",
                )
