"""The Docker wiring of the two rollouts: zero-downtime copies behind the reverse proxy, stop-first containers
under their fixed name, the GPU memory gate, the routes dependents wait for, and placement at deploy."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from components.core.gpu_memory import ZERO_DOWNTIME, BudgetError, Rollout
from components.core.vocabulary import (
    LABEL_GATE,
    LABEL_SERVICE,
    LABEL_STACK,
    PROXY_CONFIG,
    PROXY_IMAGE,
)
from components.docker.proxy import main_caddyfile
from components.host.shell import script
from stacks.config import validate
from stacks.docker_args import deploy_placement
from stacks.plan import Plan
from tests.plans import (
    REMOTE_COMMAND,
    ShippedPlan,
    containers,
    labels_of,
    plan_with,
    stack_config,
)


def command_of(plan: Plan, name: str) -> Any:
    return plan.named(REMOTE_COMMAND, name)


def test_a_zero_downtime_copy_is_auto_named_created_beside_the_old_one_and_reached_through_the_proxy(
    shipped_plan: ShippedPlan,
) -> None:
    plan = shipped_plan("prod")
    assert plan.outputs["rollout"]["app"]["mode"] == ZERO_DOWNTIME
    app = containers(plan)["app"]
    assert "name" not in app.inputs, "pulumi-docker auto-names it: a replacement gets a fresh name"
    assert app.options["deleteBeforeReplace"] is False and app.engine["deleteBeforeReplaceDefined"] is True
    assert app.engine["replaceOnChanges"] == ["*"]
    assert app.inputs["ports"] == [] and app.inputs["networksAdvanced"][0]["aliases"] == []
    assert app.inputs["destroyGraceSeconds"] == 30, "the old copy is stopped gracefully, not killed"
    assert plan.outputs["services"] == {"migrate": "prod-migrate", "app": "[unknown]"}

    proxy = containers(plan)["proxy"]
    assert proxy.inputs["name"] == "prod-proxy" and proxy.inputs["image"] == PROXY_IMAGE
    assert proxy.options["deleteBeforeReplace"] is True
    assert proxy.inputs["ports"] == [{"internal": 3000, "external": 3000, "protocol": "tcp"}]
    assert proxy.inputs["networksAdvanced"] == [{"name": "gpu-deploy-prod", "aliases": ["app"]}]
    assert proxy.inputs["uploads"] == [{"file": PROXY_CONFIG, "content": main_caddyfile()}]
    assert proxy.inputs["user"] == "65534:65534" and proxy.inputs["memory"] == 256
    assert proxy.inputs["sysctls"] == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert proxy.inputs["capabilities"] == {"drops": ["ALL"]}
    assert proxy.inputs["securityOpts"] == ["no-new-privileges:true"]
    (shell,) = [word for word in proxy.inputs["command"] if "caddy" in word]
    assert "cp " in shell and "run --resume --config /etc/caddy/Caddyfile --adapter caddyfile" in shell

    route = command_of(plan, "app-route")
    assert route.parent == next(r.urn for r in plan.resources if r.type == "gpu-deploy:docker:ReverseProxy")
    assert route.inputs["stdin"] == script("proxy-routes")
    assert {proxy.urn, app.urn} <= set(route.options["dependsOn"])
    smoke = command_of(plan, "smoke-app-run")
    assert route.urn in smoke.options["dependsOn"], "the smoke test runs once the route is set"


def test_a_gpu_service_starts_after_its_gpu_memory_gate_in_both_modes(shipped_plan: ShippedPlan) -> None:
    prod, h100 = shipped_plan("prod"), shipped_plan("h100")
    gate = command_of(prod, "app-gpu-memory")
    app = containers(prod)["app"]
    assert gate.urn in app.options["dependsOn"]
    assert LABEL_GATE in labels_of(app), "the gate's id: a gate that ran again replaces the container"
    for word in ("SERVICE=app", "STOP_OLD=0", "GPU_DEVICES=all", "NEED_MIB=3072", "WAIT_S=120"):
        assert word in gate.inputs["create"], word
    assert gate.inputs["stdin"] == script("gpu-memory-gate")
    assert gate.inputs["triggers"] == ["[secret]"], "a secret fingerprint of every container input"
    assert "*" in gate.engine["replaceOnChanges"]

    vision = containers(h100)["vision"]
    assert h100.outputs["rollout"]["vision"]["mode"] == "stop-first"
    assert vision.inputs["name"] == "h100-vision" and vision.options["deleteBeforeReplace"] is True
    assert vision.engine["replaceOnChanges"] == ["*"], "any change replaces it, exactly when the gate runs"
    create = command_of(h100, "vision-gpu-memory").inputs["create"]
    assert create == "[unknown]", "the placed device is known once the preflight answered"
    assert vision.inputs["ports"], "stop-first publishes its own ports"
    assert "celery-gpu-memory" not in {r.name for r in h100.resources}, "no GPU, no gate"


def test_dependents_wait_for_the_route_and_stop_first_services_keep_their_names(
    shipped_plan: ShippedPlan,
) -> None:
    plan = shipped_plan("h100")
    by_name = containers(plan)
    assert plan.outputs["rollout"]["queue-worker"]["mode"] == ZERO_DOWNTIME
    route = command_of(plan, "queue-worker-route")
    assert route.urn in by_name["celery"].options["dependsOn"]
    assert plan.outputs["services"]["vision"] == "h100-vision"
    assert plan.outputs["services"]["queue-worker"] == "[unknown]"
    assert set(plan.outputs["rollout"]) == set(plan.outputs["startOrder"]), "no one-shot job in h100"
    for rollout in plan.outputs["rollout"].values():
        assert set(rollout) == {"mode", "why", "interruptionS"}


def test_forcing_stop_first_leaves_no_proxy_and_the_service_publishes_its_port(tmp_path: Path) -> None:
    def stop_first(config: dict[str, Any]) -> None:
        config["gpu-deploy:services"]["app"]["rollout"] = "stop-first"

    plan = plan_with(tmp_path, "prod", stop_first)
    assert "proxy" not in containers(plan)
    assert not [r for r in plan.resources if r.type == "gpu-deploy:docker:ReverseProxy"]
    app = containers(plan)["app"]
    assert app.inputs["name"] == "prod-app" and app.options["deleteBeforeReplace"] is True
    assert app.inputs["ports"] == [{"internal": 3000, "external": 3000, "protocol": "tcp"}]
    assert "STOP_OLD=1" in command_of(plan, "app-gpu-memory").inputs["create"]
    assert "OLD_CONTAINER=prod-app" in command_of(plan, "app-gpu-memory").inputs["create"]
    assert plan.outputs["services"]["app"] == "prod-app"


def create_env(create: str) -> dict[str, str]:
    """`env K=V ... bash -s` (components/host/shell.py) as a dict."""
    words = shlex.split(create)
    assert words[0] == "env" and words[-2:] == ["bash", "-s"], create
    return dict(word.split("=", 1) for word in words[1:-2])


def test_the_proxy_claims_its_ports_before_it_starts(shipped_plan: ShippedPlan) -> None:
    """A service that stopped first before and rolls with zero downtime now (prod's app on the first
    `pulumi up` after this change): its fixed-name container holds the port the proxy publishes, and Pulumi
    deletes it only at the end of the update. The claim stops it before the proxy's container starts."""
    plan = shipped_plan("prod")
    claim = command_of(plan, "proxy-claim")
    proxy = containers(plan)["proxy"]
    assert claim.parent == next(r.urn for r in plan.resources if r.type == "gpu-deploy:docker:ReverseProxy")
    assert claim.urn in proxy.options["dependsOn"]
    assert claim.inputs["stdin"] == script("claim-ports")
    assert create_env(claim.inputs["create"]) == {
        "STACK_LABEL": f"{LABEL_STACK}=prod",
        "KEEP": proxy.inputs["name"],
        "PORTS": "3000/tcp",
        "STOP_GRACE_S": "30",
    }
    assert claim.inputs["triggers"] == ["3000/tcp"], "claimed again whenever the proxy's ports change"
    assert "delete" not in claim.inputs, "nothing to give back"


def test_a_stop_first_service_with_ports_hands_over_after_the_proxy(shipped_plan: ShippedPlan) -> None:
    """h100's redis stops first without a GPU: its handover stops the old copy, a copy of it labeled with
    the service and whatever of the stack publishes its port, after the proxy (replaced first when it
    publishes fewer ports, so only a proxy going away still holds them)."""
    plan = shipped_plan("h100")
    by_name = containers(plan)
    handover = command_of(plan, "redis-handover")
    assert create_env(handover.inputs["create"]) == {
        "SERVICE": "redis",
        "STOP_OLD": "1",
        "OLD_CONTAINER": "h100-redis",
        "STOP_GRACE_S": "30",
        "STACK_LABEL": f"{LABEL_STACK}=h100",
        "SERVICE_LABEL": f"{LABEL_SERVICE}=redis",
        "FREE_PORTS": "6379/tcp",
        "GPU_DEVICES": "none",
        "NEED_MIB": "0",
        "WAIT_S": "120",
    }
    assert handover.inputs["stdin"] == script("gpu-memory-gate")
    assert by_name["proxy"].urn in handover.options["dependsOn"]
    assert handover.urn in by_name["redis"].options["dependsOn"]
    assert by_name["redis"].engine["replaceOnChanges"] == ["*"], "replaced exactly when it hands over"
    assert LABEL_GATE in labels_of(by_name["redis"])
    assert by_name["proxy"].urn in command_of(plan, "vision-gpu-memory").options["dependsOn"]
    names = {r.name for r in plan.resources}
    assert "celery-handover" not in names, "no ports, no GPU: nothing to hand over"
    assert "queue-worker-handover" not in names and "queue-worker-gpu-memory" not in names


def test_a_service_named_proxy_is_refused_before_any_resource(tmp_path: Path) -> None:
    def rename(config: dict[str, Any]) -> None:
        services = config["gpu-deploy:services"]
        services["proxy"] = services.pop("admin")  # a disabled one: refused all the same

    with pytest.raises(Exception, match=r"services\.proxy: the name of the stack's reverse proxy"):
        plan_with(tmp_path, "prod", rename)


# ---------------------------------------------------------------- placement at deploy
def facts(*memories: int) -> dict[str, Any]:
    return {"gpus": [{"uuid": f"GPU-{i}", "memory_mib": m} for i, m in enumerate(memories)]}


def config_of(edit: Any, stack: str = "h100") -> Any:
    """The stack's config (secure values as placeholders), edited, validated."""
    raw = {
        k.removeprefix("gpu-deploy:"): v
        for k, v in stack_config(stack).items()
        if k.startswith("gpu-deploy:")
    }
    edit(raw)
    return validate(_plain(raw))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return "[secret]" if set(value) == {"secure"} else {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, list) else value


def test_counts_get_distinct_devices_of_the_host_packed_by_budget() -> None:
    def two_vision(config: dict[str, Any]) -> None:
        services = config["services"]
        services["vision2"] = {**services["vision"], "ports": [], "smoke": [], "healthcheck": None}
        config["target"]["gpus"] = 2

    config = config_of(two_vision)
    placed = deploy_placement(config, {}, facts(16384, 16384))
    assert sorted(placed["vision"] + placed["vision2"]) == ["GPU-0", "GPU-1"], "distinct devices"
    with pytest.raises(BudgetError, match="found 1 GPU"):
        deploy_placement(config, {}, facts(16384))


def test_a_service_planned_with_zero_downtime_fails_the_deploy_without_room() -> None:
    config = config_of(lambda config: None)
    planned = {"vision": Rollout(ZERO_DOWNTIME, "planned", 0)}
    with pytest.raises(BudgetError, match="vision was planned with zero downtime"):
        deploy_placement(config, planned, facts(16384))
    placed = deploy_placement(config, planned, facts(40960))
    assert placed["vision"] == ("GPU-0",)
