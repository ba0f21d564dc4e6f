"""The cross-field rules of a stack whose target is a Docker host (`target.kind: docker`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stacks.config.errors import KeyedError
from stacks.config.fields import alias
from stacks.config.service import Service

if TYPE_CHECKING:
    from stacks.config.stack import StackConfig

# Keys only a Kubernetes target understands (field names; the messages use the camelCase keys).
KUBERNETES_STACK_KEYS = ("gpu_sharing", "gpu_operator", "nodes")
KUBERNETES_SERVICE_KEYS = (
    "replicas",
    "cpu",
    "cpu_fallback",
    "cpu_image",
    "cpu_env",
    "run_on",
    "mig_profile",
    "storage",
    "profile",
)


def check_docker(config: StackConfig) -> None:
    """What a Docker host cannot take: Kubernetes keys, then host ports taken twice."""
    _check_no_kubernetes_keys(config)
    _check_ports(config)


def _check_no_kubernetes_keys(config: StackConfig) -> None:
    """Keys only a Kubernetes target understands are refused, each naming the key."""
    for field in KUBERNETES_STACK_KEYS:
        if field in config.model_fields_set:
            raise KeyedError(alias(type(config), field), "a kubernetes setting; target.kind is docker")
    for name, svc in config.services.items():
        for field in KUBERNETES_SERVICE_KEYS:
            if field in svc.model_fields_set:
                raise KeyedError(
                    f"services.{name}.{alias(Service, field)}", "a kubernetes setting; target.kind is docker"
                )


def _wildcard(address: str) -> bool:
    return address in ("", "0.0.0.0", "::")  # noqa: S104 - bind addresses compared, not bound


def _check_ports(config: StackConfig) -> None:
    """A host port is published once per address and protocol (0.0.0.0 and :: take every address); an
    HTTP health check or smoke test needs its port over TCP."""
    seen: list[tuple[str, int, str, str]] = []  # (protocol, host port, address, key) published so far
    for name, svc in config.services.items():
        key = f"services.{name}.ports"
        if not svc.enabled:
            continue
        for port in svc.ports:
            for proto, number, address, other in seen:
                same = proto == port.protocol and number == port.host_port
                if same and (address == port.host_ip or _wildcard(address) or _wildcard(port.host_ip)):
                    where = port.host_ip or "every address"
                    raise KeyedError(
                        key,
                        f"host port {port.host_port}/{port.protocol} on {where}: {other} has it already",
                    )
            seen.append((port.protocol, port.host_port, port.host_ip, key))
        tcp = {p.container_port for p in svc.ports if p.protocol == "tcp"}
        check = svc.healthcheck.http if svc.healthcheck else None
        if (
            check is not None
            and check.port not in tcp
            and check.port in {p.container_port for p in svc.ports}
        ):
            raise KeyedError(
                f"services.{name}.healthcheck.http.port",
                f"port {check.port} is published over UDP only; HTTP needs TCP",
            )
        if any("http" in c for c in svc.smoke) and svc.ports and not tcp:
            raise KeyedError(f"services.{name}.smoke", "HTTP smoke checks need a port published over TCP")
