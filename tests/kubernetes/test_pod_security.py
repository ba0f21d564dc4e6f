"""Pod Security "restricted", restated from kubernetes/pod-security-admission (release-1.30,
policy/check_*.go), run over every pod the Kubernetes stacks create: the workloads, their CPU fallbacks,
the smoke Jobs and the GPU checks, in the a2 stack and a generated two-card cluster. `ai` is the team's
namespace: whatever level it enforces, these pods are admitted.
"""

from __future__ import annotations

from typing import Any

import pytest

from stacks.plan import Plan
from tests.plans import ShippedPlan, plan_with
from tests.stacks.test_kubernetes_stack import STACK, two_card_cluster

POD_TEMPLATES = {
    "kubernetes:apps/v1:Deployment": ("spec", "template", "spec"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template", "spec"),
    "kubernetes:batch/v1:Job": ("spec", "template", "spec"),
}
# check_restrictedVolumes.go: the volume types restricted allows
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_problems(pod: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    context = pod.get("securityContext") or {}
    containers = [*pod.get("containers", []), *pod.get("initContainers", [])]
    for flag in ("hostNetwork", "hostPID", "hostIPC"):  # check_hostNamespaces.go
        if pod.get(flag):
            problems.append(f"{flag} is true")
    for volume in pod.get("volumes", []):  # check_restrictedVolumes.go
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']} is {sorted(kinds)}")
    pod_non_root = context.get("runAsNonRoot") is True
    pod_seccomp = (context.get("seccompProfile") or {}).get("type")
    if context.get("runAsUser") == 0:  # check_runAsUser.go
        problems.append("pod runAsUser is 0")
    for container in containers:
        name = container["name"]
        own = container.get("securityContext") or {}
        if own.get("privileged"):  # check_privileged.go
            problems.append(f"{name}: privileged")
        if own.get("allowPrivilegeEscalation") is not False:  # check_allowPrivilegeEscalation.go
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if not (own.get("runAsNonRoot") is True or (pod_non_root and own.get("runAsNonRoot") is not False)):
            problems.append(f"{name}: runAsNonRoot is not true")  # check_runAsNonRoot.go
        if own.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser is 0")
        seccomp = (own.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):  # check_seccompProfile_restricted.go
            problems.append(f"{name}: seccompProfile is {seccomp!r}")
        capabilities = own.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):  # check_capabilities_restricted.go
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds {capabilities['add']}")
        if any(p.get("hostPort") for p in container.get("ports", [])):  # check_hostPorts.go
            problems.append(f"{name}: hostPort")
    return problems


def pods(plan: Plan) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for resource in plan.resources:
        path = POD_TEMPLATES.get(resource.type)
        if path is None:
            continue
        value: Any = resource.inputs
        for part in path:
            value = value[part]
        found.append((resource.name, value))
    return found


@pytest.fixture(scope="module", params=["a2", "two-cards"])
def plan(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shipped_plan: ShippedPlan
) -> Plan:
    if request.param == "a2":
        return shipped_plan(STACK)
    return plan_with(tmp_path_factory.mktemp("pss"), STACK, two_card_cluster)


def test_every_pod_meets_pod_security_restricted(plan: Plan) -> None:
    found = pods(plan)
    assert len(found) >= 7
    for name, pod in found:
        assert restricted_problems(pod) == [], name


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            lambda p: [
                p["securityContext"].pop("runAsNonRoot", None),
                p["containers"][0]["securityContext"].pop("runAsNonRoot", None),
            ],
            "runAsNonRoot is not true",
        ),
        (
            lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
            "allowPrivilegeEscalation",
        ),
        (lambda p: p["securityContext"].pop("seccompProfile"), "seccompProfile is None"),
        (lambda p: p.update(volumes=[{"name": "h", "hostPath": {"path": "/"}}]), "volume h is ['hostPath']"),
        (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "adds"),
    ],
)
def test_the_restatement_catches_what_restricted_refuses(
    change: Any, problem: str, shipped_plan: ShippedPlan
) -> None:
    import copy

    (_, pod) = next((n, p) for n, p in pods(shipped_plan(STACK)) if n == "kokoro")
    broken = copy.deepcopy(pod)
    change(broken)
    assert any(problem in p for p in restricted_problems(broken)), restricted_problems(broken)
