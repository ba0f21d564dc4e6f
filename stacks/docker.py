"""The Docker-host target: a validated stack becomes a GpuHost, a DockerHost, images, host directories
and containers.

Order: GPU host verified -> images built on it -> one-shot jobs and services, each after what it
`dependsOn` ("healthy" waits for the health check, "completed" for the job's exit) and after the host
directories behind its bind mounts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pulumi
import pulumi_command as command

from components.core import vocabulary
from components.core.catalog import GpuProfile
from components.core.values import NO_GPU, UserSpec, is_under, place_gpu_counts
from components.docker.container import GpuContainer, GpuContainerArgs, Mount
from components.docker.directories import HostDirectories
from components.docker.docker_host import DockerHost
from components.docker.image import BuildRecipe, CudaImage, release_tag
from components.docker.smoke_run import SmokeSpec, SmokeTest
from components.remote.gpu_host import GpuHost, PreflightRequest
from components.remote.runners import HostRunners
from components.remote.ssh import (
    SshTarget,
    command_connection,
)
from stacks.config import (
    DockerTarget,
    ResolvedStack,
    Service,
    StackConfig,
    header_refs,
    resolve_header_refs,
    resolve_profile,
    smoke_checks,
)
from stacks.config.builds import image_builds
from stacks.config.cards import card_json_of
from stacks.config.resolution import image_profile
from stacks.docker_args import (
    DEFAULT_DRIVER_CAPABILITIES,
    base_url,
    declared_args,
    devices_of,
    docker_transport,
    healthcheck_spec,
    image_build_args,
    image_naming,
    recipe_for,
    recipe_of,
    registry_login,
)
from stacks.hosts import provisioning, ssh_target


def resolved_for(stack: ResolvedStack, report: Mapping[str, Any]) -> GpuProfile:
    """The profile of a stack with `profile: auto`, from the host's preflight report (the card it found,
    named, the stack's own or derived from what NVML reports): resolved by the same function as a named
    profile (stacks.config.resolve_profile), with the same checks."""
    profile, _ = resolve_profile(stack.config, report)
    if profile is None:  # resolve_profile returns None only for auto without a detection
        raise ValueError(f"the preflight detected no card: {report.get('problems')}")
    return profile


def build_images(
    stack: ResolvedStack,
    services: dict[str, Service],
    profile: pulumi.Output[GpuProfile],
    opts: pulumi.ResourceOptions,
) -> dict[str, CudaImage]:
    """service name -> the CudaImage it runs, for every service with image: build.

    One image per distinct (context, Dockerfile, stage), each with its own build args: a GPU image the
    profile's (with the team's version matrix, checked against the card), an image no GPU service runs
    the cpu profile's (stacks.config.resolution.image_profile); of those, only the args its Dockerfile
    declares, then the team's own. One release tag for all of them (a rollback pins one value)."""
    config = stack.config
    image = config.image
    builds = image_builds(config, services)
    if image is None or not builds:
        return {}
    main = BuildRecipe(image.context, image.dockerfile, image.target)
    recipes = {recipe_of(build): build for build in builds}
    for context in sorted({r.context for r in recipes}):
        if not Path(context).is_dir():
            pulumi.log.warn(
                f"image context {context} is not here: the release tag is derived from the Dockerfile paths, "
                "stages and build args only, and `pulumi up` needs the source checked out there"
            )
    declared = {recipe: declared_args(recipe) for recipe in recipes}

    def args_of(p: GpuProfile) -> list[dict[str, str]]:  # in the order of `recipes`
        return [
            image_build_args(
                image_profile(p, build, config.cuda).build_args(image.app_uid), build, declared[recipe]
            )
            for recipe, build in recipes.items()
        ]

    per_image = profile.apply(args_of)
    tag = (
        pulumi.Output.from_input(image.tag)
        if image.tag
        else pulumi.Output.all(profile, per_image).apply(
            lambda both: release_tag(
                profile=both[0].key,
                recipes=[main, *recipes],
                build_args={**both[0].build_args(image.app_uid), **image.build_args},
                image_args=dict(zip(recipes, both[1], strict=True)),
            )
        )
    )
    registry = registry_login(image)
    by_recipe: dict[BuildRecipe, CudaImage] = {}
    for index, (recipe, build) in enumerate(recipes.items()):
        resource, repository, suffix = image_naming(recipe, main, image, build.services[0])
        if image.registry is not None:
            repository = image.registry.qualify(repository)
        by_recipe[recipe] = CudaImage(
            resource,
            repository=repository,
            recipe=recipe,
            build_args=per_image.apply(_item(index)),
            tag=pulumi.Output.concat(tag, suffix),
            build=not image.tag,
            registry=registry,
            opts=opts,
        )
    return {name: by_recipe[recipe] for recipe, build in recipes.items() for name in build.services}


def _item(index: int) -> Callable[[list[dict[str, str]]], dict[str, str]]:
    return lambda items: items[index]


def host_directories(
    config: StackConfig, target: DockerTarget, connection: command.remote.ConnectionArgs | None
) -> dict[UserSpec, HostDirectories]:
    """The host directories behind bind mounts, one command per owner; disabled services' too, so stopping
    a service (enabled: false) changes nothing about its data. Only directories under target.root are
    created and owned; a source outside it is mounted as it is, and only if it exists (a bind mount of a
    missing source fails: Docker's Mount API)."""
    paths_by_owner: dict[UserSpec, set[str]] = {}
    for svc in config.services.values():
        for volume in svc.volumes:
            path = volume.host_path(target.root)
            if target.root is not None and is_under(path, target.root):
                paths_by_owner.setdefault(svc.user, set()).add(path)
    return {
        owner: HostDirectories(
            f"dirs-{owner.uid}-{owner.gid}",
            paths=sorted(paths),
            owner=owner,
            root=target.root or "",
            connection=connection,
        )
        for owner, paths in sorted(paths_by_owner.items(), key=lambda item: (item[0].uid, item[0].gid))
    }


def ssh_of(target: DockerTarget) -> SshTarget | None:
    """The one SSH connection to the host (None for `local`)."""
    if target.is_local:
        return None
    return ssh_target(
        host=target.host,
        port=target.port,
        user=target.user,
        host_key=target.host_key or "",
        bastion=target.bastion,
    )


def prove_gpu_host(
    stack: ResolvedStack, connection: command.remote.ConnectionArgs | None, runners: HostRunners | None
) -> GpuHost | None:
    """Driver, preflight, toolkit, runtime and the proof in a container; none for the cpu profile."""
    profile, config = stack.profile, stack.config
    if profile is not None and not profile.is_gpu:
        return None
    return GpuHost(
        "gpu-host",
        connection=connection,
        runners=runners,
        provisioning=provisioning(config.provision, profile),
        preflight=PreflightRequest(
            profile=profile.key if profile else "auto",
            cuda_version=config.cuda.version,
            require_mig=config.cuda.mig,
            card=card_json_of(config, profile.key) if profile else None,
        ),
        cuda_image=profile.base_image if profile else lambda report: resolved_for(stack, report).base_image,
    )


def place_devices(
    services: dict[str, Service], gpu_host: GpuHost | None
) -> tuple[dict[str, int], pulumi.Output[dict[str, tuple[str, ...]]] | None]:
    """Services that ask for a count of GPUs get distinct devices of the host (its preflight lists them),
    not all the first GPU."""
    counts = {name: svc.gpu.count for name, svc in services.items() if svc.gpu.mode == "count"}
    if gpu_host is None or not counts:
        return counts, None
    return counts, gpu_host.facts.apply(
        lambda facts: place_gpu_counts(counts, [g["uuid"] for g in facts["gpus"]])
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
) -> dict[str, GpuContainer]:
    """Jobs and services in dependency order, each after what it `dependsOn` and its host directories."""
    config, profile = stack.config, stack.profile
    target = config.target
    assert isinstance(target, DockerTarget)
    gpu_available = gpu_host is not None
    counts, placement = place_devices(services, gpu_host)
    containers: dict[str, GpuContainer] = {}
    for name, svc in services.items():
        if svc.gpu.wants_gpu and not gpu_available:
            pulumi.log.warn(f"service {name}: no GPU on this target, it runs on the CPU")
        waits_for: list[pulumi.Resource] = [containers[dep] for dep in svc.depends_on]
        if svc.user in directories and svc.volumes:
            waits_for.append(directories[svc.user])
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
            ports=svc.ports,
            env=svc.env,
            secret_env=svc.secret_env,
            mounts=[Mount(v.host_path(target.root), v.container, v.read_only) for v in svc.volumes],
            memory_mib=svc.memory,
            shm_mib=svc.shm_size,
            healthcheck=healthcheck_spec(svc.healthcheck) if svc.healthcheck else None,
            restart=svc.effective_restart,
            one_shot=svc.one_shot,
            keep_image=svc.one_shot and bool(config.image and config.image.tag),
            placed_devices=devices_of(placement, name) if placement is not None and name in counts else None,
            labels={
                vocabulary.LABEL_STACK: stack.stack,
                vocabulary.LABEL_SERVICE: name,
                vocabulary.LABEL_PROFILE: profile_key,
                vocabulary.LABEL_ROOT: target.root or "",
            },
            must_succeed=[
                containers[dep].exit_code for dep, cond in svc.depends_on.items() if cond == "completed"
            ],
        )
        containers[name] = GpuContainer(
            name,
            args,
            opts=pulumi.ResourceOptions.merge(on_host, pulumi.ResourceOptions(depends_on=waits_for)),
        )
    return containers


def smoke_test_services(
    stack: ResolvedStack,
    services: dict[str, Service],
    containers: dict[str, GpuContainer],
    *,
    gpu_available: bool,
    connection: command.remote.ConnectionArgs | None,
    runners: HostRunners | None,
) -> None:
    """Smoke tests on the host, once every service is up (healthy where it has a health check); a
    service's test runs again whenever its container is replaced."""
    everything: list[pulumi.Resource] = list(containers.values())
    for name, svc in services.items():
        checks = smoke_checks(svc.smoke, gpu=gpu_available)
        # a header taken from the service's secretEnv: the value goes only into the runner's stdin, a secret
        secret = bool(header_refs(checks))
        checks = resolve_header_refs(checks, svc.secret_env)
        if checks:
            SmokeTest(
                f"smoke-{name}",
                spec=SmokeSpec(
                    name, f"{stack.stack}-{name}", base_url(svc), checks, svc.smoke_deadline, secret=secret
                ),
                connection=connection,
                runners=runners,
                replaced_with=[containers[name].container.id],
                opts=pulumi.ResourceOptions(depends_on=everything),
            )


def export_outputs(
    stack: ResolvedStack,
    services: dict[str, Service],
    *,
    gpu_host: GpuHost | None,
    images: dict[str, CudaImage],
    profile_key: pulumi.Input[str],
) -> None:
    """The stack outputs: `imageTag` is what a rollback goes back to."""
    config = stack.config
    target = config.target
    assert isinstance(target, DockerTarget)
    pulumi.export("profile", profile_key)
    pulumi.export("target", "local" if target.is_local else target.host)
    if gpu_host is not None:
        pulumi.export("gpu", gpu_host.facts)
    image = config.image
    main = BuildRecipe(image.context, image.dockerfile, image.target) if image else None
    main_image = next(
        (images[n] for n in services if n in images and image and recipe_for(services[n], image) == main),
        None,
    )
    if main_image is not None and config.image is not None:
        pulumi.export(
            "imageRepository",
            config.image.registry.qualify(config.image.repository)
            if config.image.registry
            else config.image.repository,
        )
        pulumi.export("imageTag", main_image.tag)
        pulumi.export("imageRef", main_image.ref)
    pulumi.export("services", {name: f"{stack.stack}-{name}" for name in services})
    pulumi.export("startOrder", list(services))


def deploy(stack: ResolvedStack) -> None:
    """The Docker host's deployment, step by step."""
    config = stack.config
    target = config.target
    if not isinstance(target, DockerTarget):  # stacks.deploy dispatches on target.kind
        raise TypeError(f"the docker target got a {target.kind} stack")
    ssh = ssh_of(target)
    connection = command_connection(ssh, target.ssh_key) if ssh else None
    services = {name: config.services[name] for name in stack.start_order()}

    # 0. The programs the deploy runs on the host (preflight, smoke runner), in the deploy user's own place.
    runners = HostRunners("runners", stack=stack.stack, connection=connection) if connection else None

    # 1. The GPU host; its preflight names the card when the profile is `auto`.
    gpu_host = prove_gpu_host(stack, connection, runners)
    if stack.profile is not None:
        profile = pulumi.Output.from_input(stack.profile)
        profile_key: pulumi.Input[str] = stack.profile.key
    else:
        assert gpu_host is not None
        profile = gpu_host.facts.apply(lambda report: resolved_for(stack, report))
        profile_key = gpu_host.profile

    # 2. The Docker engine: provider and network.
    host = DockerHost(
        "host",
        docker_url=ssh.docker_url if ssh else None,
        ssh_opts=docker_transport(ssh, target, stack.stack) if ssh else None,
        network_name=f"gpu-deploy-{stack.stack}",
        registry=registry_login(config.image),
    )
    on_host = pulumi.ResourceOptions(providers=[host.provider], depends_on=[gpu_host] if gpu_host else [])

    # 3. Host directories behind bind mounts, one command per owner.
    directories = host_directories(config, target, connection)

    # 4. Images: one per distinct (context, Dockerfile, stage) in use, all with the stack's release tag.
    images = build_images(stack, services, profile, on_host)

    # 5. Jobs and services in dependency order.
    containers = start_services(
        stack,
        services,
        host=host,
        gpu_host=gpu_host,
        images=images,
        directories=directories,
        profile_key=profile_key,
        on_host=on_host,
    )

    # 6. Smoke tests, then the outputs.
    smoke_test_services(
        stack,
        services,
        containers,
        gpu_available=gpu_host is not None,
        connection=connection,
        runners=runners,
    )
    export_outputs(stack, services, gpu_host=gpu_host, images=images, profile_key=profile_key)
