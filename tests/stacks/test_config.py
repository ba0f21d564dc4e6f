"""stacks/config: every rule of the `gpu-deploy:` config, one line per mistake, never a crash.

Each rejection names the exact key (`gpu-deploy:<full.key>: <problem>`) and says what is wrong;
property tests feed random JSON-like values and check that validation either succeeds or raises a
one-line ConfigError; the offline CLI turns a config mistake into exit code 2 and one stderr line.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.core.catalog import PROFILES, GpuProfile
from components.core.values import GpuRequest
from stacks.config import ConfigError, DockerTarget, StackConfig, resolve_profile, validate

ROOT = Path(__file__).resolve().parents[2]
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPP40HostKeyPlaceholderReplaceMe000000000000"
GPU_UUID = "GPU-5f3c2b1a-7d6e-4c5b-9a8f-0e1d2c3b4a59"
MIG_UUID = "MIG-4f3c2b1a-aaaa-bbbb-cccc-1234567890ab"
DELETE = object()  # a change that removes the key

# The shape of Pulumi.prod.yaml, without the `gpu-deploy:` namespace.
BASE: dict[str, Any] = {
    "profile": "p40",
    "cuda": {"version": "12.1.1", "wheelIndex": "cu121", "torchVersion": "2.3.0", "driver": "580"},
    "target": {
        "kind": "docker",
        "host": "p40.gpu.internal",
        "user": "deploy",
        "port": 22,
        "hostKey": HOST_KEY,
        "root": "/srv/english-listening-trainer",
    },
    "image": {
        "repository": "english-listening-trainer",
        "context": "../english-listening-trainer",
        "dockerfile": "Dockerfile",
        "target": "runtime",
        "tag": "",
        "appUid": 1001,
    },
    "services": {
        "migrate": {
            "image": "build",
            "build": {"target": "deps"},
            "command": ["npx", "prisma", "migrate", "deploy"],
            "oneShot": True,
            "user": "1001:1001",
            "env": {"DATABASE_URL": "file:/app/data/app.db"},
            "volumes": ["data:/app/data"],
            "memory": "1g",
        },
        "app": {
            "image": "build",
            "gpu": "all",
            "ports": ["3000:3000"],
            "user": "1001:1001",
            "env": {"NODE_ENV": "production", "PORT": "3000", "DATABASE_URL": "file:/app/data/app.db"},
            "volumes": ["data:/app/data", "public/audio:/app/public/audio", "logs:/app/logs"],
            "memory": "16g",
            "shmSize": "1g",
            "healthcheck": {
                "http": {"path": "/api/health", "port": 3000},
                "interval": "30s",
                "timeout": "10s",
                "retries": 3,
                "startPeriod": "60s",
            },
            "dependsOn": {"migrate": "completed"},
        },
        "admin": {
            "enabled": False,
            "image": "build",
            "command": ["npm", "run", "admin"],
            "ports": ["3005:3005"],
            "user": "1001:1001",
            "volumes": ["data:/app/data"],
            "memory": "2g",
            "dependsOn": {"migrate": "completed"},
        },
    },
}


def changed(*changes: tuple[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of BASE with each ("dotted.path", value) set (DELETE removes the key)."""
    raw = copy.deepcopy(BASE if base is None else base)
    for path, value in changes:
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return raw


def load(raw: Any, detected: str | None = None) -> tuple[StackConfig, GpuProfile | None, list[str]]:
    config = validate(raw)
    profile, warnings = resolve_profile(config, detected)
    return config, profile, warnings


def assert_one_line(err: ConfigError) -> None:
    message = str(err)
    assert message.startswith("gpu-deploy:"), message
    assert "\n" not in message and "\r" not in message, message
    assert len(message.splitlines()) == 1, message


def rejected(raw: Any, key: str, fragment: str, detected: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(raw, detected)
    message = str(info.value)
    assert_one_line(info.value)
    assert message.startswith(f"gpu-deploy:{key}: "), message
    assert fragment in message.removeprefix(f"gpu-deploy:{key}: "), message
    return message


# ---------------------------------------------------------------- the valid base
def test_base_config_validates_and_resolves() -> None:
    config, profile, warnings = load(BASE)
    assert config.profile == "p40"
    assert isinstance(config.target, DockerTarget)
    assert config.target.host_key == HOST_KEY
    assert config.target.root == "/srv/english-listening-trainer"
    assert config.services["app"].gpu == GpuRequest("all")
    assert config.services["app"].depends_on == {"migrate": "completed"}
    assert config.services["app"].healthcheck is not None
    assert config.services["app"].healthcheck.start_period == 60
    assert config.services["app"].memory == 16 * 1024
    assert config.services["migrate"].effective_restart == "no"
    assert not config.services["admin"].enabled
    assert profile is not None and profile.key == "p40"
    assert profile.cuda_version == "12.1.1" and profile.wheel_flavour == "cu121"
    assert profile.torch_version == "2.3.0"
    assert warnings == []


@pytest.mark.parametrize("path", sorted(ROOT.glob("Pulumi.*.yaml")), ids=lambda p: p.name)
def test_shipped_stacks_validate(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    raw = {k.partition(":")[2]: v for k, v in doc["config"].items() if k.startswith("gpu-deploy:")}
    config, profile, _ = load(raw)
    assert (profile is None) == (config.profile == "auto")


def test_auto_profile() -> None:
    raw = changed(("profile", "auto"), ("cuda", {}))
    assert load(raw)[1:] == (None, [])  # an SSH host: the preflight decides
    assert load(raw, "h100")[1] == PROFILES["h100"]
    _, profile, warnings = load(changed(("services.app.gpu", "none"), base=raw), "cpu")
    assert profile == PROFILES["cpu"]
    assert warnings == ["profile auto: no NVIDIA GPU found on the target, falling back to cpu"]


def test_cpu_leaves_out_the_cuda_choices_named_or_detected() -> None:
    """The stack's CUDA release and wheel index are for a GPU: the cpu profile, named or what `auto` falls
    back to, resolves (in the one resolve_profile) to plain cpu with the stack's torch version."""
    assert BASE["cuda"]["version"] == "12.1.1" and BASE["cuda"]["wheelIndex"] == "cu121"
    named = load(changed(("profile", "cpu"), ("services.app.gpu", "none")))[1]
    detected = load(changed(("profile", "auto"), ("services.app.gpu", "none")), "cpu")[1]
    for profile in (named, detected):
        assert profile is not None
        assert (profile.key, profile.cuda_version, profile.wheel_flavour) == ("cpu", None, "cpu")
        assert profile.torch_version == "2.3.0"


def test_auto_on_an_ssh_host_names_the_cuda_key_no_card_can_run() -> None:
    """Each CUDA choice is checked on its own, so the key is the one at fault (not found in the message)."""
    auto = ("profile", "auto")
    rejected(changed(auto, ("cuda", {"driver": "400"})), "cuda.driver", "no supported card can use this")
    rejected(changed(auto, ("cuda", {"wheelIndex": "cu999"})), "cuda.wheelIndex", "unknown PyTorch wheel")
    rejected(changed(auto, ("cuda", {"version": "12.7.0"})), "cuda.version", "no known minimum driver")


# ---------------------------------------------------------------- unknown and missing keys
@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        (
            "bogus",
            "cards, cuda, dcgm, gpuOperator, gpuSharing, image, nodes, profile, provision, services, target",
        ),
        ("target.bogus", "bastion, gpus, host, hostKey, kind, port, root, sshKey, user"),
        (
            "image.bogus",
            "appUid, buildArgs, context, dockerfile, keepReleases, registry, repository, tag, target",
        ),
        (
            "services.app.bogus",
            "build, command, cpu, cpuBuild, cpuEnv, cpuFallback, cpuImage, cpus, dependsOn, "
            "driverCapabilities, enabled, entrypoint, env, gpu, gpuMemory, healthcheck, image, ipc, memory, "
            "migProfile, oneShot, ports, profile, replicas, requires, restart, rollout, runOn, secretEnv, "
            "shmSize, smoke, smokeDeadline, storage, test, ulimits, user, volumes",
        ),
        ("services.app.healthcheck.bogus", "command, http, interval, retries, startPeriod, timeout"),
        ("services.app.healthcheck.http.bogus", "path, port"),
        ("services.migrate.build.bogus", "args, context, dockerfile, target"),
        ("cuda.bogus", "driver, mig, torchVersion, version, wheelIndex"),
        (
            "provision.bogus",
            "driver, driverBranch, driverHold, kernelModules, privileges, reboot, runtime, toolkit",
        ),
    ],
)
def test_unknown_key_lists_the_allowed_ones(path: str, allowed: str) -> None:
    message = rejected(changed((path, 1)), path, "unknown key")
    assert message.endswith(f"; allowed: {allowed}")


def test_unknown_key_in_bastion() -> None:
    bastion = {"host": "jump.internal", "hostKey": HOST_KEY, "bogus": 1}
    rejected(
        changed(("target.bastion", bastion)), "target.bastion.bogus", "allowed: host, hostKey, port, user"
    )


@pytest.mark.parametrize(
    "path",
    [
        "profile",
        "target",
        "services",
        "target.kind",
        "image.repository",
        "services.app.image",
        "services.app.healthcheck.http.port",
        "services.app.healthcheck.http.path",
    ],
)
def test_missing_required_key(path: str) -> None:
    rejected(changed((path, DELETE)), path, "required")


# ---------------------------------------------------------------- literals and the target
@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        ("profile", "v100", 'or of the stack\'s own `cards`, got "v100"'),
        ("profile", "P40", 'got "P40"'),
        ("target.kind", "swarm", 'expected one of "docker", "kubernetes", got "swarm"'),
        ("services.app.restart", "sometimes", '"no", "on-failure", "always", "unless-stopped"'),
        ("services.app.dependsOn.migrate", "done", '"started", "healthy", "completed", got "done"'),
        ("provision.driver", "upgrade", '"install", "verify", "skip"'),
        ("provision.kernelModules", "nouveau", '"proprietary", "open"'),
        ("provision.runtime", "podman", '"docker", "containerd", "microk8s"'),
        ("provision.reboot", "always", '"never", "if-needed"'),
    ],
)
def test_literal_choices(path: str, value: str, fragment: str) -> None:
    rejected(changed((path, value)), path, fragment)


def test_ssh_host_needs_a_host_key() -> None:
    rejected(
        changed(("target.hostKey", DELETE)),
        "target.hostKey",
        "required for an SSH host: pin the server's key (ssh-keyscan -t ed25519 p40.gpu.internal)",
    )
    # A local Docker engine has no SSH connection to pin.
    local = changed(("target", {"kind": "docker", "host": "local", "root": "/srv/app"}))
    assert load(local)[0].target.is_local


# Real public keys made with ssh-keygen (public keys are no secret).
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL8war8sJe6U3kmQHIT7Umy2qtAlRF7xs29MLzDt2aNi"
ECDSA_256 = (
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBIoKl98itahOqrprcFuksqOtBs2q9u/"
    "fVTc4JV55AcwYjZmm8j6o1d4uG5RXIM+PRRfHubDBO5a32dqBa9wS8R0="
)
ECDSA_384 = (
    "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBFmcgM1oBqZnARM9/ZYm7AOL2mTDlywJKLe"
    "qxXGl6UwKsvDte4b3LFh0JYTCHfshXgFkvm6pSwGnAu5I6czCNlvdFme8k8rjm7WsdNKMW8eFIzCjWby4PnIdeZ+KoiEkFQ=="
)
ECDSA_521 = (
    "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBAHoysCJE0e4k34GeU1fEZMINJMKszertOq"
    "fQGYRtJ7dmlYdqdTEbSNmuUs4jwkgJ6VwunIirY2NpiNloyN9tjjxlQGTQ66iWjpN1hOgq9BzWkVGev6k8jXYMylWuUWm5XxB1tSyFG9vS/"
    "NIrWjZhDz/7gc/zs/apMDfTm49r28Wt/hs+g=="
)
RSA = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDE5FfEMujhUCEXzbuzwIasYubvjk0//CbAih8HrXXQ98BXburkOvEuVH6XF1k1YvmIgV2O"
    "oz3fecSwjOsKlwH9F62IcNn99hWzVeJ0tQJO3XwAFl60WJ3UHFXH8zD9Kt8LBsX43Olchl+gtvUbf7irFwyb4X7ITICcTqeZDqPf5TNSwFe5"
    "gnjjEm73ZO8zPj07EXRYZlfkmRQ+n1wKg6VWQgupkdtaKPB0anc92VyGPPAa4KNPVqDpYBHgysaXwt7sGT6puuDJiNL7oQM/Icdcq1DIbvyG"
    "HJJ0gF4memJlHGBbzTL8aqEaa9rjVSsYkwpEBUzMAHX0+0RbxC9SCs+Z"
)


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("AAAAC3NzaC1lZDI1NTE5", 'expected a public host key such as "ssh-ed25519'),
        ("ssh-ed25519", 'expected a public host key such as "ssh-ed25519'),
        ("", 'expected a public host key such as "ssh-ed25519'),
        ("ssh-ed25519 AAAA\nssh-rsa AAAA", "a host key is one line"),
        ("ssh-dss AAAAB3Nza", "host key type 'ssh-dss' is not one of ssh-ed25519, ecdsa-sha2-nistp256"),
        (RSA, "RSA host keys cannot be pinned: pulumi-command would offer only the SHA-1 ssh-rsa signature"),
        ("ssh-ed25519 AAAA!!!!", "is not valid base64 key data"),
        # a regex-shaped key that is no key: the old placeholders, a truncated key, another type's data
        (
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPpr0dP40HostKeyPinnedFromSshKeyscanReplaceMe",
            "not valid base64",
        ),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL8war8sJe6U3kmQHIT7Umy2qtAl", "shorter than its fields say"),
        ("ssh-ed25519 " + ECDSA_256.split()[1], "its fields name another type"),
        ("ecdsa-sha2-nistp384 " + ECDSA_256.split()[1], "its fields name another type"),
    ],
)
def test_host_key_must_parse(key: str, fragment: str) -> None:
    rejected(changed(("target.hostKey", key)), "target.hostKey", fragment)


@pytest.mark.parametrize(
    "key", [HOST_KEY, ED25519, ECDSA_256, ECDSA_384, ECDSA_521, ED25519 + " root@gpu-host"]
)
def test_host_key_accepted(key: str) -> None:
    target = load(changed(("target.hostKey", key)))[0].target
    assert isinstance(target, DockerTarget) and target.host_key == " ".join(key.split()[:2])


def test_host_key_as_ssh_keyscan_prints_it() -> None:
    target = load(changed(("target.hostKey", "p40.gpu.internal " + ED25519)))[0].target
    assert isinstance(target, DockerTarget) and target.host_key == ED25519


def test_bastion_host_key_is_checked_too() -> None:
    bastion = {"host": "jump.internal", "hostKey": RSA}
    rejected(changed(("target.bastion", bastion)), "target.bastion.hostKey", "RSA host keys cannot be pinned")
    rejected(changed(("target.bastion", {**bastion, "hostKey": ""})), "target.bastion.hostKey", "expected a")


@pytest.mark.parametrize("root", ["srv/app", "./srv", "/", "//", "/srv/../etc", "/srv/.."])
def test_root_must_be_absolute_not_slash_without_dotdot(root: str) -> None:
    rejected(changed(("target.root", root)), "target.root", "expected an absolute directory other than /")


def test_root_trailing_slash_is_dropped() -> None:
    assert load(changed(("target.root", "/srv/app/")))[0].target.root == "/srv/app"


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        ("target.port", 0, "greater than or equal to 1, got 0"),
        ("target.port", 65536, "less than or equal to 65535, got 65536"),
        ("target.port", "ssh", "valid integer"),
        ("services.app.healthcheck.http.port", 0, "greater than or equal to 1"),
        ("services.app.healthcheck.http.port", 70000, "less than or equal to 65535"),
        ("services.app.healthcheck.retries", 0, "greater than or equal to 1"),
        ("image.appUid", 0, "greater than or equal to 1"),
    ],
)
def test_number_ranges(path: str, value: Any, fragment: str) -> None:
    rejected(changed((path, value)), path, fragment)


def test_bastion_port_range() -> None:
    bastion = {"host": "jump.internal", "hostKey": HOST_KEY, "port": 0}
    rejected(changed(("target.bastion", bastion)), "target.bastion.port", "greater than or equal to 1")


# ---------------------------------------------------------------- GPUs
GPU_PROBLEM = 'expected "all", "none", a count >= 1 or a list of device ids, got '


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("two", GPU_PROBLEM + '"two"'),
        ("", GPU_PROBLEM + '""'),
        ("ALL", GPU_PROBLEM + '"ALL"'),
        (0, GPU_PROBLEM + "0"),
        ("0", GPU_PROBLEM + '"0"'),
        (-1, GPU_PROBLEM + "-1"),
        ("-1", GPU_PROBLEM + '"-1"'),
        (True, GPU_PROBLEM + "true"),
        (1.5, GPU_PROBLEM + "1.5"),
        ("²", GPU_PROBLEM + '"\\u00b2"'),
        ([], GPU_PROBLEM + "[]"),
        ({"count": 1}, GPU_PROBLEM + '{"count": 1}'),
        (
            ["gpu0"],
            'expected device indexes (0), GPU UUIDs (GPU-...), MIG UUIDs (MIG-...) or GPU:MIG indexes (0:1), got "gpu0"',
        ),
        (["GPU-xyz"], 'got "GPU-xyz"'),
        (["0\n"], 'got "0\\n"'),
        ([True], "got [true]"),
        ([0, 0], 'lists a device twice: ["0", "0"]'),
        ([GPU_UUID, GPU_UUID], "lists a device twice"),
        (["1", 1], 'lists a device twice: ["1", "1"]'),
    ],
)
def test_gpu_rejected(value: Any, fragment: str) -> None:
    rejected(changed(("services.app.gpu", value)), "services.app.gpu", fragment)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("all", GpuRequest("all")),
        ("none", GpuRequest("none")),
        (None, GpuRequest("none")),
        (False, GpuRequest("none")),
        *[(n, GpuRequest("count", count=n)) for n in (1, 2, 3, 4, 8)],
        ("2", GpuRequest("count", count=2)),
        ([0], GpuRequest("devices", device_ids=("0",))),
        ([0, 1, "3"], GpuRequest("devices", device_ids=("0", "1", "3"))),
        ([GPU_UUID], GpuRequest("devices", device_ids=(GPU_UUID,))),
        ([1, GPU_UUID], GpuRequest("devices", device_ids=("1", GPU_UUID))),
    ],
)
def test_gpu_accepted(value: Any, expected: GpuRequest) -> None:
    # a host with 8 GPUs (target.gpus): the plan places counts and device indexes on them
    raw = changed(("services.app.gpu", value), ("target.gpus", 8))
    assert load(raw)[0].services["app"].gpu == expected


@pytest.mark.parametrize("ids", [[MIG_UUID], ["0:1"], ["0:1", "0:2", MIG_UUID], [0, "1:0"]])
def test_mig_devices_on_h100(ids: list[Any]) -> None:
    raw = changed(("profile", "h100"), ("cuda", {"mig": True}), ("services.app.gpu", ids))
    config, profile, _ = load(raw)
    assert config.services["app"].gpu.uses_mig
    assert profile is not None and profile.mig_capable


@pytest.mark.parametrize("ids", [["0:1"], [MIG_UUID]])
@pytest.mark.parametrize("profile", ["p40", "a2", "a4000"])
def test_mig_devices_on_a_card_without_mig(profile: str, ids: list[str]) -> None:
    raw = changed(("profile", profile), ("services.app.gpu", ids))
    rejected(raw, "services.app.gpu", "has no MIG; MIG exists only on h100")


@pytest.mark.parametrize("profile", ["p40", "a2", "a4000"])
def test_cuda_mig_on_a_card_without_mig(profile: str) -> None:
    message = rejected(changed(("profile", profile), ("cuda.mig", True)), "cuda.mig", "has no MIG")
    assert PROFILES[profile].display_name in message


def test_cpu_profile_rejects_gpu_services() -> None:
    raw = changed(("profile", "cpu"), ("cuda", {}))
    rejected(raw, "services.app.gpu", 'profile cpu has no GPU: use gpu: none (or profile "auto")')
    config, profile, _ = load(changed(("services.app.gpu", "none"), base=raw))
    assert profile == PROFILES["cpu"]
    assert not config.services["app"].gpu.wants_gpu


# ---------------------------------------------------------------- ports, volumes, user
@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("3000", 'expected "HOST:CONTAINER", "IP:HOST:CONTAINER" or with "/udp", got "3000"'),
        (3000, 'with "/udp", got 3000'),
        ("a:b", 'got "a:b"'),
        ("3000:3000/sctp", 'got "3000:3000/sctp"'),
        ("localhost:80:80", 'got "localhost:80:80"'),
        ("0:3000", 'ports are 1-65535, got "0:3000"'),
        ("3000:0", "ports are 1-65535"),
        ("65536:80", "ports are 1-65535"),
        ("3000:70000", 'ports are 1-65535, got "3000:70000"'),
        (True, "got true"),
    ],
)
def test_ports_rejected(value: Any, fragment: str) -> None:
    rejected(changed(("services.app.ports", ["8080:8080", value])), "services.app.ports.1", fragment)


@pytest.mark.parametrize(
    ("value", "host_port", "container_port", "ip", "protocol"),
    [
        ("3000:3000", 3000, 3000, "", "tcp"),
        ("8080:80", 8080, 80, "", "tcp"),
        ("127.0.0.1:6379:6379", 6379, 6379, "127.0.0.1", "tcp"),
        ("[::1]:53:53/udp", 53, 53, "::1", "udp"),
        ("65535:1/tcp", 65535, 1, "", "tcp"),
    ],
)
def test_ports_accepted(value: str, host_port: int, container_port: int, ip: str, protocol: str) -> None:
    (port,) = load(changed(("services.app.ports", [value])))[0].services["app"].ports
    assert (port.host_port, port.container_port, port.host_ip, port.protocol) == (
        host_port,
        container_port,
        ip,
        protocol,
    )


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("../data:/app/data", "'..' is not allowed in a volume path"),
        ("data/../../etc:/app/data", "'..' is not allowed"),
        ("data:/app/../etc", "'..' is not allowed"),
        ("data:app/data", 'the container path must be absolute, got "app/data"'),
        ("data:/app/data:rx", 'expected "host:container" or "host:container:ro", got "data:/app/data:rx"'),
        ("data", 'expected "host:container"'),
        ("a:/b:ro:rw", 'expected "host:container"'),
        (":/app", 'expected "host:container"'),
        ("/:/host", "the host's / cannot be mounted"),
        (5, 'expected "host:container" or "host:container:ro", got 5'),
        ({"source": "data"}, 'got {"source": "data"}'),
    ],
)
def test_volumes_rejected(value: Any, fragment: str) -> None:
    rejected(changed(("services.app.volumes", [value])), "services.app.volumes.0", fragment)


def test_relative_volume_needs_target_root() -> None:
    rejected(
        changed(("target.root", DELETE)), "services.migrate.volumes", "relative host paths need target.root"
    )
    absolute = changed(
        ("target.root", DELETE),
        ("services.migrate.volumes", ["/srv/data:/app/data"]),
        ("services.app.volumes", ["/srv/data:/app/data:ro"]),
        ("services.admin.volumes", []),
    )
    volume = load(absolute)[0].services["app"].volumes[0]
    assert (volume.host, volume.container, volume.read_only) == ("/srv/data", "/app/data", True)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("nobody", 'expected a numeric "uid:gid" such as "1001:1001"'),
        ("1001:staff", 'got "1001:staff"'),
        ("1001:1001:1001", 'expected a numeric "uid:gid"'),
        ("-1", 'expected a numeric "uid:gid"'),
        (True, "got true"),
        ("0", 'containers run as a non-root user; got "0"'),
        (0, "containers run as a non-root user; got 0"),
        ("0:1001", 'containers run as a non-root user; got "0:1001"'),
        ("1001:0", 'containers run as a non-root user; got "1001:0"'),
    ],
)
def test_user_rejected(value: Any, fragment: str) -> None:
    rejected(changed(("services.app.user", value)), "services.app.user", fragment)


@pytest.mark.parametrize(
    ("value", "uid", "gid"), [("1001:1001", 1001, 1001), ("999", 999, 999), (1000, 1000, 1000)]
)
def test_user_accepted(value: Any, uid: int, gid: int) -> None:
    user = load(changed(("services.app.user", value)))[0].services["app"].user
    assert (user.uid, user.gid) == (uid, gid)


# ---------------------------------------------------------------- sizes and durations
@pytest.mark.parametrize("path", ["services.app.memory", "services.app.shmSize"])
@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("lots", 'expected a size such as "4g" or "512m", got "lots"'),
        ("4x", 'got "4x"'),
        ("-1g", 'got "-1g"'),
        ("", 'got ""'),
        (True, "got true"),
        ([4], "got [4]"),
        ("1k", 'expected at least 4m, got "1k"'),
        ("2m", 'expected at least 4m, got "2m"'),
        (2, 'a size needs a unit: "2m" or "2g"? got 2'),  # `memory: 24` is not 24 MiB any more
        ("24", 'a size needs a unit: "24m" or "24g"? got "24"'),
        ("9" * 400 + "g", "too large"),
        ("17t", "at most 16t"),
    ],
)
def test_sizes_rejected(path: str, value: Any, fragment: str) -> None:
    rejected(changed((path, value)), path, fragment)


@pytest.mark.parametrize(
    ("value", "mib"),
    [
        ("4g", 4096),
        ("512m", 512),
        ("2GiB", 2048),
        ("1.5g", 1536),
        ("1t", 1024 * 1024),
        ("8192k", 8),
        ("64MiB", 64),
    ],
)
def test_sizes_accepted(value: Any, mib: int) -> None:
    config = load(changed(("services.app.memory", value), ("services.app.shmSize", value)))[0]
    assert (config.services["app"].memory, config.services["app"].shm_size) == (mib, mib)


@pytest.mark.parametrize("field", ["interval", "timeout", "startPeriod"])
@pytest.mark.parametrize("value", ["soon", "", "30", "1.5s", "30 s", "1s1m", -5, 1.5, True, [30]])
def test_durations_rejected(field: str, value: Any) -> None:
    path = f"services.app.healthcheck.{field}"
    rejected(changed((path, value)), path, 'expected a duration such as "30s", "1m" or "1m30s", got ')


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30), ("1m", 60), ("1m30s", 90), ("2h", 7200), ("1h1m1s", 3661), (45, 45), (0, 0)],
)
def test_durations_accepted(value: Any, seconds: int) -> None:
    check = load(changed(("services.app.healthcheck.interval", value)))[0].services["app"].healthcheck
    assert check is not None and check.interval == seconds


# ---------------------------------------------------------------- health checks and images
@pytest.mark.parametrize(
    "healthcheck",
    [
        {"interval": "30s"},
        {"http": {"path": "/health", "port": 3000}, "command": ["true"]},
    ],
)
def test_healthcheck_needs_exactly_one_probe(healthcheck: dict[str, Any]) -> None:
    rejected(
        changed(("services.app.healthcheck", healthcheck)),
        "services.app.healthcheck",
        'give exactly one of "http" (path and port) or "command"',
    )


def test_healthcheck_http_path_is_absolute() -> None:
    path = "services.app.healthcheck.http.path"
    rejected(changed((path, "health")), path, 'expected a value matching ^/, got "health"')


@pytest.mark.parametrize("command", [["redis-cli", "ping"], "curl -f http://localhost:3000/"])
def test_healthcheck_command_accepted(command: Any) -> None:
    raw = changed(("services.app.healthcheck", {"command": command}))
    check = load(raw)[0].services["app"].healthcheck
    assert check is not None and check.command == command and check.http is None


def test_one_shot_has_no_healthcheck() -> None:
    rejected(
        changed(("services.migrate.healthcheck", {"command": ["true"]})),
        "services.migrate.healthcheck",
        "a one-shot job runs to completion; it has no health check",
    )


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        ("redis", 'pin a tag or digest (e.g. redis:7.2.4): "redis" is not reproducible'),
        ("library/redis", "pin a tag or digest"),
        ("redis:latest", 'pin a real tag or digest: "redis:latest" changes under you'),
        ("ghcr.io/org/app:latest", "changes under you"),
        ("fedirz/faster-whisper-server:latest-cuda", "changes under you (floating tag 'latest-cuda')"),
        ("Redis:7.2.4", 'expected "build" or a pinned image such as "redis:7.2.4", got "Redis:7.2.4"'),
        ("redis:7.2.4\n", 'got "redis:7.2.4\\n"'),
        ("redis:", 'got "redis:"'),
        ("", 'got ""'),
        ("Build", 'got "Build"'),
        (True, "got true"),
    ],
)
def test_image_refs_rejected(image: Any, fragment: str) -> None:
    rejected(changed(("services.app.image", image)), "services.app.image", fragment)


@pytest.mark.parametrize(
    "image",
    [
        "redis:7.2.4",
        "redis:latest@sha256:" + "a" * 64,
        "redis@sha256:" + "0" * 64,
        "ghcr.io/org/app:1.2.3",
        "registry.internal:5000/team/app:v1",
        "build",
    ],
)
def test_image_refs_accepted(image: str) -> None:
    assert load(changed(("services.app.image", image)))[0].services["app"].image == image


def test_build_needs_an_image_section() -> None:
    rejected(
        changed(("image", DELETE)),
        "services.migrate.image",
        '"build" needs an image section (gpu-deploy:image)',
    )


def test_build_override_only_on_a_built_service() -> None:
    raw = changed(("services.migrate.image", "node:20.11.1"))
    rejected(
        raw, "services.migrate.build", 'only a service with image: "build" is built (image is node:20.11.1)'
    )


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("image.repository", "English-Listening"),
        ("image.repository", ""),
        ("image.tag", "-bad"),
        ("image.tag", "a b"),
    ],
)
def test_image_section_patterns(path: str, value: str) -> None:
    rejected(changed((path, value)), path, "expected a value matching ")


# ---------------------------------------------------------------- secrets
@pytest.mark.parametrize("name", ["DB_PASSWORD", "JWT_SECRET", "GITHUB_TOKEN", "OPENAI_API_KEY", "db_passwd"])
def test_secret_looking_env_must_move_to_secret_env(name: str) -> None:
    rejected(
        changed((f"services.app.env.{name}", "hunter2")),
        f"services.app.env.{name}",
        "looks like a credential; move it to secretEnv (stored encrypted)",
    )
    # secretEnv is the place for it, and an empty plain value leaks nothing.
    assert (
        load(changed((f"services.app.secretEnv.{name}", "hunter2")))[0].services["app"].secret_env[name]
        == "hunter2"
    )
    assert load(changed((f"services.app.env.{name}", "")))[0].services["app"].env[name] == ""


@pytest.mark.parametrize("name", ["NPM_TOKEN", "PIP_PASSWORD", "AWS_SECRET_ACCESS_KEY"])
def test_secret_looking_build_args(name: str) -> None:
    rejected(
        changed(("image.buildArgs", {"NODE_ENV": "production", name: "x"})),
        f"image.buildArgs.{name}",
        "build args are stored in the image history",
    )


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        ("services.app.env.PORT", [3000], "expected a string, number or boolean, got [3000]"),
        ("services.app.env.PORT", None, "expected a string, number or boolean, got null"),
        ("services.app.secretEnv.API", {"a": 1}, 'got {"a": 1}'),
        ("image.buildArgs.NODE_ENV", [1], "got [1]"),
    ],
)
def test_env_values_are_scalars(path: str, value: Any, fragment: str) -> None:
    rejected(changed((path, value)), path, fragment)


def test_env_scalars_become_strings() -> None:
    env = load(changed(("services.app.env", {"N": 3, "F": 1.5, "B": True, "S": "x"})))[0].services["app"].env
    assert env == {"N": "3", "F": "1.5", "B": "true", "S": "x"}


# ---------------------------------------------------------------- dependencies
def _services(**services: dict[str, Any]) -> dict[str, Any]:
    return changed(("services", {name: {"image": "redis:7.2.4", **svc} for name, svc in services.items()}))


HEALTHY = {"healthcheck": {"command": ["redis-cli", "ping"]}}


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        (
            changed(("services.app.dependsOn.ghost", "started")),
            "services.app.dependsOn.ghost",
            "no such service (services: migrate, app, admin)",
        ),
        (
            changed(("services.app.dependsOn.app", "started")),
            "services.app.dependsOn.app",
            "cannot depend on itself",
        ),
        (
            changed(("services.app.dependsOn.admin", "started")),
            "services.app.dependsOn.admin",
            "admin is disabled (enabled: false) but app needs it",
        ),
        (
            _services(db=HEALTHY, web={"dependsOn": {"db": "completed"}}),
            "services.web.dependsOn.db",
            '"completed" needs db to be a oneShot job',
        ),
        (
            _services(db={}, web={"dependsOn": {"db": "healthy"}}),
            "services.web.dependsOn.db",
            '"healthy" needs a healthcheck on db',
        ),
        (
            changed(("services.app.dependsOn.migrate", "started")),
            "services.app.dependsOn.migrate",
            'migrate is a oneShot job: wait for it with "completed"',
        ),
        (
            changed(("services.app.dependsOn.migrate", "healthy")),
            "services.app.dependsOn.migrate",
            'migrate is a oneShot job: wait for it with "completed"',
        ),
        (
            changed(("services.app.dependsOn", ["migrate"])),
            "services.app.dependsOn.migrate",
            'wait for it with "completed"',
        ),
        (
            _services(a={"dependsOn": ["b"]}, b={"dependsOn": ["a"]}),
            "services.a.dependsOn",
            "dependency cycle: a -> b -> a",
        ),
        (
            _services(a={"dependsOn": ["b"]}, b={"dependsOn": {"c": "started"}}, c={"dependsOn": ["a"]}),
            "services.a.dependsOn",
            "dependency cycle: a -> b -> c -> a",
        ),
        (
            _services(x={}, y={"dependsOn": ["z"]}, z={"dependsOn": ["y"]}),
            "services.y.dependsOn",
            "dependency cycle: y -> z -> y",
        ),
    ],
)
def test_depends_on_rejected(raw: dict[str, Any], key: str, fragment: str) -> None:
    rejected(raw, key, fragment)


def test_depends_on_short_form_and_start_order() -> None:
    raw = _services(
        db=HEALTHY,
        seed={"oneShot": True, "dependsOn": {"db": "healthy"}},
        web={"dependsOn": ["db"]},
        worker={"dependsOn": {"web": "started", "seed": "completed"}},
    )
    config = validate(raw)
    assert config.services["web"].depends_on == {"db": "started"}
    # A disabled service may depend on another disabled one.
    assert (
        validate(changed(("services.admin.dependsOn", {"migrate": "completed"}))).services["admin"].depends_on
    )
    from stacks.config import ResolvedStack

    stack = ResolvedStack("s", config, PROFILES["p40"], frozenset())
    order = stack.start_order()
    assert order.index("db") < order.index("seed") < order.index("worker")
    assert order.index("web") < order.index("worker")


# ---------------------------------------------------------------- services
@pytest.mark.parametrize("name", ["App", "1app", "my_app", "-app", "a" * 42, "a\n", ""])
def test_service_name_pattern(name: str) -> None:
    raw = changed(("services", {name: {"image": "redis:7.2.4"}}))
    escaped = name.replace("\n", "\\n")
    rejected(raw, f"services.{escaped}", "expected a value matching ^[a-z][a-z0-9-]{0,40}$")


@pytest.mark.parametrize("name", ["a", "queue-worker", "redis2", "a" * 41, "str", "int", "bool"])
def test_service_name_accepted(name: str) -> None:
    raw = changed(("services", {name: {"image": "redis:7.2.4"}}))
    assert list(validate(raw).services) == [name]


@pytest.mark.parametrize("name", ["str", "int", "bool", "list-x"])
def test_service_named_like_a_type_keeps_its_key(name: str) -> None:
    raw = changed(("services", {name: {"image": "redis:7.2.4", "gpu": "two"}}))
    rejected(raw, f"services.{name}.gpu", GPU_PROBLEM + '"two"')
    env_name = name.replace("-", "_")  # env names are [A-Za-z_][A-Za-z0-9_]*
    raw = changed(("services.app.env", {env_name: [1]}))
    rejected(raw, f"services.app.env.{env_name}", "expected a string, number or boolean")


def test_empty_services() -> None:
    rejected(changed(("services", {})), "services", "declare at least one service")


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        ("services", [], "valid dictionary"),
        ("services.app", "redis:7.2.4", "valid dictionary"),
        ("services.app.command", 5, "valid list, got 5"),
        ("services.app.oneShot", "sometimes", "valid boolean"),
        ("services.app.enabled", "maybe", "valid boolean"),
        ("target", "ssh://host", "valid dictionary"),
        ("cuda.mig", "yes please", "valid boolean"),
    ],
)
def test_wrong_types(path: str, value: Any, fragment: str) -> None:
    rejected(changed((path, value)), path, fragment)


@pytest.mark.parametrize("raw", [None, [], "profile: p40", 5])
def test_raw_config_must_be_a_mapping(raw: Any) -> None:
    rejected(raw, "(root)", "expected a mapping of gpu-deploy keys")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (changed(("x\ny", 1)), "x\\ny"),
        (changed(("services.app.env.DB_PASSWORD\nX", "v")), "services.app.env.DB_PASSWORD\\nX"),
        (changed(("services.app.env.A\u2028B", [1])), "services.app.env.A\\u2028B"),
    ],
)
def test_keys_with_line_breaks_stay_on_one_line(raw: dict[str, Any], key: str) -> None:
    rejected(raw, key, "")


def test_non_string_keys() -> None:
    rejected(changed(("services.app.env", {1: "x"})), "services.app.env.1", "environment variable name")
    raw = copy.deepcopy(BASE)
    raw["services"][7] = {"image": "redis:7.2.4"}
    rejected(raw, "services.7", "valid string, got 7")


def test_huge_numbers_are_config_errors() -> None:
    huge = 10**5000  # past Python's int/str conversion limit
    rejected(changed(("target.port", huge)), "target.port", "less than or equal to 65535")
    rejected(changed(("services.app.memory", huge)), "services.app.memory", "")
    rejected(changed(("services.app.memory", 10**400)), "services.app.memory", "needs a unit")


# ---------------------------------------------------------------- CUDA overrides and provisioning
@pytest.mark.parametrize(
    ("changes", "key", "fragment"),
    [
        (
            [("cuda", {"version": "13.0.1"})],
            "cuda.version",
            "a Tesla P40 (Pascal, sm_61) cannot run CUDA 13.0: CUDA 13 dropped Pascal; use a 12.x release",
        ),
        ([("cuda", {"version": "13.0.0", "wheelIndex": "cu126"})], "cuda.version", "CUDA 13 dropped Pascal"),
        ([("cuda", {"version": "12.7.0"})], "cuda.version", "no known minimum driver for CUDA 12.7"),
        ([("cuda", {"version": "12.4"})], "cuda.version", "a CUDA version is X.Y.Z (e.g. 12.4.1)"),
        (
            [("cuda", {"wheelIndex": "cu128"})],
            "cuda.wheelIndex",
            "cu128 wheels carry no sm_61 kernels, so a Tesla P40 fails with 'no kernel image is available'; "
            "use cu126 or older",
        ),
        ([("cuda", {"wheelIndex": "cu129"})], "cuda.wheelIndex", "cu129 wheels carry no sm_61 kernels"),
        (
            [("cuda", {"version": "12.4.1", "wheelIndex": "cu130"})],
            "cuda.wheelIndex",
            "cu130 wheels carry no sm_61",
        ),
        (
            [("cuda", {"wheelIndex": "cu999"})],
            "cuda.wheelIndex",
            "unknown PyTorch wheel index 'cu999' (known: cu118",
        ),
        (
            [("profile", "h100"), ("cuda", {"wheelIndex": "rocm6.2"})],
            "cuda.wheelIndex",
            "unknown PyTorch wheel index",
        ),
        (
            [("cuda", {"version": "12.4.1", "driver": "525.60.13"})],
            "cuda.driver",
            f"driver 525.60.13 is below {PROFILES['p40'].min_driver}, the minimum for CUDA 12.4",
        ),
        ([("cuda", {"driver": "535"})], "cuda.driver", f"driver 535 is below {PROFILES['p40'].min_driver}"),
        ([("cuda.driver", "530.30.01")], "cuda.driver", "below 530.30.02"),
        ([("cuda.driver", "latest")], "cuda.driver", "not a version: 'latest'"),
        ([("provision", {"driverBranch": "470"})], "provision.driverBranch", "driver 470 is below 530.30.02"),
        (
            [("provision", {"driverBranch": "5800"})],
            "provision.driverBranch",
            "expected a value matching ^\\d{3}$",
        ),
        (
            [("provision", {"kernelModules": "open"})],
            "provision.kernelModules",
            "the Tesla P40 (Pascal) needs the proprietary kernel modules; the open modules need Turing or newer",
        ),
    ],
)
def test_cuda_and_provision_rejected(changes: list[tuple[str, Any]], key: str, fragment: str) -> None:
    rejected(changed(*changes), key, fragment)


def test_auto_profile_checks_the_detected_card() -> None:
    raw = changed(("profile", "auto"), ("cuda", {"version": "13.0.1"}))
    assert load(raw)[1] is None  # undecided until the host's preflight
    rejected(raw, "cuda.version", "CUDA 13 dropped Pascal", detected="p40")
    assert load(raw, "h100")[1] is not None


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        ([("cuda", {})], lambda p: p.cuda_version == "12.4.1" and p.wheel_flavour == "cu124"),
        ([("cuda", {"version": "12.6.3", "wheelIndex": "cu126"})], lambda p: p.wheel_flavour == "cu126"),
        ([("cuda", {"wheelIndex": "cpu"})], lambda p: p.wheel_flavour == "cpu"),
        ([("cuda.driver", "530.30.02")], lambda p: p.min_driver == "530.30.02"),
        ([("cuda.driver", "580.95.05")], lambda p: True),
        ([("provision", {"driverBranch": "580", "kernelModules": "proprietary"})], lambda p: True),
        (
            [("profile", "h100"), ("cuda", {"version": "13.0.1", "wheelIndex": "cu130"})],
            lambda p: p.max_cuda_major is None,
        ),
        (
            [("profile", "a4000"), ("cuda", {}), ("provision", {"kernelModules": "open"})],
            lambda p: p.key == "a4000",
        ),
        ([("profile", "cpu"), ("services.app.gpu", "none")], lambda p: not p.is_gpu),
    ],
)
def test_cuda_and_provision_accepted(
    changes: list[tuple[str, Any]], check: Callable[[GpuProfile], bool]
) -> None:
    profile = load(changed(*changes))[1]
    assert profile is not None and check(profile)


# ---------------------------------------------------------------- property tests
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_KNOWN_WORDS = st.sampled_from(
    [
        "all", "none", "build", "4g", "512m", "2GiB", "0", "1", "0:1", MIG_UUID, GPU_UUID, "30s", "1m30s",
        "3000:3000", "data:/app/data", "../x:/y", "1001:1001", "0:0", "redis:7.2.4", "redis", "completed",
        "healthy", "started", "cu128", "13.0.1", "12.4.1", "470", "open", "p40", "h100", "cpu", "auto",
        "docker", "local", HOST_KEY, "/srv/x", "/", "migrate", "app", "admin", "\n", "",
    ]
)  # fmt: skip
JSON = st.recursive(
    _SCALARS | _KNOWN_WORDS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | _KNOWN_WORDS, inner, max_size=4)
    ),
    max_leaves=12,
)
DETECTED = st.sampled_from([None, *PROFILES])
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path and list index in a JSON-like tree."""
    found: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append((*prefix, key))
        found += _paths(child, (*prefix, key))
    return found


BASE_PATHS = _paths(BASE)
FIELD_NAMES = sorted({str(path[-1]) for path in BASE_PATHS if isinstance(path[-1], str)} | {"bogus"})


def never_crashes(raw: Any, detected: str | None) -> None:
    try:
        load(raw, detected)
    except ConfigError as err:
        assert_one_line(err)


@PROPERTY
@given(data=st.data(), detected=DETECTED)
def test_random_leaves_and_keys_of_the_base(data: st.DataObject, detected: str | None) -> None:
    raw = copy.deepcopy(BASE)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(raw) or [("profile",)]))
        *parents, last = path
        node: Any = raw
        for part in parents:
            node = node[part]
        if data.draw(st.booleans()) or not isinstance(node, dict):
            node[last] = data.draw(JSON)  # replace the value
        else:
            new_key = data.draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=8))
            node[new_key] = node.pop(last)  # rename the key
    never_crashes(raw, detected)


@PROPERTY
@given(
    raw=JSON | st.dictionaries(st.sampled_from([*BASE, "provision"]) | st.text(max_size=8), JSON),
    detected=DETECTED,
)
def test_random_objects_as_the_whole_config(raw: Any, detected: str | None) -> None:
    never_crashes(raw, detected)


SERVICE_FIELDS = [
    "image", "build", "command", "gpu", "ports", "env", "secretEnv", "volumes", "user", "memory", "shmSize",
    "healthcheck", "dependsOn", "oneShot", "enabled", "restart", "driverCapabilities",
]  # fmt: skip


@PROPERTY
@given(
    service=st.sampled_from(["migrate", "app", "admin"]),
    fields=st.dictionaries(st.sampled_from(SERVICE_FIELDS), JSON, min_size=1, max_size=4),
    section=st.tuples(
        st.sampled_from(["cuda", "provision", "target", "image"]),
        st.dictionaries(st.text(max_size=12) | st.sampled_from(FIELD_NAMES), JSON, max_size=2),
    ),
    profile=st.sampled_from(["p40", "h100", "cpu", "auto", "a2"]),
    detected=DETECTED,
)
def test_random_service_fields(
    service: str,
    fields: dict[str, Any],
    section: tuple[str, dict[str, Any]],
    profile: str,
    detected: str | None,
) -> None:
    """Random values for each service field, plus a few random keys in another section."""
    raw = changed(("profile", profile), *((f"services.{service}.{k}", v) for k, v in fields.items()))
    name, extra = section
    raw[name] = {**raw.get(name, {}), **extra}
    never_crashes(raw, detected)


# ---------------------------------------------------------------- the offline CLI
def _plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stacks", "plan", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _prod_with(tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    doc = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())
    edit(doc["config"])
    path = tmp_path / "Pulumi.broken.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("edit", "line"),
    [
        (
            lambda c: c["gpu-deploy:services"]["app"].update(gpu="two"),
            'gpu-deploy:services.app.gpu: expected "all", "none", a count >= 1 or a list of device ids, got "two"',
        ),
        (
            lambda c: c["gpu-deploy:services"]["app"]["env"].update({"DB_PASSWORD\nX": "v"}),
            "gpu-deploy:services.app.env.DB_PASSWORD\\nX: an environment variable name is letters, digits and '_', "
            'not starting with a digit; got "DB_PASSWORD\\nX"',
        ),
        (
            lambda c: c.update({"gpu-deploy:cuda": {"version": "13.0.1"}}),
            "gpu-deploy:cuda.version: a Tesla P40 (Pascal, sm_61) cannot run CUDA 13.0: CUDA 13 dropped Pascal; "
            "use a 12.x release",
        ),
    ],
    ids=["gpu-two", "newline-key", "cuda-13-on-p40"],
)
def test_cli_config_error_exits_2_with_one_line(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], line: str
) -> None:
    result = _plan("prod", "--config-file", str(_prod_with(tmp_path, edit)))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [line]
    assert result.stdout == ""
    assert "Traceback" not in result.stdout + result.stderr


def test_cli_plans_a_cpu_stack_that_keeps_its_cuda_choices(tmp_path: Path) -> None:
    """`profile: cpu` beside `cuda.version` once crashed the image build (exit 1): the image's profile was
    resolved a second way, without the cpu guard. Now one resolution feeds the build args too."""

    def cpu(config: dict[str, Any]) -> None:
        assert config["gpu-deploy:cuda"]["version"]  # kept: it is for a GPU
        config["gpu-deploy:profile"] = "cpu"
        config.pop("gpu-deploy:dcgm", None)  # no GPU to watch: refused on the cpu profile
        for service in config["gpu-deploy:services"].values():
            service["gpu"] = "none"
            service.pop("gpuMemory", None)  # a GPU's budget: refused on gpu none
            service.pop("cpuEnv", None)  # the CPU switch of a GPU service: refused on gpu none

    result = _plan("prod", "--config-file", str(_prod_with(tmp_path, cpu)), "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["outputs"]["profile"] == "cpu"
    images = [r["inputs"] for r in plan["resources"] if r["type"] == "docker:index/image:Image"]
    assert images
    for image in images:
        args = image["build"]["args"]
        assert (args["GPU_PROFILE"], args["CUDA_VERSION"], args["TORCH_VERSION"]) == ("cpu", "none", "2.3.0")


def test_cli_missing_stack_file_exits_1(tmp_path: Path) -> None:
    for args in (("no-such-stack",), ("prod", "--config-file", str(tmp_path / "missing.yaml"))):
        result = _plan(*args)
        assert result.returncode == 1, result.stderr
        assert "not found" in result.stderr
        assert "Traceback" not in result.stdout + result.stderr


def test_plain_env_that_only_contains_a_secret_word_is_accepted() -> None:
    # Hugging Face's switch is not a token; the rule matches whole name segments.
    load(changed(("services.app.env", {"TOKENIZERS_PARALLELISM": "false", "HOST_KEY_DIR": "/keys"})))
    rejected(changed(("services.app.env", {"HF_TOKEN": "hf_x"})), "services.app.env.HF_TOKEN", "secretEnv")
