"""What both targets do on GPU machines over SSH: the connection, and the host steps with their settings.

A Docker host (stacks/docker.py) and each listed Kubernetes GPU node (stacks/kubernetes.py, `nodes`) get
the same steps: the runners copied to the deploy user's own place, then GpuHost (driver, the preflight for
the card, toolkit, container runtime, a GPU container). This module imports no provider SDK beyond
pulumi-command, so each target still loads only its own.
"""

from __future__ import annotations

from components.core.catalog import GpuProfile
from components.remote.gpu_host import Provisioning
from components.remote.ssh import SshTarget
from stacks.config import Bastion, ProvisionConfig

DEFAULT_DRIVER_BRANCH = "580"


def ssh_target(*, host: str, port: int, user: str, host_key: str, bastion: Bastion | None) -> SshTarget:
    """The one SSH connection both transports (or the node steps) use."""
    return SshTarget.of(
        host=host,
        port=port,
        user=user,
        host_key=host_key,
        bastion=(bastion.host, bastion.port, bastion.user, bastion.host_key) if bastion else None,
    )


def provisioning(wanted: ProvisionConfig, profile: GpuProfile | None) -> Provisioning:
    """The host steps' settings: the stack's `provision` over the card's driver branch and modules."""
    return Provisioning(
        driver=wanted.driver,
        driver_branch=wanted.driver_branch or (profile.driver_branch if profile else DEFAULT_DRIVER_BRANCH),
        # an unknown card (auto) gets the proprietary modules: every profile's card runs them
        kernel_modules=wanted.kernel_modules or (profile.kernel_modules if profile else "proprietary"),
        toolkit=wanted.toolkit,
        runtime=wanted.runtime,
        reboot=wanted.reboot,
        # holding packages needs root: without it the hold is the administrator's (left_to_administrator)
        driver_hold=wanted.driver_hold and wanted.privileges == "root",
        privileged=wanted.privileges == "root",
    )


def left_to_administrator(wanted: ProvisionConfig, profile: GpuProfile | None, user: str) -> str | None:
    """What a deploy without root (provision.privileges: unprivileged) leaves to an administrator, as the
    plan says it (pulumi.log.warn); None when the deploy may use root."""
    if wanted.privileges == "root":
        return None
    tasks: list[str] = []
    if profile is None or profile.is_gpu:
        branch = wanted.driver_branch or (profile.driver_branch if profile else None)
        need = f" {profile.min_driver} or newer" if profile and profile.min_driver else ""
        tasks += [
            f"the NVIDIA driver{need}{f' (branch {branch})' if branch else ''} and reboots after its updates",
            "holding its packages against upgrades (apt-mark hold / dnf versionlock)",
            "the NVIDIA Container Toolkit",
            "Docker's nvidia runtime (nvidia-ctk runtime configure --runtime=docker, then a Docker restart)",
        ]
    tasks += [
        f"{user}'s membership in the docker group",
        f"target.root (or a directory above it) owned by {user}",
    ]
    return (
        f"left to an administrator (provision.privileges: unprivileged): {'; '.join(tasks)}. "
        f"The deploy only verifies them as {user}, and fails with one line where root would be needed"
    )
