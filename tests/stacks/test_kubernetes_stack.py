"""The a2 stack (target.kind kubernetes, MicroK8s, one time-sliced A2) through the real program and the offline plan.

Every Kubernetes object the program registers is turned into its manifest (stacks.wire)
and validated against the OpenAPI schema of the Kubernetes version the stack names, in strict mode
(unknown fields fail); the same goes for the files `python -m stacks render` writes. Config mistakes
are one line naming the key, exit code 2, before any resource.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from components.core.values import check_image_pinned
from components.core.vocabulary import OPERATOR_CHART, OPERATOR_CHART_VERSION
from components.kubernetes.cluster import CONFIG_MAP_NAME
from policy.validators import StackContext, check_resource
from stacks import load, render
from stacks.config import NAMESPACE, ConfigError, validate
from stacks.plan import PROJECT_DIR, Plan, PlannedResource, make_plan, prepare, read_stack_config
from stacks.wire import to_manifest
from tests.plans import ShippedPlan, plan_text, plan_with, stack_config

STACK = "a2"
PROVIDER = "pulumi:providers:kubernetes"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
RELEASE = "kubernetes:helm.sh/v3:Release"
GPU_SERVICES = ("kokoro", "faster-whisper")
SECRET_VALUE = "sk-live-4f1c9e-never-on-disk"
UPSTREAM = PROJECT_DIR / "tests" / "upstream"


def k8s_version() -> str:
    """The stack's `target.version` ("1.30") as kubernetes-validate names its schemas ("1.30.0")."""
    version = str(stack_config(STACK)[f"{NAMESPACE}:target"]["version"])
    return version if version.count(".") == 2 else f"{version}.0"


@pytest.fixture(scope="module")
def plan(shipped_plan: ShippedPlan) -> Plan:
    return shipped_plan(STACK)


@pytest.fixture(scope="module")
def preview(shipped_plan: ShippedPlan) -> Plan:
    return shipped_plan(STACK, preview=True)


def objects(plan: Plan) -> list[tuple[PlannedResource, dict[str, Any]]]:
    """(resource, manifest) for every Kubernetes object (Helm releases and providers are not)."""
    found = []
    for resource in plan.resources:
        if resource.type.startswith("kubernetes:"):
            manifest = to_manifest(resource.type, resource.inputs)
            if manifest is not None:
                found.append((resource, manifest))
    return found


def manifest_of(plan: Plan, type_: str, name: str) -> dict[str, Any]:
    manifest = to_manifest(type_, plan.named(type_, name).inputs)
    assert manifest is not None
    return manifest


def pod(manifest: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return spec


def raw_config(edit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The stack's `gpu-deploy:` values without the namespace, as stacks.config.validate takes them."""
    config = copy.deepcopy(stack_config(STACK))
    if edit is not None:
        edit(config)
    return {  # only this project's keys: `pulumi:disable-default-providers` is the engine's
        key.split(":", 1)[1]: value for key, value in config.items() if key.startswith(f"{NAMESPACE}:")
    }


def edited_file(tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    config = copy.deepcopy(stack_config(STACK))
    edit(config)
    path = tmp_path / "Pulumi.a2.edited.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stacks", *args], cwd=PROJECT_DIR, capture_output=True, text=True, check=False
    )


def services(config: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = config[f"{NAMESPACE}:services"]
    return found


def third_gpu_service(config: dict[str, Any]) -> None:
    services(config)["piper"] = {
        "image": "rhasspy/wyoming-piper:1.5.0",
        "gpu": 1,
        "memory": "2g",
        "user": "1000:1000",
    }


# ---------------------------------------------------------------- every object is a valid manifest
@pytest.mark.parametrize("mode", ["up", "preview"])
def test_every_kubernetes_object_validates_for_the_stacks_version(
    plan: Plan, preview: Plan, mode: str
) -> None:
    chosen = plan if mode == "up" else preview
    kinds: list[str] = []
    for resource, manifest in objects(chosen):
        kubernetes_validate.validate(manifest, k8s_version(), strict=True)
        assert "[unknown]" not in json.dumps(manifest), resource.name
        kinds.append(manifest["kind"])
    # One of each per what the stack file declares (the exact list is the render golden's,
    # tests/stacks/test_golden.py). No RuntimeClass: the GPU Operator owns `nvidia`.
    config = stack_config(STACK)
    target = config[f"{NAMESPACE}:target"]
    expected = Counter(
        Namespace=1 + bool(target.get("createNamespace")),  # the GPU components', and the services' if asked
        ConfigMap=1,  # the device plugin's sharing config
        Job=1,  # the GPU check before the workloads
    )
    for service in services(config).values():
        if service.get("enabled", True):
            expected["Deployment"] += 1 + bool(service.get("cpuFallback"))
            expected["Service"] += bool(service.get("ports"))
            expected["PersistentVolumeClaim"] += len(service.get("storage", {}))
            expected["ConfigMap"] += bool(service.get("smoke"))  # the smoke test (test_smoke_job.py)
            expected["Job"] += bool(service.get("smoke"))
    assert Counter(kinds) == expected
    assert [r.name for r in chosen.by_type(RELEASE)] == ["nvidia-gpu-operator"]


def test_preview_registers_the_same_resources(plan: Plan, preview: Plan) -> None:
    assert [(r.type, r.name) for r in plan.resources] == [(r.type, r.name) for r in preview.resources]


def test_plans_are_deterministic(plan: Plan) -> None:
    assert plan_text(make_plan(STACK)) == plan_text(plan)


# ---------------------------------------------------------------- the provider is explicit
def test_every_kubernetes_resource_uses_the_explicit_provider(plan: Plan) -> None:
    (provider,) = plan.by_type(PROVIDER)
    assert provider.inputs == {
        "kubeconfig": "~/.kube/microk8s.yaml",
        "context": "microk8s",
        "namespace": "ai",
        "enableServerSideApply": "true",  # provider config reaches the engine as strings
        "upsertExistingObjects": "false",  # the team's objects in `ai` are never silently taken over
    }
    kubernetes = [r for r in plan.resources if r.type.startswith("kubernetes:")]
    assert len(kubernetes) == 15
    for resource in kubernetes:
        assert resource.options["provider"] == provider.urn, resource.name


@pytest.mark.parametrize(
    "kubeconfig",
    [
        "apiVersion: v1\nkind: Config\nclusters:\n- name: microk8s-cluster\n  cluster: {server: https://10.0.0.5:16443}\n",
        {"secure": "v1:c2VjcmV0LWt1YmVjb25maWc="},
    ],
    ids=["inline", "secure"],
)
def test_a_kubeconfig_file_in_the_config_stays_secret(tmp_path: Path, kubeconfig: Any) -> None:
    def inline(config: dict[str, Any]) -> None:
        config[f"{NAMESPACE}:target"]["kubeconfig"] = kubeconfig

    plan = plan_with(tmp_path, STACK, inline)
    (provider,) = plan.by_type(PROVIDER)
    assert provider.inputs["kubeconfig"] == "[secret]"
    assert provider.inputs["context"] == "microk8s"
    assert "10.0.0.5" not in plan_text(plan)


# ---------------------------------------------------------------- GPU sharing on the A2
def test_device_plugin_config_map_is_time_slicing_with_two_replicas(plan: Plan) -> None:
    cm = manifest_of(plan, "kubernetes:core/v1:ConfigMap", "nvidia-device-plugin-config")
    assert cm["metadata"]["name"] == CONFIG_MAP_NAME
    assert cm["metadata"]["namespace"] == "gpu-operator"
    assert set(cm["data"]) == {"default"}
    config = yaml.safe_load(cm["data"]["default"])
    # The device plugin's api/config/v1 format: version, flags.migStrategy, sharing.timeSlicing.resources.
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


def test_gpu_operator_uses_the_host_driver_and_toolkit_and_our_config_map(plan: Plan) -> None:
    release = plan.named(RELEASE, "nvidia-gpu-operator").inputs
    # the vocabulary's pin, and the chart whose values tests/kubernetes/test_upstream.py checks against
    assert (release["chart"], release["version"]) == (OPERATOR_CHART, OPERATOR_CHART_VERSION)
    assert (UPSTREAM / f"{OPERATOR_CHART}-{OPERATOR_CHART_VERSION}.values.yaml").is_file()
    assert release["repositoryOpts"] == {"repo": "https://helm.ngc.nvidia.com/nvidia"}
    assert release["namespace"] == "gpu-operator"
    values = release["values"]
    assert values["driver"] == {"enabled": False}
    # the host has the toolkit: no toolkit container, so no toolkit.env (nothing else reads it)
    assert values["toolkit"] == {"enabled": False}
    assert values["devicePlugin"]["config"] == {"name": CONFIG_MAP_NAME, "default": "default"}
    assert values["dcgmExporter"] == {"enabled": True}
    assert values["mig"] == {"strategy": "none"}, "else the chart's `single` overrides the ConfigMap"
    assert "operator" not in values, "operator.defaultRuntime is gone from chart v25.3.0"
    # one owner for the RuntimeClass: the operator creates `nvidia` (operator.runtimeClass)
    assert not plan.by_type("kubernetes:node.k8s.io/v1:RuntimeClass")


@pytest.mark.parametrize("service", GPU_SERVICES)
def test_gpu_workloads_ask_for_one_gpu_on_the_a2_with_pinned_images(plan: Plan, service: str) -> None:
    deployment = manifest_of(plan, DEPLOYMENT, service)
    assert deployment["metadata"]["namespace"] == "ai"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    spec = pod(deployment)
    assert spec["runtimeClassName"] == "nvidia"
    # time-slicing, 2 replicas, renameByDefault false: GPU feature discovery labels the node
    # NVIDIA-A2-SHARED (k8s-device-plugin v0.17.1 internal/lm/resource.go); NVIDIA-A2 would stay Pending
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A2-SHARED"}
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    image = container["image"]
    check_image_pinned(image)
    assert "latest" not in image
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    window = container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"]
    assert window >= 300, "the start-up probe gives the model load its own window"
    assert container["readinessProbe"]["failureThreshold"] == 3
    assert container["livenessProbe"]["failureThreshold"] == 3


def test_the_services_specifics(plan: Plan) -> None:
    whisper = pod(manifest_of(plan, DEPLOYMENT, "faster-whisper"))["containers"][0]
    env = {e["name"]: e.get("value") for e in whisper["env"]}
    assert env["WHISPER__INFERENCE_DEVICE"] == "cuda"
    # 0.5.0 ran as root from /root only; speaches 0.7.0 is built for ubuntu 1000:1000
    assert whisper["image"] == "ghcr.io/speaches-ai/speaches:0.7.0-cuda"
    assert pod(manifest_of(plan, DEPLOYMENT, "faster-whisper"))["securityContext"]["runAsUser"] == 1000
    # kokoro-fastapi-gpu v0.2.4 is built for appuser 1001:1001
    assert pod(manifest_of(plan, DEPLOYMENT, "kokoro"))["securityContext"]["runAsUser"] == 1001
    kokoro = manifest_of(plan, "kubernetes:core/v1:Service", "kokoro-service")
    assert kokoro["spec"]["ports"] == [
        {"name": "tcp-8880", "port": 8880, "targetPort": 8880, "protocol": "TCP"}
    ]
    whisper_service = manifest_of(plan, "kubernetes:core/v1:Service", "faster-whisper-service")
    assert [p["port"] for p in whisper_service["spec"]["ports"]] == [8000]
    claim = manifest_of(plan, "kubernetes:core/v1:PersistentVolumeClaim", "faster-whisper-models")
    assert claim["spec"]["resources"]["requests"] == {"storage": "20Gi"}
    assert plan.named("kubernetes:core/v1:PersistentVolumeClaim", "faster-whisper-models").options[
        "retainOnDelete"
    ], "the model cache survives disable, rename and destroy"
    # `ai` is the team's namespace: never created, relabelled or deleted by the stack
    assert not [r for r in plan.by_type("kubernetes:core/v1:Namespace") if r.name == "namespace"]
    assert plan.outputs["namespace"] == "ai"


def test_both_gpu_services_fit_the_time_sliced_a2_at_once(plan: Plan) -> None:
    asked = 0
    for _, manifest in objects(plan):
        if manifest["kind"] != "Deployment":
            continue
        for container in pod(manifest)["containers"]:
            limit = int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
            asked += limit * manifest["spec"]["replicas"]
    assert asked == 2
    assert plan.outputs["gpuSharing"] == {
        "strategy": "time-slicing",
        "replicas": 2,
        "resource": "nvidia.com/gpu",
        "capacity": 2,
        "requested": 2,
    }
    assert plan.outputs["namespace"] == "ai"
    assert plan.outputs["images"]["kokoro"] == "ghcr.io/remsky/kokoro-fastapi-gpu:v0.2.4"
    assert plan.outputs["services"]["kokoro"]["urls"] == ["http://kokoro.ai.svc.cluster.local:8880"]


def test_cpu_fallbacks_are_declared_at_zero_replicas(plan: Plan) -> None:
    for service in GPU_SERVICES:
        fallback = manifest_of(plan, DEPLOYMENT, f"{service}-cpu")
        assert fallback["spec"]["replicas"] == 0
        spec = pod(fallback)
        assert "runtimeClassName" not in spec
        assert "nvidia.com/gpu" not in json.dumps(spec["containers"][0].get("resources", {}))
        check_image_pinned(spec["containers"][0]["image"])


def test_rollback_to_the_cpu_is_one_config_change(tmp_path: Path) -> None:
    def on_cpu(config: dict[str, Any]) -> None:
        services(config)["kokoro"]["runOn"] = "cpu"

    plan = plan_with(tmp_path, STACK, on_cpu)
    assert manifest_of(plan, DEPLOYMENT, "kokoro")["spec"]["replicas"] == 0
    cpu = manifest_of(plan, DEPLOYMENT, "kokoro-cpu")
    assert cpu["spec"]["replicas"] == 1
    env = {e["name"]: e.get("value") for e in pod(cpu)["containers"][0]["env"]}
    assert env["USE_GPU"] == "false"
    assert plan.outputs["gpuSharing"]["requested"] == 1
    assert plan.outputs["services"]["kokoro"]["runsOn"] == "cpu"


def test_a_cpu_service_gets_no_gpu(tmp_path: Path) -> None:
    def add_redis(config: dict[str, Any]) -> None:
        services(config)["redis"] = {
            "image": "redis:7.2.4",
            "ports": ["6379:6379"],
            "user": "999:999",
            "memory": "512m",
            "volumes": ["data:/data"],
            "storage": {"data": "1Gi"},
        }

    plan = plan_with(tmp_path, STACK, add_redis)
    redis = manifest_of(plan, DEPLOYMENT, "redis")
    kubernetes_validate.validate(redis, k8s_version(), strict=True)
    spec = pod(redis)
    assert "runtimeClassName" not in spec and "nodeSelector" not in spec
    assert "nvidia.com/gpu" not in json.dumps(spec)
    assert plan.outputs["gpuSharing"]["requested"] == 2


# ---------------------------------------------------------------- config errors, before any resource
def test_a_third_gpu_service_is_a_config_error_before_any_resource(tmp_path: Path) -> None:
    path = edited_file(tmp_path, third_gpu_service)
    result = cli("plan", STACK, "--config-file", str(path))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("gpu-deploy:services.piper.gpu: "), line
    assert "ask for 3 nvidia.com/gpu" in line and "at most 2" in line

    planned = prepare(STACK, config_file=path)
    with pytest.raises(ConfigError) as error:
        load()
    assert error.value.key == "services.piper.gpu"
    assert planned.resources == [], "nothing registered"

    out = tmp_path / "out"
    rendered = cli("render", STACK, "--out", str(out), "--config-file", str(path))
    assert rendered.returncode == 2
    assert not out.exists()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        top, *rest = path.split(".")
        node = config.setdefault(f"{NAMESPACE}:{top}", {})
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        if rest:
            node[rest[-1]] = value
        else:
            config[f"{NAMESPACE}:{top}"] = value

    return edit


def _all(*edits: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        for one in edits:
            one(config)

    return edit


REFUSED: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    (
        "mps-with-mig",
        _all(
            _set("profile", "h100"),
            _set("gpuSharing.strategy", "mps"),
            _set("gpuSharing.migStrategy", "mixed"),
        ),
        "gpuSharing.migStrategy",
        "MPS does not work on MIG",
    ),
    (
        "mig-on-a2",
        _all(
            _set("gpuSharing.strategy", "mig"),
            _set("gpuSharing.migStrategy", "single"),
            _set("gpuSharing.replicas", 1),
        ),
        "gpuSharing.strategy",
        "NVIDIA A2 has no MIG",
    ),
    ("mig-strategy-on-a2", _set("gpuSharing.migStrategy", "mixed"), "gpuSharing.migStrategy", "has no MIG"),
    ("replicas-0", _set("gpuSharing.replicas", 0), "gpuSharing.replicas", "must be at least 1"),
    ("third-gpu-service", third_gpu_service, "services.piper.gpu", "at most 2"),
    (
        "no-sharing",
        _set("gpuSharing.strategy", "none"),
        "gpuSharing.replicas",
        "only apply to time-slicing or mps",
    ),
    (
        "whole-gpus",
        _all(_set("gpuSharing.strategy", "none"), _set("gpuSharing.replicas", 1)),
        "services.faster-whisper.gpu",
        "at most 1",
    ),
    (
        "per-product-key",
        _set("gpuSharing.perProduct", {"NVIDIA A2": {"replicas": 4}}),
        "gpuSharing.perProduct.NVIDIA A2",
        "not a GPU product label",
    ),
    ("image-build", _set("services.kokoro.image", "build"), "services.kokoro.image", "no build host"),
    (
        "image-section",
        _set("image", {"repository": "kokoro", "tag": ""}),
        "image",
        "pinned images only",
    ),
    ("provision", _set("provision", {"driver": "install"}), "provision", "list the GPU nodes under `nodes`"),
    (
        "docker-target-key",
        _set("target.host", "a2.internal"),
        "target.host",
        "unknown key; allowed: adoptExisting, context",
    ),
    (
        "floating-tag",
        _set("services.faster-whisper.image", "fedirz/faster-whisper-server:latest-cuda"),
        "services.faster-whisper.image",
        "floating tag",
    ),
    (
        "floating-cpu-tag",
        _set("services.kokoro.cpuImage", "ghcr.io/remsky/kokoro-fastapi-cpu:latest"),
        "services.kokoro.cpuImage",
        "pin",
    ),
    ("gpu-all", _set("services.kokoro.gpu", "all"), "services.kokoro.gpu", "a count of nvidia.com/gpu"),
    (
        "host-port",
        _set("services.kokoro.ports", ["127.0.0.1:18880:8880"]),
        "services.kokoro.ports",
        "ClusterIP Service",
    ),
    (
        "claim-size",
        _set("services.faster-whisper.storage", {}),
        "services.faster-whisper.storage.models",
        "required",
    ),
    (
        "host-path",
        _set("services.kokoro.volumes", ["/etc:/host-etc:ro"]),
        "services.kokoro.volumes.0",
        "/etc is a system location",
    ),
    (
        "host-path-outside-root",
        _set("services.kokoro.volumes", ["/srv/elsewhere:/data:ro"]),
        "services.kokoro.volumes",
        "under target.root",
    ),
    ("memory", _set("services.kokoro.memory", None), "services.kokoro.memory", "required on kubernetes"),
    ("auto", _set("profile", "auto"), "profile", "names its card"),
    (
        "namespace",
        _all(_set("target.namespace", "kube-system"), _set("target.createNamespace", True)),
        "target.namespace",
        "the cluster's own: pick one, or set target.createNamespace: false",
    ),
    (
        "one-replica",
        _set("gpuSharing.replicas", 1),
        "gpuSharing.replicas",
        "must be at least 2 with time-slicing, got 1: the NVIDIA device plugin refuses fewer",
    ),
    (
        "one-replica-per-product",
        _set("gpuSharing.perProduct", {"NVIDIA-A2": {"replicas": 1}}),
        "gpuSharing.perProduct.NVIDIA-A2",
        "must be at least 2 with time-slicing",
    ),
    (
        "same-namespace",
        _set("gpuOperator.namespace", "ai"),
        "gpuOperator.namespace",
        "namespace of their own",
    ),
    (
        "run-on-cpu",
        _all(
            _set("services.kokoro.cpuFallback", False),
            _set("services.kokoro.cpuImage", None),
            _set("services.kokoro.cpuEnv", {}),
            _set("services.kokoro.runOn", "cpu"),
        ),
        "services.kokoro.runOn",
        "needs cpuFallback",
    ),
    ("chart", _set("gpuOperator.version", "latest"), "gpuOperator.version", "expected a value matching"),
    (
        "no-version",
        _set("target", {"kind": "kubernetes", "context": "microk8s", "namespace": "ai"}),
        "target.version",
        "required",
    ),
]


@pytest.mark.parametrize(("edit", "key", "fragment"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_what_cannot_work_is_a_one_line_config_error_naming_the_key(
    edit: Callable[[dict[str, Any]], None], key: str, fragment: str
) -> None:
    raw = raw_config(edit)
    raw = {k: v for k, v in raw.items() if v is not None}
    for service in raw["services"].values():
        for name in [n for n, v in service.items() if v is None]:
            del service[name]
    with pytest.raises(ConfigError) as error:
        validate(raw)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"gpu-deploy:{key}: "), message
    assert fragment in message, message


@pytest.mark.parametrize(
    ("key", "value"),
    [("gpuSharing", {"strategy": "time-slicing"}), ("gpuOperator", {"enabled": True})],
)
def test_kubernetes_keys_are_refused_on_a_docker_stack(tmp_path: Path, key: str, value: Any) -> None:
    doc = yaml.safe_load((PROJECT_DIR / "Pulumi.h100.yaml").read_text())
    doc["config"][f"{NAMESPACE}:{key}"] = value
    doc["config"][f"{NAMESPACE}:services"]["vision"]["replicas"] = 2
    path = tmp_path / "Pulumi.h100.edited.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = cli("plan", "h100", "--config-file", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"gpu-deploy:{key}: a kubernetes setting; target.kind is docker"
    del doc["config"][f"{NAMESPACE}:{key}"]
    path.write_text(yaml.safe_dump(doc))
    result = cli("plan", "h100", "--config-file", str(path))
    assert (
        result.stderr.strip()
        == "gpu-deploy:services.vision.replicas: a kubernetes setting; target.kind is docker"
    )


# ---------------------------------------------------------------- render
def test_render_writes_one_valid_file_per_object(tmp_path: Path, plan: Plan) -> None:
    out = tmp_path / "manifests"
    result = cli("render", STACK, "--out", str(out))
    assert result.returncode == 0, result.stderr
    expected = {f"{m['kind'].lower()}-{m['metadata']['name'].lower()}.yaml": m for _, m in objects(plan)}
    files = {p.name: p for p in out.glob("*.yaml")}
    assert set(files) == set(expected)
    assert len(files) == len(objects(plan))  # which ones exactly: the render golden (test_golden.py)
    for name, path in files.items():
        documents = list(yaml.safe_load_all(path.read_text()))
        assert len(documents) == 1, name
        kubernetes_validate.validate(documents[0], k8s_version(), strict=True)
        assert documents[0] == expected[name], f"{name} differs from what the program registers"
    # The Helm release is not an object: its values go aside, for `helm template`, with a note.
    values = out / "helm" / "gpu-operator.values.yaml"
    assert yaml.safe_load(values.read_text()) == plan.named(RELEASE, "nvidia-gpu-operator").inputs["values"]
    assert "helm template gpu-operator gpu-operator" in values.read_text()
    assert "note: Helm release gpu-operator" in result.stderr
    assert sorted(result.stdout.split()) == sorted(str(p) for p in [*files.values(), values])
    # A second render replaces the first; a directory with other files is refused.
    assert cli("render", STACK, "--out", str(out)).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    refused = cli("render", STACK, "--out", str(other))
    assert refused.returncode == 1 and "not empty" in refused.stderr


def test_render_never_writes_a_secret_value(tmp_path: Path) -> None:
    def add_secret(config: dict[str, Any]) -> None:
        services(config)["faster-whisper"]["secretEnv"] = {"API_KEY": SECRET_VALUE}

    plan = plan_with(tmp_path, STACK, add_secret)
    rendered = render.render(plan)
    written = render.write(rendered, tmp_path / "out")
    for path in written:
        assert SECRET_VALUE not in path.read_text(), path.name
    secret = yaml.safe_load((tmp_path / "out" / "secret-faster-whisper-env.yaml").read_text())
    assert secret["stringData"] == {"API_KEY": "[secret]"}
    kubernetes_validate.validate(secret, k8s_version(), strict=True)
    assert any("values withheld" in note for note in rendered.notes)
    assert SECRET_VALUE not in plan_text(plan)


def test_render_refuses_a_docker_stack(tmp_path: Path) -> None:
    result = cli("render", "a4000", "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "no Kubernetes objects" in result.stderr


# ---------------------------------------------------------------- list, policy, Docker stacks untouched
def test_list_shows_the_kubernetes_target() -> None:
    result = cli("list")
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "profile=a2" in lines["a2"] and "target=kubernetes:microk8s" in lines["a2"]


def test_policy_pack_passes_on_the_a2_plan(plan: Plan, preview: Plan) -> None:
    context = StackContext.from_config(read_stack_config(PROJECT_DIR, STACK)[1], stack=STACK)
    for chosen in (plan, preview):
        violations = [
            m for r in chosen.resources for m in check_resource(r.type, r.inputs, context, name=r.name)
        ]
        assert violations == []


def test_docker_stacks_do_not_load_pulumi_kubernetes() -> None:
    code = (
        "import sys; from stacks.plan import make_plan; make_plan('a4000'); "
        "print('pulumi_kubernetes' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_secure_value_in_services_keeps_env_secret_and_the_fallback_still_overrides(tmp_path: Path) -> None:
    """The CLI marks all of `services` secret when one value is `secure:`; the stack file says which one:
    only it goes through the Secret, the plain env stays readable in the Deployment, and the CPU
    fallback's own cpuEnv (USE_GPU=false) still wins in its pods."""

    def secure(config: dict[str, Any]) -> None:
        services(config)["kokoro"]["secretEnv"] = {"API_KEY": {"secure": "v1:AAAA"}}

    plan = plan_with(tmp_path, STACK, secure)
    gpu = pod(manifest_of(plan, DEPLOYMENT, "kokoro"))["containers"][0]["env"]
    cpu = pod(manifest_of(plan, DEPLOYMENT, "kokoro-cpu"))["containers"][0]["env"]
    assert {"name": "USE_GPU", "value": "true"} in gpu
    assert {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "kokoro-env", "key": "API_KEY"}}} in gpu
    assert {"name": "USE_GPU", "value": "false"} in cpu
    assert [e["name"] for e in cpu].count("USE_GPU") == 1
    rendered = render.render(plan)  # the plan shows the Secret's data as "[secret]"; render keeps its keys
    secret = rendered.manifests["secret-kokoro-env.yaml"]
    assert secret["stringData"] == {"API_KEY": "[secret]"}
    for manifest in rendered.manifests.values():
        kubernetes_validate.validate(manifest, k8s_version(), strict=True)


def test_every_workload_waits_for_the_gpu_cluster(plan: Plan) -> None:
    """(That each child waits for what its component waits for is tests/stacks/test_children.py.)"""
    workloads = [r for r in plan.resources if r.type == "gpu-deploy:kubernetes:GpuWorkload"]
    assert workloads
    assert all(w.options["dependsOn"] for w in workloads), "every workload waits for the GPU cluster"


# ---------------------------------------------------------------- data is never deleted by a config change
def diff_after(tmp_path: Path, plan: Plan, edit: Callable[[dict[str, Any]], None]) -> Any:
    from stacks.diff import diff_plans

    return diff_plans(plan.as_json(), plan_with(tmp_path, STACK, edit).as_json())


CLAIM = "kubernetes:core/v1:PersistentVolumeClaim"


@pytest.mark.parametrize(
    ("case", "edit", "action"),
    [
        ("disable", lambda c: services(c)["faster-whisper"].update(enabled=False), "delete"),
        ("drop-volume", lambda c: services(c)["faster-whisper"].update(volumes=[], storage={}), "delete"),
        ("storage-class", lambda c: c[f"{NAMESPACE}:target"].update(storageClass="fast-ssd"), "replace"),
        ("namespace", lambda c: c[f"{NAMESPACE}:target"].update(namespace="speech"), "replace"),
    ],
)
def test_a_config_change_never_deletes_a_claims_data(
    tmp_path: Path, plan: Plan, case: str, edit: Callable[[dict[str, Any]], None], action: str
) -> None:
    """The claim is retained on delete (its data stays in the cluster); a change pulumi-kubernetes can only
    make by replacing the claim (a new name, namespace or storage class: diff.go forceNewProperties) is
    reported as the replace it is, with the old claim kept."""
    diff = diff_after(tmp_path, plan, edit)
    (change,) = [c for c in diff.changes if c.type == CLAIM]
    assert change.action == action, change.line()
    if action == "delete":
        assert change.kept, "retainOnDelete: the claim and its data stay"
    claim = plan.named(CLAIM, "faster-whisper-models")
    assert claim.options["retainOnDelete"] is True


def test_renaming_a_service_replaces_its_objects_and_keeps_the_old_claim(tmp_path: Path, plan: Plan) -> None:
    def rename(config: dict[str, Any]) -> None:
        svcs = services(config)
        svcs["whisper"] = svcs.pop("faster-whisper")

    diff = diff_after(tmp_path, plan, rename)
    old = [c for c in diff.of("delete") if c.type == CLAIM]
    assert [c.name for c in old] == ["faster-whisper-models"] and old[0].kept
    assert [c.name for c in diff.of("create") if c.type == CLAIM] == ["whisper-models"]


def test_a_gpu_check_proves_the_node_before_any_gpu_workload(plan: Plan) -> None:
    """The check pod needs everything the A2 node is meant to give: the runtime class, the product label
    GFD sets under time-slicing, and both time-slices (a node whose plugin refused its config advertises
    none); it runs nvidia-smi, whose message is the pod's termination message when it fails."""
    job = plan.named("kubernetes:batch/v1:Job", "gpu-check-a2-job")
    spec = job.inputs["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia"
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term["matchExpressions"] == [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A2-SHARED"]}
    ]
    (container,) = spec["containers"]
    assert container["command"] == ["nvidia-smi", "-L"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    check_image_pinned(container["image"])
    assert job.inputs["spec"]["backoffLimit"] == 0
    for service in GPU_SERVICES:
        workload = plan.named("gpu-deploy:kubernetes:GpuWorkload", service)
        assert job.urn in workload.options["dependsOn"], "a component's dependency is its children"


# ---------------------------------------------------------------- GPU nodes over SSH, two card types
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL8war8sJe6U3kmQHIT7Umy2qtAlRF7xs29MLzDt2aNi"


def two_card_cluster(config: dict[str, Any]) -> None:
    """The A2 MicroK8s node of the write-up plus an H100 node, both provisioned over SSH; a vision service
    on the H100 only."""
    config[f"{NAMESPACE}:nodes"] = {
        "a2-node": {"host": "a2.gpu.internal", "user": "deploy", "hostKey": ED25519, "profile": "a2"},
        "h100-node": {
            "host": "h100.gpu.internal",
            "user": "deploy",
            "hostKey": ED25519,
            "profile": "h100",
            "bastion": {"host": "jump.gpu.internal", "user": "ops", "hostKey": ED25519},
        },
    }
    config[f"{NAMESPACE}:provision"] = {"driver": "verify", "toolkit": "verify", "runtime": "microk8s"}
    services(config)["vision"] = {
        "image": "ghcr.io/example/vision:1.4.2",
        "profile": "h100",
        "gpu": 1,
        "memory": "8g",
        "user": "1000:1000",
        "ports": ["8080:8080"],
    }


@pytest.fixture(scope="module")
def two_cards(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return plan_with(tmp_path_factory.mktemp("two-cards"), STACK, two_card_cluster)


def test_each_gpu_node_gets_the_host_steps_for_its_card_before_the_cluster(two_cards: Plan) -> None:
    commands = {r.name: r for r in two_cards.by_type("command:remote:Command")}
    for node, card in (("a2-node", "a2"), ("h100-node", "h100")):
        preflight = commands[f"gpu-host-{node}-preflight"].inputs["create"]
        assert f"--profile {card} --json" in preflight and "run-verified" in preflight
        assert "CONTAINER_RUNTIME=microk8s" in commands[f"gpu-host-{node}-runtime"].inputs["create"]
        assert "CONTAINER_RUNTIME=microk8s" in commands[f"gpu-host-{node}-verify"].inputs["create"]
        verify = commands[f"gpu-host-{node}-verify"].urn
        operator = two_cards.named("kubernetes:helm.sh/v3:Release", "nvidia-gpu-operator")
        assert verify in operator.options["dependsOn"], "the cluster pieces wait for every node"
    copies = {r.name for r in two_cards.by_type("command:remote:CopyToRemote")}
    assert {"runners-a2-node-preflight", "runners-h100-node-preflight"} <= copies


def test_each_service_is_placed_only_on_its_cards_nodes_and_checked_there(two_cards: Plan) -> None:
    vision = pod(manifest_of(two_cards, DEPLOYMENT, "vision"))
    kokoro = pod(manifest_of(two_cards, DEPLOYMENT, "kokoro"))
    terms = vision["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    (term,) = terms["nodeSelectorTerms"]
    assert term["matchExpressions"] == [
        {
            "key": "nvidia.com/gpu.product",
            "operator": "In",
            "values": ["NVIDIA-H100-PCIe-SHARED", "NVIDIA-H100-80GB-HBM3-SHARED"],
        }
    ]
    assert kokoro["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A2-SHARED"}
    checks = {r.name for r in two_cards.by_type("kubernetes:batch/v1:Job") if r.name.startswith("gpu-check")}
    assert checks == {"gpu-check-a2-job", "gpu-check-h100-job"}
    h100_check = two_cards.named("kubernetes:batch/v1:Job", "gpu-check-h100-job")
    assert two_cards.named(DEPLOYMENT, "vision").urn != h100_check.urn
    assert (
        h100_check.urn in two_cards.named("gpu-deploy:kubernetes:GpuWorkload", "vision").options["dependsOn"]
    )


def test_the_two_card_cluster_renders_valid_manifests_and_passes_the_policy(
    two_cards: Plan, tmp_path: Path
) -> None:
    for _, manifest in objects(two_cards):
        kubernetes_validate.validate(manifest, k8s_version(), strict=True)
    config = copy.deepcopy(stack_config(STACK))
    two_card_cluster(config)
    context = StackContext.from_config(
        {k: json.dumps(v) if not isinstance(v, str) else v for k, v in config.items()}, stack=STACK
    )
    problems = [
        m for r in two_cards.resources for m in check_resource(r.type, r.inputs, context, name=r.name)
    ]
    assert problems == []


@pytest.mark.parametrize(
    ("edit", "key", "fragment"),
    [
        (lambda c: services(c)["kokoro"].update(profile="p40"), "services.kokoro.profile", "no GPU node"),
        (
            lambda c: c[f"{NAMESPACE}:provision"].update(runtime="docker"),
            "provision.runtime",
            "Kubernetes nodes run containerd: set microk8s",
        ),
        (
            lambda c: c[f"{NAMESPACE}:nodes"]["a2-node"].update(hostKey=""),
            "nodes.a2-node.hostKey",
            "expected",
        ),
    ],
)
def test_nodes_and_cards_that_cannot_work_are_config_errors(
    edit: Callable[[dict[str, Any]], None], key: str, fragment: str
) -> None:
    config = copy.deepcopy(stack_config(STACK))
    two_card_cluster(config)
    edit(config)
    raw = {k.removeprefix(f"{NAMESPACE}:"): v for k, v in config.items() if k.startswith(f"{NAMESPACE}:")}
    with pytest.raises(ConfigError) as error:
        validate(raw)
    assert str(error.value).startswith(f"gpu-deploy:{key}: ") and fragment in str(error.value), str(
        error.value
    )
