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
    )
