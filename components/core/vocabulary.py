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
# The Docker host's DCGM exporter (components/docker/dcgm.py), by tag: DCGM 4.5.2, exporter 4.8.1, the tag
# public repositories pin. Not the chart's 4.1.3 image (4.2.3-4.1.3): that entrypoint runs `ldconfig` and
# `setcap`, which need root; from 4.8 the entrypoint only execs the exporter, which runs as uid 1000 for
# the basic metrics. No registry is reachable here to check a digest: a stack pins one with
# `dcgm.image: nvcr.io/nvidia/k8s/dcgm-exporter:4.5.2-4.8.1-ubuntu22.04@sha256:...`.
DCGM_EXPORTER_IMAGE = "nvcr.io/nvidia/k8s/dcgm-exporter:4.5.2-4.8.1-ubuntu22.04"
DCGM_EXPORTER_COUNTERS = "/etc/gpu-deploy/dcgm-counters.csv"  # the counters file uploaded into it


# --- The stack's reverse proxy (components/docker/proxy.py, components/host/scripts/proxy-routes.sh) --------
# Caddy 2.10.2 on Alpine, by tag and digest. The digest is the one many independent public repositories pin
# for this tag; no registry was reachable to re-check it when it was written here.
PROXY_IMAGE = "caddy:2.10.2-alpine@sha256:4c6e91c6ed0e2fa03efd5b44747b625fec79bc9cd06ac5235a779726618e530d"
PROXY_CONFIG = "/etc/caddy/Caddyfile"  # the main Caddyfile, uploaded into the proxy container
# Paths inside the proxy container, whose /tmp only Caddy uses (it runs as nobody with nothing else to write).
PROXY_ROUTES_DIR = "/tmp/gpu-deploy-routes"  # noqa: S108 - one <service>.caddy per zero-downtime service
PROXY_ADMIN = "localhost:2019"  # Caddy's admin endpoint, inside the proxy container only
PROXY_CADDY = "/tmp/caddy"  # noqa: S108 - the copy of caddy the proxy runs (components/docker/proxy.py)
LABEL_GATE = "io.gpu-deploy.gpu-memory-gate"  # the gate run a stop-first GPU container was started after
