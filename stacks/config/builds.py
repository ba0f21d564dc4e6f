"""The images a Docker stack builds, read from its config: one per distinct source (context, Dockerfile,
stage), the services that run it, whether a GPU runs it, and the team's own build args.

Pure config: stacks/docker_args.py turns an ImageBuild into a BuildRecipe and its build args,
stacks/config/resolution.py checks a GPU image's version matrix against the card.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stacks.config.errors import ConfigError
from stacks.config.sections import ImageConfig
from stacks.config.service import Service

if TYPE_CHECKING:
    from stacks.config.stack import StackConfig

BUILD = "build"  # a service's `image: build`: the stack's own image


@dataclass(frozen=True)
class ImageBuild:
    """One image the stack builds.

    `uses_gpu`: a service built from this Dockerfile asks for a GPU (enabled or not), this image's or
    another stage's of the same Dockerfile (its stages are one build graph: the `runtime` stage is built on
    the `deps` stage, so both take the same base image). `args` are the team's build args, `image.buildArgs`
    under the services' own `build.args`; `arg_keys` names the stack key each was set under, for errors."""

    context: str
    dockerfile: str
    target: str | None
    services: tuple[str, ...]
    uses_gpu: bool
    args: dict[str, str] = field(default_factory=dict)
    arg_keys: dict[str, str] = field(default_factory=dict)

    @property
    def source(self) -> tuple[str, str, str | None]:
        return (self.context, self.dockerfile, self.target)


def build_source(svc: Service, image: ImageConfig) -> tuple[str, str, str | None]:
    """(context, Dockerfile, stage) a service is built from: its own `build` keys over the image section's;
    the image section's stage only for the image section's own Dockerfile."""
    own = svc.build
    context = own.context if own and own.context else image.context
    dockerfile = own.dockerfile if own and own.dockerfile else image.dockerfile
    same_source = (context, dockerfile) == (image.context, image.dockerfile)
    target = own.target if own and own.target else (image.target if same_source else None)
    return (context, dockerfile, target)


def team_args(name: str, svc: Service, image: ImageConfig) -> tuple[dict[str, str], dict[str, str]]:
    """(args, arg -> stack key): the stack's `image.buildArgs`, the service's own `build.args` over them."""
    args = dict(image.build_args)
    keys = {arg: f"image.buildArgs.{arg}" for arg in image.build_args}
    own = svc.build.args if svc.build else {}
    args.update(own)
    keys.update({arg: f"services.{name}.build.args.{arg}" for arg in own})
    return args, keys


def image_builds(config: StackConfig, names: Iterable[str] | None = None) -> list[ImageBuild]:
    """The images the services `names` (default: every enabled one) build, in first-use order. Services that
    build the same source must ask for the same build args (they run one image): else a ConfigError
    naming the second one's `build.args`."""
    image = config.image
    wanted = [n for n in (names if names is not None else config.services) if config.services[n].enabled]
    builders = {n: config.services[n] for n in wanted if config.services[n].image == BUILD}
    if image is None or not builders:
        return []
    sources = {name: build_source(svc, image) for name, svc in builders.items()}
    # over every service, enabled or not: stopping one (enabled: false) changes no other image; a GPU
    # service switched to the CPU (runOn: cpu) without a cpuImage runs its GPU image, which stays as it was
    gpu_dockerfiles = {
        build_source(svc, image)[:2]
        for svc in config.services.values()
        if svc.image == BUILD and (svc.gpu.wants_gpu or (svc.run_on == "cpu" and svc.cpu_image is None))
    }
    grouped: dict[tuple[str, str, str | None], list[str]] = {}
    for name, source in sources.items():
        grouped.setdefault(source, []).append(name)
    builds: list[ImageBuild] = []
    for source, services in grouped.items():
        first = services[0]
        args, keys = team_args(first, builders[first], image)
        for other in services[1:]:
            if team_args(other, builders[other], image)[0] != args:
                raise ConfigError(
                    f"services.{other}.build.args",
                    f"differs from {first}'s: both run one image (context {source[0]}, Dockerfile "
                    f"{source[1]}, stage {source[2] or 'the last'}); give them the same args",
                )
        builds.append(
            ImageBuild(
                *source,
                services=tuple(services),
                uses_gpu=source[:2] in gpu_dockerfiles,
                args=args,
                arg_keys=keys,
            )
        )
    return builds
