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

import hashlib
import json
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_docker as docker

from components.options import child_options

HASH_LENGTH = 12
# What a release tag may read: Docker would send it all, but a context this large is a mistake (a data
# directory, `/`); the hash streams each file, so memory stays small either way.
MAX_CONTEXT_FILES = 200_000
MAX_CONTEXT_BYTES = 64 << 30


@dataclass(frozen=True)
class RegistryLogin:
    server: str
    username: str
    password: pulumi.Input[str]


def dockerignore_patterns(context: Path) -> list[str]:
    """The patterns of `.dockerignore`, read as the Docker SDK for Python reads them (api/build.py)."""
    ignore_file = context / ".dockerignore"
    if not ignore_file.is_file():
        return []
    lines = (line.strip() for line in ignore_file.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def context_files(context: Path, dockerfile: str = "Dockerfile") -> list[str]:
    """The paths (files, directories, links; relative, sorted) a build of `context` sends to Docker.

    The matching is Docker's own, through the Docker SDK for Python (`docker.utils.build.exclude_paths`,
    moby's pattern rules: `**`, `!` exceptions, a leading `/`, and `*` that never crosses `/`). Like the
    Docker CLI (cli/command/image/build: TrimBuildFilesFromExcludes) the Dockerfile and `.dockerignore`
    are sent even when a pattern excludes them.
    """
    from docker.utils.build import exclude_paths  # noqa: PLC0415 - only stacks that build pay its import

    patterns = [*dockerignore_patterns(context), "!.dockerignore"]
    found = exclude_paths(str(context), patterns, dockerfile=dockerfile)
    if len(found) > MAX_CONTEXT_FILES:
        raise ValueError(
            f"build context {context} sends {len(found)} paths (at most {MAX_CONTEXT_FILES}): "
            "list what the image does not need in its .dockerignore"
        )
    return sorted(found)


def _feed_file(digest: Any, path: Path) -> None:
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)


def context_digest(context: Path, dockerfile: str = "Dockerfile") -> str | None:
    """sha256 over exactly what a build sends: each path, its kind, its executable bit, and a file's bytes
    or a link's target (links are sent as links, not followed). Files are streamed, never held whole.
    None if the context is absent."""
    if not context.is_dir():
        return None
    digest = hashlib.sha256()
    total = 0
    for relative in context_files(context, dockerfile):
        path = context / relative
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            kind, payload = "link", os.readlink(path).encode()
        elif stat.S_ISDIR(info.st_mode):
            kind, payload = "dir", b""
        elif stat.S_ISREG(info.st_mode):
            kind, payload = "file", b""
        else:
            continue  # sockets and FIFOs are not sent (docker.utils.build.create_archive)
        executable = "x" if info.st_mode & stat.S_IXUSR else "-"
        digest.update(f"{kind}\0{executable}\0{relative}\0".encode() + payload)
        if kind == "file":
            total += info.st_size
            if total > MAX_CONTEXT_BYTES:
                raise ValueError(
                    f"build context {context} holds more than {MAX_CONTEXT_BYTES >> 30} GiB: "
                    "list what the image does not need (models, data) in its .dockerignore"
                )
            _feed_file(digest, path)
        digest.update(b"\0")
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


def release_tag(
    *,
    profile: str,
    recipes: Sequence[BuildRecipe],
    build_args: Mapping[str, str],
    image_args: Mapping[BuildRecipe, Mapping[str, str]] | None = None,
) -> str:
    """`<profile>-<12 hex>` from everything that decides the images' content.

    One tag for every image a stack builds (the service image, its `deps` stage, a front end), so a
    rollback pins them all with one value. The same sources and args give the same tag. `build_args` are
    the stack's (the profile's and `image.buildArgs`); an image built with other args (`image_args`: a
    CPU-only image, a team's version matrix, a Dockerfile that declares fewer) carries its own in its
    entry, so a stack whose images all take the stack's args keeps the tag it had before images had
    args of their own.
    """
    own = image_args or {}
    recipe = {
        "images": [
            {
                "context": context_digest(Path(r.context), r.dockerfile),
                "dockerfile": hashlib.sha256(Path(r.dockerfile_path).read_bytes()).hexdigest()
                if Path(r.dockerfile_path).is_file()
                else r.dockerfile_path,
                "target": r.target,
                **(
                    {"args": dict(sorted(own[r].items()))}
                    if r in own and dict(own[r]) != dict(build_args)
                    else {}
                ),
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
