"""The values a stack file holds, parsed: sizes, durations, GPU requests, ports, volumes, users, image
references, host names, paths; each a parser raising ValueError with the one-line problem, and the
Annotated field type the models use. Also the models' common base."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from fractions import Fraction
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

from components.core.values import (
    GpuRequest,
    PortMapping,
    UserSpec,
    VolumeMount,
    floating_tag,
    holds_password,
    host_path_problem,
    looks_secret,
    parse_host_key,
)
from components.core.vocabulary import PINNED_CHART_VERSION, RESERVED_NAMESPACES
from stacks.config.errors import KeyedError, quote

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmgt])i?b?$", re.IGNORECASE)
MAX_SIZE_MIB = 16 * 1024 * 1024  # 16 TiB
_SIZE_FACTORS_MIB = {"b": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}


def parse_size_mib(value: Any) -> int:
    """Docker-style sizes with a unit: '4g', '512m', '2GiB' (a bare number is refused: 24 is not 24g)."""
    if isinstance(value, bool):
        raise ValueError(f'expected a size such as "4g" or "512m", got {quote(value)}')
    text = str(value).strip() if isinstance(value, (str, int, float)) else ""
    match = _SIZE.match(text)
    if not match:
        if re.fullmatch(r"\d+(\.\d+)?", text):
            raise ValueError(f'a size needs a unit: "{text}m" or "{text}g"? got {quote(value)}')
        raise ValueError(f'expected a size such as "4g" or "512m", got {quote(value)}')
    number, unit = float(match.group(1)), (match.group(2) or "m").lower()
    if not math.isfinite(number * _SIZE_FACTORS_MIB[unit]):
        raise ValueError(f"too large, got {quote(value)}")
    mib = int(number * _SIZE_FACTORS_MIB[unit])
    if mib > MAX_SIZE_MIB:
        raise ValueError(f"at most 16t, got {quote(value)}")
    if mib < 4:
        raise ValueError(f"expected at least 4m, got {quote(value)}")
    return mib


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration_s(value: Any) -> int:
    """'30s', '1m', '1m30s', '2h' or a number of seconds."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DURATION_S:
        return value
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    match = _DURATION.match(text)
    if not text or not match:
        raise ValueError(f'expected a duration such as "30s", "1m" or "1m30s", got {quote(value)}')
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total > MAX_DURATION_S:
        raise ValueError(f"at most 7 days (168h), got {quote(value)}")
    return total


MAX_DURATION_S = 7 * 24 * 3600


MAX_GPUS = 64
_DEVICE_ID = re.compile(r"^(\d+|\d+:\d+|GPU-[0-9a-fA-F-]{8,}|MIG-[0-9a-zA-Z/-]{8,})\Z")


def parse_gpu(value: Any) -> GpuRequest:
    problem = f'expected "all", "none", a count >= 1 or a list of device ids, got {quote(value)}'
    if isinstance(value, GpuRequest):
        return value
    if value is None or value == "none" or value is False:
        return GpuRequest("none")
    if value == "all":
        return GpuRequest("all")
    if isinstance(value, bool):
        raise ValueError(problem)
    if isinstance(value, int) or (isinstance(value, str) and value.isascii() and value.isdigit()):
        count = int(value) if len(str(value)) <= 6 else MAX_GPUS + 1  # no 5000-digit int() here
        if count < 1:
            raise ValueError(problem)
        if count > MAX_GPUS:
            raise ValueError(f"at most {MAX_GPUS} GPUs, got {quote(value)}")
        return GpuRequest("count", count=count)
    if isinstance(value, list) and value:
        ids = tuple(str(v) for v in value if not isinstance(v, bool))
        bad = [d for d in ids if not _DEVICE_ID.match(d)]
        if len(ids) != len(value) or bad:
            raise ValueError(
                f"expected device indexes (0), GPU UUIDs (GPU-...), MIG UUIDs (MIG-...) "
                f"or GPU:MIG indexes (0:1), got {quote(bad[0] if bad else value)}"
            )
        if len(set(ids)) != len(ids):
            raise ValueError(f"lists a device twice: {quote(list(ids))}")
        return GpuRequest("devices", device_ids=ids)
    raise ValueError(problem)


_PORT = re.compile(
    r"^(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):)?(?P<host>\d+):(?P<ctr>\d+)(?:/(?P<proto>tcp|udp))?$"
)


def parse_port(value: Any) -> PortMapping:
    match = _PORT.match(str(value))
    if not match or isinstance(value, bool):
        raise ValueError(f'expected "HOST:CONTAINER", "IP:HOST:CONTAINER" or with "/udp", got {quote(value)}')
    host, ctr = int(match.group("host")), int(match.group("ctr"))
    if not (1 <= host <= 65535 and 1 <= ctr <= 65535):
        raise ValueError(f"ports are 1-65535, got {quote(value)}")
    proto: Literal["tcp", "udp"] = "udp" if match.group("proto") == "udp" else "tcp"
    address = (match.group("ip") or "").strip("[]")
    if address:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{address!r} is not an IP address, in {quote(value)}") from None
    return PortMapping(ctr, host, address, proto)


def parse_volume(value: Any) -> VolumeMount:
    if not isinstance(value, str):
        raise ValueError(f'expected "host:container" or "host:container:ro", got {quote(value)}')
    parts = value.split(":")
    mode = "rw"
    if len(parts) == 3:
        mode = parts.pop()
    if len(parts) != 2 or mode not in ("ro", "rw") or not all(parts):
        raise ValueError(f'expected "host:container" or "host:container:ro", got {quote(value)}')
    host, container = parts
    if not container.startswith("/"):
        raise ValueError(f"the container path must be absolute, got {quote(container)}")
    for path in (host, container):
        if ".." in PurePosixPath(path).parts:
            raise ValueError(f"'..' is not allowed in a volume path, got {quote(value)}")
    if host.rstrip("/") == "":
        raise ValueError("the host's / cannot be mounted")
    if host.startswith("/"):
        problem = host_path_problem(host)
        if problem:
            raise ValueError(f"{problem}; mount a directory of the stack's own (under target.root)")
    return VolumeMount(host.rstrip("/") or host, container, mode == "ro")


MAX_ID = 2**31 - 1  # Docker and Kubernetes take a signed 32-bit id


def parse_user(value: Any) -> UserSpec:
    text = str(value)
    match = re.fullmatch(r"(\d+)(?::(\d+))?", text)
    if not match or isinstance(value, bool):
        raise ValueError(
            f'expected a numeric "uid:gid" such as "1001:1001" (host directories are owned by it), '
            f"got {quote(value)}"
        )
    if any(len(g) > 10 for g in match.groups() if g):
        raise ValueError(f"uid and gid are at most {MAX_ID}, got {quote(value)}")
    uid = int(match.group(1))
    gid = int(match.group(2)) if match.group(2) else uid
    if uid > MAX_ID or gid > MAX_ID:
        raise ValueError(f"uid and gid are at most {MAX_ID}, got {quote(value)}")
    if uid == 0 or gid == 0:
        raise ValueError(f"containers run as a non-root user; got {quote(value)}")
    return UserSpec(uid, gid)


_IMAGE_REF = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?\Z"
)


def parse_image_ref(value: Any) -> str:
    text = str(value)
    if text == "build":
        return text
    match = _IMAGE_REF.match(text)
    if not match or isinstance(value, bool):
        raise ValueError(f'expected "build" or a pinned image such as "redis:7.2.4", got {quote(value)}')
    tag = floating_tag(text)
    if tag == "":
        raise ValueError(f"pin a tag or digest (e.g. redis:7.2.4): {quote(text)} is not reproducible")
    if tag is not None:
        raise ValueError(f"pin a real tag or digest: {quote(text)} changes under you (floating tag {tag!r})")
    return text


def _str_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ValueError(f"expected a string, number or boolean, got {quote(value)}")


def parse_root(value: Any) -> str:
    """A host directory that relative paths live under: absolute, not '/', no '..'."""
    root = str(value)
    if not root.startswith("/") or root.rstrip("/") == "" or ".." in root.split("/"):
        raise ValueError(f"expected an absolute directory other than /, got {quote(value)}")
    problem = host_path_problem(root)
    if problem:
        raise ValueError(f"{problem}; the stack creates and re-owns directories under its root")
    return str(PurePosixPath(root))


def parse_host(value: Any) -> str:
    """A host name or an IP address, as ssh takes it: no user@, no spaces, no leading '-' (an option)."""
    text = str(value) if isinstance(value, str) else ""
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(text):
        raise ValueError(
            f"expected a host name (gpu1.example.net) or an IP address, got {quote(value)}"
            + ("; the user goes in `user`" if "@" in text else "")
        )
    return text


def parse_login(value: Any) -> str:
    """A login name: letters, digits, '.', '_' and '-', not starting with '-' (ssh would read an option)."""
    text = str(value) if isinstance(value, str) else ""
    if not _LOGIN.fullmatch(text):
        raise ValueError(f"expected a login name such as deploy, got {quote(value)}")
    return text


_HOST_NAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_LOGIN = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}")


def parse_context(value: Any) -> str:
    """A build context inside this project or a sibling checkout (`../app`, `../app/sub`): the plan reads
    and hashes all of it, so `/etc`, `~` or the directory above every checkout are refused. Lexical only."""
    text = str(value) if isinstance(value, str) else ""
    normal = os.path.normpath(text) if text else ""
    parts = PurePosixPath(normal).parts
    if (
        not text
        or any(c in text for c in "\0\n\r")
        or text.startswith(("/", "~"))
        or (parts[:1] == ("..",) and (len(parts) < 2 or parts[1] == ".."))
    ):
        raise ValueError(
            f"expected a directory inside this project or a sibling checkout (../app), got {quote(value)}"
        )
    return text


def parse_dockerfile(value: Any) -> str:
    """A Dockerfile path inside its context: relative, no '..'."""
    text = str(value) if isinstance(value, str) else ""
    if (
        not text
        or text.startswith("/")
        or ".." in PurePosixPath(text).parts
        or any(c in text for c in "\0\n\r")
    ):
        raise ValueError(f"expected a Dockerfile path inside the context, got {quote(value)}")
    return text


ContextField = Annotated[str, BeforeValidator(parse_context)]
DockerfileField = Annotated[str, BeforeValidator(parse_dockerfile)]
HostField = Annotated[str, BeforeValidator(parse_host)]
LoginField = Annotated[str, BeforeValidator(parse_login)]


def parse_env_name(value: Any) -> str:
    text = str(value) if isinstance(value, str) else ""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", text):
        raise ValueError(
            f"an environment variable name is letters, digits and '_', not starting with a digit; "
            f"got {quote(value)}"
        )
    return text


EnvName = Annotated[str, BeforeValidator(parse_env_name)]


def no_secret_build_args(args: dict[str, str]) -> dict[str, str]:
    """Build args (the stack's `image.buildArgs`, a service's `build.args`) hold no credential: Docker keeps
    them in the image history."""
    for key, value in args.items():
        if looks_secret(key) or holds_password(value):
            raise KeyedError(
                key,
                "build args are stored in the image history; pass secrets at run time "
                "(services.<name>.secretEnv)",
            )
    return args


MAX_CPUS = 1024  # more than any host has; the engine checks the host's own count at create


def go_cpus_text(nanos: int) -> str:
    """How terraform-provider-docker reads NanoCPUs back into `cpus` (v4.5.0 internal/provider/helpers.go
    nanoInt64ToDecimalString: 9 decimals, one when the text has nine zeros, else trailing zeros cut)."""
    whole, frac = divmod(nanos, 10**9)
    text = f"{whole}.{frac:09d}"
    if text.count("0") == 9:  # big.Rat FloatString(1): halves rounded away from zero
        tenths = (nanos + 5 * 10**7) // 10**8
        return f"{tenths // 10}.{tenths % 10}"
    return text.rstrip("0")


def parse_cpus(value: Any) -> str:
    """A CPU limit, compose-style ("1.5", 2): at least 0.01, at most MAX_CPUS, to the nanosecond; returned
    in the text the provider reads back, so a second `pulumi up` sees no change (see go_cpus_text)."""
    text = str(value).strip() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
    if not re.fullmatch(r"\d+(\.\d+)?", text):
        raise ValueError(f'expected a number of CPUs such as "1.5" or 2, got {quote(value)}')
    cpus = Fraction(text)
    if cpus < Fraction(1, 100) or cpus > MAX_CPUS:
        raise ValueError(f"expected between 0.01 and {MAX_CPUS} CPUs, got {text}")
    nanos = cpus * 10**9
    if nanos.denominator != 1:
        raise ValueError(f"at most 9 decimal places (Docker counts nano-CPUs), got {text}")
    read_back = go_cpus_text(int(nanos))
    if Fraction(read_back) != cpus:
        raise ValueError(
            f"terraform-provider-docker reads {text} back as {read_back} and would replace the container on "
            "every update: use a value with another last digit"
        )
    return read_back


# go-units ulimit.go ulimitNameMapping: the names Docker takes
ULIMIT_NAMES = (
    "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc", "rss",
    "rtprio", "rttime", "sigpending", "stack",
)  # fmt: skip
_MAX_ULIMIT = 2**62


def parse_ulimit(value: Any) -> tuple[int, int]:
    """A ulimit, compose-style: one number (soft = hard) or {soft, hard}; -1 is unlimited."""
    if isinstance(value, dict) and set(value) == {"soft", "hard"}:
        soft, hard = value["soft"], value["hard"]
    elif isinstance(value, (int, str)) and not isinstance(value, dict):
        soft = hard = value
    else:
        raise ValueError(f"expected a number (-1: unlimited) or {{soft, hard}}, got {quote(value)}")
    limits = []
    for limit in (soft, hard):
        if isinstance(limit, bool) or not re.fullmatch(r"-?\d+", str(limit).strip()):
            raise ValueError(f"expected whole numbers (-1: unlimited), got {quote(value)}")
        number = int(str(limit).strip())
        if number < -1 or number > _MAX_ULIMIT:
            raise ValueError(f"expected -1 (unlimited) or 0 to {_MAX_ULIMIT}, got {number}")
        limits.append(number)
    soft_n, hard_n = limits
    if hard_n != -1 and (soft_n == -1 or soft_n > hard_n):
        raise ValueError(f"the soft limit ({soft_n}) is above the hard limit ({hard_n})")
    return (soft_n, hard_n)


def parse_ulimit_name(value: Any) -> str:
    if value not in ULIMIT_NAMES:
        raise ValueError(f"not a ulimit Docker sets (one of {', '.join(ULIMIT_NAMES)})")
    return str(value)


GpuField = Annotated[GpuRequest, BeforeValidator(parse_gpu)]
CpusField = Annotated[str, BeforeValidator(parse_cpus)]
UlimitField = Annotated[tuple[int, int], BeforeValidator(parse_ulimit)]
UlimitName = Annotated[str, BeforeValidator(parse_ulimit_name)]
RootDir = Annotated[str, BeforeValidator(parse_root)]
PortField = Annotated[PortMapping, BeforeValidator(parse_port)]
VolumeField = Annotated[VolumeMount, BeforeValidator(parse_volume)]
UserField = Annotated[UserSpec, BeforeValidator(parse_user)]
SizeField = Annotated[int, BeforeValidator(parse_size_mib)]
DurationField = Annotated[int, BeforeValidator(parse_duration_s)]
ImageRefField = Annotated[str, BeforeValidator(parse_image_ref)]
EnvValue = Annotated[str, BeforeValidator(_str_value)]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,40}$")]


# ---------------------------------------------------------------- the models' base
class Model(BaseModel):
    """A config section: camelCase keys, unknown keys refused, frozen once validated."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True, strict=False
    )


def alias(model: type[BaseModel], field: str) -> str:
    """The stack key of a model's field: `cpu_fallback` -> `cpuFallback`."""
    return model.model_fields[field].alias or field


# ---------------------------------------------------------------- more field types
def _pinned_host_key(key: str | None) -> str | None:
    """A pinned host key that ssh can really use (components.core.values.parse_host_key), normalised."""
    return None if key is None else str(parse_host_key(key))


HostKeyField = Annotated[str, AfterValidator(_pinned_host_key)]


K8sName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]


def own_namespace(namespace: str) -> str:
    if namespace in RESERVED_NAMESPACES:
        raise ValueError(f"the stack creates its namespace; {namespace!r} is the cluster's own: pick one")
    return namespace


OwnNamespace = Annotated[K8sName, AfterValidator(own_namespace)]  # one the stack creates and owns
ChartVersion = Annotated[str, Field(pattern=PINNED_CHART_VERSION)]
Quantity = Annotated[str, Field(pattern=r"^[1-9]\d*(Ki|Mi|Gi|Ti)$")]  # a PVC size: 10Gi
