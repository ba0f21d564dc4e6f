"""GpuCluster: what a Kubernetes cluster needs before pods can ask for `nvidia.com/gpu`.

Creates, in order (all children of the component, all in `args.namespace` where namespaced):
1. the Namespace, labelled Pod Security `privileged` (the device plugin, GPU feature discovery, the
   toolkit and DCGM mount host paths and run privileged);
2. without the GPU Operator, the RuntimeClass `nvidia` (node.k8s.io/v1, handler `nvidia`) that GPU pods
   name. The operator creates and owns that one itself (and would take over and later delete ours);
3. the device-plugin ConfigMap `nvidia-device-plugin-config`, in the format the NVIDIA device plugin
   reads (`version: v1`, `flags.migStrategy`, `sharing.timeSlicing` or `sharing.mps`). It is a
   multi-config map: the data key `default` is the config every node gets, and each
   `sharing.per_product` entry adds a data key named after a GPU feature discovery product
   (`NVIDIA-A2`, `NVIDIA-H100-80GB-HBM3`) with that product's replica count. The plugin's
   config-manager sidecar applies a named config to a node only when the node carries the label
   `nvidia.com/device-plugin.config=<data key>`; GFD does not set it, so label such nodes yourself:
   `kubectl label node gpu-1 nvidia.com/device-plugin.config=NVIDIA-A2`. Without the label, `default`;
4. then either
   - the NVIDIA GPU Operator Helm release (`operator.enabled`): driver and toolkit containers as the
     spec says (off where the host scripts already installed them), its device plugin pointed at the
     ConfigMap, its DCGM exporter on or off; on MicroK8s the toolkit is told where MicroK8s keeps
     containerd's config template and socket, so it does not edit a containerd that does not run; or
   - the NVIDIA device plugin Helm release, with GPU feature discovery (the `nvidia.com/gpu.product`
     labels node selectors use) and the ConfigMap, plus, with `dcgm`, the DCGM exporter Helm release
     (port 9400, `/metrics`). The host must already have the driver and the container toolkit with
     containerd configured (`nvidia-ctk runtime configure --runtime=containerd`, and on MicroK8s
     `--config=/var/snap/microk8s/current/args/containerd-template.toml`).

With a MIG strategy the operator's mig-manager is enabled; which partition a node gets is still the
node label `nvidia.com/mig.config` (e.g. `all-1g.10gb`), set per node like the config label above.

`validate_sharing` refuses sharing settings that cannot work (MPS on MIG, MIG on a card without it,
more GPU requests than a node can ever advertise); `device_plugin_config` is the config document.
Chart versions are pinned by the caller; a Helm release with no version would float.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s
import yaml

from components.core.catalog import GpuProfile, Sharing
from components.core.vocabulary import (
    CONFIG_NODE_LABEL,
    DCGM_CHART,
    DCGM_CHART_VERSION,
    DCGM_REPO,
    DEVICE_PLUGIN_CHART,
    DEVICE_PLUGIN_REPO,
    GPU_RESOURCE,
    MIG_RESOURCE_PREFIX,
    OPERATOR_CHART,
    OPERATOR_CHART_VERSION,
    OPERATOR_REPO,
    PART_OF_LABELS,
    RESERVED_NAMESPACES,
    RUNTIME_CLASS,
    SHARED_GPU_RESOURCE,
)
from components.options import child_options

MigStrategy = Literal["none", "single", "mixed"]
Distribution = Literal["microk8s", "generic"]

CONFIG_MAP_NAME = "nvidia-device-plugin-config"
DEFAULT_CONFIG = "default"
DCGM_PORT = 9400

# Where MicroK8s keeps containerd (the snap does not use /etc/containerd), for the operator's toolkit
# container: the values the MicroK8s `nvidia` addon sends (canonical/microk8s-core-addons, branch 1.30,
# addons/nvidia/enable). The runtime class name comes from `operator.runtimeClass` (default nvidia).
MICROK8S_TOOLKIT_ENV: dict[str, str] = {
    "CONTAINERD_CONFIG": "/var/snap/microk8s/current/args/containerd-template.toml",
    "CONTAINERD_SOCKET": "/var/snap/microk8s/common/run/containerd.sock",
    "CONTAINERD_SET_AS_DEFAULT": "1",
}

# A data key of the ConfigMap that is also a valid node label value.
_CONFIG_KEY = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_SHARED: tuple[Sharing, ...] = ("time-slicing", "mps")


@dataclass(frozen=True)
class SharingSpec:
    """How the device plugin advertises each physical GPU (time-slicing and MPS are node-wide)."""

    strategy: Sharing = "none"
    replicas: int = 1  # nvidia.com/gpu advertised per physical GPU with time-slicing or MPS
    rename_by_default: bool = False  # advertise nvidia.com/gpu.shared instead of nvidia.com/gpu
    fail_requests_greater_than_one: bool = False  # time-slicing only
    mig_strategy: MigStrategy = "none"
    per_product: Mapping[str, int] = field(default_factory=dict)  # gpu.product -> replicas

    @property
    def resource_name(self) -> str:
        """The extended resource a pod asks for under this spec (the MIG mixed ones aside)."""
        if self.rename_by_default and self.strategy in _SHARED:
            return SHARED_GPU_RESOURCE
        return GPU_RESOURCE


@dataclass(frozen=True)
class OperatorSpec:
    enabled: bool = False
    driver: bool = False  # the operator's driver container; off when the host has a driver
    toolkit: bool = False  # the operator's container-toolkit container; off when the host has one
    chart_version: str = OPERATOR_CHART_VERSION


@dataclass(frozen=True)
class GpuClusterArgs:
    namespace: str
    distribution: Distribution
    sharing: SharingSpec
    operator: OperatorSpec
    device_plugin_chart_version: str  # e.g. "0.17.1"
    dcgm: bool
    profile: GpuProfile
    dcgm_chart_version: str = DCGM_CHART_VERSION
    gpus_per_node: int = 1
    gpu_requests_total: int = 0  # nvidia.com/gpu asked for by all the stack's services together


def _replicas_config(spec: SharingSpec, replicas: int) -> dict[str, Any]:
    sharing: dict[str, Any] = {"renameByDefault": spec.rename_by_default}
    if spec.strategy == "time-slicing":
        sharing["failRequestsGreaterThanOne"] = spec.fail_requests_greater_than_one
    sharing["resources"] = [{"name": GPU_RESOURCE, "replicas": replicas}]
    return sharing


def _config(spec: SharingSpec, replicas: int) -> dict[str, Any]:
    document: dict[str, Any] = {"version": "v1", "flags": {"migStrategy": spec.mig_strategy}}
    if spec.strategy == "time-slicing":
        document["sharing"] = {"timeSlicing": _replicas_config(spec, replicas)}
    elif spec.strategy == "mps":
        document["sharing"] = {"mps": _replicas_config(spec, replicas)}
    return document


def device_plugin_config(spec: SharingSpec) -> dict[str, Any]:
    """The device plugin's config document (api/config/v1) for nodes without a per-product label."""
    return _config(spec, spec.replicas)


def device_plugin_configs(spec: SharingSpec) -> dict[str, dict[str, Any]]:
    """Every named config of the ConfigMap: `default`, then one per `per_product` override."""
    configs = {DEFAULT_CONFIG: device_plugin_config(spec)}
    for product, replicas in sorted(spec.per_product.items()):
        configs[product] = _config(spec, replicas)
    return configs


def config_map_data(spec: SharingSpec) -> dict[str, str]:
    return {
        name: yaml.safe_dump(document, sort_keys=False)
        for name, document in device_plugin_configs(spec).items()
    }


def gpu_capacity(spec: SharingSpec, profile: GpuProfile, gpus_per_node: int = 1) -> int:
    """The most GPU resources one node can ever advertise under `spec`.

    Time-slicing and MPS multiply each GPU by its replicas (the largest of the default and the
    overrides for this card's products, since a labelled node gets the override); with MIG each GPU
    holds at most as many instances as its smallest profile allows (7 x 1g.10gb on an H100).
    """
    per_gpu = max(profile.mig_profiles.values(), default=1) if spec.mig_strategy != "none" else 1
    if spec.strategy in _SHARED:
        overrides = [spec.per_product[p] for p in profile.gpu_products if p in spec.per_product]
        per_gpu *= max([spec.replicas, *overrides])
    return gpus_per_node * per_gpu


def validate_sharing(
    spec: SharingSpec,
    profile: GpuProfile,
    gpu_requests_total: int,
    gpus_per_node: int = 1,
    *,
    mig_requests: Mapping[str, int] | None = None,
) -> None:
    """Raise ValueError for a sharing setup that cannot work on `profile`'s card.

    `gpu_requests_total` is the sum of nvidia.com/gpu the stack's services ask for;
    `mig_requests` counts MIG instances asked for by profile (`1g.10gb` or `nvidia.com/mig-1g.10gb`).
    """
    card = profile.display_name
    if gpus_per_node < 1:
        raise ValueError(f"gpus_per_node must be at least 1, got {gpus_per_node}")
    if gpu_requests_total < 0:
        raise ValueError(f"gpu_requests_total cannot be negative, got {gpu_requests_total}")
    if spec.replicas < 1:
        raise ValueError(
            f"sharing.replicas must be at least 1 (GPUs advertised per physical GPU), got {spec.replicas}"
        )
    for product, replicas in spec.per_product.items():
        if not _CONFIG_KEY.match(product) or product == DEFAULT_CONFIG:
            raise ValueError(
                f"sharing.per_product key {product!r} is not a GPU product label value such as 'NVIDIA-A2'"
            )
        if replicas < 1:
            raise ValueError(f"sharing.per_product[{product!r}] must be at least 1, got {replicas}")

    if spec.strategy in _SHARED:
        # k8s-device-plugin v0.17.1 api/config/v1/replicas.go (ReplicatedResource.UnmarshalJSON): the plugin
        # and GPU feature discovery exit on "number of replicas must be >= 2", and the node advertises no GPU
        refused = (
            "the NVIDIA device plugin refuses fewer ('number of replicas must be >= 2') and advertises no GPU"
        )
        if spec.replicas < 2:
            raise ValueError(
                f"sharing.replicas must be at least 2 with {spec.strategy}, got {spec.replicas}: {refused}; "
                "for one pod per GPU use strategy none"
            )
        for product, replicas in spec.per_product.items():
            if replicas < 2:
                raise ValueError(
                    f"sharing.per_product[{product!r}] must be at least 2 with {spec.strategy}, "
                    f"got {replicas}: {refused}"
                )
    if spec.strategy in ("none", "mig"):
        if spec.replicas != 1 or spec.per_product:
            raise ValueError(
                f"sharing.replicas/per_product only apply to time-slicing or mps; with strategy "
                f"{spec.strategy!r} each GPU (or MIG instance) is one {GPU_RESOURCE}: set replicas 1 "
                f"or pick strategy time-slicing"
            )
        if spec.rename_by_default:
            raise ValueError(
                f"sharing.rename_by_default needs strategy time-slicing or mps, not {spec.strategy!r}"
            )
    if spec.fail_requests_greater_than_one and spec.strategy != "time-slicing":
        raise ValueError(
            f"sharing.fail_requests_greater_than_one is a time-slicing setting; strategy is {spec.strategy!r}"
        )
    if spec.strategy == "mps" and spec.mig_strategy != "none":
        raise ValueError(
            f"MPS does not work on MIG devices: strategy mps needs mig_strategy none, "
            f"got {spec.mig_strategy!r}"
        )
    if spec.strategy == "mig" and spec.mig_strategy == "none":
        raise ValueError("strategy mig needs mig_strategy single or mixed")
    if (spec.strategy == "mig" or spec.mig_strategy != "none") and not profile.mig_capable:
        raise ValueError(
            f"a {card} has no MIG (strategy {spec.strategy!r}, mig_strategy {spec.mig_strategy!r}); "
            f"share it with time-slicing or mps and mig_strategy none"
        )
    if not profile.is_gpu and (spec.strategy != "none" or gpu_requests_total > 0):
        raise ValueError(
            f"the {card} profile has no GPU: strategy must be none and services must ask for gpu 0 "
            f"(asked for {gpu_requests_total})"
        )

    capacity = gpu_capacity(spec, profile, gpus_per_node)
    if gpu_requests_total > capacity:
        how = {
            "time-slicing": "time-slicing replicas",
            "mps": "MPS replicas",
            "mig": "MIG instances",
            "none": "whole GPUs",
        }[spec.strategy]
        raise ValueError(
            f"the services ask for {gpu_requests_total} {spec.resource_name} in all, but a node with "
            f"{gpus_per_node} x {card} advertises at most {capacity} ({how}); the extra pods would stay "
            f"Pending. Raise sharing.replicas, add GPUs or run a service with gpu 0"
        )

    for name, count in (mig_requests or {}).items():
        mig_profile = name.removeprefix(MIG_RESOURCE_PREFIX)
        if spec.mig_strategy != "mixed":
            raise ValueError(
                f"MIG resource {name!r} exists only with mig_strategy mixed (got {spec.mig_strategy!r}); "
                f"with single, MIG instances are advertised as {GPU_RESOURCE}"
            )
        if mig_profile not in profile.mig_profiles:
            known = ", ".join(profile.mig_profiles)
            raise ValueError(f"a {card} has no MIG profile {mig_profile!r} (known: {known})")
        # The sharing config names nvidia.com/gpu only, so MIG instances advertised as nvidia.com/mig-*
        # (strategy mixed) are not replicated (k8s-device-plugin v0.17.1 internal/rm/device_map.go).
        most = gpus_per_node * profile.mig_profiles[mig_profile]
        if count > most:
            raise ValueError(f"the services ask for {count} x {mig_profile}, but a node has at most {most}")


def _sanitised(name: str) -> str:
    """GPU feature discovery's label form of a name (k8s-device-plugin v0.17.1 internal/lm/resource.go,
    sanitise): characters other than letters, digits, '-', '_', '.' and spaces dropped, spaces as '-'."""
    return "-".join(re.sub(r"[^A-Za-z0-9\-_. ]", "", name).split())


def node_product_labels(spec: SharingSpec, profile: GpuProfile) -> tuple[str, ...]:
    """Every `nvidia.com/gpu.product` value GPU feature discovery can give a node with `profile`'s card
    under `spec`: what a GPU pod's node selection must accept.

    k8s-device-plugin v0.17.1 internal/lm/resource.go (getProductName): the card's name, then, with MIG
    strategy single, `-MIG-<profile>`; then `-SHARED` when the `nvidia.com/gpu` sharing entry the node
    applies has more than one replica and is not renamed (renameByDefault) — for time-slicing and MPS
    alike. With strategy mixed the full-GPU resource is not shared on MIG GPUs, so no suffix. A node gets
    a per-product config only when labelled for it, so both the default and the override count.
    """
    labels: list[str] = []
    for product in profile.gpu_products:
        replica_counts = {spec.replicas, spec.per_product.get(product, spec.replicas)}
        bases = (
            [f"{product}-MIG-{_sanitised(p)}" for p in profile.mig_profiles]
            if spec.mig_strategy == "single"
            else [product]
        )
        for base in bases:
            for replicas in sorted(replica_counts):
                shared = (
                    spec.strategy in _SHARED
                    and replicas > 1
                    and not spec.rename_by_default
                    and spec.mig_strategy != "mixed"
                )
                label = f"{base}-SHARED" if shared else base
                if label not in labels:
                    labels.append(label)
    return tuple(labels)


def operator_values(args: GpuClusterArgs) -> dict[str, Any]:
    """GPU Operator chart values (the ClusterPolicy it creates), only keys chart v25.3.0 has and reads
    (tests/upstream/gpu-operator-v25.3.0.values.yaml): no `operator.defaultRuntime` (removed before
    v25.3.0; the operator reads each node's runtime); `toolkit.env` only when the operator's toolkit
    container runs (nothing else reads it); `mig.strategy` always, because the chart's default `single`
    reaches the device plugin as MIG_STRATEGY and overrides the ConfigMap's flags.migStrategy."""
    toolkit: dict[str, Any] = {"enabled": args.operator.toolkit}
    if args.operator.toolkit and args.distribution == "microk8s":
        toolkit["env"] = [{"name": k, "value": v} for k, v in MICROK8S_TOOLKIT_ENV.items()]
    return {
        "driver": {"enabled": args.operator.driver},
        "toolkit": toolkit,
        "devicePlugin": {"config": {"name": CONFIG_MAP_NAME, "default": DEFAULT_CONFIG}},
        "dcgmExporter": {"enabled": args.dcgm},
        "mig": {"strategy": args.sharing.mig_strategy},
        "migManager": {"enabled": args.sharing.mig_strategy != "none"},
    }


def device_plugin_values(args: GpuClusterArgs) -> dict[str, Any]:
    """nvidia-device-plugin chart values: the ConfigMap, the runtime class and GPU feature discovery."""
    return {
        "config": {"name": CONFIG_MAP_NAME, "default": DEFAULT_CONFIG},
        "migStrategy": args.sharing.mig_strategy,
        "runtimeClassName": RUNTIME_CLASS,
        "gfd": {"enabled": True},
    }


def dcgm_values() -> dict[str, Any]:
    """dcgm-exporter chart values: GPU nodes only, through the nvidia runtime, no Prometheus CRDs.

    The node label is node feature discovery's NVIDIA PCI vendor label, which the device-plugin chart's
    NFD sets (it installs NFD with gfd.enabled). `nvidia.com/gpu.present` is set by the GPU Operator only
    (gpu-operator v25.3.0 controllers/state_manager.go), so without the operator it would match no node."""
    return {
        "runtimeClassName": RUNTIME_CLASS,
        "nodeSelector": {"feature.node.kubernetes.io/pci-10de.present": "true"},
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        "service": {"enable": True, "port": DCGM_PORT},
        # The ServiceMonitor needs the Prometheus Operator CRDs; scrape the Service (:9400/metrics) instead.
        "serviceMonitor": {"enabled": False},
    }


def check_args(args: GpuClusterArgs) -> None:
    if args.namespace in RESERVED_NAMESPACES:
        raise ValueError(
            f"GpuCluster creates its namespace; {args.namespace!r} already exists: use a dedicated one "
            f"such as gpu-operator"
        )
    versions = {"device_plugin_chart_version": args.device_plugin_chart_version}
    if args.operator.enabled:
        versions = {"operator.chart_version": args.operator.chart_version}
    elif args.dcgm:
        versions["dcgm_chart_version"] = args.dcgm_chart_version
    for key, version in versions.items():
        if not re.fullmatch(r"v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", version):
            raise ValueError(f"{key} must pin a chart version such as 0.17.1 or v25.3.0, got {version!r}")
    validate_sharing(args.sharing, args.profile, args.gpu_requests_total, args.gpus_per_node)


class GpuCluster(pulumi.ComponentResource):
    namespace: k8s.core.v1.Namespace
    runtime_class: k8s.node.v1.RuntimeClass | None  # the operator's own when it runs
    config_map: k8s.core.v1.ConfigMap
    operator: k8s.helm.v3.Release | None
    device_plugin: k8s.helm.v3.Release | None
    dcgm_exporter: k8s.helm.v3.Release | None

    def __init__(self, name: str, args: GpuClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        check_args(args)
        super().__init__("gpu-deploy:kubernetes:GpuCluster", name, None, opts)
        child = child_options(self, opts)
        labels = dict(PART_OF_LABELS)

        self.namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=args.namespace,
                labels={**labels, "pod-security.kubernetes.io/enforce": "privileged"},
            ),
            opts=child,
        )
        # The RuntimeClass has one owner. The GPU Operator creates `nvidia` itself, takes over one that
        # exists (its labels replaced, the ClusterPolicy set as controller) and deletes it with the
        # ClusterPolicy (gpu-operator v25.3.0 controllers/object_controls.go, RuntimeClass handling), so
        # with the operator Pulumi leaves it to the operator; without it, Pulumi creates it.
        self.runtime_class = None
        if not args.operator.enabled:
            self.runtime_class = k8s.node.v1.RuntimeClass(
                f"{name}-runtime-class",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=RUNTIME_CLASS, labels=labels),
                handler=RUNTIME_CLASS,
                opts=child,
            )
        self.config_map = k8s.core.v1.ConfigMap(
            f"{name}-device-plugin-config",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=CONFIG_MAP_NAME,
                namespace=self.namespace.metadata.name,
                labels=labels,
                annotations={
                    "gpu-deploy/node-label": f"{CONFIG_NODE_LABEL}=<data key> selects a config; "
                    f"unlabelled nodes use {DEFAULT_CONFIG}"
                },
            ),
            data=config_map_data(args.sharing),
            opts=child,
        )
        after = child_options(
            self, opts, after=[r for r in (self.runtime_class, self.config_map) if r is not None]
        )

        self.operator = self.device_plugin = self.dcgm_exporter = None
        if args.operator.enabled:
            self.operator = self._release(
                resource_name=f"{name}-gpu-operator",
                release_name="gpu-operator",
                chart=OPERATOR_CHART,
                repo=OPERATOR_REPO,
                version=args.operator.chart_version,
                values=operator_values(args),
                opts=after,
            )
        else:
            self.device_plugin = self._release(
                resource_name=f"{name}-device-plugin",
                release_name="nvidia-device-plugin",
                chart=DEVICE_PLUGIN_CHART,
                repo=DEVICE_PLUGIN_REPO,
                version=args.device_plugin_chart_version,
                values=device_plugin_values(args),
                opts=after,
            )
            if args.dcgm:
                self.dcgm_exporter = self._release(
                    resource_name=f"{name}-dcgm-exporter",
                    release_name="dcgm-exporter",
                    chart=DCGM_CHART,
                    repo=DCGM_REPO,
                    version=args.dcgm_chart_version,
                    values=dcgm_values(),
                    opts=after,
                )

        self.register_outputs(
            {
                "namespace": self.namespace.metadata.name,
                "runtime_class": RUNTIME_CLASS,
                "device_plugin_config": self.config_map.metadata.name,
                "gpu_resource": args.sharing.resource_name,
            }
        )

    def _release(
        self,
        *,
        resource_name: str,
        release_name: str,
        chart: str,
        repo: str,
        version: str,
        values: dict[str, Any],
        opts: pulumi.ResourceOptions,
    ) -> k8s.helm.v3.Release:
        return k8s.helm.v3.Release(
            resource_name,
            name=release_name,
            chart=chart,
            version=version,
            namespace=self.namespace.metadata.name,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=repo),
            values=values,
            opts=opts,
        )
