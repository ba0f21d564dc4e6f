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

from components.core import vocabulary
from components.core.catalog import PROFILES, GpuProfile
from components.core.values import NO_GPU, UserSpec, is_under, place_gpu_counts
from components.docker.container import GpuContainer, GpuContainerArgs, HealthcheckSpec, Mount
from components.docker.directories import HostDirectories
from components.docker.docker_host import DockerHost
from components.docker.image import BuildRecipe, CudaImage, RegistryLogin, release_tag
from components.docker.smoke_run import SmokeSpec, SmokeTest
from components.remote.gpu_host import GpuHost, PreflightRequest
from components.remote.runners import HostRunners
from components.remote.ssh import (
    SshTarget,
    command_connection,
    docker_ssh_opts,
    identity_file,
    write_identity,
)
from stacks.config import (
    DockerTarget,
    Healthcheck,
    ImageConfig,
    ResolvedStack,
    Service,
    StackConfig,
    header_refs,
    resolve_header_refs,
    smoke_checks,
)
from stacks.hosts import provisioning, ssh_target

BUILD = "build"
DEFAULT_DRIVER_CAPABILITIES = "compute,utility"


# The HTTP health probe, tried in this order with whatever the image has. `nvidia/cuda` runtime images and
# slim images ship none of curl, wget, python3 or node, but they have bash: its /dev/tcp speaks HTTP/1.0.
# An image with none of them gets a health log line that says what to set instead.
_BASH_HTTP_GET = (
    'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1; '
    'printf "GET %s HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n" "$2" >&3; '
    'read -r _ code _ <&3; case "$code" in 2??|3??) exit 0;; esac; '
    'echo "GET $2 answered HTTP status ${code:-(none)}"; exit 1'
)
_PYTHON_HTTP_GET = (
    "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]))"
)
_NODE_HTTP_GET = (
    'require("http").get(process.argv[1], (r) => process.exit(r.statusCode < 400 ? 0 : 1))'
    '.on("error", (e) => { console.log(String(e)); process.exit(1); })'
)
NO_PROBE_TOOL = (
    "no curl, wget, python3, node or bash in this image to probe HTTP: "
    "set healthcheck.command to a check the image can run"
)


def http_probe(path: str, port: int, timeout_s: int = 10) -> str:
    """A `CMD-SHELL` health probe (run by the image's /bin/sh) that works with curl, wget, python3, node
    or bash alone; an HTTP status of 400 or more, or no answer, is unhealthy."""
    q = shlex.quote
    url = f"http://127.0.0.1:{port}{path}"
    tries = [
        ("curl", f"curl -fsS -o /dev/null --max-time {timeout_s} {q(url)}"),
        ("wget", f"wget -q -O /dev/null -T {timeout_s} {q(url)}"),
        ("python3", f"python3 -c {q(_PYTHON_HTTP_GET)} {q(url)} {timeout_s}"),
        ("node", f"node -e {q(_NODE_HTTP_GET)} {q(url)}"),
        ("bash", f"bash -c {q(_BASH_HTTP_GET)} probe {port} {q(path)}"),
    ]
    steps = [f"if command -v {tool} >/dev/null 2>&1; then exec {run}; fi" for tool, run in tries]
    return "; ".join([*steps, f"echo {q(NO_PROBE_TOOL)}; exit 1"])


def healthcheck_spec(check: Healthcheck) -> HealthcheckSpec:
    if check.http is not None:
        test: tuple[str, ...] = ("CMD-SHELL", http_probe(check.http.path, check.http.port, check.timeout))
    elif isinstance(check.command, str):
        test = ("CMD-SHELL", check.command)
    else:
        test = ("CMD", *(check.command or []))
    return HealthcheckSpec(test, check.interval, check.timeout, check.retries, check.start_period)


def docker_transport(ssh: SshTarget, target: DockerTarget, stack: str) -> pulumi.Output[list[str]]:
    """The Docker provider's sshOpts; with `target.sshKey`, its key file is written first, every run."""
    if target.ssh_key is None:
        return pulumi.Output.from_input(docker_ssh_opts(ssh, None))
    identity = identity_file(pulumi.get_project(), stack)
    written = pulumi.Output.secret(target.ssh_key).apply(lambda key: write_identity(identity, key))
    return pulumi.Output.unsecret(written.apply(lambda _: docker_ssh_opts(ssh, identity)))


def registry_login(image: ImageConfig | None) -> RegistryLogin | None:
    if image is None or image.registry is None:
        return None
    login = image.registry
    return RegistryLogin(login.server, login.username, pulumi.Output.secret(login.password))


def recipe_for(svc: Service, image: ImageConfig) -> BuildRecipe:
    """The service's build: its own `build` keys over the stack's image section."""
    own = svc.build
    context = own.context if own and own.context else image.context
    dockerfile = own.dockerfile if own and own.dockerfile else image.dockerfile
    same_source = (context, dockerfile) == (image.context, image.dockerfile)
    target = own.target if own and own.target else (image.target if same_source else None)
    return BuildRecipe(context, dockerfile, target)


def build_contexts(config: StackConfig) -> list[str]:
    """The build contexts `pulumi up` reads (none when a tag is pinned: the rollback path builds nothing).
    pulumi-docker's Image hashes its context and opens its Dockerfile at Check, so at preview too."""
    image = config.image
    if image is None or image.tag:
        return []
    return sorted({recipe_for(svc, image).context for svc in config.services.values() if svc.image == BUILD})


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
    """Where the smoke runner on the host reaches the service: its first port published over TCP."""
    tcp = [p for p in svc.ports if p.protocol == "tcp"]  # config.py refuses HTTP checks without one
    if not tcp:
        return "http://127.0.0.1"
    port = tcp[0]
    host = port.host_ip if port.host_ip not in ("", "0.0.0.0") else "127.0.0.1"  # noqa: S104 - a bind address
    return f"http://{f'[{host}]' if ':' in host else host}:{port.host_port}"


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
    registry = registry_login(image)
    by_recipe: dict[BuildRecipe, CudaImage] = {}
    for name, recipe in recipes.items():
        if recipe not in by_recipe:
            resource, repository, suffix = image_naming(recipe, main, image, name)
            if image.registry is not None:
                repository = image.registry.qualify(repository)
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


def devices_of(
    placement: pulumi.Output[dict[str, tuple[str, ...]]], service: str
) -> pulumi.Output[list[str]]:
    return placement.apply(lambda placed: list(placed[service]))


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


def deploy(stack: ResolvedStack) -> None:
    config = stack.config
    target = config.target
    if not isinstance(target, DockerTarget):  # stacks.deploy dispatches on target.kind
        raise TypeError(f"the docker target got a {target.kind} stack")
    profile = stack.profile  # None: detected on the host by its preflight
    ssh = (
        None
        if target.is_local
        else ssh_target(
            host=target.host,
            port=target.port,
            user=target.user,
            host_key=target.host_key or "",
            bastion=target.bastion,
        )
    )
    connection = command_connection(ssh, target.ssh_key) if ssh else None
    services = {name: config.services[name] for name in stack.start_order()}

    # 0. The programs the deploy runs on the host (preflight, smoke runner), in the deploy user's own place.
    runners = HostRunners("runners", stack=stack.stack, connection=connection) if connection else None

    # 1. The GPU host: driver, preflight, toolkit, runtime, proof in a container (none for cpu).
    gpu_host: GpuHost | None = None
    profile_key: pulumi.Input[str] = profile.key if profile else ""
    if profile is None or profile.is_gpu:
        gpu_host = GpuHost(
            "gpu-host",
            connection=connection,
            runners=runners,
            provisioning=provisioning(config.provision, profile),
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
    host = DockerHost(
        "host",
        docker_url=ssh.docker_url if ssh else None,
        ssh_opts=docker_transport(ssh, target, stack.stack) if ssh else None,
        network_name=f"gpu-deploy-{stack.stack}",
        registry=registry_login(config.image),
    )
    on_host = pulumi.ResourceOptions(providers=[host.provider], depends_on=after_host)

    # 3. Host directories behind bind mounts, one command per owner (see host_directories).
    directories = host_directories(config, target, connection)

    # 4. Images: one per distinct (context, Dockerfile, stage) in use, all with the stack's release tag.
    images = build_images(stack, services, profile_key, on_host)

    # 5. Jobs and services in dependency order; services that ask for a count of GPUs get distinct
    #    devices of the host (its preflight lists them), not all the first GPU.
    gpu_available = profile is None or profile.is_gpu
    counts = {name: svc.gpu.count for name, svc in services.items() if svc.gpu.mode == "count"}
    placement = (
        gpu_host.facts.apply(lambda facts: place_gpu_counts(counts, [g["uuid"] for g in facts["gpus"]]))
        if gpu_host is not None and counts and gpu_available
        else None
    )
    containers: dict[str, GpuContainer] = {}
    for name, svc in services.items():
        gpu = svc.gpu if gpu_available else NO_GPU
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

    # 6. Smoke tests on the host, once every service is up (healthy where it has a health check).
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

    pulumi.export("profile", profile_key)
    pulumi.export("target", "local" if target.is_local else target.host)
    if gpu_host is not None:
        pulumi.export("gpu", gpu_host.facts)
    main_image = next((images[n] for n in services if n in images and services[n].build is None), None)
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
