"""Both rollout modes for real: a real engine, the real Caddy binary, the product's host scripts run by
real bash (locally and over real SSH as the deploy user), clients looping the whole time.

Zero downtime, step by step in the order `pulumi up` takes them (the stack's proxy, the service's copy,
its route; on a change: the new auto-named copy beside the old one, healthy, the route switched, the
replaced copy deleted at the end of the update, stopped with its grace period):
no request fails, the answers switch from v1 to v2 once and never go back, from this machine through
the proxy's published loopback port and from a container on the stack network through the service's
name (the proxy's alias).

Stop first, as the gate command `<service>-gpu-memory` runs before the replacement container: a fake
`nvidia-smi` reports the memory the old copy holds from what the real engine says about it (running, or
gone a moment ago: the driver frees memory a little after the process ends), so the product's
gpu-memory-gate.sh really stops the old copy and waits for the memory; then the provider's
delete-before-replace removes it and the new copy is created. The engine's own event log shows no start
before the old copy died and was removed; a gate whose
memory never frees fails within its timeout with one line naming the device and the numbers. The
interruption a client sees is measured and printed (`ROLLOUT-FIGURES:`).

The stack pins the official `caddy:2.10.2-alpine` image by tag and digest; this tier has no registry and
runs Debian bookworm's Caddy 2.6.2 binary in a stand-in image (tests/real/standins.py) with the same
main Caddyfile and routes (components/docker/proxy.py) and the same container settings.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.core.values import PortMapping
from components.core.vocabulary import (
    LABEL_SERVICE,
    LABEL_STACK,
    PROXY_CADDY,
    PROXY_CONFIG,
    PROXY_ROUTES_DIR,
)
from components.docker.container import LOG_OPTIONS
from components.docker.healthcheck import http_probe
from components.docker.proxy import (
    PROXY_MEMORY_MIB,
    PROXY_STOP_GRACE_S,
    PROXY_USER,
    main_caddyfile,
    proxy_command,
    route_caddyfile,
)
from tests.real import engine_api
from tests.real.conftest import NOTES
from tests.real.engine import Engine
from tests.real.hosts import SshHosts
from tests.real.images import BaseImages
from tests.real.rollout import (
    INTERNAL_CLIENT,
    ClientLoop,
    KeepAliveLoop,
    auto_name,
    create_container,
    delete_container,
    engine_events,
    env_of,
    event_time,
    free_tcp_port,
    get_release,
    inspect,
    make_fake_gpu,
    outage,
    run_host_script_locally,
    run_host_script_over_ssh,
    runs,
    summary,
)
from tests.real.standins import SERVICE_PORT, StandinImages, build_standin_images

STACK = "rollout"
NETWORK = f"gpu-deploy-{STACK}"
PROXY = f"{STACK}-proxy"
SERVICE = "app"
GRACE_S = 10  # destroyGraceSeconds of the copies
HEALTH: dict[str, Any] = {
    "tests": ["CMD-SHELL", http_probe("/health", SERVICE_PORT, 5)],
    "interval": "1s",
    "timeout": "5s",
    "retries": 3,
    "startPeriod": "20s",
}
FIGURES: dict[str, object] = {}


@pytest.fixture(scope="module")
def standins(engine: Engine, base_images: BaseImages) -> StandinImages:
    return build_standin_images(engine, base_images)


@pytest.fixture(scope="module")
def network(engine: Engine) -> Iterator[str]:
    engine_api.create_network(str(engine.socket), NETWORK)
    yield NETWORK
    engine_api.remove_network(str(engine.socket), NETWORK)


@pytest.fixture(scope="module", autouse=True)
def print_figures() -> Iterator[None]:
    yield
    if FIGURES:
        line = f"ROLLOUT-FIGURES: {json.dumps(FIGURES, sort_keys=True)}"
        print(f"\n{line}")
        NOTES.append(line)  # the tier's summary section shows it without -s too


@pytest.fixture
def cleanup(engine: Engine) -> Iterator[list[str]]:
    """Container names a test made: removed at its end, whatever happened."""
    names: list[str] = []
    yield names
    for name in reversed(names):
        engine_api.remove(str(engine.socket), name)


def proxy_inputs(image: str, published: list[PortMapping], aliases: list[str]) -> dict[str, Any]:
    """ReverseProxy's container (components/docker/proxy.py) as pulumi-docker inputs, with the product's
    own command, user, memory limit, grace period and main Caddyfile: non-root, every capability dropped,
    no-new-privileges, unprivileged ports from 0, XDG dirs under /tmp, each zero-downtime service's
    published port and alias."""
    return {
        "name": PROXY,
        "image": image,
        "command": proxy_command(),
        "user": PROXY_USER,
        "envs": ["XDG_CONFIG_HOME=/tmp/caddy-config", "XDG_DATA_HOME=/tmp/caddy-data"],
        "sysctls": {"net.ipv4.ip_unprivileged_port_start": "0"},
        "capabilities": {"drops": ["ALL"]},
        "securityOpts": ["no-new-privileges:true"],
        "memory": PROXY_MEMORY_MIB,
        "restart": "unless-stopped",
        "mustRun": True,
        "logDriver": "json-file",
        "logOpts": dict(LOG_OPTIONS),
        "destroyGraceSeconds": PROXY_STOP_GRACE_S,
        "uploads": [{"file": PROXY_CONFIG, "content": main_caddyfile()}],
        "ports": [
            {"internal": p.host_port, "external": p.host_port, "ip": p.host_ip, "protocol": "tcp"}
            for p in published
        ],
        "networksAdvanced": [{"name": NETWORK, "aliases": sorted(aliases)}],
    }


def copy_inputs(
    name: str, image: str, release: str, start_delay_s: float, ports: list[PortMapping] | None = None
) -> dict[str, Any]:
    """One copy of the service: no published ports and no alias when it rolls with zero downtime (the
    proxy owns both), its own ports when it stops first; health-checked and waited for."""
    inputs: dict[str, Any] = {
        "name": name,
        "image": image,
        "envs": [f"RELEASE={release}", f"START_DELAY_S={start_delay_s}", f"PORT={SERVICE_PORT}"],
        "user": "65534:65534",
        "healthcheck": HEALTH,
        "wait": True,
        "waitTimeout": 60,
        "destroyGraceSeconds": GRACE_S,
        "restart": "unless-stopped",
        "networksAdvanced": [{"name": NETWORK}],
    }
    if ports:
        inputs["ports"] = [
            {"internal": p.container_port, "external": p.host_port, "ip": p.host_ip, "protocol": "tcp"}
            for p in ports
        ]
    return inputs


def route_env(route: str, action: str = "set") -> dict[str, str]:
    """What ReverseProxy.route() gives proxy-routes.sh on create (set) and delete (remove)."""
    return {
        "PROXY_CONTAINER": PROXY,
        "SERVICE": SERVICE,
        "ROUTE": route,
        "ROUTES_DIR": PROXY_ROUTES_DIR,
        "CONFIG": PROXY_CONFIG,
        "CADDY": PROXY_CADDY,
        "ACTION": action,
    }


def test_zero_downtime_rollout_through_the_proxy(
    engine: Engine, standins: StandinImages, network: str, ssh_hosts: SshHosts, cleanup: list[str]
) -> None:
    port = PortMapping(container_port=SERVICE_PORT, host_port=free_tcp_port(), host_ip="127.0.0.1")
    cleanup.append(PROXY)
    create_container(engine, proxy_inputs(standins.proxy, [port], [SERVICE]))

    v1 = auto_name(SERVICE)
    cleanup.append(v1)
    create_container(engine, copy_inputs(v1, standins.service, "v1", 0.5))
    route_v1 = route_caddyfile(SERVICE, [port], v1)
    first = run_host_script_locally("proxy-routes", route_env(route_v1), engine)
    assert first.exit == 0, first.stderr
    assert get_release(port.host_port).release == "v1", "the route to v1 is set: the proxy answers with v1"

    outside = ClientLoop(port.host_port).start()
    pooled = KeepAliveLoop(port.host_port).start()
    inside = f"{STACK}-client"
    cleanup.append(inside)
    engine.docker_cli(
        "run", "-d", "--name", inside, "--network", network, "--user", "65534:65534",
        "-e", f"URL=http://{SERVICE}:{SERVICE_PORT}/", standins.service,
        "python3", "-c", INTERNAL_CLIENT,
    )  # fmt: skip
    outside.wait_for("v1")

    # `pulumi up` after a change: the replacement copy is created beside the old one (a fresh auto-name),
    # waited for until healthy; the route command re-runs (over SSH, as the deploy user); the replaced copy
    # is deleted at the end of the update: stopped with its grace period, then removed.
    v2 = auto_name(SERVICE)
    cleanup.append(v2)
    created = time.time()
    create_container(engine, copy_inputs(v2, standins.service, "v2", 2.0))
    healthy = time.time()
    route_v2 = route_caddyfile(SERVICE, [port], v2)
    switch = run_host_script_over_ssh("proxy-routes", route_env(route_v2), ssh_hosts.target.connection())
    assert switch.exit == 0, switch.stderr
    outside.wait_for("v2")
    # the replaced route command's delete runs with the OLD route text: the new route must stay
    stale = run_host_script_locally("proxy-routes", route_env(route_v1, "remove"), engine)
    assert stale.exit == 0, stale.stderr
    delete_container(engine, v1, GRACE_S)
    assert inspect(engine, v1) is None
    time.sleep(1.0)  # requests keep flowing after the old copy is gone
    samples = outside.stop()
    kept = pooled.stop()
    engine.docker_cli("stop", "-t", "10", inside)
    internal = json.loads(engine.docker_cli("logs", inside).stdout.strip().splitlines()[-1])

    failed = [s for s in samples if s.release is None]
    assert not failed, summary(samples)
    assert runs([s.release for s in samples]) == ["v1", "v2"], summary(samples)
    assert not [s for s in kept if s.release is None], summary(kept)
    assert runs([s.release for s in kept]) == ["v1", "v2"], summary(kept)
    assert internal["failed"] == 0 and internal["order"] == ["v1", "v2"], internal
    assert all(s.sent >= created for s in samples if s.release == "v2"), "no answer from v2 before it existed"

    # the route's own delete (the service gone from the stack) takes it out: nothing listens any more
    gone = run_host_script_locally("proxy-routes", route_env(route_v2, "remove"), engine)
    assert gone.exit == 0, gone.stderr
    assert get_release(port.host_port, timeout_s=5).release is None
    FIGURES["zero_downtime"] = {
        "requests": len(samples),
        "failed": len(failed),
        "keepalive_requests": len(kept),
        "keepalive_retried_on_closed_idle_connection": pooled.retried,
        "internal_requests": internal["ok"] + internal["failed"],
        "internal_failed": internal["failed"],
        "new_copy_healthy_s": round(healthy - created, 2),
        "route_switch_over_ssh_s": round(switch.ended - switch.started, 2),
        "caddy": standins.caddy_version,
    }


GPU_TOTAL_MIB = 24576
BUDGET_MIB = 16384  # two copies do not fit: 2 x 16384 > 24576


def gate_env(old: str, **extra: object) -> dict[str, str]:
    values: dict[str, object] = {
        "SERVICE": "vision",
        "STOP_OLD": 1,
        "OLD_CONTAINER": old,
        "STOP_GRACE_S": GRACE_S,
        "GPU_DEVICES": "0",
        "NEED_MIB": BUDGET_MIB,
        "WAIT_S": 30,
        "POLL_S": 1,
    }
    values.update(extra)
    return env_of(values)


def running(engine: Engine, name: str) -> bool:
    """The container exists and runs (the scripts stop what Pulumi removes later)."""
    return bool(((inspect(engine, name) or {}).get("State") or {}).get("Running"))


def test_stop_first_waits_for_the_old_copys_gpu_memory(
    engine: Engine, standins: StandinImages, network: str, cleanup: list[str], tmp_path: Path
) -> None:
    name = f"{STACK}-vision"  # stop-first: the fixed name, its own published port
    port = PortMapping(container_port=SERVICE_PORT, host_port=free_tcp_port(), host_ip="127.0.0.1")
    cleanup.append(name)
    create_container(engine, copy_inputs(name, standins.service, "v1", 0.5, [port]))
    old_id = str((inspect(engine, name) or {})["Id"])
    gpu = make_fake_gpu(
        tmp_path / "gpu", engine, old=name, total_mib=GPU_TOTAL_MIB, budget_mib=BUDGET_MIB, lag_s=1.5
    )
    client = ClientLoop(port.host_port, pause_s=0.01).start()
    client.wait_for("v1")

    began = time.time()
    gate = run_host_script_locally("gpu-memory-gate", gate_env(name), engine, path_prefix=str(gpu.bin_dir))
    assert gate.exit == 0, gate.stderr
    assert not running(engine, name), "the gate stopped the old copy (Pulumi removes it)"
    delete_container(engine, name, GRACE_S)  # the provider's delete-before-replace: stop (done), remove
    create_container(engine, copy_inputs(name, standins.service, "v2", 2.0, [port]))
    new = inspect(engine, name) or {}
    client.wait_for("v2")
    samples = client.stop()
    ended = time.time()

    events = engine_events(engine, began - 1, ended + 1, name)
    old_events = [e for e in events if e.get("id") == old_id]
    new_events = [e for e in events if e.get("id") == new["Id"]]
    old_died = event_time(old_events, name, "die")
    old_removed = event_time(old_events, name, "destroy")
    new_created = event_time(new_events, name, "create")
    new_started = event_time(new_events, name, "start")
    assert old_died <= old_removed < new_created <= new_started, events
    assert gate.ended <= new_created, "the new copy was created only after the gate returned"

    queries = gpu.queries()
    first_free = next(t for t, used in queries if GPU_TOTAL_MIB - used >= BUDGET_MIB)
    assert any(t > old_died and GPU_TOTAL_MIB - used < BUDGET_MIB for t, used in queries), (
        "the fake still reported the old copy's memory after it stopped (the driver's lag)",
        queries,
    )
    assert old_died < first_free <= gate.ended, (old_died, first_free, gate.ended, queries)
    said = re.fullmatch(r"gpu-memory-gate: vision: 16384 MiB free on GPU 0 after (\d+) s\n", gate.stdout)
    assert said, gate.stdout

    assert runs([s.release for s in samples]) == ["v1", None, "v2"], summary(samples)
    window_s, failed = outage(samples)
    FIGURES["stop_first"] = {
        "requests": len(samples),
        "failed": failed,
        "interruption_s": round(window_s, 2),
        "memory_freed_after_stop_s": round(first_free - old_died, 2),
        "gate_s": round(gate.ended - gate.started, 2),
        "gate_says": gate.stdout.strip(),
        "gate_waited_s": int(said.group(1)),
        "new_copy_start_to_healthy_s": "start delay 2.0 s + health interval 1 s",
        "health_start_period_s": int(str(HEALTH["startPeriod"]).rstrip("s")),
    }


def test_a_gate_whose_memory_never_frees_fails_in_time(engine: Engine, tmp_path: Path) -> None:
    free = make_fake_gpu(tmp_path / "free", engine, old="", total_mib=GPU_TOTAL_MIB, budget_mib=BUDGET_MIB)
    first_deploy = run_host_script_locally(
        "gpu-memory-gate", gate_env(f"{STACK}-absent"), engine, path_prefix=str(free.bin_dir)
    )
    assert first_deploy.exit == 0, f"no old copy and the memory is free: {first_deploy.stderr}"

    stuck = make_fake_gpu(
        tmp_path / "stuck", engine, old="", total_mib=GPU_TOTAL_MIB, budget_mib=BUDGET_MIB, stuck_mib=20000
    )
    gate = run_host_script_locally(
        "gpu-memory-gate",
        gate_env(f"{STACK}-absent", STOP_OLD=0, WAIT_S=3),
        engine,
        path_prefix=str(stuck.bin_dir),
    )
    took = gate.ended - gate.started
    assert gate.exit == 22, (gate.exit, gate.stderr)
    # bash's SECONDS ticks in whole seconds since the shell started: "waited 3 s" may be 2.x s of real time
    assert 2 <= took < 8, took
    errors = [line for line in gate.stderr.splitlines() if line.startswith("ERROR:")]
    assert errors == ["ERROR: GPU 0 has 4576 MiB free, vision needs 16384 MiB (waited 3 s)"], gate.stderr
    FIGURES["gate_timeout"] = {"wait_s": 3, "failed_after_s": round(took, 2), "message": errors[0]}


# ---------------------------------------------------------------------------------------------------
# A change of rollout mode: who holds the published port


def labeled(inputs: dict[str, Any], service: str | None) -> dict[str, Any]:
    """The stack's labels, as GpuContainer and ReverseProxy give them (the proxy has no service label)."""
    labels = {LABEL_STACK: STACK, **({LABEL_SERVICE: service} if service else {})}
    return {**inputs, "labels": [{"label": k, "value": v} for k, v in labels.items()]}


def test_switching_to_zero_downtime_the_proxy_claims_the_port_of_the_fixed_name_container(
    engine: Engine, standins: StandinImages, network: str, cleanup: list[str]
) -> None:
    """prod's first `pulumi up` after it rolls with zero downtime: `prod-app` (stop-first before) still
    publishes the port, and Pulumi deletes it only at the end of the update. Without the claim the proxy's
    start fails on the port; the claim (claim-ports.sh) stops and removes it first, then the proxy
    publishes the port and routes to the service's first copy."""
    web = "web"
    fixed = f"{STACK}-{web}"
    port = PortMapping(container_port=SERVICE_PORT, host_port=free_tcp_port(), host_ip="127.0.0.1")
    cleanup += [fixed, PROXY]
    create_container(engine, labeled(copy_inputs(fixed, standins.service, "v1", 0.2, [port]), web))
    assert get_release(port.host_port).release == "v1"

    proxy = labeled(proxy_inputs(standins.proxy, [port], [web]), None)
    with pytest.raises(engine_api.EngineError, match="port is already allocated"):
        create_container(engine, proxy)  # what `pulumi up` ran into without the claim
    engine_api.remove(str(engine.socket), PROXY)

    claim_env = {
        "STACK_LABEL": f"{LABEL_STACK}={STACK}",
        "KEEP": PROXY,
        "PORTS": f"{port.host_port}/tcp",
        "STOP_GRACE_S": str(GRACE_S),
    }
    claim = run_host_script_locally("claim-ports", claim_env, engine)
    assert claim.exit == 0, claim.stderr
    assert claim.stdout == f"claim-ports: {port.host_port}/tcp free (stopped: {fixed})\n"
    assert not running(engine, fixed), "the claim stopped the fixed-name container (Pulumi removes it)"
    create_container(engine, proxy)
    again = run_host_script_locally("claim-ports", claim_env, engine)
    assert again.exit == 0 and "(stopped: nothing)" in again.stdout, "the running proxy is never claimed"

    copy = auto_name(web)
    cleanup.append(copy)
    create_container(engine, labeled(copy_inputs(copy, standins.service, "v2", 0.2), web))
    routed = run_host_script_locally(
        "proxy-routes", {**route_env(route_caddyfile(web, [port], copy)), "SERVICE": web}, engine
    )
    assert routed.exit == 0, routed.stderr
    assert get_release(port.host_port).release == "v2", "the proxy publishes the port and routes to the copy"
    delete_container(engine, fixed, GRACE_S)  # the end of the update: stop (done), remove


def test_switching_to_stop_first_the_handover_frees_the_port_of_the_proxy_going_away(
    engine: Engine, standins: StandinImages, network: str, cleanup: list[str]
) -> None:
    """The reverse: the service rolled with zero downtime (the proxy publishes its port, an auto-named copy
    serves it) and stops first now. Its handover (gpu-memory-gate.sh, no GPU) stops the copy labeled with
    the service and the proxy holding its port; then the fixed-name container binds the port."""
    web = "web"
    fixed = f"{STACK}-{web}"
    port = PortMapping(container_port=SERVICE_PORT, host_port=free_tcp_port(), host_ip="127.0.0.1")
    copy = auto_name(web)
    cleanup += [PROXY, copy, fixed]
    create_container(engine, labeled(proxy_inputs(standins.proxy, [port], [web]), None))
    create_container(engine, labeled(copy_inputs(copy, standins.service, "v1", 0.2), web))
    routed = run_host_script_locally(
        "proxy-routes", {**route_env(route_caddyfile(web, [port], copy)), "SERVICE": web}, engine
    )
    assert routed.exit == 0, routed.stderr
    assert get_release(port.host_port).release == "v1"

    handover_env = {
        "SERVICE": web,
        "STOP_OLD": "1",
        "OLD_CONTAINER": fixed,
        "STOP_GRACE_S": str(GRACE_S),
        "STACK_LABEL": f"{LABEL_STACK}={STACK}",
        "SERVICE_LABEL": f"{LABEL_SERVICE}={web}",
        "FREE_PORTS": f"{port.host_port}/tcp",
        "GPU_DEVICES": "none",
    }
    handover = run_host_script_locally("gpu-memory-gate", handover_env, engine)
    assert handover.exit == 0, handover.stderr
    assert handover.stdout == f"gpu-memory-gate: {web}: no GPU, no memory to wait for\n"
    assert not running(engine, copy) and not running(engine, PROXY), "stopped; Pulumi removes them"
    create_container(engine, labeled(copy_inputs(fixed, standins.service, "v2", 0.2, [port]), web))
    assert get_release(port.host_port).release == "v2", "the fixed-name container publishes the port"
    # the end of the update: the route (its proxy stopped: nothing to take away), the old copy and the
    # proxy are deleted
    gone = run_host_script_locally(
        "proxy-routes", {**route_env(route_caddyfile(web, [port], copy), "remove"), "SERVICE": web}, engine
    )
    assert gone.exit == 0, gone.stderr
    delete_container(engine, copy, GRACE_S)
    delete_container(engine, PROXY, GRACE_S)
    assert get_release(port.host_port).release == "v2"
