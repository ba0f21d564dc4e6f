"""Stack config -> the Docker components' arguments: health checks, build recipes and image names, the
registry login, the smoke runner's base URL, the Docker provider's SSH options. Pure translation but for
the key file docker_transport writes."""

from __future__ import annotations

import pulumi

from components.docker.container import HealthcheckSpec
from components.docker.healthcheck import http_probe
from components.docker.image import BuildRecipe, RegistryLogin
from components.remote.ssh import (
    SshTarget,
    docker_ssh_opts,
    identity_file,
    write_identity,
)
from stacks.config import (
    DockerTarget,
    Healthcheck,
    ImageConfig,
    Service,
    StackConfig,
)

BUILD = "build"  # a service's `image: build`: the stack's own image
DEFAULT_DRIVER_CAPABILITIES = "compute,utility"


def healthcheck_spec(check: Healthcheck) -> HealthcheckSpec:
    if check.http is not None:
        test: tuple[str, ...] = ("CMD-SHELL", http_probe(check.http.path, check.http.port, check.timeout))
    elif isinstance(check.command, str):
        test = ("CMD-SHELL", check.command)
    else:
        test = ("CMD", *(check.command or []))
    return HealthcheckSpec(test, check.interval, check.timeout, check.retries, check.start_period)


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
    tcp = [p for p in svc.ports if p.protocol == "tcp"]  # stacks/config refuses HTTP checks without one
    if not tcp:
        return "http://127.0.0.1"
    port = tcp[0]
    host = port.host_ip if port.host_ip not in ("", "0.0.0.0") else "127.0.0.1"  # noqa: S104 - a bind address
    return f"http://{f'[{host}]' if ':' in host else host}:{port.host_port}"


def devices_of(
    placement: pulumi.Output[dict[str, tuple[str, ...]]], service: str
) -> pulumi.Output[list[str]]:
    return placement.apply(lambda placed: list(placed[service]))


def docker_transport(ssh: SshTarget, target: DockerTarget, stack: str) -> pulumi.Output[list[str]]:
    """The Docker provider's sshOpts; with `target.sshKey`, its key file is written first, every run."""
    if target.ssh_key is None:
        return pulumi.Output.from_input(docker_ssh_opts(ssh, None))
    identity = identity_file(pulumi.get_project(), stack)
    written = pulumi.Output.secret(target.ssh_key).apply(lambda key: write_identity(identity, key))
    return pulumi.Output.unsecret(written.apply(lambda _: docker_ssh_opts(ssh, identity)))
