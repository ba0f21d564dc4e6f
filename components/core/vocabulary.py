"""The names gpu-deploy shares with its upstreams and with itself: one owner for each.

Standard library only: the program, the offline tools and the policy pack all read these.
"""

from __future__ import annotations

PROJECT = "gpu-deploy"  # the Pulumi config namespace, `app.kubernetes.io/part-of` and the runner folder

# What the offline plan shows in place of a value: a secret, or one known only during a deployment.
SECRET_PLACEHOLDER = "[secret]"  # noqa: S105 - a placeholder, not a password
UNKNOWN_PLACEHOLDER = "[unknown]"

# --- gpu-deploy's own labels (Docker container labels; a Kubernetes annotation for the profile) ----------
LABEL_STACK = "io.gpu-deploy.stack"
LABEL_SERVICE = "io.gpu-deploy.service"
LABEL_PROFILE = "io.gpu-deploy.profile"  # the resolved profile: the policy pack reads it
LABEL_ROOT = "io.gpu-deploy.root"  # the stack's target.root: the policy pack reads it
LABEL_AFTER_JOBS = "io.gpu-deploy.after-jobs"

# --- Kubernetes -------------------------------------------------------------------------------------------
# The recommended labels (kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
PART_OF_LABELS = {"app.kubernetes.io/part-of": PROJECT, "app.kubernetes.io/managed-by": "pulumi"}
RESERVED_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
CLUSTER_DOMAIN = "svc.cluster.local"


def recommended_labels(name: str, instance: str, component: str | None = None) -> dict[str, str]:
    """`app.kubernetes.io/name`, `instance`, `component` (when given), `part-of` and `managed-by`."""
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": instance}
    if component is not None:
        labels["app.kubernetes.io/component"] = component
    return {**labels, **PART_OF_LABELS}


def service_url(name: str, namespace: str, port: int) -> str:
    """A Service's in-cluster URL."""
    return f"http://{name}.{namespace}.{CLUSTER_DOMAIN}:{port}"


# --- NVIDIA's names (k8s-device-plugin v0.17.1, gpu-operator v25.3.0) --------------------------------------
GPU_RESOURCE = "nvidia.com/gpu"
SHARED_GPU_RESOURCE = "nvidia.com/gpu.shared"  # what renameByDefault advertises instead
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"  # + a MIG profile such as 1g.10gb (strategy mixed)
PRODUCT_LABEL = "nvidia.com/gpu.product"  # GPU feature discovery's label of a node's card
CONFIG_NODE_LABEL = "nvidia.com/device-plugin.config"  # which device-plugin config a node takes
RUNTIME_CLASS = "nvidia"  # the RuntimeClass the operator (or the MicroK8s addon) creates


def mig_resource(mig_profile: str) -> str:
    return f"{MIG_RESOURCE_PREFIX}{mig_profile}"


# --- Pinned Helm charts: check `helm search repo` and the chart's values before bumping ---------------------
PINNED_CHART_VERSION = r"^v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$"  # an exact release, never a range
OPERATOR_REPO = "https://helm.ngc.nvidia.com/nvidia"
OPERATOR_CHART = "gpu-operator"
OPERATOR_CHART_VERSION = "v25.3.0"
DEVICE_PLUGIN_REPO = "https://nvidia.github.io/k8s-device-plugin"
DEVICE_PLUGIN_CHART = "nvidia-device-plugin"
DEVICE_PLUGIN_CHART_VERSION = "0.17.1"
DCGM_REPO = "https://nvidia.github.io/dcgm-exporter/helm-charts"
DCGM_CHART = "dcgm-exporter"
DCGM_CHART_VERSION = "4.1.3"
