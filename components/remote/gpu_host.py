"""GpuHost: a GPU server made ready for GPU containers, and proven so, before anything is built on it.

Creates, in order, each step waiting for the one before (over SSH with the pinned host key and an
optional bastion, or as local commands for `host: local`):
1. `driver`    install-driver.sh: verify the NVIDIA driver, or install it (nouveau blacklisted first);
2. `preflight` the pynvml preflight (copied to the host by HostRunners, checked before it runs): the GPU
               model, driver, CUDA driver version and MIG mode must match the profile; with `auto` it
               names the profile;
3. `toolkit`   install-toolkit.sh: the NVIDIA Container Toolkit from NVIDIA's repository, pinned key;
4. `runtime`   configure-runtime.sh: `nvidia-ctk runtime configure`, restart only on change;
5. `verify`    verify-gpu.sh: nvidia-smi on the host, then in a throwaway CUDA container.
A step whose action is `skip` is left out. Each command re-runs only when its script or parameters
change (nothing random or time-based goes in). `ready` resolves once the last step has passed.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pulumi
import pulumi_command as command

from components.host import PREFLIGHT
from components.host import shell as host_scripts
from components.options import child_options
from components.remote.runners import HostRunners

Action = Literal["install", "verify", "skip"]


@dataclass(frozen=True)
class Provisioning:
    driver: Action
    driver_branch: str
    kernel_modules: str
    toolkit: Action
    runtime: Literal["docker", "containerd", "microk8s"]
    reboot: Literal["never", "if-needed"]
    # hold the driver packages at the installed versions (apt-mark hold / dnf versionlock), so that
    # unattended upgrades cannot replace them under running containers; off for a host whose packages
    # an administrator manages
    driver_hold: bool = True
    # False (provision.privileges: unprivileged): the steps run as the deploy user only, never through
    # sudo: they verify and change nothing (PRIVILEGES=unprivileged, components/host/scripts/common.sh)
    privileged: bool = True

    def plan_notes(self, min_driver: str | None) -> dict[str, str]:
        """What the plan says of the host steps: the driver the host needs, and when Docker (or the
        cluster's runtime) may be restarted (configure-runtime.sh)."""
        driver = f"{min_driver} or newer" if min_driver else "the detected card's minimum (profile auto)"
        name = {"docker": "Docker", "containerd": "containerd", "microk8s": "MicroK8s"}[self.runtime]
        if self.toolkit == "skip":
            restart = f"{name} is not touched (toolkit: skip)"
        elif not self.privileged:
            restart = f"{name} is never restarted (unprivileged: its nvidia runtime is only verified)"
        elif self.runtime == "docker":
            restart = (
                "Docker is restarted only if /etc/docker/daemon.json changes, or the running dockerd lacks "
                "the nvidia runtime or started before the toolkit's hook"
            )
        elif self.runtime == "containerd":
            restart = "containerd is restarted only if /etc/containerd/config.toml changes"
        else:
            restart = "MicroK8s is restarted only if the nvidia runtime is added to its containerd template"
        return {"minDriver": driver, "restart": restart}


@dataclass(frozen=True)
class PreflightRequest:
    profile: str  # a profile key, or "auto"
    cuda_version: str | None = None
    require_mig: bool = False
    # a stack's own card (catalog.card_json: `gpu-deploy:cards.<key>`), which the host's catalog lacks: the
    # preflight checks the host against it (`--card JSON`, in place of `--profile`); None for the catalog's
    card: Mapping[str, Any] | None = None

    def arguments(self) -> list[str]:
        if self.card is not None:
            card = json.dumps(dict(self.card), sort_keys=True, separators=(",", ":"))
            args = ["--card", card, "--json"]
        else:
            args = ["--profile", self.profile, "--json"]
        if self.cuda_version:
            args += ["--cuda-version", self.cuda_version]
        if self.require_mig:
            args.append("--require-mig")
        return args


class GpuHost(pulumi.ComponentResource):
    facts: pulumi.Output[Any]  # the preflight's JSON report
    profile: pulumi.Output[str]  # the profile the preflight matched
    ready: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        connection: command.remote.ConnectionArgs | None,
        runners: HostRunners | None,
        provisioning: Provisioning,
        preflight: PreflightRequest,
        # the card's CUDA base image for the GPU container check: known now for a named card; for `auto`
        # a function of the preflight's JSON report (the card it found)
        cuda_image: str | Callable[[Mapping[str, Any]], str],
        # the driver the card needs with the stack's CUDA (GpuProfile.min_driver); None: known at deploy
        min_driver: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpu-deploy:host:GpuHost", name, None, opts)
        self._name = name
        self._privileges = {} if provisioning.privileged else {"PRIVILEGES": "unprivileged"}
        self._connection = connection
        self._runners = runners
        self._opts = opts
        previous: list[pulumi.Resource] = []

        if provisioning.driver != "skip":
            previous = [
                self._script(
                    "driver",
                    "install-driver",
                    {
                        "DRIVER_ACTION": provisioning.driver,
                        "DRIVER_BRANCH": provisioning.driver_branch,
                        "KERNEL_MODULES": provisioning.kernel_modules,
                        "REBOOT": provisioning.reboot,
                        "DRIVER_HOLD": "yes" if provisioning.driver_hold else "no",
                    },
                    previous,
                )
            ]

        check = self._preflight(preflight, previous)
        self.facts = check.stdout.apply(json.loads)
        self.profile = self.facts.apply(lambda report: str(report["profile"]))
        previous = [check]

        if provisioning.toolkit != "skip":
            previous = [
                self._script("toolkit", "install-toolkit", {"TOOLKIT_ACTION": provisioning.toolkit}, previous)
            ]
            previous = [
                self._script(
                    "runtime", "configure-runtime", {"CONTAINER_RUNTIME": provisioning.runtime}, previous
                )
            ]
        image = (
            pulumi.Output.from_input(cuda_image)
            if isinstance(cuda_image, str)
            else self.facts.apply(cuda_image)
        )
        verify_env = image.apply(
            lambda image: {"CUDA_IMAGE": image, "CONTAINER_RUNTIME": provisioning.runtime}
        )
        verify = self._script("verify", "verify-gpu", verify_env, previous)
        self.ready = verify.stdout.apply(lambda _: "verified")
        self.register_outputs(
            {
                "facts": self.facts,
                "profile": self.profile,
                "ready": self.ready,
                "plan": provisioning.plan_notes(min_driver),
            }
        )

    def _script(
        self,
        step: str,
        script: str,
        env: pulumi.Input[dict[str, str]],
        after: list[pulumi.Resource],
    ) -> command.local.Command | command.remote.Command:
        privileges = self._privileges
        create = pulumi.Output.from_input(env).apply(
            lambda env: host_scripts.command_line({**env, **privileges})
        )
        return self._command(step, create, host_scripts.script(script), after)

    def _preflight(
        self, request: PreflightRequest, after: list[pulumi.Resource]
    ) -> command.local.Command | command.remote.Command:
        if self._connection is None or self._runners is None:
            # The machine running Pulumi is the host: its own virtualenv has pynvml.
            run = shlex.join([".venv/bin/python", "-m", "components.host.preflight", *request.arguments()])
            return self._command("preflight", run, None, after)
        run = self._runners.command(PREFLIGHT.name, request.arguments())
        return self._command("preflight", run, None, [*after, *self._runners.copies])

    def _command(
        self,
        step: str,
        create: pulumi.Input[str],
        stdin: str | None,
        after: list[pulumi.Resource],
    ) -> command.local.Command | command.remote.Command:
        opts = child_options(self, self._opts, after=after)
        if self._connection is None:
            return command.local.Command(f"{self._name}-{step}", create=create, stdin=stdin, opts=opts)
        return command.remote.Command(
            f"{self._name}-{step}",
            connection=self._connection,
            create=create,
            stdin=stdin,
            opts=opts,
        )
