"""The Docker-host target: a validated stack becomes a GpuHost, a DockerHost, images, host directories
and containers.

Order: GPU host verified -> images built on it -> one-shot jobs and services, each after what it
`dependsOn` ("healthy" waits for the health check, "completed" for the job's exit) and after the host
directories behind its bind mounts.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pulumi
import pulumi_command as command

from components.cuda_image import BuildRecipe, CudaImage, RegistryLogin, release_tag
from components.docker_host import DockerHost, SshEndpoint
from components.gpu_container import GpuContainer, GpuContainerArgs, HealthcheckSpec, Mount
from components.gpu_host import GpuHost, PreflightRequest, Provisioning
from components.host_dirs import HostDirectories
from components.profiles import PROFILES, GpuProfile
from components.smoke_test import SmokeSpec, SmokeTest
from components.specs import NO_GPU, UserSpec
from stacks.config import DockerTarget, Healthcheck, ImageConfig, ResolvedStack, Service, smoke_checks

BUILD = "build"
DEFAULT_DRIVER_BRANCH = "580"
DEFAULT_DRIVER_CAPABILITIES = "compute,utility"


def http_probe(path: str, port: int) -> str:
    """A health probe that works whichever of curl, wget or python3 the image has."""
    url = shlex.quote(f"http://127.0.0.1:{port}{path}")
    return (
        f"curl -fsS -o /dev/null {url} || wget -q -O /dev/null {url} || "
        f"python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' {url}"
    )


def healthcheck_spec(check: Healthcheck) -> HealthcheckSpec:
    if check.http is not None:
        test: tuple[str, ...] = ("CMD-SHELL", http_probe(check.http.path, check.http.port))
    elif isinstance(check.command, str):
        test = ("CMD-SHELL", check.command)
    else:
        test = ("CMD", *(check.command or []))
    return HealthcheckSpec(test, check.interval, check.timeout, check.retries, check.start_period)


def ssh_connection(target: DockerTarget) -> command.remote.ConnectionArgs | None:
    """How remote commands reach the host: pinned host key, optional key and bastion."""
    if target.is_local:
        return None
    bastion = target.bastion
    return command.remote.ConnectionArgs(
        host=target.host,
        port=target.port,
        user=target.user,
        host_key=target.host_key,
        private_key=pulumi.Output.secret(target.ssh_key) if target.ssh_key else None,
        proxy=command.remote.ProxyConnectionArgs(
            host=bastion.host,
            port=bastion.port,
            user=bastion.user,
            host_key=bastion.host_key,
            private_key=pulumi.Output.secret(target.ssh_key) if target.ssh_key else None,
        )
        if bastion
        else None,
    )


def recipe_for(svc: Service, image: ImageConfig) -> BuildRecipe:
    """The service's build: its own `build` keys over the stack's image section."""
    own = svc.build
    context = own.context if own and own.context else image.context
    dockerfile = own.dockerfile if own and own.dockerfile else image.dockerfile
    same_source = (context, dockerfile) == (image.context, image.dockerfile)
    target = own.target if own and own.target else (image.target if same_source else None)
    return BuildRecipe(context, dockerfile, target)


def image_naming(
    recipe: BuildRecipe, main: BuildRecipe, image: ImageConfig, service: str
) -> tuple[str, str, str]:
    """(resource name, repository, tag suffix): another stage of the main Dockerfile is `<tag>-<stage>`,
    another source is its own repository `<repository>-<service>`."""
    if recipe == main:
        return "image", image.repository, ""
    if (recipe.context, recipe.dockerfile) == (main.context, main.dockerfile) and recipe.target:
        return f"image-{recipe.target}", image.repository, f"-{recipe.target}"
    return f"image-{service}", f"{image.repository}-{service}", ""


def base_url(svc: Service) -> str:
    """Where the smoke runner on the host reaches the service: its first published port."""
    if not svc.ports:
        return "http://127.0.0.1"
    port = svc.ports[0]
    host = port.host_ip if port.host_ip not in ("", "0.0.0.0") else "127.0.0.1"  # noqa: S104 - a bind address
    return f"http://{f'[{host}]' if ':' in host else host}:{port.host_port}"


def provisioning(stack: ResolvedStack) -> Provisioning:
    wanted = stack.config.provision
    profile = stack.profile
    return Provisioning(
        driver=wanted.driver,
        driver_branch=wanted.driver_branch or (profile.driver_branch if profile else DEFAULT_DRIVER_BRANCH),
        # an unknown card (auto) gets the proprietary modules: every profile's card runs them
        kernel_modules=wanted.kernel_modules or (profile.kernel_modules if profile else "proprietary"),
        toolkit=wanted.toolkit,
        runtime=wanted.runtime,
        reboot=wanted.reboot,
    )


def detected_profile(stack: ResolvedStack, key: str) -> GpuProfile:
    """The profile the host's preflight matched, with the stack's CUDA choices (checked again)."""
    cuda = stack.config.cuda
    return PROFILES[key].with_overrides(
        cuda_version=cuda.version, wheel_flavour=cuda.wheel_index, torch_version=cuda.torch_version
    )


def build_images(
    stack: ResolvedStack,
    services: dict[str, Service],
    profile_key: pulumi.Input[str],
    opts: pulumi.ResourceOptions,
) -> dict[str, CudaImage]:
    """service name -> the CudaImage it runs, for every service with image: build."""
    image = stack.config.image
    builders = {name: svc for name, svc in services.items() if svc.image == BUILD}
    if image is None or not builders:
        return {}
    main = BuildRecipe(image.context, image.dockerfile, image.target)
    recipes = {name: recipe_for(svc, image) for name, svc in builders.items()}
    for context in sorted({r.context for r in recipes.values()}):
        if not Path(context).is_dir():
            pulumi.log.warn(
                f"image context {context} is not here: the release tag is derived from the Dockerfile paths, "
                "stages and build args only, and `pulumi up` needs the source checked out there"
            )
    build_args = pulumi.Output.from_input(profile_key).apply(
        lambda key: {**detected_profile(stack, key).build_args(image.app_uid), **image.build_args}
    )
    tag = (
        pulumi.Output.from_input(image.tag)
        if image.tag
        else build_args.apply(
            lambda args: release_tag(
                profile=args["GPU_PROFILE"], recipes=[main, *recipes.values()], build_args=args
            )
        )
    )
    registry = (
        RegistryLogin(
            image.registry.server, image.registry.username, pulumi.Output.secret(image.registry.password)
        )
        if image.registry
        else None
    )
    by_recipe: dict[BuildRecipe, CudaImage] = {}
    for name, recipe in recipes.items():
        if recipe not in by_recipe:
            resource, repository, suffix = image_naming(recipe, main, image, name)
            by_recipe[recipe] = CudaImage(
                resource,
                repository=repository,
                recipe=recipe,
                build_args=build_args,
                tag=pulumi.Output.concat(tag, suffix),
                build=not image.tag,
                registry=registry,
                opts=opts,
            )
    return {name: by_recipe[recipe] for name, recipe in recipes.items()}


def deploy(stack: ResolvedStack) -> None:
    config = stack.config
    target = config.target
    if not isinstance(target, DockerTarget):  # stacks.deploy dispatches on target.kind
        raise TypeError(f"the docker target got a {target.kind} stack")
    profile = stack.profile  # None: detected on the host by its preflight
    ssh = (
        None if target.is_local else SshEndpoint(target.host, target.user, target.port, target.host_key or "")
    )
    connection = ssh_connection(target)
    services = {name: config.services[name] for name in stack.start_order()}

    # 1. The GPU host: driver, preflight, toolkit, runtime, proof in a container (none for cpu).
    gpu_host: GpuHost | None = None
    profile_key: pulumi.Input[str] = profile.key if profile else ""
    if profile is None or profile.is_gpu:
        gpu_host = GpuHost(
            "gpu-host",
            connection=connection,
            provisioning=provisioning(stack),
            preflight=PreflightRequest(
                profile=profile.key if profile else "auto",
                cuda_version=config.cuda.version,
                require_mig=config.cuda.mig,
            ),
            cuda_image_for=lambda key: detected_profile(stack, key).base_image,
        )
        if profile is None:
            profile_key = gpu_host.profile
    after_host: list[pulumi.Resource] = [gpu_host] if gpu_host else []

    # 2. The Docker engine: provider and network.
    host = DockerHost("host", ssh=ssh, network_name=f"gpu-deploy-{stack.stack}")
    on_host = pulumi.ResourceOptions(providers=[host.provider], depends_on=after_host)

    # 3. Host directories behind bind mounts, one command per owner; disabled services' too, so stopping
    #    a service (enabled: false) changes nothing about its data.
    paths_by_owner: dict[UserSpec, set[str]] = {}
    for svc in config.services.values():
        for volume in svc.volumes:
            paths_by_owner.setdefault(svc.user, set()).add(volume.host_path(target.root))
    directories = {
        owner: HostDirectories(
            f"dirs-{owner.uid}-{owner.gid}", paths=sorted(paths), owner=owner, connection=connection
        )
        for owner, paths in sorted(paths_by_owner.items(), key=lambda item: (item[0].uid, item[0].gid))
    }

    # 4. Images: one per distinct (context, Dockerfile, stage) in use, all with the stack's release tag.
    images = build_images(stack, services, profile_key, on_host)

    # 5. Jobs and services in dependency order.
    gpu_available = profile is None or profile.is_gpu
    containers: dict[str, GpuContainer] = {}
    for name, svc in services.items():
        gpu = svc.gpu if gpu_available else NO_GPU
        if svc.gpu.wants_gpu and not gpu_available:
            pulumi.log.warn(f"service {name}: no GPU on this target, it runs on the CPU")
        waits_for: list[pulumi.Resource] = [containers[dep] for dep in svc.depends_on]
        if svc.volumes:
            waits_for.append(directories[svc.user])
        args = GpuContainerArgs(
            container_name=f"{stack.stack}-{name}",
            image=images[name].ref if name in images else svc.image,
            network=host.network.name,
            service=name,
            user=svc.user,
            gpu=gpu,
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
            labels={
                "io.gpu-deploy.stack": stack.stack,
                "io.gpu-deploy.service": name,
                "io.gpu-deploy.profile": profile_key,
                "io.gpu-deploy.root": target.root or "",
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

    # 6. Smoke tests on the host, once every service is up (healthy where it has a health check).
    everything: list[pulumi.Resource] = list(containers.values())
    for name, svc in services.items():
        checks = smoke_checks(svc.smoke, gpu=gpu_available)
        if checks:
            SmokeTest(
                f"smoke-{name}",
                spec=SmokeSpec(name, f"{stack.stack}-{name}", base_url(svc), checks, svc.smoke_deadline),
                connection=connection,
                replaced_with=[containers[name].container.id],
                opts=pulumi.ResourceOptions(depends_on=everything),
            )

    pulumi.export("profile", profile_key)
    pulumi.export("target", "local" if target.is_local else target.host)
    if gpu_host is not None:
        pulumi.export("gpu", gpu_host.facts)
    main_image = next((images[n] for n in services if n in images and services[n].build is None), None)
    if main_image is not None and config.image is not None:
        pulumi.export("imageRepository", config.image.repository)
        pulumi.export("imageTag", main_image.tag)
        pulumi.export("imageRef", main_image.ref)
    pulumi.export("services", {name: f"{stack.stack}-{name}" for name in services})
    pulumi.export("startOrder", list(services))
