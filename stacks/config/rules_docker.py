"""The cross-field rules of a stack whose target is a Docker host (`target.kind: docker`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from components.core.values import NO_GPU
from stacks.config.builds import BUILD
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
    "mig_profile",
    "storage",
    "profile",
)
# Keys only a Docker host understands (compose's; refused on kubernetes by rules_kubernetes.py).
DOCKER_SERVICE_KEYS = ("entrypoint", "cpus", "ulimits", "ipc", "cpu_build")
CPU_SWITCH_KEYS = ("run_on", "cpu_image", "cpu_env", "cpu_build")  # the CPU switch of a GPU service


def check_docker(config: StackConfig) -> None:
    """What a Docker host cannot take: Kubernetes keys, then host ports taken twice; then each service
    switched to the CPU (`runOn: cpu`) is replaced by the service that really runs."""
    _check_no_kubernetes_keys(config)
    _check_ports(config)
    for name, svc in config.services.items():
        _check_compose_keys(f"services.{name}", svc)
        _check_cpu_switch(f"services.{name}", svc)
        if svc.run_on == "cpu":
            config.services[name] = on_cpu(svc)


def on_cpu(svc: Service) -> Service:
    """The service `runOn: cpu` runs: no GPU (no device request, NVIDIA env, budget or memory gate), its
    `cpuImage` (default: its image) built with `cpuBuild` where set, `cpuEnv` over its env. An image only
    CPU services build gets the cpu profile's build args (stacks/config/builds.py)."""
    image = svc.cpu_image or svc.image
    build = None
    if image == BUILD:
        build = svc.cpu_build or (svc.build if svc.image == BUILD else None)
    return svc.model_copy(
        update={
            "gpu": NO_GPU,
            "gpu_memory": None,
            "image": image,
            "build": build,
            "env": {**svc.env, **svc.cpu_env},
        }
    )


def _check_cpu_switch(key: str, svc: Service) -> None:
    """The CPU switch is a GPU service's; its CPU image is built only as `build`; cpuEnv stays plain."""
    if not svc.gpu.wants_gpu:
        for field in CPU_SWITCH_KEYS:
            if field in svc.model_fields_set and getattr(svc, field) not in (None, {}, "gpu"):
                raise KeyedError(
                    f"{key}.{alias(Service, field)}",
                    "the CPU switch of a GPU service; this one has gpu: none and runs on the CPU already",
                )
    if svc.cpu_build is not None and (svc.cpu_image or svc.image) != BUILD:
        raise KeyedError(
            f"{key}.cpuBuild",
            "only a built CPU image has a build (cpuImage: build); the CPU image is "
            f"{svc.cpu_image or svc.image}",
        )
    for env_name in svc.cpu_env:
        if env_name in svc.secret_env:
            raise KeyedError(
                f"{key}.cpuEnv.{env_name}",
                "also in secretEnv: a plain value would stand beside the secret one",
            )


def _check_compose_keys(key: str, svc: Service) -> None:
    """An IPC mode that takes /dev/shm away from shmSize (moby daemon setupIPCDirs: only a private or
    shareable namespace gets a /dev/shm of ShmSize). `ipc: host` is a relaxation, which the plan warns
    about (stacks/docker_services.py) and the policy pack refuses."""
    if svc.ipc in ("host", "none") and svc.shm_size is not None:
        where = "the host's /dev/shm" if svc.ipc == "host" else "no /dev/shm at all"
        raise KeyedError(
            f"{key}.shmSize", f"sizes the container's own /dev/shm; with ipc: {svc.ipc} it has {where}"
        )


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
