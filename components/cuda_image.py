"""CudaImage: the service image, built on the GPU host with the profile's build args, or a pinned tag.

Creates exactly one of:
- `docker.Image` (no tag pinned): built through the target's Docker provider, so on the GPU host itself,
  with the stack's release tag (`release_tag`: a hash of every source, Dockerfile, stage and build arg),
  so a second `pulumi up` of the same source is a no-op. It is kept on the host when replaced (retain
  on delete), so an earlier tag stays there for a rollback.
- `docker.RemoteImage` (a tag pinned: the rollback path): nothing is built; the existing tag is
  referenced and kept locally.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_docker as docker

from components.options import child_options

HASH_LENGTH = 12


@dataclass(frozen=True)
class RegistryLogin:
    server: str
    username: str
    password: pulumi.Input[str]


def _ignore_patterns(context: Path) -> list[tuple[bool, str]]:
    ignore_file = context / ".dockerignore"
    if not ignore_file.is_file():
        return []
    patterns = []
    for line in ignore_file.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        negate = text.startswith("!")
        patterns.append((negate, text.lstrip("!").strip("/")))
    return patterns


def _ignored(relative: str, patterns: list[tuple[bool, str]]) -> bool:
    ignored = False
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for negate, pattern in patterns:
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            ignored = not negate
    return ignored


def context_digest(context: Path) -> str | None:
    """sha256 over the files a build would send (honouring .dockerignore), or None if absent."""
    if not context.is_dir():
        return None
    patterns = _ignore_patterns(context)
    digest = hashlib.sha256()
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        relative = path.relative_to(context).as_posix()
        if relative.startswith(".git/") or _ignored(relative, patterns):
            continue
        digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class BuildRecipe:
    """What one image is built from: a context, a Dockerfile in it and a stage."""

    context: str
    dockerfile: str
    target: str | None

    @property
    def dockerfile_path(self) -> str:
        return str(Path(self.context) / self.dockerfile)


def release_tag(*, profile: str, recipes: Sequence[BuildRecipe], build_args: Mapping[str, str]) -> str:
    """`<profile>-<12 hex>` from everything that decides the images' content.

    One tag for every image a stack builds (the service image, its `deps` stage, a front end), so a
    rollback pins them all with one value. The same sources and args give the same tag.
    """
    recipe = {
        "images": [
            {
                "context": context_digest(Path(r.context)),
                "dockerfile": hashlib.sha256(Path(r.dockerfile_path).read_bytes()).hexdigest()
                if Path(r.dockerfile_path).is_file()
                else r.dockerfile_path,
                "target": r.target,
            }
            for r in sorted(set(recipes), key=lambda r: (r.context, r.dockerfile, r.target or ""))
        ],
        "args": dict(sorted(build_args.items())),
    }
    text = json.dumps(recipe, sort_keys=True)
    return f"{profile}-{hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]}"


class CudaImage(pulumi.ComponentResource):
    """The image a service runs. `ref` is what containers use; `tag` is what a rollback pins."""

    ref: pulumi.Output[str]
    tag: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        repository: str,
        recipe: BuildRecipe,
        build_args: pulumi.Input[Mapping[str, str]],
        tag: pulumi.Input[str],
        build: bool,
        registry: RegistryLogin | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpu-deploy:docker:CudaImage", name, None, opts)
        self.tag = pulumi.Output.from_input(tag)
        image_name = self.tag.apply(lambda value: f"{repository}:{value}")

        if not build:
            existing = docker.RemoteImage(
                f"{name}-pinned",
                name=image_name,
                keep_locally=True,
                opts=child_options(self, opts),
            )
            self.ref = existing.name
        else:
            built = docker.Image(
                f"{name}-build",
                image_name=image_name,
                build=docker.DockerBuildArgs(
                    context=recipe.context,
                    dockerfile=recipe.dockerfile_path,
                    target=recipe.target,
                    args=build_args,
                    platform="linux/amd64",
                ),
                skip_push=registry is None,
                registry=docker.RegistryArgs(
                    server=registry.server,
                    username=registry.username,
                    password=pulumi.Output.secret(registry.password),
                )
                if registry
                else None,
                opts=child_options(self, opts, retain_on_delete=True),
            )
            self.ref = built.image_name
        self.register_outputs({"ref": self.ref, "tag": self.tag})
