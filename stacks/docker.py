"""The Docker-host target: a validated stack becomes a GpuHost, a DockerHost, images, host directories,
the reverse proxy and containers.

Order: GPU host verified -> images built on it -> the proxy (when a service rolls with zero downtime) ->
one-shot jobs and services, each after what it `dependsOn` ("healthy" waits for the health check,
"completed" for the job's exit; a zero-downtime service also for its route in the proxy) and after the
host directories behind its bind mounts.

How each service rolls is decided before anything exists (stacks/config/budgets.py docker_rollouts, from
components/core/gpu_memory.py): zero-downtime services run as auto-named copies behind the proxy,
stop-first services under their fixed name, a GPU service after its GPU memory gate
(components/docker/container.py). At deploy, the GPUs come from the host's preflight: placement and budgets
are checked again against them (docker_args.deploy_placement).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pulumi
import pulumi_command as command

from components.core.catalog import GpuProfile
from components.core.gpu_memory import Rollout
from components.core.values import UserSpec, is_under
from components.docker.container import GpuContainer
from components.docker.directories import HostDirectories
from components.docker.docker_host import DockerHost
from components.docker.image import BuildRecipe, CudaImage, release_tag
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
    resolve_profile,
)
from stacks.config.budgets import docker_rollouts
from stacks.config.builds import image_builds
from stacks.config.cards import card_json_of
from stacks.config.resolution import image_profile
from stacks.docker_args import (
    declared_args,
    docker_transport,
    image_build_args,
    image_naming,
    recipe_for,
    recipe_of,
    registry_login,
)
from stacks.docker_services import reverse_proxy, smoke_test_services, start_services
from stacks.docker_tests import with_test_builds
from stacks.docker_upkeep import dcgm_exporter, prune_releases
from stacks.hosts import left_to_administrator, provisioning, ssh_target


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
    builds = with_test_builds(config, list(services), image_builds(config, services))  # + test stages
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
            privileged=config.provision.privileges == "root",
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
        min_driver=profile.min_driver if profile else None,
    )


def export_outputs(
    stack: ResolvedStack,
    services: dict[str, Service],
    *,
    gpu_host: GpuHost | None,
    images: dict[str, CudaImage],
    profile_key: pulumi.Input[str],
    containers: dict[str, GpuContainer],
    rollouts: dict[str, Rollout],
) -> None:
    """The stack outputs: `imageTag` is what a rollback goes back to, `services` the containers' real names
    (a zero-downtime copy's is generated), `rollout` how each service rolls and why."""
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
    pulumi.export("services", {name: containers[name].container.name for name in services})
    pulumi.export("startOrder", list(services))
    pulumi.export("rollout", {name: rollouts[name].as_json() for name in services if name in rollouts})


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

    # 1. The GPU host; its preflight names the card when the profile is `auto`. Without root, the plan says
    # what the deploy leaves to an administrator.
    user = "the user running pulumi" if target.is_local else target.user
    if note := left_to_administrator(config.provision, stack.profile, user):
        pulumi.log.warn(note)
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

    # 5. How each service rolls (decided before anything exists), and the proxy for the zero-downtime ones.
    rollouts = docker_rollouts(stack)
    proxy = reverse_proxy(stack, services, rollouts, host=host, connection=connection, on_host=on_host)

    # 6. The DCGM exporter (gpu-deploy:dcgm); jobs and services in dependency order (a service's test
    # job first); a zero-downtime service's route once its copy is up.
    dcgm_exporter(stack, profile, host=host, gpu_available=gpu_host is not None, on_host=on_host)
    containers, routes = start_services(
        stack,
        services,
        host=host,
        gpu_host=gpu_host,
        images=images,
        directories=directories,
        profile_key=profile_key,
        on_host=on_host,
        rollouts=rollouts,
        proxy=proxy,
        connection=connection,
    )

    # 7. Smoke tests; then, once all passed, old releases pruned (image.keepReleases); the outputs.
    smoke_tests = smoke_test_services(
        services,
        containers,
        routes,
        gpu_available=gpu_host is not None,
        connection=connection,
        runners=runners,
    )
    everything = [*containers.values(), *routes.values(), *smoke_tests]
    prune_releases(stack, images, connection=connection, after=everything)
    export_outputs(
        stack,
        services,
        gpu_host=gpu_host,
        images=images,
        profile_key=profile_key,
        containers=containers,
        rollouts=rollouts,
    )
