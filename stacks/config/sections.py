"""The stack's sections besides its services: the target (a Docker host or a Kubernetes cluster), the
image to build, the CUDA choices, host provisioning, and on Kubernetes the GPU nodes, GPU sharing and the
GPU Operator. Rules across sections live in rules*.py."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from components.core.vocabulary import DCGM_CHART_VERSION, DEVICE_PLUGIN_CHART_VERSION, OPERATOR_CHART_VERSION
from stacks.config.errors import KeyedError
from stacks.config.fields import (
    MAX_GPUS,
    ChartVersion,
    ContextField,
    DockerfileField,
    EnvValue,
    HostField,
    HostKeyField,
    K8sName,
    LoginField,
    Model,
    OwnNamespace,
    RootDir,
    no_secret_build_args,
    own_namespace,
)


class CudaOverrides(Model):
    """A stack's departures from the profile's CUDA defaults, checked against the card."""

    version: str | None = None  # e.g. 12.1.1
    wheel_index: str | None = None  # cu121, cu124, ..., cpu
    torch_version: str | None = None
    driver: str | None = None  # the driver (or branch) the host runs: checked against the minimum
    mig: bool = False  # the stack needs MIG mode


class RegistryConfig(Model):
    # a registry host as Docker names it: `ghcr.io`, `registry.internal:5000` (no scheme, no path)
    server: Annotated[
        str,
        Field(
            pattern=r"^(localhost|[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+)(:\d{1,5})?$"
        ),
    ]
    username: Annotated[str, Field(min_length=1)]
    password: str  # always a Pulumi secret

    def qualify(self, repository: str) -> str:
        """The repository as pushed and pulled: `server/repository`. pulumi-docker's Image pushes to the
        registry its imageName names (Docker Hub without a host), whatever `registry.server` says
        (pulumi-docker v5.1.0 provider/image.go)."""
        return repository if repository.startswith(f"{self.server}/") else f"{self.server}/{repository}"


class ImageConfig(Model):
    repository: Annotated[str, Field(pattern=r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9._-]+)*$")]
    context: ContextField = "."
    dockerfile: DockerfileField = "Dockerfile"
    target: str | None = None
    build_args: dict[str, EnvValue] = Field(default_factory=dict)
    tag: Annotated[str, Field(pattern=r"^$|^[\w][\w.-]{0,127}$")] = ""
    registry: RegistryConfig | None = None
    app_uid: int = Field(default=1001, ge=1)
    # past releases kept on the host for a rollback (prune-releases.sh after each successful deploy; what
    # runs or is pinned is always kept); None: every release is kept
    keep_releases: int | None = Field(default=None, ge=1, le=1000)

    @field_validator("build_args")
    @classmethod
    def _no_secret_build_args(cls, args: dict[str, str]) -> dict[str, str]:
        return no_secret_build_args(args)


class Bastion(Model):
    host: HostField
    user: LoginField = "root"
    port: int = Field(default=22, ge=1, le=65535)
    host_key: HostKeyField


class GpuNode(Model):
    """A Kubernetes GPU node the stack provisions and checks over SSH, as a Docker host's GPU steps."""

    host: HostField
    user: LoginField = "root"
    port: int = Field(default=22, ge=1, le=65535)
    host_key: HostKeyField  # pinned, required: ssh-keyscan -t ed25519 HOST
    ssh_key: str | None = None  # private key (a Pulumi secret); the agent is used without it
    bastion: Bastion | None = None
    profile: Annotated[str, Field(min_length=1)]  # the node's card (a card key): its preflight must find it


class DockerTarget(Model):
    kind: Literal["docker"]
    host: HostField = "local"  # `local`: this machine's engine
    user: LoginField = "root"
    port: int = Field(default=22, ge=1, le=65535)
    host_key: HostKeyField | None = None  # pinned SSH host key: "ssh-ed25519 AAAA..."
    ssh_key: str | None = None  # private key (a Pulumi secret); the agent is used without it
    bastion: Bastion | None = None
    root: RootDir | None = None  # where relative bind sources live on the host
    # the GPUs the plan assumes the host has (budgets and placement); the deploy uses the preflight's list
    # and fails when the host has fewer
    gpus: int = Field(default=1, ge=1, le=MAX_GPUS)

    @property
    def is_local(self) -> bool:
        return self.host == "local"

    @model_validator(mode="after")
    def _ssh_needs_host_key(self) -> DockerTarget:
        if not self.is_local and self.host_key is None:
            raise KeyedError(
                "hostKey",
                f"required for an SSH host: pin the server's key (ssh-keyscan -t ed25519 {self.host})",
            )
        return self


class KubernetesTarget(Model):
    """A cluster reached through an explicit provider: this kubeconfig (or the default file), this context."""

    kind: Literal["kubernetes"]
    kubeconfig: str | None = None  # a path or the file's contents (a secret); None: ~/.kube/config
    context: Annotated[str, Field(min_length=1)]  # required: never whatever context is current
    namespace: K8sName  # the services' namespace: created by the stack, or an existing one
    # False: the namespace exists already (a team's, with other workloads in it): the stack never
    # creates, relabels or deletes it, and needs its Pod Security level to admit the pods
    create_namespace: bool = True
    # True: an object that already exists is taken over (server-side apply) instead of refused with
    # AlreadyExists; pulumi-kubernetes refuses by default since v4.29.0 (provider upsertExistingObjects)
    adopt_existing: bool = False
    distribution: Literal["microk8s", "generic"] = "generic"
    version: Annotated[str, Field(pattern=r"^1\.\d{1,2}(\.\d{1,3})?$")]  # "1.30": the schema checked
    storage_class: str | None = None  # for PersistentVolumeClaims; None: the cluster's default class
    root: RootDir | None = None  # where hostPath volumes may live on the nodes

    @property
    def is_local(self) -> bool:
        return False

    @model_validator(mode="after")
    def _own_namespace_only_when_created(self) -> KubernetesTarget:
        if self.create_namespace:
            try:
                own_namespace(self.namespace)
            except ValueError as err:
                raise KeyedError(
                    "namespace", f"{err}, or set target.createNamespace: false to deploy into it"
                ) from None
        return self

    @property
    def kubeconfig_is_inline(self) -> bool:
        """Whether `kubeconfig` is the file's contents (a credential) rather than a path."""
        text = self.kubeconfig or ""
        return "\n" in text or text.lstrip().startswith(("apiVersion", "{"))


class ProductSharing(Model):
    replicas: int  # nvidia.com/gpu advertised per physical GPU on nodes of this product


class GpuSharingConfig(Model):
    """How the NVIDIA device plugin shares each GPU (components.core.sharing: SharingSpec, its rules)."""

    strategy: Literal["none", "time-slicing", "mps", "mig"] | None = None  # None: the profile's default
    replicas: int | None = None  # None: 2 with time-slicing or mps, else 1
    rename_by_default: bool = False
    fail_requests_greater_than_one: bool = False
    mig_strategy: Literal["none", "single", "mixed"] = "none"
    per_product: dict[str, ProductSharing] = Field(default_factory=dict)  # nvidia.com/gpu.product -> ...
    gpus_per_node: int = Field(default=1, ge=1)  # physical GPUs on the GPU node (the capacity check)


class GpuOperatorConfig(Model):
    """The NVIDIA GPU Operator (or, disabled, the device plugin and DCGM exporter charts); versions pinned."""

    enabled: bool = True
    driver: bool = False  # the operator's driver container: off where the host has the driver
    toolkit: bool = False  # the operator's toolkit container: off where the host has the toolkit
    version: ChartVersion = OPERATOR_CHART_VERSION  # gpu-operator chart
    namespace: OwnNamespace = "gpu-operator"  # the GPU components' own namespace, created by the stack
    dcgm: bool = True  # DCGM exporter (:9400/metrics)
    device_plugin_version: ChartVersion = DEVICE_PLUGIN_CHART_VERSION  # (enabled: false)
    dcgm_version: ChartVersion = DCGM_CHART_VERSION  # dcgm-exporter chart (enabled: false)


class ProvisionConfig(Model):
    """How the host is made ready (issue: host provisioning); defaults only verify."""

    driver: Literal["install", "verify", "skip"] = "verify"
    driver_branch: Annotated[str, Field(pattern=r"^\d{3}$")] | None = None  # the profile's otherwise
    kernel_modules: Literal["proprietary", "open"] | None = None  # the profile's otherwise
    toolkit: Literal["install", "verify", "skip"] = "verify"
    runtime: Literal["docker", "containerd", "microk8s"] = "docker"
    reboot: Literal["never", "if-needed"] = "never"
    # root: the steps may run as root (root, or passwordless `sudo -n`); unprivileged: the deploy user
    # only uses Docker (a shared machine's student account): the host steps verify, change nothing
    privileges: Literal["root", "unprivileged"] = "root"
    # hold the driver packages at the installed branch (apt-mark hold / dnf versionlock); false for a host
    # whose packages an administrator manages (unprivileged: never, holding needs root)
    driver_hold: bool = True

    @model_validator(mode="after")
    def _unprivileged_only_verifies(self) -> ProvisionConfig:
        if self.privileges == "root":
            return self
        for key, action in (("driver", self.driver), ("toolkit", self.toolkit)):
            if action == "install":
                raise KeyedError(
                    key,
                    f'"install" needs root, and provision.privileges is unprivileged: use "verify" '
                    f"(an administrator installs the {'NVIDIA driver' if key == 'driver' else 'toolkit'})",
                )
        if self.runtime != "docker":
            raise KeyedError(
                "runtime",
                f"{self.runtime} needs root for its GPU check (ctr), and provision.privileges is "
                "unprivileged: only a Docker host can be deployed without root",
            )
        if self.reboot != "never":
            raise KeyedError(
                "reboot", '"if-needed" needs root, and provision.privileges is unprivileged: use "never"'
            )
        return self
