"""GpuCluster and GpuWorkload under Pulumi mocks: every Kubernetes object they register is turned into a
plain manifest and validated against the Kubernetes 1.30 OpenAPI schema (strict: unknown fields fail).

The program is the A2 MicroK8s reference system (Kokoro TTS + Faster-Whisper STT sharing one A2 by
time-slicing, replicas 2), plus a device-plugin cluster and an H100 MIG workload for the other branches.
The image tags are real-looking pins for the test only: verify them in the registry before a stack uses them.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from typing import Any

import kubernetes_validate
import pulumi
import pytest
import yaml

from components.core.catalog import PROFILES
from components.core.sharing import SharingSpec, validate_sharing
from components.core.values import UserSpec, check_image_pinned
from components.core.wire import SECRET_SIG, SIG_KEY, UNKNOWN
from components.kubernetes.cluster import (
    CONFIG_MAP_NAME,
    MICROK8S_TOOLKIT_ENV,
    GpuCluster,
    GpuClusterArgs,
    OperatorSpec,
    device_plugin_config,
    operator_values,
)
from components.kubernetes.workload import GpuWorkload
from components.kubernetes.workload_spec import GpuWorkloadArgs, ProbeSpec, VolumeSpec
from stacks.wire import to_manifest

K8S_VERSION = "1.30.0"
A2 = PROFILES["a2"]
H100 = PROFILES["h100"]
API_KEY = "sk-test-7f3a9c-never-in-plain-env"
KOKORO_IMAGE = "ghcr.io/remsky/kokoro-fastapi-gpu:v0.2.4"
KOKORO_CPU_IMAGE = "ghcr.io/remsky/kokoro-fastapi-cpu:v0.2.4"
WHISPER_IMAGE = "fedirz/faster-whisper-server:0.5.0-cuda"
USER = UserSpec(1001, 1001)
TIME_SLICED = SharingSpec(strategy="time-slicing", replicas=2)


@dataclass
class Registered:
    typ: str
    name: str
    inputs: dict[str, Any]


class Recorder(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[Registered] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.resources.append(Registered(args.typ, args.name, dict(args.inputs)))
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


def cluster_args(**changes: Any) -> GpuClusterArgs:
    base = GpuClusterArgs(
        namespace="gpu-operator",
        distribution="microk8s",
        sharing=TIME_SLICED,
        operator=OperatorSpec(enabled=True, driver=False, toolkit=False, chart_version="v25.3.0"),
        device_plugin_chart_version="0.17.1",
        dcgm=True,
        profile=A2,
        gpu_requests_total=2,
    )
    return replace(base, **changes)


def kokoro_args(**changes: Any) -> GpuWorkloadArgs:
    base = GpuWorkloadArgs(
        name="kokoro",
        namespace="ai",
        image=KOKORO_IMAGE,
        user=USER,
        gpu=1,
        ports=[8880],
        env={"USE_GPU": "true"},
        volumes=[VolumeSpec(name="models", mount_path="/app/models", size="10Gi")],
        memory_mib=6144,
        cpu="1",
        probe=ProbeSpec(http_path="/health", interval_s=10, timeout_s=5, startup_window_s=300),
        gpu_products=A2.gpu_products,
        cpu_fallback=True,
        cpu_image=KOKORO_CPU_IMAGE,
        cpu_env={"USE_GPU": "false"},
        component="tts",
    )
    return replace(base, **changes)


def whisper_args(**changes: Any) -> GpuWorkloadArgs:
    base = GpuWorkloadArgs(
        name="faster-whisper",
        namespace="ai",
        image=WHISPER_IMAGE,
        user=USER,
        gpu=1,
        ports=[8000],
        env={"WHISPER__INFERENCE_DEVICE": "cuda", "WHISPER__MODEL": "Systran/faster-whisper-small"},
        secret_env={"API_KEY": pulumi.Output.secret(API_KEY)},
        volumes=[
            VolumeSpec(name="hf-cache", mount_path="/home/ubuntu/.cache/huggingface", size="20Gi"),
            VolumeSpec(
                name="host-models",
                mount_path="/models",
                kind="hostPath",
                host_path="/srv/models",
                read_only=True,
            ),
        ],
        memory_mib=4096,
        shm_mib=1024,
        probe=ProbeSpec(http_path="/health", startup_window_s=900),
        gpu_products=A2.gpu_products,
        component="stt",
    )
    return replace(base, **changes)


def build_program() -> None:
    cluster = GpuCluster("a2", cluster_args())
    GpuCluster(
        "dp",
        cluster_args(
            namespace="nvidia-device-plugin",
            distribution="generic",
            operator=OperatorSpec(enabled=False),
            sharing=SharingSpec(strategy="mps", replicas=2, per_product={"NVIDIA-A2": 4}),
        ),
    )
    after = pulumi.ResourceOptions(depends_on=[cluster])
    GpuWorkload("kokoro", kokoro_args(), opts=after)
    GpuWorkload("faster-whisper", whisper_args(), opts=after)
    GpuWorkload(
        "llm",
        GpuWorkloadArgs(
            name="llm",
            namespace="ai",
            image="vllm/vllm-openai:v0.9.2",
            user=USER,
            gpu=1,
            mig_resource="nvidia.com/mig-1g.10gb",
            ports=[8000],
            probe=ProbeSpec(command=["curl", "-fsS", "localhost:8000/health"]),
            gpu_products=H100.gpu_products,
        ),
        opts=after,
    )
    GpuWorkload(
        "openwebui",
        GpuWorkloadArgs(
            name="openwebui",
            namespace="ai",
            image="ghcr.io/open-webui/open-webui:v0.6.18",
            user=USER,
            ports=[8080],
            gpu_products=A2.gpu_products,  # pinned to the GPU node without using the GPU
            component="ui",
        ),
    )


@pytest.fixture(scope="module")
def registered() -> list[Registered]:
    asyncio.set_event_loop(asyncio.new_event_loop())  # an offline plan run before this one leaves none
    recorder = Recorder()
    pulumi.runtime.set_mocks(recorder, project="gpu-deploy", stack="test", preview=False)

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> None:
        build_program()

    program()  # returns once every registration has been answered
    return recorder.resources


def one(registered: list[Registered], typ: str, name: str) -> Registered:
    matches = [r for r in registered if r.typ == typ and r.name == name]
    assert len(matches) == 1, (typ, name, [(r.typ, r.name) for r in registered])
    return matches[0]


def manifest(registered: list[Registered], typ: str, name: str) -> dict[str, Any]:
    result = to_manifest(typ, one(registered, typ, name).inputs)
    assert result is not None
    return result


def pod_spec(m: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = m["spec"]["template"]["spec"]
    return spec


# --- every object is a valid Kubernetes 1.30 manifest -------------------------------------------------


def test_every_kubernetes_object_is_a_valid_manifest(registered: list[Registered]) -> None:
    kinds: list[str] = []
    for r in registered:
        if not r.typ.startswith("kubernetes:"):
            continue
        m = to_manifest(r.typ, r.inputs)
        if m is None:
            assert r.typ == "kubernetes:helm.sh/v3:Release"
            continue
        kubernetes_validate.validate(m, K8S_VERSION, strict=True)
        kinds.append(m["kind"])
    for kind in ("Namespace", "RuntimeClass", "ConfigMap", "Secret", "PersistentVolumeClaim", "Service"):
        assert kind in kinds
    assert kinds.count("Deployment") == 5  # kokoro, kokoro-cpu, faster-whisper, llm, openwebui
    assert "StatefulSet" not in kinds


def test_components_register_with_their_tokens(registered: list[Registered]) -> None:
    tokens = {(r.typ, r.name) for r in registered}
    assert ("gpu-deploy:kubernetes:GpuCluster", "a2") in tokens
    assert ("gpu-deploy:kubernetes:GpuWorkload", "kokoro") in tokens


# --- GpuCluster ------------------------------------------------------------------------------------------


def test_namespace_and_runtime_class(registered: list[Registered]) -> None:
    ns = manifest(registered, "kubernetes:core/v1:Namespace", "a2-namespace")
    assert ns["metadata"]["name"] == "gpu-operator"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    # One owner: with the GPU Operator (a2) the operator creates `nvidia`; without it (dp), Pulumi does.
    assert not [
        r
        for r in registered
        if r.typ == "kubernetes:node.k8s.io/v1:RuntimeClass" and r.name == "a2-runtime-class"
    ]
    rc = manifest(registered, "kubernetes:node.k8s.io/v1:RuntimeClass", "dp-runtime-class")
    assert rc["apiVersion"] == "node.k8s.io/v1"
    assert rc["metadata"]["name"] == "nvidia"
    assert rc["handler"] == "nvidia"


def test_config_map_holds_the_device_plugin_time_slicing_config(registered: list[Registered]) -> None:
    cm = manifest(registered, "kubernetes:core/v1:ConfigMap", "a2-device-plugin-config")
    assert cm["metadata"] == {**cm["metadata"], "name": CONFIG_MAP_NAME, "namespace": "gpu-operator"}
    assert set(cm["data"]) == {"default"}
    config = yaml.safe_load(cm["data"]["default"])
    assert config == {
        "version": "v1",
        "flags": {"migStrategy": "none"},
        "sharing": {
            "timeSlicing": {
                "renameByDefault": False,
                "failRequestsGreaterThanOne": False,
                "resources": [{"name": "nvidia.com/gpu", "replicas": 2}],
            }
        },
    }
    assert config["sharing"]["timeSlicing"]["resources"][0] == {"name": "nvidia.com/gpu", "replicas": 2}


def test_mps_config_and_per_product_entries(registered: list[Registered]) -> None:
    cm = manifest(registered, "kubernetes:core/v1:ConfigMap", "dp-device-plugin-config")
    assert set(cm["data"]) == {"default", "NVIDIA-A2"}
    default = yaml.safe_load(cm["data"]["default"])
    a2 = yaml.safe_load(cm["data"]["NVIDIA-A2"])
    assert default["sharing"] == {
        "mps": {"renameByDefault": False, "resources": [{"name": "nvidia.com/gpu", "replicas": 2}]}
    }
    assert "failRequestsGreaterThanOne" not in a2["sharing"]["mps"]
    assert a2["sharing"]["mps"]["resources"] == [{"name": "nvidia.com/gpu", "replicas": 4}]


def test_device_plugin_config_for_none_and_mig() -> None:
    assert device_plugin_config(SharingSpec()) == {"version": "v1", "flags": {"migStrategy": "none"}}
    mig = device_plugin_config(SharingSpec(strategy="mig", mig_strategy="mixed"))
    assert mig == {"version": "v1", "flags": {"migStrategy": "mixed"}}
    renamed = device_plugin_config(SharingSpec(strategy="time-slicing", replicas=4, rename_by_default=True))
    assert renamed["sharing"]["timeSlicing"]["renameByDefault"] is True


def test_operator_release_on_microk8s(registered: list[Registered]) -> None:
    release = one(registered, "kubernetes:helm.sh/v3:Release", "a2-gpu-operator").inputs
    assert release["chart"] == "gpu-operator"
    assert release["version"] == "v25.3.0"
    assert release["repositoryOpts"] == {"repo": "https://helm.ngc.nvidia.com/nvidia"}
    assert release["namespace"] == "gpu-operator"
    values = release["values"]
    assert values["driver"] == {"enabled": False}
    assert values["toolkit"] == {"enabled": False}, "toolkit.env is read only by the toolkit container"
    with_toolkit = operator_values(cluster_args(operator=OperatorSpec(enabled=True, toolkit=True)))
    env = {e["name"]: e["value"] for e in with_toolkit["toolkit"]["env"]}
    assert env == MICROK8S_TOOLKIT_ENV
    assert env["CONTAINERD_CONFIG"] == "/var/snap/microk8s/current/args/containerd-template.toml"
    assert env["CONTAINERD_SOCKET"] == "/var/snap/microk8s/common/run/containerd.sock"
    assert values["devicePlugin"]["config"] == {"name": CONFIG_MAP_NAME, "default": "default"}
    assert values["dcgmExporter"] == {"enabled": True}
    # the operator path installs neither the standalone plugin nor a second DCGM exporter
    names = {r.name for r in registered if r.typ == "kubernetes:helm.sh/v3:Release"}
    assert "a2-device-plugin" not in names
    assert "a2-dcgm-exporter" not in names


def test_device_plugin_and_dcgm_releases(registered: list[Registered]) -> None:
    plugin = one(registered, "kubernetes:helm.sh/v3:Release", "dp-device-plugin").inputs
    assert plugin["chart"] == "nvidia-device-plugin"
    assert plugin["version"] == "0.17.1"
    assert plugin["repositoryOpts"] == {"repo": "https://nvidia.github.io/k8s-device-plugin"}
    assert plugin["values"]["config"]["name"] == CONFIG_MAP_NAME
    assert plugin["values"]["runtimeClassName"] == "nvidia"
    assert plugin["values"]["gfd"] == {"enabled": True}
    dcgm = one(registered, "kubernetes:helm.sh/v3:Release", "dp-dcgm-exporter").inputs
    assert dcgm["chart"] == "dcgm-exporter"
    assert dcgm["repositoryOpts"] == {"repo": "https://nvidia.github.io/dcgm-exporter/helm-charts"}
    assert dcgm["version"]
    assert dcgm["values"]["service"]["port"] == 9400
    # NFD's NVIDIA PCI label (the plugin chart installs NFD with GFD); nvidia.com/gpu.present is the
    # operator's alone, so without the operator the exporter would run on no node
    assert dcgm["values"]["nodeSelector"] == {"feature.node.kubernetes.io/pci-10de.present": "true"}
    names = {r.name for r in registered if r.typ == "kubernetes:helm.sh/v3:Release"}
    assert "dp-gpu-operator" not in names
    assert "CONTAINERD" not in json.dumps(plugin["values"])


def test_cluster_refuses_shared_namespaces_and_floating_charts() -> None:
    with pytest.raises(ValueError, match="creates its namespace"):
        GpuCluster("bad", cluster_args(namespace="kube-system"))
    with pytest.raises(ValueError, match="pin a chart version"):
        GpuCluster("bad", cluster_args(operator=OperatorSpec(enabled=True, chart_version="latest")))
    with pytest.raises(ValueError, match="at most 2"):
        GpuCluster("bad", cluster_args(gpu_requests_total=3))


# --- validate_sharing ------------------------------------------------------------------------------------


def test_two_gpu_services_fit_a_time_sliced_a2_and_a_third_does_not() -> None:
    validate_sharing(TIME_SLICED, A2, gpu_requests_total=2)
    with pytest.raises(ValueError) as error:
        validate_sharing(TIME_SLICED, A2, gpu_requests_total=3)
    message = str(error.value)
    assert "ask for 3 nvidia.com/gpu" in message
    assert "at most 2" in message
    assert "NVIDIA A2" in message
    assert "Pending" in message
    validate_sharing(TIME_SLICED, A2, gpu_requests_total=4, gpus_per_node=2)


def test_whole_gpus_without_sharing() -> None:
    validate_sharing(SharingSpec(), A2, gpu_requests_total=1)
    with pytest.raises(ValueError, match="at most 1"):
        validate_sharing(SharingSpec(), A2, gpu_requests_total=2)
    with pytest.raises(ValueError, match="only apply to time-slicing or mps"):
        validate_sharing(SharingSpec(replicas=2), A2, gpu_requests_total=1)


def test_per_product_override_raises_capacity() -> None:
    spec = SharingSpec(strategy="time-slicing", replicas=2, per_product={"NVIDIA-A2": 4})
    validate_sharing(spec, A2, gpu_requests_total=4)
    with pytest.raises(ValueError, match="not a GPU product label"):
        validate_sharing(replace(spec, per_product={"NVIDIA A2": 4}), A2, 1)


@pytest.mark.parametrize(
    ("spec", "profile", "needle"),
    [
        (SharingSpec(strategy="mps", replicas=2, mig_strategy="mixed"), H100, "MPS does not work on MIG"),
        (SharingSpec(strategy="mig", mig_strategy="single"), A2, "NVIDIA A2 has no MIG"),
        (SharingSpec(strategy="time-slicing", replicas=2, mig_strategy="mixed"), A2, "has no MIG"),
        (SharingSpec(strategy="time-slicing", replicas=0), A2, "replicas must be at least 1"),
        (SharingSpec(strategy="mps", replicas=0), A2, "replicas must be at least 1"),
        (
            SharingSpec(strategy="mps", replicas=2, fail_requests_greater_than_one=True),
            A2,
            "time-slicing setting",
        ),
        (SharingSpec(fail_requests_greater_than_one=True), A2, "time-slicing setting"),
        (SharingSpec(strategy="mig"), H100, "needs mig_strategy single or mixed"),
        (SharingSpec(rename_by_default=True), A2, "rename_by_default needs"),
    ],
)
def test_impossible_sharing_is_refused(spec: SharingSpec, profile: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        validate_sharing(spec, profile, gpu_requests_total=1)


def test_mig_capacity_comes_from_the_profile() -> None:
    spec = SharingSpec(strategy="mig", mig_strategy="mixed")
    validate_sharing(spec, H100, gpu_requests_total=7)  # 7 x 1g.10gb
    with pytest.raises(ValueError, match="at most 7"):
        validate_sharing(spec, H100, gpu_requests_total=8)
    validate_sharing(spec, H100, 0, mig_requests={"nvidia.com/mig-3g.40gb": 2})
    with pytest.raises(ValueError, match="at most 2"):
        validate_sharing(spec, H100, 0, mig_requests={"nvidia.com/mig-3g.40gb": 3})
    with pytest.raises(ValueError, match=r"no MIG profile '5g\.50gb'"):
        validate_sharing(spec, H100, 0, mig_requests={"5g.50gb": 1})
    with pytest.raises(ValueError, match="only with mig_strategy mixed"):
        validate_sharing(replace(spec, mig_strategy="single"), H100, 0, mig_requests={"1g.10gb": 1})


def test_cpu_profile_takes_no_gpu_requests() -> None:
    with pytest.raises(ValueError, match="has no GPU"):
        validate_sharing(SharingSpec(), PROFILES["cpu"], gpu_requests_total=1)


# --- GpuWorkload -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        "ghcr.io/remsky/kokoro-fastapi-gpu:latest",
        "ghcr.io/remsky/kokoro-fastapi-gpu",
        "fedirz/faster-whisper-server:latest-cuda",
        "localhost:5000/kokoro",
        "kokoro@sha256:abc",
    ],
)
def test_workload_refuses_floating_images(image: str) -> None:
    with pytest.raises(ValueError, match=r"pin a version tag or a digest|digest is"):
        GpuWorkload("bad", kokoro_args(image=image))


def test_pinned_images_pass() -> None:
    check_image_pinned(KOKORO_IMAGE)
    check_image_pinned("localhost:5000/kokoro:v0.2.4")
    check_image_pinned("ghcr.io/remsky/kokoro-fastapi-gpu@sha256:" + "a" * 64)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"user": UserSpec(0, 0)}, "uid 0"),
        ({"gpu": 0}, "cpu_fallback: is for a GPU service"),
        ({"env": {"API_KEY": "x"}, "secret_env": {"API_KEY": "y"}}, "secret_env.API_KEY: also set in env"),
        ({"probe": ProbeSpec()}, "exactly one"),
        ({"volumes": [VolumeSpec(name="models", mount_path="/m")]}, "needs a size"),
        ({"mig_resource": "nvidia.com/gpu"}, "nvidia.com/mig-"),
        ({"name": "Kokoro_TTS"}, "DNS label"),
    ],
)
def test_workload_refuses_bad_args(changes: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        GpuWorkload("bad", kokoro_args(**changes))


def test_gpu_deployment_spec(registered: list[Registered]) -> None:
    m = manifest(registered, "kubernetes:apps/v1:Deployment", "kokoro")
    assert m["metadata"]["name"] == "kokoro"
    assert m["metadata"]["namespace"] == "ai"
    labels = m["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "kokoro"
    assert labels["app.kubernetes.io/instance"] == "kokoro"
    assert labels["app.kubernetes.io/component"] == "tts"
    assert labels["app.kubernetes.io/part-of"] == "gpu-deploy"
    assert labels["app.kubernetes.io/managed-by"] == "pulumi"
    assert m["spec"]["strategy"] == {"type": "Recreate"}
    assert m["spec"]["replicas"] == 1
    selector = m["spec"]["selector"]["matchLabels"]
    assert selector.items() <= m["spec"]["template"]["metadata"]["labels"].items()

    pod = pod_spec(m)
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A2"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["securityContext"] == {
        "runAsUser": 1001,
        "runAsGroup": 1001,
        "fsGroup": 1001,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    assert container["image"] == KOKORO_IMAGE
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "6144Mi"}
    assert container["resources"]["requests"] == {"nvidia.com/gpu": "1", "memory": "6144Mi", "cpu": "1"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
    }
    assert container["ports"] == [{"name": "tcp-8880", "containerPort": 8880, "protocol": "TCP"}]
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": 8880}
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 300
    assert container["livenessProbe"]["failureThreshold"] == 3
    assert {"name": "USE_GPU", "value": "true"} in container["env"]
    assert pod["volumes"] == [
        {"name": "models", "persistentVolumeClaim": {"claimName": "kokoro-models", "readOnly": False}}
    ]

    claim = manifest(registered, "kubernetes:core/v1:PersistentVolumeClaim", "kokoro-models")
    assert claim["spec"]["resources"]["requests"] == {"storage": "10Gi"}


def test_cpu_fallback_is_a_scaled_down_cpu_deployment(registered: list[Registered]) -> None:
    m = manifest(registered, "kubernetes:apps/v1:Deployment", "kokoro-cpu")
    assert m["metadata"]["name"] == "kokoro-cpu"
    assert m["spec"]["replicas"] == 0
    assert "strategy" not in m["spec"]
    pod = pod_spec(m)
    assert "runtimeClassName" not in pod
    assert "nodeSelector" not in pod and "tolerations" not in pod
    (container,) = pod["containers"]
    assert container["image"] == KOKORO_CPU_IMAGE
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["USE_GPU"] == "false"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    # both variants answer behind the one Service; their Deployments do not select each other's pods
    gpu = manifest(registered, "kubernetes:apps/v1:Deployment", "kokoro")
    assert m["spec"]["selector"] != gpu["spec"]["selector"]
    service = manifest(registered, "kubernetes:core/v1:Service", "kokoro-service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "tcp-8880", "port": 8880, "targetPort": 8880, "protocol": "TCP"}
    ]
    for deployment in (m, gpu):
        assert (
            service["spec"]["selector"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )


def test_secret_env_goes_through_a_secret(registered: list[Registered]) -> None:
    secret = manifest(registered, "kubernetes:core/v1:Secret", "faster-whisper-env")
    assert secret["stringData"] == {"API_KEY": API_KEY}
    raw = one(registered, "kubernetes:core/v1:Secret", "faster-whisper-env").inputs["stringData"]
    assert raw[SIG_KEY] == SECRET_SIG  # kept secret in the Pulumi state

    deployment = manifest(registered, "kubernetes:apps/v1:Deployment", "faster-whisper")
    (container,) = pod_spec(deployment)["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["API_KEY"] == {
        "name": "API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "faster-whisper-env", "key": "API_KEY"}},
    }
    assert env["WHISPER__INFERENCE_DEVICE"] == {"name": "WHISPER__INFERENCE_DEVICE", "value": "cuda"}
    for r in registered:
        if r.typ != "kubernetes:core/v1:Secret":
            assert API_KEY not in json.dumps(r.inputs), r.name


def test_workload_volumes_claim_host_path_and_shm(registered: list[Registered]) -> None:
    deployment = manifest(registered, "kubernetes:apps/v1:Deployment", "faster-whisper")
    pod = pod_spec(deployment)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["hf-cache"]["persistentVolumeClaim"]["claimName"] == "faster-whisper-hf-cache"
    assert volumes["host-models"]["hostPath"] == {"path": "/srv/models", "type": "DirectoryOrCreate"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1024Mi"}
    assert pod["runtimeClassName"] == "nvidia"
    claim = manifest(registered, "kubernetes:core/v1:PersistentVolumeClaim", "faster-whisper-hf-cache")
    assert claim["spec"]["resources"]["requests"] == {"storage": "20Gi"}


def test_mig_workload_on_either_h100(registered: list[Registered]) -> None:
    m = manifest(registered, "kubernetes:apps/v1:Deployment", "llm")
    pod = pod_spec(m)
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/mig-1g.10gb": "1"}
    assert container["resources"]["requests"] == {"nvidia.com/mig-1g.10gb": "1"}
    assert container["livenessProbe"]["exec"] == {"command": ["curl", "-fsS", "localhost:8000/health"]}
    assert "nodeSelector" not in pod
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term["matchExpressions"] == [
        {
            "key": "nvidia.com/gpu.product",
            "operator": "In",
            "values": ["NVIDIA-H100-PCIe", "NVIDIA-H100-80GB-HBM3"],
        }
    ]


# --- to_manifest -----------------------------------------------------------------------------------------


def test_to_manifest_conversions() -> None:
    assert to_manifest("kubernetes:helm.sh/v3:Release", {"chart": "x"}) is None
    cm = to_manifest(
        "kubernetes:core/v1:ConfigMap",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": None},
            "data": {"a": "b"},
        },
    )
    assert cm == {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}}
    dep = to_manifest("kubernetes:apps/v1:Deployment", {"spec": {"replicas": 2.0}})
    assert dep == {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 2}}
    secret = to_manifest(
        "kubernetes:core/v1:Secret", {"stringData": {SIG_KEY: SECRET_SIG, "value": {"K": "v"}}}
    )
    assert secret is not None and secret["stringData"] == {"K": "v"}
    with pytest.raises(ValueError, match="not known until"):
        to_manifest("kubernetes:core/v1:ConfigMap", {"data": {"a": UNKNOWN}})
    with pytest.raises(ValueError, match="not a pulumi-kubernetes"):
        to_manifest("docker:index/container:Container", {})
    with pytest.raises(ValueError, match="the type says"):
        to_manifest("kubernetes:apps/v1:Deployment", {"kind": "StatefulSet"})


def test_cpu_workload_pinned_to_the_gpu_node(registered: list[Registered]) -> None:
    m = manifest(registered, "kubernetes:apps/v1:Deployment", "openwebui")
    assert "strategy" not in m["spec"]  # rolling updates are fine without a GPU
    pod = pod_spec(m)
    assert "runtimeClassName" not in pod
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A2"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    (container,) = pod["containers"]
    assert "resources" not in container or "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in container["env"]
