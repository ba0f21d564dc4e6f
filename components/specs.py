"""Value objects shared by the config model and the components: what a service asks for."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal


@dataclass(frozen=True)
class GpuRequest:
    """What a service asks of the GPUs: all, none, a count, or specific devices / MIG instances."""

    mode: Literal["all", "none", "count", "devices"]
    count: int = 0
    device_ids: tuple[str, ...] = ()

    @property
    def wants_gpu(self) -> bool:
        return self.mode != "none"

    @property
    def uses_mig(self) -> bool:
        return any(is_mig_device(d) for d in self.device_ids)


def is_mig_device(device_id: str) -> bool:
    return device_id.startswith("MIG-") or ":" in device_id


NO_GPU = GpuRequest("none")


@dataclass(frozen=True)
class PortMapping:
    container_port: int
    host_port: int
    host_ip: str = ""
    protocol: Literal["tcp", "udp"] = "tcp"


@dataclass(frozen=True)
class VolumeMount:
    host: str  # as written: relative ones live under target.root
    container: str
    read_only: bool = False

    @property
    def is_relative(self) -> bool:
        return not self.host.startswith("/")

    def host_path(self, root: str | None) -> str:
        if not self.is_relative:
            return self.host
        if root is None:
            raise ValueError(f"relative volume {self.host!r} needs a root directory")
        return str(PurePosixPath(root) / PurePosixPath(self.host.removeprefix("./")))


@dataclass(frozen=True)
class UserSpec:
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"{self.uid}:{self.gid}"


# What tools show instead of a secret value, and instead of a value known only once a deployment runs.
SECRET_PLACEHOLDER = "[secret]"  # noqa: S105 - a placeholder, not a secret
UNKNOWN_PLACEHOLDER = "[unknown]"

# Whole segments of the name (split on anything but letters and digits): HF_TOKEN, DB_PASSWORD and
# x-api-key are credentials, TOKENIZERS_PARALLELISM and HOST_KEY are not.
_SECRET_NAME = re.compile(
    r"(?:^|[^a-z0-9])(passwords?|passwd|secrets?|tokens?|api[^a-z0-9]?keys?|private[^a-z0-9]?keys?|credentials?)"
    r"(?:$|[^a-z0-9])",
    re.IGNORECASE,
)


def looks_secret(name: str) -> bool:
    """An env, build-arg or header name that reads like a credential."""
    return bool(_SECRET_NAME.search(name))


_FLOATING_TAG = re.compile(r"^(latest|stable|main|master|nightly|edge)(-.*)?$|.*-latest$")
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def floating_tag(image: str) -> str | None:
    """Why an image reference is not pinned, or None when it is: "" when it has no tag (Docker reads that
    as :latest), the tag when it moves (latest, latest-cuda, stable, main, ...), "@" for a malformed digest.
    A tag beside a valid digest is pinned by the digest."""
    if "@" in image:
        return None if _DIGEST.search(image) else "@"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return ""
    tag = last.split(":", 1)[1]
    return tag if not tag or _FLOATING_TAG.match(tag) else None


def check_image_pinned(image: str) -> None:
    """Refuse an image whose tag floats: none (= latest), latest, latest-cuda, stable, main ..."""
    tag = floating_tag(image)
    if tag == "@":
        raise ValueError(f"image {image!r}: a digest is @sha256:<64 hex digits>")
    if tag == "":
        raise ValueError(f"image {image!r} has no tag, so it means ':latest': pin a version tag or a digest")
    if tag is not None:
        raise ValueError(f"image {image!r} uses the floating tag {tag!r}: pin a version tag or a digest")
