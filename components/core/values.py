"""Value objects shared by the config model and the components: what a service asks for."""

from __future__ import annotations

import base64
import binascii
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


# A name reads like a credential when one of its segments (split on anything but letters and digits)
# is or ends in a credential word (DB_PASSWORD, AUTHTOKEN, x-api-key's `key` after `api`), or two
# segments name one (JWT_SIGNING_KEY, PRIVATE_KEY). TOKENIZERS_PARALLELISM and HOST_KEY are not.
_CREDENTIAL_SEGMENT = re.compile(
    r"(password|passwd|passphrase|secret|token|credential|apikey|privatekey|signingkey|accesskey)s?$"
    r"|^(pass|pwd|pw|auth)$"
)
_CREDENTIAL_PAIRS = {
    ("api", "key"), ("private", "key"), ("signing", "key"), ("access", "key"),
    ("secret", "key"), ("client", "secret"), ("auth", "key"), ("session", "key"),
}  # fmt: skip
# user:password@ in a URL: the password is in the value, whatever the name says
_URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@", re.IGNORECASE)


def looks_secret(name: str) -> bool:
    """An env, build-arg or header name that reads like a credential."""
    segments = [s for s in re.split(r"[^a-z0-9]+", name.lower()) if s]
    if any(_CREDENTIAL_SEGMENT.search(segment) for segment in segments):
        return True
    return any((a, b.rstrip("s")) in _CREDENTIAL_PAIRS for a, b in zip(segments, segments[1:]))


def holds_password(value: str) -> bool:
    """A value with a password in it: a URL's `user:password@`."""
    return bool(_URL_PASSWORD.search(value))


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


# ---------------------------------------------------------------- pinned SSH host keys
# The host key types a pin may have. pulumi-command offers the server only the pinned key's algorithm
# (pulumi-command provider/pkg/provider/remote/connection.go: HostKeyAlgorithms = [key.Type()]); for an
# RSA key that is the SHA-1 "ssh-rsa" signature, which OpenSSH 8.8 and newer refuse by default, so an RSA
# pin can never connect. ed25519 and ECDSA keys sign the same way whatever the server's defaults.
HOST_KEY_TYPES: dict[str, int] = {  # key type -> length of its public key blob in bytes
    "ssh-ed25519": 32,
    "ecdsa-sha2-nistp256": 65,  # uncompressed point: 0x04 || X || Y
    "ecdsa-sha2-nistp384": 97,
    "ecdsa-sha2-nistp521": 133,
}


@dataclass(frozen=True)
class HostKey:
    """A parsed public host key: `type` and the base64 `blob`, as `ssh-keyscan -t ed25519 HOST` prints."""

    type: str
    blob: str

    def __str__(self) -> str:
        return f"{self.type} {self.blob}"


def _ssh_strings(data: bytes) -> list[bytes]:
    """The SSH wire strings (uint32 length + bytes) that make up a public key blob."""
    fields: list[bytes] = []
    while data:
        if len(data) < 4:
            raise ValueError("the key data ends in the middle of a field")
        size = int.from_bytes(data[:4], "big")
        if size > len(data) - 4:
            raise ValueError("the key data is shorter than its fields say")
        fields.append(data[4 : 4 + size])
        data = data[4 + size :]
    return fields


def parse_host_key(text: str) -> HostKey:
    """`TYPE BASE64 [comment]` -> HostKey, checked the way ssh parses it: the base64 decodes to the same
    type name and a key of that type's size. Raises ValueError with a one-line reason."""
    text = text.strip() if isinstance(text, str) else text
    if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
        raise ValueError("a host key is one line: TYPE BASE64, as ssh-keyscan -t ed25519 HOST prints it")
    words = text.split()
    if (
        len(words) >= 3
        and words[0] not in HOST_KEY_TYPES
        and (words[1] in HOST_KEY_TYPES or words[1] == "ssh-rsa")
    ):
        words = words[1:]  # ssh-keyscan's line: HOST TYPE BASE64
    if len(words) < 2:
        raise ValueError(
            'expected a public host key such as "ssh-ed25519 AAAAC3..." (ssh-keyscan -t ed25519 HOST)'
        )
    key_type, blob = words[0], words[1]
    if key_type == "ssh-rsa" or key_type.startswith("rsa-sha2-"):
        raise ValueError(
            "RSA host keys cannot be pinned: pulumi-command would offer only the SHA-1 ssh-rsa signature, "
            "which current OpenSSH refuses; pin the host's ed25519 key (ssh-keyscan -t ed25519 HOST)"
        )
    if key_type not in HOST_KEY_TYPES:
        raise ValueError(
            f"host key type {key_type!r} is not one of {', '.join(HOST_KEY_TYPES)} "
            "(ssh-keyscan -t ed25519 HOST prints the one to pin)"
        )
    try:
        data = base64.b64decode(blob, validate=True)
        fields = _ssh_strings(data)
    except (ValueError, binascii.Error) as err:
        raise ValueError(f"the {key_type} key is not valid base64 key data ({err})") from None
    expected = [key_type.encode()]
    if key_type.startswith("ecdsa-"):
        expected.append(key_type.rsplit("-", 1)[1].encode())  # the curve: nistp256 ...
    if fields[: len(expected)] != expected or len(fields) != len(expected) + 1:
        raise ValueError(f"the key data is not a {key_type} public key (its fields name another type)")
    point = fields[-1]
    if len(point) != HOST_KEY_TYPES[key_type] or (key_type.startswith("ecdsa-") and point[:1] != b"\x04"):
        raise ValueError(f"the key data is not a {key_type} public key ({len(point)}-byte key)")
    return HostKey(key_type, blob)


# ---------------------------------------------------------------- host paths a stack may touch
# System locations: never a root, never a bind source, nothing under them is ever created or re-owned.
SYSTEM_DIRS = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root", "/run", "/sbin",
    "/sys", "/tmp", "/usr", "/var/run", "/var/tmp",  # noqa: S108 - places refused, not used
    "/var/lib/docker", "/var/lib/containerd",
    "/var/lib/kubelet", "/var/snap", "/snap", "/var/lib/dpkg", "/var/lib/rpm", "/var/log",
)  # fmt: skip
# Directories that hold other things: a root or source may sit below them, never be them.
SHARED_DIRS = ("/", "/home", "/srv", "/opt", "/mnt", "/media", "/data", "/var", "/var/lib", "/usr/local")
SECRET_NAMES = (".ssh", ".gnupg", ".docker", ".kube", ".aws", ".config", "docker.sock", "containerd.sock")


def _normal(path: str) -> PurePosixPath:
    return PurePosixPath("/" + "/".join(p for p in path.split("/") if p not in ("", ".")))


def host_path_problem(path: str) -> str | None:
    """Why a host directory may not be a stack's root or bind source, or None. Paths are absolute, without
    '..' (the parsers refuse those); `/.`, `//` and trailing slashes count as what they name."""
    if any(c in path for c in "\0\n\r"):
        return "a path is one line without NUL"
    normal = _normal(path)
    text = str(normal)
    for system in SYSTEM_DIRS:
        if text == system or text.startswith(system + "/"):
            return f"{text} is a system location ({system})"
    if text in SHARED_DIRS:
        return f"{text} holds more than this stack: use a directory of its own below it"
    hidden = [part for part in normal.parts if part in SECRET_NAMES]
    if hidden:
        return f"{text} is (or is inside) {hidden[0]}, which holds credentials"
    return None


def is_under(path: str, root: str) -> bool:
    """Whether `path` is `root` or inside it, as path components (so /srv/app2 is not under /srv/app)."""
    inner, outer = _normal(path), _normal(root)
    return inner == outer or outer in inner.parents
