"""What a Docker host gets besides the services: the DCGM exporter (`gpu-deploy:dcgm`) and, after a
successful deploy, the pruning of old release images (`image.keepReleases`).

- `dcgm_exporter`: components/docker/dcgm.py's container on the stack's network, published on
  `dcgm.address`; its counters file is chosen by the card: without profiling (the default) no
  DCGM_FI_PROF_* metric, with `profiling` those too where the card has them (Volta and newer; a named card
  without them is a config error, a card `auto` detects at deploy gets the file without them).
- `prune_releases`: prune-releases.sh on the host (components/docker/host_command.py) once every
  container, route and smoke test is done; it runs again whenever the release or keepReleases changes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pulumi
import pulumi_command as command

from components.core import vocabulary
from components.core.catalog import GpuProfile
from components.docker.dcgm import DcgmArgs, DcgmExporter, counters
from components.docker.docker_host import DockerHost
from components.docker.host_command import HostCommand, host_command
from components.docker.image import BuildRecipe, CudaImage
from stacks.config import ResolvedStack, StackConfig
from stacks.config.metrics import EXPORTER, has_profiling
from stacks.docker_args import image_naming, recipe_for
from stacks.docker_tests import test_name, test_source


def dcgm_exporter(
    stack: ResolvedStack,
    profile: pulumi.Output[GpuProfile],
    *,
    host: DockerHost,
    gpu_available: bool,
    on_host: pulumi.ResourceOptions,
) -> DcgmExporter | None:
    """The host's DCGM exporter, when the stack asks for one and the host has a GPU."""
    dcgm = stack.config.dcgm
    if dcgm is None or not dcgm.enabled or not gpu_available:
        return None

    def counters_for(card: GpuProfile) -> str:
        if dcgm.profiling and not has_profiling(card.compute_capability):
            pulumi.log.warn(
                f"dcgm.profiling: {card.key} (compute capability {card.cuda_arch_list}) has no profiling "
                "metrics: the exporter collects the others"
            )
        return counters(profiling=dcgm.profiling and has_profiling(card.compute_capability))

    host_ip, host_port = dcgm.address
    return DcgmExporter(
        EXPORTER,
        DcgmArgs(
            container_name=f"{stack.stack}-{EXPORTER}",
            alias=EXPORTER,
            image=dcgm.image,
            network=host.network.name,
            host_ip=host_ip,
            host_port=host_port,
            counters=profile.apply(counters_for),
            profiling=dcgm.profiling,
            memory_mib=dcgm.memory,
            labels={vocabulary.LABEL_STACK: stack.stack, vocabulary.LABEL_SERVICE: EXPORTER},
        ),
        opts=on_host,
    )


RELEASE = re.compile(r"^(.*-[0-9a-f]{12})(-[A-Za-z0-9_.-]+)?$")  # prune-releases.sh RELEASE_RE


def stack_repositories(config: StackConfig) -> list[str]:
    """Every repository the stack's builds use, disabled services' and test images too: stopping a service
    changes nothing about which images are the stack's."""
    image = config.image
    if image is None:
        return []
    main = BuildRecipe(image.context, image.dockerfile, image.target)
    found: set[str] = set()
    for name, svc in config.services.items():
        if svc.image != "build":
            continue
        sources = [(recipe_for(svc, image), name)]
        test = test_source(svc, image)
        if test is not None:
            sources.append((BuildRecipe(*test), test_name(name)))
        for recipe, user in sources:
            repository = image_naming(recipe, main, image, user)[1]
            found.add(image.registry.qualify(repository) if image.registry else repository)
    return sorted(found)


def prune_releases(
    stack: ResolvedStack,
    images: dict[str, CudaImage],
    *,
    connection: command.remote.ConnectionArgs | None,
    after: Sequence[pulumi.Resource],
) -> HostCommand | None:
    """prune-releases.sh once the deploy has succeeded; none without image.keepReleases or built images.
    Its inputs are the stack's repositories and its release: it runs again when the release changes (a new
    build, a rollback) or keepReleases does, not when a service is stopped."""
    image = stack.config.image
    if image is None or image.keep_releases is None or not images:
        return None
    release = next(iter(images.values())).tag.apply(
        lambda tag: m.group(1) if (m := RELEASE.match(tag)) else ""
    )
    return host_command(
        "prune-releases",
        script="prune-releases",
        env={
            "REPOSITORIES": " ".join(stack_repositories(stack.config)),
            "KEEP": str(image.keep_releases),
            "RELEASE": release,
        },
        connection=connection,
        triggers=[release, image.keep_releases],
        opts=pulumi.ResourceOptions(depends_on=list(after)),
    )
