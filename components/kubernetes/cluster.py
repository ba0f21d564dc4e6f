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
from dataclasses import dataclass
from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s
import yaml

from components.core.cards import gpu_product_label
from components.core.catalog import GpuProfile
from components.core.sharing import DEFAULT_CONFIG, SharingSpec, validate_sharing
from components.core.sharing import SHARED_STRATEGIES as _SHARED
from components.core.vocabulary import (
    CONFIG_NODE_LABEL,
    DCGM_CHART,
    DCGM_CHART_VERSION,
    DCGM_REPO,
    DEVICE_PLUGIN_CHART,
    DEVICE_PLUGIN_REPO,
    GPU_RESOURCE,
    OPERATOR_CHART,
    OPERATOR_CHART_VERSION,
    OPERATOR_REPO,
    PART_OF_LABELS,
    PINNED_CHART_VERSION,
    RESERVED_NAMESPACES,
    RUNTIME_CLASS,
)
from components.options import child_options

Distribution = Literal["microk8s", "generic"]

CONFIG_MAP_NAME = "nvidia-device-plugin-config"
DCGM_PORT = 9400

# Where MicroK8s keeps containerd (the snap does not use /etc/containerd), for the operator's toolkit
# container: the values the MicroK8s `nvidia` addon sends (canonical/microk8s-core-addons, branch 1.30,
# addons/nvidia/enable). The runtime class name comes from `operator.runtimeClass` (default nvidia).
MICROK8S_TOOLKIT_ENV: dict[str, str] = {
    "CONTAINERD_CONFIG": "/var/snap/microk8s/current/args/containerd-template.toml",
    "CONTAINERD_SOCKET": "/var/snap/microk8s/common/run/containerd.sock",
    "CONTAINERD_SET_AS_DEFAULT": "1",
}


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
            [f"{product}-MIG-{gpu_product_label(p)}" for p in profile.mig_profiles]
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
        if not re.fullmatch(PINNED_CHART_VERSION, version):
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
