"""Stack config -> the Docker components' arguments: health checks, build recipes and image names, the
registry login, the smoke runner's base URL, the Docker provider's SSH options, the GPU placement at deploy.
Pure translation but for the key file docker_transport writes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pulumi

from components.core.gpu_memory import ZERO_DOWNTIME, BudgetError, Device, Rollout, decide_rollouts, place
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
from stacks.config.budgets import docker_gpu_demands, rollout_facts
from stacks.config.builds import BUILD, ImageBuild, build_source

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
    return BuildRecipe(*build_source(svc, image))


def recipe_of(build: ImageBuild) -> BuildRecipe:
    return BuildRecipe(build.context, build.dockerfile, build.target)


_ESCAPE_DIRECTIVE = re.compile(r"^#\s*escape\s*=\s*(\S)\s*$", re.IGNORECASE)


def declared_args(recipe: BuildRecipe) -> frozenset[str] | None:
    """The ARG names the recipe's Dockerfile declares (in any stage, or before the first FROM); None when
    the Dockerfile is not here (the offline plan without the source): then nothing can be left out.

    Docker ignores a build arg no ARG declares (the classic builder warns "One or more build-args [...]
    were not consumed"), so only declared ones are sent: a team's own Dockerfile gets none of the
    profile's args it does not ask for, and the release tag hashes only what the build uses. Read as
    Docker reads instructions: comment lines dropped, continuation lines joined (the escape character
    is the `# escape=` directive's, else a backslash), `ARG A=1 B` declaring several."""
    path = Path(recipe.dockerfile_path)
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    escape = "\\"
    for line in lines:  # parser directives come first, before any instruction or other comment
        directive = _ESCAPE_DIRECTIVE.match(line.strip())
        if directive is None:
            break
        escape = directive.group(1)
    names: set[str] = set()
    pending = ""
    for raw in lines:
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith(escape):
            pending += line[: -len(escape)] + " "
            continue
        instruction, pending = (pending + line).strip(), ""
        keyword, _, rest = instruction.partition(" ")
        if keyword.upper() == "ARG":
            names.update(word.split("=", 1)[0] for word in rest.split() if word and not word.startswith("#"))
    return frozenset(names)


def image_build_args(
    profile_args: Mapping[str, str], build: ImageBuild, declared: frozenset[str] | None
) -> dict[str, str]:
    """One image's build args: the args its profile decides (GpuProfile.build_args) that its Dockerfile
    declares (all of them when the Dockerfile is not here to read), then the team's own (`image.buildArgs`,
    `services.<name>.build.args`), which are sent as written."""
    kept = {k: v for k, v in profile_args.items() if declared is None or k in declared}
    return {**kept, **build.args}


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


def deploy_placement(
    config: StackConfig, planned: Mapping[str, Rollout], facts: Mapping[str, Any]
) -> dict[str, tuple[str, ...]]:
    """At deploy: every GPU service's devices on the GPUs the host's preflight found (UUIDs and memory),
    placed by components.core.gpu_memory.place with the plan's demands (stacks/config/budgets.py: a count
    gets distinct devices, packed by budget). A host with fewer GPUs than target.gpus, budgets that do not
    fit its cards (a `profile: auto` stack meets its card only now) or a service planned with zero downtime
    without room for its two copies there fail the deploy with one line."""
    target = config.target
    assert isinstance(target, DockerTarget)
    devices = [Device(str(g["uuid"]), int(g["memory_mib"])) for g in facts.get("gpus") or []]
    if len(devices) < target.gpus:
        raise BudgetError(
            f"the host's preflight found {len(devices)} GPU(s), the stack plans for target.gpus: "
            f"{target.gpus}: lower target.gpus or deploy to a host with more GPUs"
        )
    demands = docker_gpu_demands(config, None)
    placement = place(demands, devices)
    decided = decide_rollouts(rollout_facts(config), demands, placement)
    for name, rollout in planned.items():
        if rollout.mode == ZERO_DOWNTIME and decided[name].mode != ZERO_DOWNTIME:
            raise BudgetError(
                f"service {name} was planned with zero downtime, but on this host it cannot be: "
                f"{decided[name].why}; set services.{name}.rollout: stop-first or lower its gpuMemory"
            )
    return dict(placement.devices_of)


def gate_devices(
    svc: Service, name: str, placement: pulumi.Output[dict[str, tuple[str, ...]]] | None
) -> pulumi.Input[str]:
    """gpu-memory-gate.sh's GPU_DEVICES: all, the device ids asked for, or the devices a count was given."""
    if svc.gpu.mode == "all":
        return "all"
    if svc.gpu.mode == "count" and placement is not None:
        return placement.apply(lambda placed: ",".join(placed[name]))
    return ",".join(svc.gpu.device_ids)


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
