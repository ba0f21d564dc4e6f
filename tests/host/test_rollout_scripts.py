"""The rollout's host scripts run for real (bash, exactly the text `script(name)` sends) against stubs.

gpu-memory-gate.sh: a stub `nvidia-smi` reads its GPUs from a state file, one file per reading
(gpus.1, gpus.2, ... then gpus), so a test says when the memory becomes free; a stub `docker` keeps
containers as files and logs every call. proxy-routes.sh: the stub `docker exec` runs the command on this
machine (the routes directory is a temporary one), and a stub caddy answers `reload` as told; with the real
Caddy binary on PATH (Debian's caddy package), one test runs Caddy itself and moves live traffic.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from components.core.values import PortMapping
from components.docker.proxy import main_caddyfile, route_caddyfile
from components.host.shell import command_line, script

STUB_HEAD = '#!/usr/bin/env bash\nset -u\necho "$(basename "$0") $*" >>"$CALLS_LOG"\n'
STUBS = {
    "nvidia-smi": """
[ "${STUB_SMI_FAIL:-0}" = 1 ] && { echo "NVIDIA-SMI has failed" >&2; exit 9; }
[ "${STUB_SMI_MISMATCH:-0}" = 1 ] && { echo "Failed to initialize NVML: Driver/library version mismatch"; exit 18; }
case "$*" in *driver_version*) echo "580.65.06"; exit 0 ;; esac
n=$(( $(cat "$STATE/smi-count" 2>/dev/null || echo 0) + 1 )); echo "$n" >"$STATE/smi-count"
if [ -e "$STATE/gpus.$n" ]; then cat "$STATE/gpus.$n"; else cat "$STATE/gpus"; fi
""",
    "docker": """
case "$1" in
  ps) shift; want=(); all=0  # ps [-a] --no-trunc --filter label=K=V ... --format '{{.Names}}'
      while [ $# -gt 0 ]; do
        case "$1" in --filter) want+=("${2#label=}"); shift 2 ;; -a) all=1; shift ;; *) shift ;; esac
      done
      for f in "$STATE"/container-*; do
        [ -e "$f" ] || continue; ok=1
        [ "$all" = 1 ] || [ ! -e "$STATE/stopped-${f##*/container-}" ] || continue
        for w in "${want[@]}"; do grep -qxF "label $w" "$f" || ok=0; done
        if [ "$ok" = 1 ]; then echo "${f##*/container-}"; fi
      done ;;
  container) [ -e "$STATE/container-${!#}" ] || { echo "Error: No such container: ${!#}" >&2; exit 1; }
      case "$*" in *PortBindings*) sed -n 's/^port //p' "$STATE/container-${!#}" | tr '\\n' ' ' ;;
        *State.Running*) if [ -e "$STATE/stopped-${!#}" ]; then echo false; else echo true; fi ;; esac ;;
  stop) [ "${STUB_STOP_FAIL:-0}" = 1 ] && { echo "Error response from daemon: cannot stop" >&2; exit 1; }
        [ -e "$STATE/container-${!#}" ] || { echo "Error: No such container: ${!#}" >&2; exit 1; }
        touch "$STATE/stopped-${!#}" ;;
  rm) rm -f "$STATE/container-${!#}" ;;
  exec)
    shift; [ "$1" = -i ] && shift
    [ -e "$STATE/container-$1" ] || { echo "Error: No such container: $1" >&2; exit 1; }
    shift; exec "$@" ;;
esac
""",
    "caddy": """
if [ "$(cat "$STATE/refused" 2>/dev/null || echo 0)" -gt 0 ]; then
  echo $(( $(cat "$STATE/refused") - 1 )) >"$STATE/refused"
  echo 'Error: sending configuration to instance: performing request: Post "http://localhost:2019/load": dial tcp [::1]:2019: connect: connection refused' >&2
  exit 1
fi
[ "${STUB_CADDY_INVALID:-0}" = 1 ] && { echo "Error: adapting config using caddyfile: unrecognized directive: bogus" >&2; exit 1; }
echo "routes: $(ls "$ROUTES_SEEN" | tr '\\n' ' ')" >>"$CALLS_LOG"
""",
}


@dataclass
class Host:
    tmp: Path
    state: Path
    bindir: Path
    calls_log: Path
    env: dict[str, str]

    def run(self, name: str, **variables: str) -> subprocess.CompletedProcess[str]:
        self.calls_log.write_text("")
        return subprocess.run(
            ["bash", "-c", command_line(variables)],
            input=script(name),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def calls(self, prefix: str = "") -> list[str]:
        return [c for c in self.calls_log.read_text().splitlines() if c.startswith(prefix)]

    def gpus(self, *readings: str) -> None:
        """The first readings nvidia-smi gives, in order; the last one stays."""
        for index, reading in enumerate(readings[:-1], start=1):
            (self.state / f"gpus.{index}").write_text(reading)
        (self.state / "gpus").write_text(readings[-1])

    def container(self, name: str, labels: dict[str, str] | None = None, ports: tuple[str, ...] = ()) -> None:
        """A container the stub engine knows: its labels, its port bindings as `<container port>/<protocol>=
        <host port>` (what the scripts' `docker container inspect` template prints)."""
        lines = [f"label {k}={v}" for k, v in (labels or {}).items()] + [f"port {p}" for p in ports]
        (self.state / f"container-{name}").write_text("".join(f"{line}\n" for line in lines))

    def exists(self, name: str) -> bool:
        return (self.state / f"container-{name}").exists()

    def running(self, name: str) -> bool:
        """Known and not stopped: the scripts stop containers and leave their removal to Pulumi."""
        return self.exists(name) and not (self.state / f"stopped-{name}").exists()


@pytest.fixture
def host(tmp_path: Path) -> Host:
    state, bindir = tmp_path / "state", tmp_path / "bin"
    state.mkdir()
    bindir.mkdir()
    for name, body in STUBS.items():
        (bindir / name).write_text(STUB_HEAD + body)
        (bindir / name).chmod(0o755)
    env = {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "STATE": str(state),
        "CALLS_LOG": str(tmp_path / "calls.log"),
        "ROUTES_SEEN": str(tmp_path / "routes"),
        "LANG": "C.UTF-8",
    }
    return Host(tmp_path, state, bindir, tmp_path / "calls.log", env)


def assert_fails(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    assert "ERROR: " in result.stderr and "NEXT: " in result.stderr
    for word in words:
        assert word in result.stderr


ONE_P40_BUSY = "0, GPU-aaaa, 24576, 20000\n"
ONE_P40_FREE = "0, GPU-aaaa, 24576, 300\n"
GATE = {"SERVICE": "app", "GPU_DEVICES": "0", "NEED_MIB": "16384", "WAIT_S": "5", "POLL_S": "0.05"}


# ---------------------------------------------------------------- gpu-memory-gate.sh
def test_stop_first_stops_the_old_copy_then_waits_until_its_memory_is_free(host: Host) -> None:
    host.container("prod-app")
    host.gpus(ONE_P40_BUSY, ONE_P40_BUSY, ONE_P40_BUSY, ONE_P40_FREE)
    result = host.run("gpu-memory-gate", **GATE, STOP_OLD="1", OLD_CONTAINER="prod-app", STOP_GRACE_S="45")
    assert result.returncode == 0, result.stderr
    calls = host.calls()
    assert not host.calls("docker rm"), "Pulumi removes the old copy itself"
    assert calls.index("docker stop -t 45 prod-app") < calls.index(
        "nvidia-smi --query-gpu=index,uuid,memory.total,memory.used --format=csv,noheader,nounits"
    )
    assert len(host.calls("nvidia-smi --query-gpu=index")) == 4, (
        "it waited until the fourth reading freed the memory"
    )
    assert not host.running("prod-app")
    assert result.stdout.startswith("gpu-memory-gate: app: 16384 MiB free on GPU 0 after ")
    assert result.stdout.strip().endswith(" s")


def test_stop_first_without_an_old_copy_only_checks_the_memory(host: Host) -> None:
    host.gpus(ONE_P40_FREE)
    result = host.run("gpu-memory-gate", **GATE, STOP_OLD="1", OLD_CONTAINER="prod-app")
    assert result.returncode == 0, result.stderr
    assert not host.calls("docker stop") and not host.calls("docker rm")
    assert "no old copy prod-app" in result.stderr


def test_zero_downtime_never_stops_anything(host: Host) -> None:
    host.container("prod-app")
    host.gpus("0, GPU-aaaa, 24576, 4000\n")  # the old copy holds 4000 MiB; 20576 free >= 16384
    result = host.run("gpu-memory-gate", **GATE, STOP_OLD="0", OLD_CONTAINER="prod-app")
    assert result.returncode == 0, result.stderr
    assert not host.calls("docker") and host.exists("prod-app")


def test_memory_not_free_in_time_names_device_free_needed_and_service(host: Host) -> None:
    host.container("prod-app")
    host.gpus(ONE_P40_BUSY)
    gate = {**GATE, "WAIT_S": "2"}  # whole seconds (bash's SECONDS): 2 leaves room for a second reading
    started = time.monotonic()
    result = host.run("gpu-memory-gate", **gate, STOP_OLD="1", OLD_CONTAINER="prod-app")
    assert_fails(result, 22, "GPU 0 has 4576 MiB free, app needs 16384 MiB (waited 2 s)", "gpuMemory")
    assert time.monotonic() - started < 10
    assert len(host.calls("nvidia-smi --query-gpu=index")) >= 2, "it polled until the deadline"


def test_without_a_budget_the_whole_device_must_be_back_to_idle(host: Host) -> None:
    busy = "0, GPU-aaaa, 24576, 2000\n"  # 22576 MiB free: enough for a budget, not idle
    host.gpus(busy, busy, "0, GPU-aaaa, 24576, 600\n")
    gate = {**GATE, "NEED_MIB": ""}
    result = host.run("gpu-memory-gate", **gate, STOP_OLD="0")
    assert result.returncode == 0, result.stderr
    assert len(host.calls("nvidia-smi --query-gpu=index")) == 3
    assert "the whole device free on GPU 0" in result.stdout
    (host.state / "smi-count").unlink()
    host.gpus(busy)
    result = host.run("gpu-memory-gate", **{**gate, "WAIT_S": "0"}, STOP_OLD="0")
    assert_fails(result, 22, "GPU 0 has 22576 MiB free, app needs 23552 MiB")


def test_every_device_is_checked_by_index_or_uuid_and_all_means_all(host: Host) -> None:
    two = "0, GPU-aaaa, 24576, 100\n1, GPU-bbbb, 24576, 20000\n"
    host.gpus(two)
    result = host.run("gpu-memory-gate", **{**GATE, "GPU_DEVICES": "GPU-aaaa", "WAIT_S": "0"})
    assert result.returncode == 0, result.stderr
    for devices in ("GPU-aaaa,GPU-bbbb", "all", "1"):
        result = host.run("gpu-memory-gate", **{**GATE, "GPU_DEVICES": devices, "WAIT_S": "0"})
        assert_fails(result, 22, "has 4576 MiB free, app needs 16384 MiB")
        assert "GPU GPU-bbbb" in result.stderr or "GPU 1 " in result.stderr


def test_an_unknown_device_and_bad_parameters_are_refused(host: Host) -> None:
    host.gpus(ONE_P40_FREE)
    result = host.run("gpu-memory-gate", **{**GATE, "GPU_DEVICES": "GPU-zzzz"})
    assert_fails(result, 19, "GPU GPU-zzzz of app is not on this host", "0,GPU-aaaa")
    for change, word in [
        ({"STOP_OLD": "1"}, "needs OLD_CONTAINER"),
        ({"NEED_MIB": "16GiB"}, "NEED_MIB"),
        ({"GPU_DEVICES": ""}, "GPU_DEVICES"),
        ({"SERVICE": "a b"}, "SERVICE"),
        ({"POLL_S": "soon"}, "POLL_S"),
        ({"STOP_OLD": "yes"}, "STOP_OLD"),
    ]:
        result = host.run("gpu-memory-gate", **{**GATE, **change})
        assert_fails(result, 19, word)
    assert not host.calls("docker")


def test_mig_instances_are_skipped_and_nvidia_smi_failure_is_a_driver_error(host: Host) -> None:
    host.gpus(ONE_P40_BUSY)
    result = host.run("gpu-memory-gate", **{**GATE, "GPU_DEVICES": "MIG-1234,0:1"})
    assert result.returncode == 0, result.stderr
    assert "nothing to check" in result.stdout and "MIG instance MIG-1234" in result.stderr
    host.env["STUB_SMI_FAIL"] = "1"
    result = host.run("gpu-memory-gate", **GATE)
    assert_fails(result, 14, "nvidia-smi failed")


def test_driver_drift_fails_the_gate_before_the_old_copy_is_stopped(host: Host) -> None:
    """Unattended upgrades replaced the driver under the loaded module: a deploy or rollback stops at the
    gate with the mismatch named and the reboot to do, and the running copy is left alone."""
    host.container("prod-app")
    host.gpus(ONE_P40_FREE)
    host.env["STUB_SMI_MISMATCH"] = "1"
    result = host.run("gpu-memory-gate", **GATE, STOP_OLD="1", OLD_CONTAINER="prod-app")
    assert_fails(result, 14, "Driver/library version mismatch", "driver drift", "reboot the host")
    assert not [call for call in host.calls("docker") if call.startswith(("docker stop", "docker rm"))]


def test_an_old_copy_that_cannot_be_stopped_fails_the_gate(host: Host) -> None:
    host.container("prod-app")
    host.gpus(ONE_P40_FREE)
    host.env["STUB_STOP_FAIL"] = "1"
    result = host.run("gpu-memory-gate", **GATE, STOP_OLD="1", OLD_CONTAINER="prod-app")
    assert_fails(result, 22, "stopping the old copy prod-app of app failed", "cannot stop")
    assert not host.calls("nvidia-smi --query-gpu=index"), "no memory is waited for: the gate failed"


# ---------------------------------------------------------------- a change of rollout mode
STACK = {"io.gpu-deploy.stack": "prod"}
HANDOVER = {
    "SERVICE": "app",
    "STOP_OLD": "1",
    "OLD_CONTAINER": "prod-app",
    "STOP_GRACE_S": "30",
    "STACK_LABEL": "io.gpu-deploy.stack=prod",
    "SERVICE_LABEL": "io.gpu-deploy.service=app",
    "FREE_PORTS": "3000/tcp",
    "GPU_DEVICES": "none",
    "WAIT_S": "5",
    "POLL_S": "0.05",
}


def switched_host(host: Host) -> None:
    """The engine after the service rolled with zero downtime: its auto-named copy, the proxy holding its
    port, and what a handover must leave alone."""
    host.container("app-1a2b3c4", {**STACK, "io.gpu-deploy.service": "app"})
    host.container("prod-proxy", STACK, ("3000/tcp=3000",))
    host.container("prod-worker", {**STACK, "io.gpu-deploy.service": "worker"}, ("9000/tcp=9000",))
    host.container("prod-metrics", STACK, ("3000/udp=3000",))  # another protocol: no conflict
    host.container("staging-app", {"io.gpu-deploy.stack": "staging", "io.gpu-deploy.service": "app"})


def test_stop_first_after_zero_downtime_stops_the_old_copy_and_the_proxy_going_away(host: Host) -> None:
    switched_host(host)
    result = host.run("gpu-memory-gate", **HANDOVER)
    assert result.returncode == 0, result.stderr
    assert not host.running("app-1a2b3c4") and not host.running("prod-proxy")
    assert all(host.running(n) for n in ("prod-worker", "prod-metrics", "staging-app")), host.calls("docker")
    calls = host.calls("docker")
    assert "docker stop -t 30 app-1a2b3c4" in calls and "docker stop -t 30 prod-proxy" in calls
    assert not host.calls("docker rm"), "Pulumi removes them itself"
    assert not host.calls("nvidia-smi"), "no GPU: nothing to wait for"
    assert result.stdout == "gpu-memory-gate: app: no GPU, no memory to wait for\n"
    assert "a copy of app from before its rollout changed" in result.stderr
    assert "prod-proxy, which publishes a port of app (3000/tcp)" in result.stderr


def test_a_container_publishing_the_host_port_from_another_container_port_is_stopped(host: Host) -> None:
    host.container("prod-proxy", STACK, ("8080/tcp=3000", "8443/tcp=3443"))
    host.container("prod-api", STACK, ("8000/tcp=30000",))  # 30000 is not 3000
    result = host.run("gpu-memory-gate", **HANDOVER)
    assert result.returncode == 0, result.stderr
    assert not host.running("prod-proxy") and host.running("prod-api")


def test_a_gpu_service_hands_over_before_it_waits_for_the_memory(host: Host) -> None:
    switched_host(host)
    host.gpus(ONE_P40_BUSY, ONE_P40_FREE)
    result = host.run("gpu-memory-gate", **{**HANDOVER, "GPU_DEVICES": "0", "NEED_MIB": "16384"})
    assert result.returncode == 0, result.stderr
    calls = host.calls()
    smi = "nvidia-smi --query-gpu=index,uuid,memory.total,memory.used --format=csv,noheader,nounits"
    assert calls.index("docker stop -t 30 app-1a2b3c4") < calls.index(smi)
    assert calls.index("docker stop -t 30 prod-proxy") < calls.index(smi)
    assert "16384 MiB free on GPU 0" in result.stdout


def test_zero_downtime_and_a_plain_stop_first_gate_stop_nothing_else(host: Host) -> None:
    switched_host(host)
    host.gpus(ONE_P40_FREE)
    result = host.run("gpu-memory-gate", **{**HANDOVER, "STOP_OLD": "0", "GPU_DEVICES": "0"})
    assert result.returncode == 0, result.stderr
    assert not host.calls("docker stop") and not host.calls("docker rm")
    without_labels = {
        k: v for k, v in HANDOVER.items() if k not in ("STACK_LABEL", "SERVICE_LABEL", "FREE_PORTS")
    }
    result = host.run("gpu-memory-gate", **without_labels)
    assert result.returncode == 0, result.stderr
    assert not host.calls("docker stop -t 30 app"), "without the stack's labels only the old copy by name"
    assert host.running("app-1a2b3c4") and host.running("prod-proxy")


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"STACK_LABEL": ""}, "need STACK_LABEL"),
        ({"STACK_LABEL": "io.gpu-deploy.stack prod"}, "label=value"),
        ({"SERVICE_LABEL": "app"}, "label=value"),
        ({"FREE_PORTS": "3000"}, "FREE_PORTS"),
        ({"FREE_PORTS": "3000/tcp;rm -rf /"}, "FREE_PORTS"),
        ({"GPU_DEVICES": ""}, "none: a service without a GPU"),
    ],
)
def test_the_handover_refuses_bad_parameters(host: Host, change: dict[str, str], word: str) -> None:
    switched_host(host)
    result = host.run("gpu-memory-gate", **{**HANDOVER, **change})
    assert_fails(result, 19, word)
    assert not host.calls("docker")


CLAIM = {"STACK_LABEL": "io.gpu-deploy.stack=prod", "KEEP": "prod-proxy", "PORTS": "3000/tcp,8080/tcp"}


def test_the_proxy_claims_its_ports_from_the_fixed_name_containers_of_before(host: Host) -> None:
    host.container("prod-app", {**STACK, "io.gpu-deploy.service": "app"}, ("3000/tcp=3000",))
    host.container("prod-web", {**STACK, "io.gpu-deploy.service": "web"}, ("80/tcp=8080",))
    host.container("prod-proxy", STACK, ("3000/tcp=3000",))  # the proxy itself (replaced): kept
    host.container("prod-redis", {**STACK, "io.gpu-deploy.service": "redis"}, ("6379/tcp=6379",))
    host.container("prod-dns", STACK, ("53/udp=3000",))
    host.container("staging-app", {"io.gpu-deploy.stack": "staging"}, ("3000/tcp=3000",))
    result = host.run("claim-ports", **CLAIM, STOP_GRACE_S="45")
    assert result.returncode == 0, result.stderr
    assert not host.running("prod-app") and not host.running("prod-web")
    assert all(host.running(n) for n in ("prod-proxy", "prod-redis", "prod-dns", "staging-app"))
    calls = host.calls("docker")
    assert "docker stop -t 45 prod-app" in calls and not host.calls("docker rm")
    assert not [c for c in calls if c.startswith(("docker stop", "docker rm")) and "prod-proxy" in c]
    assert result.stdout == "claim-ports: 3000/tcp 8080/tcp free (stopped: prod-app prod-web)\n"


def test_a_claim_with_nothing_to_stop_and_one_that_cannot_stop(host: Host) -> None:
    host.container("prod-proxy", STACK, ("3000/tcp=3000",))
    result = host.run("claim-ports", **CLAIM)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "claim-ports: 3000/tcp 8080/tcp free (stopped: nothing)\n"
    assert not host.calls("docker stop")
    host.container("prod-app", STACK, ("3000/tcp=3000",))
    host.env["STUB_STOP_FAIL"] = "1"
    result = host.run("claim-ports", **CLAIM)
    assert_fails(result, 24, "stopping prod-app failed", "cannot stop", "docker stop prod-app")
    assert host.exists("prod-app")


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"STACK_LABEL": ""}, "STACK_LABEL"),
        ({"KEEP": ""}, "KEEP"),
        ({"KEEP": "-x"}, "KEEP"),
        ({"PORTS": ""}, "PORTS"),
        ({"PORTS": "3000/tcp,"}, "PORTS"),
        ({"STOP_GRACE_S": "soon"}, "STOP_GRACE_S"),
    ],
)
def test_the_claim_refuses_bad_parameters(host: Host, change: dict[str, str], word: str) -> None:
    host.container("prod-app", STACK, ("3000/tcp=3000",))
    result = host.run("claim-ports", **{**CLAIM, **change})
    assert_fails(result, 19, word)
    assert not host.calls("docker") and host.exists("prod-app")


# ---------------------------------------------------------------- proxy-routes.sh
PORTS = [PortMapping(container_port=8000, host_port=3000, host_ip="127.0.0.1")]


def route_env(host: Host, upstream: str, **changes: str) -> dict[str, str]:
    routes = Path(host.env["ROUTES_SEEN"])
    return {
        "PROXY_CONTAINER": "prod-proxy",
        "SERVICE": "app",
        "ROUTE": route_caddyfile("app", PORTS, upstream),
        "ROUTES_DIR": str(routes),
        "CONFIG": "/etc/caddy/Caddyfile",
        "CADDY": str(host.bindir / "caddy"),
        "WAIT_S": "5",
        "POLL_S": "0.05",
        **changes,
    }


def test_set_writes_the_route_atomically_and_reloads_caddy(host: Host) -> None:
    host.container("prod-proxy")
    result = host.run("proxy-routes", **route_env(host, "app-1111111", ACTION="set"))
    assert result.returncode == 0, result.stderr
    routes = Path(host.env["ROUTES_SEEN"])
    assert sorted(p.name for p in routes.iterdir()) == ["app.caddy"], "no temporary file left"
    assert (routes / "app.caddy").read_text() == route_caddyfile("app", PORTS, "app-1111111")
    assert host.calls("caddy") == ["caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile"]
    assert "routes: app.caddy" in host.calls_log.read_text(), "Caddy reloaded with the file in place"
    result = host.run("proxy-routes", **route_env(host, "app-2222222"))
    assert result.returncode == 0, result.stderr
    assert "app-2222222:8000" in (routes / "app.caddy").read_text()


def test_reload_waits_for_the_admin_endpoint_then_gives_up(host: Host) -> None:
    host.container("prod-proxy")
    (host.state / "refused").write_text("2")
    result = host.run("proxy-routes", **route_env(host, "app-1111111"))
    assert result.returncode == 0, result.stderr
    assert len(host.calls("caddy")) == 3
    (host.state / "refused").write_text("1000")
    result = host.run("proxy-routes", **route_env(host, "app-2222222", WAIT_S="1"))
    assert_fails(result, 23, "caddy reload of app's route in prod-proxy failed", "connection refused")
    routes = Path(host.env["ROUTES_SEEN"])
    assert "app-1111111" in (routes / "app.caddy").read_text(), "the previous route is back"


def test_a_route_caddy_refuses_is_taken_back(host: Host) -> None:
    host.container("prod-proxy")
    host.env["STUB_CADDY_INVALID"] = "1"
    result = host.run("proxy-routes", **route_env(host, "app-1111111"))
    assert_fails(result, 23, "unrecognized directive")
    assert len(host.calls("caddy")) == 1, "a refused config is not retried"
    assert not (Path(host.env["ROUTES_SEEN"]) / "app.caddy").exists()


def test_remove_takes_only_its_own_route_away(host: Host) -> None:
    host.container("prod-proxy")
    assert host.run("proxy-routes", **route_env(host, "app-2222222")).returncode == 0
    # the old copy's route command is deleted after the new one set its route: the new route stays
    result = host.run("proxy-routes", **route_env(host, "app-1111111", ACTION="remove"))
    assert result.returncode == 0, result.stderr
    routes = Path(host.env["ROUTES_SEEN"])
    assert "app-2222222" in (routes / "app.caddy").read_text()
    assert not host.calls("caddy")
    result = host.run("proxy-routes", **route_env(host, "app-2222222", ACTION="remove"))
    assert result.returncode == 0, result.stderr
    assert not (routes / "app.caddy").exists() and len(host.calls("caddy")) == 1
    result = host.run("proxy-routes", **route_env(host, "app-2222222", ACTION="remove"))
    assert result.returncode == 0 and "no route" in result.stderr


def test_without_the_proxy_remove_succeeds_and_set_fails(host: Host) -> None:
    result = host.run("proxy-routes", **route_env(host, "app-1111111", ACTION="remove"))
    assert result.returncode == 0, result.stderr
    result = host.run("proxy-routes", **route_env(host, "app-1111111"))
    assert_fails(result, 23, "the proxy container prod-proxy does not exist")


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"ACTION": "replace"}, "ACTION"),
        ({"ROUTE": ""}, "needs ROUTE"),
        ({"SERVICE": "../etc"}, "SERVICE"),
        ({"PROXY_CONTAINER": "-x"}, "PROXY_CONTAINER"),
        ({"ROUTES_DIR": "routes"}, "absolute"),
        ({"WAIT_S": "1m"}, "WAIT_S"),
    ],
)
def test_proxy_routes_refuses_bad_parameters(host: Host, change: dict[str, str], word: str) -> None:
    host.container("prod-proxy")
    result = host.run("proxy-routes", **route_env(host, "app-1111111", **change))
    assert_fails(result, 19, word)
    assert not host.calls("docker")


# ---------------------------------------------------------------- the real Caddy
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _backend(answer: str, delay_s: float = 0) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(delay_s)
            body = answer.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _published_only(route: str) -> str:
    """The route without its stack-network site: in Docker the copy's port lives in the copy's own network
    namespace, here the backend already listens on it on this machine."""
    kept, skipping = [], False
    for line in route.splitlines():
        skipping = skipping or line.startswith("http://")
        if not skipping:
            kept.append(line)
        elif line == "}":
            skipping = False
    return "\n".join(kept) + "\n"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@pytest.mark.skipif(shutil.which("caddy") is None, reason="the caddy binary is not on PATH")
def test_real_caddy_moves_traffic_to_the_new_copy_and_finishes_what_the_old_one_serves(host: Host) -> None:
    """Caddy itself: the main Caddyfile with no route yet, then a route to one upstream, then to another,
    each set with proxy-routes.sh (whose stub `docker exec` runs the real caddy here). A request in flight
    on the old upstream when the route moves still gets its answer (the reload is graceful); the next
    request goes to the new one. (A client looping through the move is the real-engine tier's test.)"""
    caddy = shutil.which("caddy")
    assert caddy is not None
    host.container("prod-proxy")
    (host.bindir / "caddy").unlink()
    (host.bindir / "caddy").symlink_to(caddy)
    routes = Path(host.env["ROUTES_SEEN"])
    config = host.tmp / "Caddyfile"
    admin = _free_port()
    config.write_text(main_caddyfile(str(routes)).replace("localhost:2019", f"localhost:{admin}"))
    host.env = {**host.env, "XDG_CONFIG_HOME": str(host.tmp / "cfg"), "XDG_DATA_HOME": str(host.tmp / "data")}
    old, new = _backend("old", delay_s=1.5), _backend("new")
    port = _free_port()
    proxy = subprocess.Popen(
        [caddy, "run", "--resume", "--config", str(config), "--adapter", "caddyfile"],
        env=host.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        change = {"CONFIG": str(config), "WAIT_S": "20", "POLL_S": "0.2"}
        first = {**route_env(host, "127.0.0.1"), **change}
        first["ROUTE"] = _published_only(
            route_caddyfile("app", [PortMapping(old.server_port, port)], "127.0.0.1")
        )
        result = host.run("proxy-routes", **first)
        assert result.returncode == 0, result.stderr
        assert _get(f"http://127.0.0.1:{port}/") == "old"
        in_flight: list[str] = []
        slow = threading.Thread(target=lambda: in_flight.append(_get(f"http://127.0.0.1:{port}/")))
        slow.start()
        time.sleep(0.5)  # the slow request is with the old upstream now
        moved = route_caddyfile("app", [PortMapping(new.server_port, port)], "127.0.0.1")
        result = host.run("proxy-routes", **{**first, "ROUTE": _published_only(moved)})
        assert result.returncode == 0, result.stderr
        assert _get(f"http://127.0.0.1:{port}/") == "new"
        slow.join(timeout=10)
        assert in_flight == ["old"], "the request in flight finished on the old upstream"
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        old.shutdown()
        new.shutdown()


@pytest.mark.skipif(shutil.which("caddy") is None, reason="the caddy binary is not on PATH")
def test_real_caddy_adapts_the_main_caddyfile_and_a_route(tmp_path: Path) -> None:
    routes = tmp_path / "routes"
    routes.mkdir()
    ports = [PortMapping(8000, 3000, "127.0.0.1"), PortMapping(8000, 3001), PortMapping(9000, 80)]
    (routes / "app.caddy").write_text(route_caddyfile("app", ports, "app-1a2b3c4"))
    (tmp_path / "Caddyfile").write_text(main_caddyfile(str(routes)))
    caddy = shutil.which("caddy")
    assert caddy is not None
    result = subprocess.run(
        [caddy, "adapt", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    adapted = result.stdout
    for listen in (":3000", ":3001", ":80", ":8000", ":9000"):
        assert f'"{listen}"' in adapted, listen
    assert '"app-1a2b3c4:8000"' in adapted and '"app-1a2b3c4:9000"' in adapted
    assert '"localhost:2019"' in adapted and sys.platform.startswith("linux")
