"""The services on the Docker host: the reverse proxy, the containers in dependency order, their smoke tests.

How each service rolls is decided before anything exists (stacks/config/budgets.py docker_rollouts):
a zero-downtime service runs as auto-named copies behind the ReverseProxy, each copy's route set once it
is up (healthy); a stop-first service under its fixed name; a GPU service after its GPU memory gate
(components/docker/container.py). A service waits for what it `dependsOn` and for that service's route.
At deploy the GPUs come from the host's preflight: placement and budgets are checked again against them
(stacks/docker_args.deploy_placement).
"""

from __future__ import annotations

import pulumi
import pulumi_command as command

from components.core import vocabulary
from components.core.gpu_memory import ZERO_DOWNTIME, Rollout
from components.core.values import NO_GPU, UserSpec
from components.docker.container import (
    NO_GPU_DEVICES,
    GpuContainer,
    GpuContainerArgs,
    MemoryGate,
    Mount,
)
from components.docker.directories import HostDirectories
from components.docker.docker_host import DockerHost
from components.docker.host_command import HostCommand
from components.docker.image import CudaImage
from components.docker.proxy import ProxyArgs, ReverseProxy
from components.docker.smoke_run import SmokeSpec, SmokeTest
from components.remote.gpu_host import GpuHost
from components.remote.runners import HostRunners
from stacks.config import (
    DockerTarget,
    ResolvedStack,
    Service,
    header_refs,
    resolve_header_refs,
    smoke_checks,
)
from stacks.docker_args import (
    DEFAULT_DRIVER_CAPABILITIES,
    base_url,
    deploy_placement,
    devices_of,
    gate_devices,
    healthcheck_spec,
)
from stacks.docker_tests import gated_on_test, test_job


def place_devices(
    stack: ResolvedStack, services: dict[str, Service], rollouts: dict[str, Rollout], gpu_host: GpuHost | None
) -> pulumi.Output[dict[str, tuple[str, ...]]] | None:
    """Every GPU service's devices on the GPUs the host's preflight found: a count gets distinct devices,
    packed by budget (Docker turns a bare count into the first N GPU indexes: moby daemon/nvidia_linux.go,
    countToDevices); budgets are checked again there."""
    if gpu_host is None or not any(svc.gpu.wants_gpu for svc in services.values()):
        return None
    return gpu_host.facts.apply(lambda facts: deploy_placement(stack.config, rollouts, facts))


def handover(
    svc: Service,
    name: str,
    placement: pulumi.Output[dict[str, tuple[str, ...]]] | None,
    connection: command.remote.ConnectionArgs | None,
    *,
    gpu: bool,
    zero_downtime: bool,
) -> MemoryGate | None:
    """The command before the container (components/docker/container.py): a GPU service's memory gate
    (both modes), and a stop-first service's handover when it publishes ports, GPU or not. Stopping
    first, the handover stops the old copy and whatever else of the stack holds its ports or runs as
    it: after a change of rollout mode, a zero-downtime copy or the reverse proxy that is going away,
    which Pulumi would delete only at the end of the update, after the new container failed to bind."""
    if svc.one_shot:
        return None
    if gpu and svc.gpu.wants_gpu:
        return MemoryGate(gate_devices(svc, name, placement), svc.gpu_memory, connection)
    if not zero_downtime and svc.ports:
        return MemoryGate(NO_GPU_DEVICES, None, connection)
    return None


def reverse_proxy(
    stack: ResolvedStack,
    services: dict[str, Service],
    rollouts: dict[str, Rollout],
    *,
    host: DockerHost,
    connection: command.remote.ConnectionArgs | None,
    on_host: pulumi.ResourceOptions,
) -> ReverseProxy | None:
    """The proxy that owns the zero-downtime services' published ports and names; none without one."""
    rolling = {n: services[n].ports for n, r in rollouts.items() if r.mode == ZERO_DOWNTIME and n in services}
    if not rolling:
        return None
    # a UDP port, a service named proxy, a host port on two addresses: refused by the config
    # (stacks/config/budgets.py proxy_rules and rollout_facts) before any resource exists
    return ReverseProxy(
        "proxy",
        ProxyArgs(
            container_name=f"{stack.stack}-proxy",
            network=host.network.name,
            services=rolling,
            labels={vocabulary.LABEL_STACK: stack.stack},
        ),
        connection=connection,
        opts=on_host,
    )


def start_services(
    stack: ResolvedStack,
    services: dict[str, Service],
    *,
    host: DockerHost,
    gpu_host: GpuHost | None,
    images: dict[str, CudaImage],
    directories: dict[UserSpec, HostDirectories],
    profile_key: pulumi.Input[str],
    on_host: pulumi.ResourceOptions,
    rollouts: dict[str, Rollout],
    proxy: ReverseProxy | None,
    connection: command.remote.ConnectionArgs | None,
) -> tuple[dict[str, GpuContainer], dict[str, HostCommand]]:
    """Jobs and services in dependency order, each after what it `dependsOn` (and that service's route in
    the proxy) and its host directories; a zero-downtime service's route once its copy is up."""
    config, profile = stack.config, stack.profile
    target = config.target
    assert isinstance(target, DockerTarget)
    gpu_available = gpu_host is not None
    placement = place_devices(stack, services, rollouts, gpu_host)
    containers: dict[str, GpuContainer] = {}
    routes: dict[str, HostCommand] = {}
    for name, svc in services.items():
        if svc.ipc == "host":
            pulumi.log.warn(
                f"service {name}: ipc: host shares the host's IPC namespace (its shared memory, semaphores "
                "and message queues) with the container, a security relaxation the policy pack refuses; "
                "shmSize gives PyTorch's DataLoader its shared memory without it"
            )
        if svc.gpu.wants_gpu and not gpu_available:
            pulumi.log.warn(f"service {name}: no GPU on this target, it runs on the CPU")
        zero_downtime = name in rollouts and rollouts[name].mode == ZERO_DOWNTIME
        waits_for: list[pulumi.Resource] = [containers[dep] for dep in svc.depends_on]
        waits_for += [routes[dep] for dep in svc.depends_on if dep in routes]
        if svc.user in directories and svc.volumes:
            waits_for.append(directories[svc.user])
        gate = handover(svc, name, placement, connection, gpu=gpu_available, zero_downtime=zero_downtime)
        if gate is not None and not zero_downtime and proxy is not None:
            # a proxy replaced with fewer ports lets go of this service's first; only one going away
            # (still holding them) is stopped by the handover
            waits_for.append(proxy.container)
        args = GpuContainerArgs(
            container_name=f"{stack.stack}-{name}",
            image=images[name].ref if name in images else svc.image,
            network=host.network.name,
            service=name,
            user=svc.user,
            gpu=svc.gpu if gpu_available else NO_GPU,
            driver_capabilities=svc.driver_capabilities
            or (profile.driver_capabilities if profile else DEFAULT_DRIVER_CAPABILITIES),
            command=svc.command_list,
            entrypoint=svc.entrypoint_list,
            ports=svc.ports,
            env=svc.env,
            secret_env=svc.secret_env,
            mounts=[Mount(v.host_path(target.root), v.container, v.read_only) for v in svc.volumes],
            memory_mib=svc.memory,
            shm_mib=svc.shm_size,
            cpus=svc.cpus,
            ulimits=svc.ulimits,
            ipc=svc.ipc,
            healthcheck=healthcheck_spec(svc.healthcheck) if svc.healthcheck else None,
            restart=svc.effective_restart,
            one_shot=svc.one_shot,
            keep_image=svc.one_shot and bool(config.image and config.image.tag),
            placed_devices=devices_of(placement, name)
            if placement is not None and svc.gpu.mode == "count"
            else None,
            labels={
                vocabulary.LABEL_STACK: stack.stack,
                vocabulary.LABEL_SERVICE: name,
                vocabulary.LABEL_PROFILE: profile_key,
                vocabulary.LABEL_ROOT: target.root or "",
            },
            must_succeed=[
                containers[dep].exit_code for dep, cond in svc.depends_on.items() if cond == "completed"
            ],
            zero_downtime=zero_downtime,
            gate=gate,
        )
        # the service's test job first, beside the running copy: the container and its gate wait for it
        job = test_job(
            name,
            svc,
            args,
            images,
            pulumi.ResourceOptions.merge(on_host, pulumi.ResourceOptions(depends_on=list(waits_for))),
        )
        containers[name] = GpuContainer(
            name,
            gated_on_test(args, job),
            opts=pulumi.ResourceOptions.merge(
                on_host, pulumi.ResourceOptions(depends_on=[*waits_for, *([job] if job else [])])
            ),
        )
        if zero_downtime:
            assert proxy is not None  # reverse_proxy made one for every zero-downtime service
            routes[name] = proxy.route(name, svc.ports, containers[name].container)
    return containers, routes


def smoke_test_services(
    services: dict[str, Service],
    containers: dict[str, GpuContainer],
    routes: dict[str, HostCommand],
    *,
    gpu_available: bool,
    connection: command.remote.ConnectionArgs | None,
    runners: HostRunners | None,
) -> list[SmokeTest]:
    """Smoke tests on the host, once every service is up (healthy where it has a health check); a
    service's test runs again whenever its container is replaced."""
    everything: list[pulumi.Resource] = [*containers.values(), *routes.values()]
    tests: list[SmokeTest] = []
    for name, svc in services.items():
        # a service switched to the CPU (runOn: cpu) drops its GPU checks, as on kubernetes
        checks = smoke_checks(svc.smoke, gpu=gpu_available and svc.run_on != "cpu")
        # a header taken from the service's secretEnv: the value goes only into the runner's stdin, a secret
        secret = bool(header_refs(checks))
        checks = resolve_header_refs(checks, svc.secret_env)
        if checks:
            test = SmokeTest(
                f"smoke-{name}",
                spec=SmokeSpec(
                    name,
                    containers[name].container.name,
                    base_url(svc),
                    checks,
                    svc.smoke_deadline,
                    secret=secret,
                ),
                connection=connection,
                runners=runners,
                replaced_with=[containers[name].container.id],
                opts=pulumi.ResourceOptions(depends_on=everything),
            )
            tests.append(test)
    return tests
