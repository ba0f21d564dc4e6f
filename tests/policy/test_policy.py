"""The policy pack (policy/): every shipped stack passes every rule; a planted violation of each rule fails.

The rules run over the offline plans (`python -m stacks plan STACK --json`): the resource inputs the
engine would hand a policy pack. The last tests start the pack the way the engine does
(`python -m pulumi.policy`, in policy/) and talk to it over gRPC.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime import proto
from pulumi.runtime.proto import analyzer_pb2_grpc
from pulumi_policy import EnforcementLevel, Policy, ResourceValidationPolicy
from pulumi_policy.policy import _PolicyAnalyzerServicer
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError, unknown_checking_proxy

from components.core import vocabulary
from components.core.catalog import PROFILES
from components.core.values import looks_secret
from components.core.vocabulary import UNKNOWN_PLACEHOLDER
from policy.container_rules import image_pin_problem
from policy.context import StackContext
from policy.reading import CONTAINER, IMAGE, POD_SPEC_PATHS, pod_containers, pod_spec
from policy.validators import RULES, RULES_BY_NAME, check_resource, check_rule, to_plain, validate_with
from stacks.plan import PROJECT_DIR, Plan, PlannedResource, list_stacks, read_stack_config
from tests.plans import shipped_plan

POLICY_DIR = PROJECT_DIR / "policy"
SHIPPED = list_stacks(PROJECT_DIR)


def plan_of(stack: str, preview: bool = False) -> Plan:
    return shipped_plan(stack, preview=preview)


@functools.cache
def context_of(stack: str) -> StackContext:
    return StackContext.from_config(read_stack_config(PROJECT_DIR, stack)[1], stack=stack)


def resource(stack: str, type_: str, name: str) -> PlannedResource:
    return plan_of(stack).named(type_, name)


# ---------------------------------------------------------------- every shipped stack complies
@pytest.mark.parametrize("preview", [False, True], ids=["up", "preview"])
@pytest.mark.parametrize("stack", SHIPPED)
def test_shipped_stack_passes_every_rule(stack: str, preview: bool) -> None:
    plan = plan_of(stack, preview)
    context = context_of(stack)
    violations = [
        message for r in plan.resources for message in check_resource(r.type, r.inputs, context, name=r.name)
    ]
    assert violations == []
    checked = {r.type for r in plan.resources}
    assert CONTAINER in checked or any(t in checked for t in POD_SPEC_PATHS), "nothing to check"


# ---------------------------------------------------------------- planted violations, one per rule
def set_(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(props: dict[str, Any]) -> None:
        props[key] = value

    return edit


def drop(key: str) -> Callable[[dict[str, Any]], None]:
    def edit(props: dict[str, Any]) -> None:
        props.pop(key, None)

    return edit


def add_env(entry: str) -> Callable[[dict[str, Any]], None]:
    def edit(props: dict[str, Any]) -> None:
        props["envs"] = [*props.get("envs", []), entry]

    return edit


def build_arg(key: str, value: str) -> Callable[[dict[str, Any]], None]:
    def edit(props: dict[str, Any]) -> None:
        props["build"]["args"][key] = value

    return edit


def mount_source(source: str) -> Callable[[dict[str, Any]], None]:
    def edit(props: dict[str, Any]) -> None:
        props["mounts"][0]["source"] = source

    return edit


def create_sub(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def edit(props: dict[str, Any]) -> None:
        assert old in props["create"]
        props["create"] = props["create"].replace(old, new)

    return edit


def mig_devices(props: dict[str, Any]) -> None:
    props["deviceRequests"] = [
        {
            "driver": "nvidia",
            "deviceIds": ["MIG-4f2e1c3a-0000-1111-2222-333344445555"],
            "capabilities": ["gpu"],
        }
    ]


APP = ("prod", CONTAINER, "app")
BACKEND = ("a4000", CONTAINER, "backend")
PROD_IMAGE = ("prod", IMAGE, "image-build")
PROD_DIRS = ("prod", "command:remote:Command", "dirs-1001-1001-prepare")
H100_VISION = ("h100", CONTAINER, "vision")

# (rule, (stack, type, resource name), edit, words the message must contain)
PLANTED: list[tuple[str, tuple[str, str, str], Callable[[dict[str, Any]], None], str]] = [
    ("non-root-user", APP, set_("user", "0:0"), "runs as root"),
    ("non-root-user", H100_VISION, set_("user", "root"), "not a numeric uid"),
    ("non-root-user", BACKEND, drop("user"), "has no user"),
    ("no-privileges", APP, set_("privileged", True), "privileged"),
    ("no-privileges", BACKEND, set_("capabilities", {"drops": ["ALL"], "adds": ["SYS_ADMIN"]}), "SYS_ADMIN"),
    ("no-privileges", H100_VISION, set_("ipcMode", "host"), "host's IPC namespace"),
    ("pinned-images", ("h100", CONTAINER, "redis"), set_("image", "redis:latest"), "latest"),
    ("pinned-images", ("h100", CONTAINER, "redis"), set_("image", "redis"), "no tag"),
    ("pinned-images", PROD_IMAGE, build_arg("BASE_IMAGE", "nvidia/cuda"), "BASE_IMAGE"),
    ("host-paths-under-root", APP, mount_source("/etc"), "/etc is outside the stack's root"),
    (
        "host-paths-under-root",
        APP,
        mount_source("/srv/english-listening-trainer/../../etc"),
        "outside the stack's root",
    ),
    (
        "host-paths-under-root",
        PROD_DIRS,
        create_sub("/srv/english-listening-trainer/logs", "/var/log"),
        "/var/log",
    ),
    ("host-dirs-not-world-writable", PROD_DIRS, create_sub("MODE=0750", "MODE=0777"), "world-writable"),
    ("host-dirs-not-world-writable", PROD_DIRS, create_sub("MODE=0750", "MODE=0752"), "world-writable"),
    ("no-plain-secrets", APP, add_env("DB_PASSWORD=hunter2"), "DB_PASSWORD"),
    ("no-plain-secrets", H100_VISION, add_env("HF_TOKEN=hf_abc123"), "HF_TOKEN"),
    ("no-plain-secrets", PROD_IMAGE, build_arg("NPM_TOKEN", "npm_abc"), "NPM_TOKEN"),
    (
        "cuda-fits-card",
        PROD_IMAGE,
        build_arg("BASE_IMAGE", "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04"),
        "13.0",
    ),
    (
        "cuda-fits-card",
        PROD_IMAGE,
        build_arg("TORCH_INDEX_URL", "https://download.pytorch.org/whl/cu128"),
        "cu128",
    ),
    ("cuda-fits-card", PROD_IMAGE, build_arg("CUDA_VERSION", "13.0.1"), "CUDA_VERSION"),
    ("mig-only-on-h100", BACKEND, mig_devices, "MIG exists only on h100"),
    ("memory-limit", APP, drop("memory"), "no memory limit"),
    ("memory-limit", BACKEND, set_("memory", 0), "no memory limit"),
    ("gpu-requests-match-profile", BACKEND, add_env("NVIDIA_VISIBLE_DEVICES=all"), "defeats the device ids"),
    (
        "gpu-requests-match-profile",
        APP,
        set_("deviceRequests", [{"driver": "amd", "count": -1, "capabilities": ["gpu"]}]),
        "not 'nvidia'",
    ),
    ("gpu-requests-match-profile", APP, set_("deviceRequests", [{"driver": "nvidia", "count": 0}]), "count"),
]


@pytest.mark.parametrize(
    ("rule_name", "where", "edit", "expected"),
    PLANTED,
    ids=[f"{rule}:{where[0]}/{where[2]}:{expected}" for rule, where, _, expected in PLANTED],
)
def test_planted_violation_fails_naming_the_resource(
    rule_name: str, where: tuple[str, str, str], edit: Callable[[dict[str, Any]], None], expected: str
) -> None:
    stack, type_, name = where
    original = resource(stack, type_, name)
    context = context_of(stack)
    rule = RULES_BY_NAME[rule_name]
    assert check_rule(rule, type_, original.inputs, context, name=name) == []

    props = copy.deepcopy(original.inputs)
    edit(props)
    messages = check_rule(rule, type_, props, context, name=name)
    assert messages, f"{rule_name} let the planted violation through"
    assert all(m.startswith(f"{type_.rsplit(':', 1)[-1]} {name}") for m in messages), messages
    assert any(expected in m for m in messages), messages
    assert set(messages) <= set(check_resource(type_, props, context, name=name))


def test_every_rule_has_a_planted_violation() -> None:
    assert {rule for rule, *_ in PLANTED} == set(RULES_BY_NAME)


def test_cpu_profile_takes_no_device_requests() -> None:
    probe = resource("dev", CONTAINER, "probe")
    cpu = StackContext(stack="dev", profile="cpu")
    props = copy.deepcopy(probe.inputs)
    props["deviceRequests"] = [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    messages = check_resource(CONTAINER, props, cpu, name="probe")
    assert any("profile cpu has no GPU" in m for m in messages)


def test_mig_device_ids_are_fine_on_h100() -> None:
    props = copy.deepcopy(resource(*H100_VISION).inputs)
    mig_devices(props)
    props["envs"] = [e for e in props["envs"] if not e.startswith("NVIDIA_VISIBLE_DEVICES=")]
    assert check_resource(CONTAINER, props, context_of("h100"), name="vision") == []


def test_unknown_profile_skips_only_profile_checks() -> None:
    """Profile `auto` during preview: the label is unknown, so MIG/CPU checks wait for `pulumi up`."""
    props = copy.deepcopy(resource(*BACKEND).inputs)
    mig_devices(props)
    props["labels"] = [{"label": vocabulary.LABEL_PROFILE, "value": UNKNOWN_PLACEHOLDER}]
    props["user"] = "0:0"
    messages = check_resource(CONTAINER, props, StackContext(root="/srv/nlp-backend"), name="backend")
    assert not any("MIG" in m for m in messages)
    assert any("runs as root" in m for m in messages)


def test_labels_override_the_config() -> None:
    """A container's io.gpu-deploy.* labels (what the program resolved) win over the stack config."""
    props = copy.deepcopy(resource(*BACKEND).inputs)
    props["labels"] = [
        {"label": vocabulary.LABEL_PROFILE, "value": "a4000"},
        {"label": vocabulary.LABEL_ROOT, "value": "/srv/other"},
    ]
    mig_devices(props)
    messages = check_resource(CONTAINER, props, StackContext(profile="h100", root="/srv/nlp-backend"))
    assert any("MIG" in m for m in messages)
    assert any("outside the stack's root /srv/other" in m for m in messages)


def test_bind_mount_without_a_root_fails() -> None:
    props = copy.deepcopy(resource(*APP).inputs)
    props["labels"] = []
    messages = check_resource(CONTAINER, props, StackContext(profile="p40"), name="app")
    assert any("no target.root" in m for m in messages)


def test_declared_secret_env_passes_where_the_engine_unwraps_it() -> None:
    """At preview the policy SDK hands secrets over as plain values: secretEnv names are allowed."""
    props = copy.deepcopy(resource(*APP).inputs)
    props["envs"] = [*props["envs"], "JWT_SECRET=s3cr3t", "[secret]"]
    declared = StackContext.from_config(
        {
            "gpu-deploy:profile": "p40",
            "gpu-deploy:target": json.dumps({"kind": "docker", "root": "/srv/english-listening-trainer"}),
            "gpu-deploy:services": json.dumps({"app": {"secretEnv": {"JWT_SECRET": "s3cr3t"}}}),
        }
    )
    assert check_resource(CONTAINER, props, declared, name="app") == []
    other_service = StackContext.from_config(
        {
            "gpu-deploy:profile": "p40",
            "gpu-deploy:target": json.dumps({"kind": "docker", "root": "/srv/english-listening-trainer"}),
            "gpu-deploy:services": json.dumps(
                {"app": {"env": {}}, "admin": {"secretEnv": {"JWT_SECRET": "x"}}}
            ),
        }
    )
    assert any("JWT_SECRET" in m for m in check_resource(CONTAINER, props, other_service, name="app"))


def test_context_from_pulumi_config() -> None:
    """PULUMI_CONFIG: full keys, objects as JSON text; `auto` and typos are an unknown profile."""
    _, config, _ = read_stack_config(PROJECT_DIR, "prod")
    context = StackContext.from_config(config, stack="prod")
    assert (context.profile, context.root) == ("p40", "/srv/english-listening-trainer")
    assert StackContext.from_config({"gpu-deploy:profile": "auto"}).profile is None
    assert StackContext.from_config({"gpu-deploy:profile": "p4O"}).profile is None
    assert StackContext.from_config({"gpu-deploy:target": '{"root": "/srv/x/"}'}).root == "/srv/x"
    assert StackContext.from_config({"gpu-deploy:target": '{"root": "relative"}'}).root is None


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("DB_PASSWORD", True),
        ("MYSQL_PASSWD", True),
        ("JWT_SECRET", True),
        ("HF_TOKEN", True),
        ("OPENAI_API_KEY", True),
        ("APIKEY", True),
        ("SSH_PRIVATE_KEY", True),
        ("AWS_CREDENTIALS", True),
        ("HOST_KEY", False),
        ("REDIS_URL", False),
        ("HF_HOME", False),
        ("GITHUB_TOKEN", True),
        ("SECRET_KEY_BASE", True),
        ("x-api-key", True),
        ("TOKENIZERS_PARALLELISM", False),  # Hugging Face's switch, not a token
        ("PASSWORDLESS_LOGIN", False),
    ],
)
def test_secret_names_are_the_config_validators_rule(name: str, secret: bool) -> None:
    """The policy and the config validator share one rule (components.core.values.looks_secret)."""
    assert looks_secret(name) is secret


def test_catalog_facts_come_from_the_profiles() -> None:
    mig = [k for k, p in PROFILES.items() if p.mig_capable]
    assert "h100" in mig
    assert all(PROFILES[k].mig_profiles for k in mig), "a MIG card lists its MIG profiles"
    assert not any(p.mig_profiles for k, p in PROFILES.items() if k not in mig)
    p40 = PROFILES["p40"]
    assert (p40.max_cuda_major, p40.max_wheel_cuda) == (12, "12.6")


@pytest.mark.parametrize(
    ("ref", "pinned"),
    [
        ("redis:7.2.4", True),
        ("registry.local:5000/team/app:p40-01253fbbf25a", True),
        ("nvidia/cuda@sha256:" + "a" * 64, True),
        ("redis", False),
        ("redis:latest", False),
        ("registry.local:5000/team/app", False),
        ("", False),
        (UNKNOWN_PLACEHOLDER, True),
    ],
)
def test_image_pinning(ref: str, pinned: bool) -> None:
    assert (image_pin_problem(ref) is None) == pinned


# ---------------------------------------------------------------- Kubernetes-shaped props
def deployment(**container_overrides: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "vision",
        "image": "registry.local/ai4thai-vision:h100-b6de8bc1f783",
        "resources": {
            "limits": {"memory": "96Gi", "nvidia.com/gpu": "1"},
            "requests": {"memory": "64Gi", "nvidia.com/gpu": "1"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
        "env": [
            {"name": "HF_HOME", "value": "/models"},
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
        ],
    }
    container.update(container_overrides)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "vision",
            "namespace": "ai4thai",
            "labels": {"app.kubernetes.io/name": "vision"},
        },
        "spec": {
            "replicas": 1,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "vision"}},
                "spec": {
                    "securityContext": {"runAsUser": 1001, "runAsGroup": 1001, "runAsNonRoot": True},
                    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                    "containers": [container],
                    "volumes": [{"name": "models", "hostPath": {"path": "/srv/ai4thai/models"}}],
                },
            },
        },
    }


DEPLOYMENT = "kubernetes:apps/v1:Deployment"
H100 = StackContext(stack="k8s", profile="h100", root="/srv/ai4thai")


def pod_of(props: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = props["spec"]["template"]["spec"]
    return spec


def test_k8s_deployment_that_complies() -> None:
    assert check_resource(DEPLOYMENT, deployment(), H100, name="vision") == []


def test_k8s_other_workload_shapes() -> None:
    spec = pod_of(deployment())
    shapes = {
        "kubernetes:core/v1:Pod": {"metadata": {"name": "p"}, "spec": spec},
        "kubernetes:apps/v1:StatefulSet": {"spec": {"template": {"spec": spec}}},
        "kubernetes:batch/v1:CronJob": {"spec": {"jobTemplate": {"spec": {"template": {"spec": spec}}}}},
    }
    for type_, props in shapes.items():
        assert check_resource(type_, props, H100, name="w") == [], type_
        broken = copy.deepcopy(props)
        container = pod_containers(pod_spec(type_, broken))[0]
        assert isinstance(container, dict)
        container["securityContext"]["privileged"] = True
        assert any("runs privileged" in m for m in check_resource(type_, broken, H100, name="w")), type_


K8S_CASES: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
    ("non-root-user", lambda d: pod_of(d)["securityContext"].update(runAsUser=0), "runAsUser is 0"),
    (
        "non-root-user",
        lambda d: (
            pod_of(d).pop("securityContext"),
            pod_of(d)["containers"][0]["securityContext"].pop("runAsNonRoot"),
        ),
        "neither runAsNonRoot",
    ),
    (
        "no-privileges",
        lambda d: pod_of(d)["containers"][0]["securityContext"].update(privileged=True),
        "privileged",
    ),
    (
        "no-privileges",
        lambda d: pod_of(d)["containers"][0]["securityContext"].update(capabilities={"add": ["SYS_ADMIN"]}),
        "SYS_ADMIN",
    ),
    (
        "no-privileges",
        lambda d: pod_of(d)["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
        "escalation",
    ),
    ("pinned-images", lambda d: pod_of(d)["containers"][0].update(image="vision:latest"), "latest"),
    ("pinned-images", lambda d: pod_of(d)["containers"][0].update(image="vision"), "no tag"),
    (
        "memory-limit",
        lambda d: pod_of(d)["containers"][0]["resources"]["limits"].pop("memory"),
        "limits.memory",
    ),
    (
        "no-plain-secrets",
        lambda d: pod_of(d)["containers"][0]["env"].append({"name": "DB_PASSWORD", "value": "hunter2"}),
        "secretKeyRef",
    ),
    ("host-paths-under-root", lambda d: pod_of(d)["volumes"][0]["hostPath"].update(path="/etc"), "/etc"),
    (
        "gpu-requests-match-profile",
        lambda d: pod_of(d)["containers"][0]["resources"]["limits"].pop("nvidia.com/gpu"),
        "without a limit",
    ),
    (
        "gpu-requests-match-profile",
        lambda d: pod_of(d)["containers"][0]["resources"]["requests"].update({"nvidia.com/gpu": "2"}),
        "differs from its limit",
    ),
    (
        "gpu-requests-match-profile",
        lambda d: pod_of(d)["nodeSelector"].update({"nvidia.com/gpu.product": "Tesla-P40"}),
        "is not a NVIDIA H100",
    ),
]


@pytest.mark.parametrize(("rule_name", "edit", "expected"), K8S_CASES, ids=[c[2] for c in K8S_CASES])
def test_k8s_pod_rules(rule_name: str, edit: Callable[[dict[str, Any]], object], expected: str) -> None:
    props = deployment()
    edit(props)
    messages = check_rule(RULES_BY_NAME[rule_name], DEPLOYMENT, props, H100, name="vision")
    assert any(expected in m for m in messages), messages
    assert all(m.startswith("Deployment vision") for m in messages)


def test_k8s_gpu_and_mig_against_the_profile() -> None:
    on_cpu = StackContext(profile="cpu", root="/srv/ai4thai")
    assert any("profile cpu has no GPU" in m for m in check_resource(DEPLOYMENT, deployment(), on_cpu))

    mig = deployment()
    limits = pod_of(mig)["containers"][0]["resources"]["limits"]
    requests = pod_of(mig)["containers"][0]["resources"]["requests"]
    for table in (limits, requests):
        table.pop("nvidia.com/gpu")
        table["nvidia.com/mig-1g.10gb"] = "1"
    pod_of(mig)["nodeSelector"]["nvidia.com/gpu.product"] = "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb"
    assert check_resource(DEPLOYMENT, mig, H100) == []
    on_a4000 = StackContext(profile="a4000", root="/srv/ai4thai")
    messages = check_rule(RULES_BY_NAME["mig-only-on-h100"], DEPLOYMENT, mig, on_a4000, name="vision")
    assert messages == [
        "Deployment vision: MIG nvidia.com/mig-1g.10gb requested on a NVIDIA RTX A4000 (profile a4000); "
        f"MIG exists only on {', '.join(k for k, p in PROFILES.items() if p.mig_capable)}"
    ]


def test_k8s_labels_carry_the_profile() -> None:
    props = deployment()
    props["spec"]["template"]["metadata"]["labels"][vocabulary.LABEL_PROFILE] = "cpu"
    messages = check_resource(DEPLOYMENT, props, StackContext(profile="h100", root="/srv/ai4thai"))
    assert any("profile cpu has no GPU" in m for m in messages)


# ---------------------------------------------------------------- the policy SDK path
def wire(value: Any) -> Any:
    """Offline-plan placeholders -> what the engine sends: unknown sentinels (secrets come in clear)."""
    if isinstance(value, dict):
        return {k: wire(item) for k, item in value.items()}
    if isinstance(value, list):
        return [wire(item) for item in value]
    return UNKNOWN_STRING_VALUE if value == UNKNOWN_PLACEHOLDER else value


def test_to_plain_turns_unknowns_into_placeholders() -> None:
    props = unknown_checking_proxy({"image": UNKNOWN_STRING_VALUE, "memory": 2048.0, "envs": ["A=1"]})
    with pytest.raises(UnknownValueError):
        _ = props["image"]
    assert to_plain(props, (UnknownValueError,)) == {
        "image": UNKNOWN_PLACEHOLDER,
        "memory": 2048,
        "envs": ["A=1"],
    }


def analyze(props: dict[str, Any], context: StackContext, type_: str = CONTAINER) -> list[Any]:
    """Run every rule through pulumi_policy's own analyzer servicer, as the engine's Analyze call would."""
    policies: list[Policy] = [
        ResourceValidationPolicy(
            name=rule.name,
            description=rule.description,
            validate=validate_with(rule, lambda: context, (UnknownValueError,)),
        )
        for rule in RULES
    ]
    servicer = _PolicyAnalyzerServicer("gpu-deploy", "0.0.1", policies, EnforcementLevel.MANDATORY)
    properties = struct_pb2.Struct()
    properties.update(wire(props))
    request = proto.AnalyzeRequest(type=type_, urn=f"urn:pulumi:t::gpu-deploy::{type_}::r", name="r")
    request.properties.CopyFrom(properties)
    call: Callable[..., Any] = servicer.Analyze
    response = call(request, None)
    return list(response.diagnostics)


def test_sdk_path_passes_a_shipped_container_with_unknowns() -> None:
    props = copy.deepcopy(resource(*APP).inputs)
    props["image"] = UNKNOWN_PLACEHOLDER  # not known during preview
    assert analyze(props, context_of("prod")) == []


def test_sdk_path_reports_mandatory_violations() -> None:
    # the migration: a fixed name (prod's app is a zero-downtime copy, named only once it exists)
    props = copy.deepcopy(resource("prod", CONTAINER, "migrate").inputs)
    props["image"] = UNKNOWN_PLACEHOLDER
    props["user"] = "0:0"
    diagnostics = analyze(props, context_of("prod"))
    assert [d.policyName for d in diagnostics] == ["non-root-user"]
    assert diagnostics[0].enforcementLevel == proto.MANDATORY
    assert "Container r (prod-migrate): runs as root" in diagnostics[0].message


# ---------------------------------------------------------------- the pack as the engine starts it
def test_pack_files() -> None:
    doc = yaml.safe_load((POLICY_DIR / "PulumiPolicy.yaml").read_text())
    assert doc["runtime"]["name"] == "python"
    assert doc["runtime"]["options"]["virtualenv"] == "venv"
    assert doc["description"]
    requirements = (POLICY_DIR / "requirements.txt").read_text()
    assert "pulumi-policy>=1.21,<2" in requirements
    # this repository's core, editable; pip reads the path from where it runs: policy/, as the CLI runs it
    assert "-e .." in requirements.splitlines()
    setuptools = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["packages"] == ["components", "components.core", "policy"]  # no Pulumi components


def imports(path: Path) -> set[str]:
    """The modules a Python file imports (a relative import as the package it names)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    # a host-side module's `except ImportError:` fallback imports its siblings when copied to a GPU host
    fallbacks = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.Try)
        for handler in node.handlers
        if isinstance(handler.type, ast.Name) and handler.type.id == "ImportError"
        for inner in ast.walk(handler)
    }
    for node in ast.walk(tree):
        if id(node) in fallbacks:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            package = ".".join(path.parent.relative_to(PROJECT_DIR).parts)
            found.add(f"{package}.{node.module or ''}".rstrip(".") if node.level else str(node.module))
    return found


PACK_FILES = sorted([*POLICY_DIR.glob("*.py"), *(PROJECT_DIR / "components" / "core").glob("*.py")])


@pytest.mark.parametrize("path", PACK_FILES, ids=lambda p: str(p.relative_to(PROJECT_DIR)))
def test_the_pack_imports_only_the_core_and_the_policy_sdk(path: Path) -> None:
    """The pack's virtualenv holds the policy SDK and this repository's standard-library core, nothing
    else: the rules and the core import the standard library, components.core and policy only, and the
    pack finds them installed (policy/requirements.txt), never through a sys.path of its own."""
    sdk = {"pulumi_policy", "pulumi_policy.proxy", "pulumi.runtime"} if path.name == "__main__.py" else set()
    own = ("components.core.", "policy.") if path.parent == POLICY_DIR else ("components.core.",)
    for name in imports(path):
        top = name.split(".")[0]
        allowed = top in sys.stdlib_module_names or name.startswith(own) or name in sdk
        allowed = allowed or name == "components.core"  # `from components.core import cards`
        assert allowed, f"{path.relative_to(PROJECT_DIR)} imports {name}: not in the policy pack's virtualenv"
    assert "sys.path" not in path.read_text()


def test_pack_serves_every_rule_over_grpc() -> None:
    """`python -m pulumi.policy ENGINE .` in policy/, as pulumi-analyzer-policy-python runs it."""
    _, config, _ = read_stack_config(PROJECT_DIR, "prod")
    # No PYTHONPATH: the pack finds components.core and policy installed (requirements-dev.txt `-e .`),
    # as it does in its own virtualenv
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"PULUMI_CONFIG": json.dumps(config), "PULUMI_STACK": "prod"}
    pack = subprocess.Popen(
        [sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:1", "."],
        cwd=POLICY_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert pack.stdout is not None
        port = pack.stdout.readline().strip()
        assert port.isdigit(), pack.stderr.read() if pack.stderr else port
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = analyzer_pb2_grpc.AnalyzerStub(channel)
            info = stub.GetAnalyzerInfo(empty_pb2.Empty(), timeout=20)
            assert info.name == "gpu-deploy"
            assert sorted(p.name for p in info.policies) == sorted(RULES_BY_NAME)
            assert {p.enforcementLevel for p in info.policies} == {proto.MANDATORY}

            props = copy.deepcopy(resource(*APP).inputs)
            props["mounts"][0]["source"] = "/etc"  # the root comes from PULUMI_CONFIG / the labels
            properties = struct_pb2.Struct()
            properties.update(wire(props))
            request = proto.AnalyzeRequest(
                type=CONTAINER, urn="urn:pulumi:prod::gpu-deploy::x::app", name="app"
            )
            request.properties.CopyFrom(properties)
            response = stub.Analyze(request, timeout=20)
            assert [d.policyName for d in response.diagnostics] == ["host-paths-under-root"]
    finally:
        pack.kill()
        pack.wait(timeout=10)
