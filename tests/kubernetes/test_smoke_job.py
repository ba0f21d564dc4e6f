"""Smoke tests on a kubernetes stack: a Job per service with checks, in the cluster, after its workload.

Through the real program and the offline plan of the a2 stack (and edited copies of its config): the
ConfigMap and Job validate strictly for the stack's Kubernetes version, the ConfigMap carries the runner
byte for byte and checks the runner accepts, the Job reaches the Service by its cluster DNS name, waits
for its own workload, is re-run (a new name) exactly when what it tests changes, and what cannot run
in-cluster is a one-line config error naming the key. The runner is also run as the Job would run it,
from the ConfigMap's files, against a local server that answers like Kokoro-FastAPI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from components.core.catalog import CPU_BASE_IMAGE
from components.host import SMOKE_FILES, smoke, smoke_checklist
from components.kubernetes.smoke_job import SmokeJobArgs, check_args
from policy.validators import StackContext, check_resource
from stacks.config import NAMESPACE, smoke_checks
from stacks.plan import PROJECT_DIR, Plan, PlannedResource, make_plan, read_stack_config
from tests.plans import ShippedPlan, plan_with, stack_config
from tests.stacks.test_kubernetes_stack import (
    STACK,
    cli,
    edited_file,
    k8s_version,
    manifest_of,
    objects,
    services,
)

JOB = "kubernetes:batch/v1:Job"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
SERVICE = "kubernetes:core/v1:Service"
WORKLOAD = "gpu-deploy:kubernetes:GpuWorkload"
SMOKE_SERVICES = ("kokoro", "faster-whisper")


@pytest.fixture(scope="module")
def plan(shipped_plan: ShippedPlan) -> Plan:
    return shipped_plan(STACK)


def job_of(plan: Plan, service: str) -> tuple[PlannedResource, dict[str, Any]]:
    resource = plan.named(JOB, f"smoke-{service}-job")
    return resource, manifest_of(plan, JOB, f"smoke-{service}-job")


def config_map_of(plan: Plan, service: str) -> dict[str, Any]:
    return manifest_of(plan, CONFIG_MAP, f"smoke-{service}-config")


def declared_smoke(service: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = services(stack_config(STACK))[service]["smoke"]
    return found


def arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


# ---------------------------------------------------------------- the objects
@pytest.mark.parametrize("preview", [False, True], ids=["up", "preview"])
def test_the_job_and_config_map_validate_strictly_for_the_stacks_version(
    preview: bool, shipped_plan: ShippedPlan
) -> None:
    chosen = shipped_plan(STACK, preview=preview)
    for service in SMOKE_SERVICES:
        for manifest in (job_of(chosen, service)[1], config_map_of(chosen, service)):
            kubernetes_validate.validate(manifest, k8s_version(), strict=True)
            assert "[unknown]" not in json.dumps(manifest)


@pytest.mark.parametrize("service", SMOKE_SERVICES)
def test_the_config_map_holds_the_runner_byte_for_byte_and_checks_it_accepts(
    plan: Plan, service: str
) -> None:
    config_map = config_map_of(plan, service)
    assert config_map["immutable"] is True
    assert set(config_map["data"]) == {"smoke.py", "smoke_checklist.py", "smoke_io.py", "checks.json"}
    for key, path in SMOKE_FILES.items():
        assert config_map["data"][key].encode("utf-8") == path.read_bytes()
    checks = json.loads(config_map["data"]["checks.json"])
    parsed = smoke_checklist.parse_checks(checks)
    assert parsed and all(isinstance(c, smoke_checklist.HttpCheck) for c in parsed)
    assert checks == smoke_checks(declared_smoke(service), gpu=True)


@pytest.mark.parametrize("service", SMOKE_SERVICES)
def test_the_job_runs_the_runner_against_the_services_cluster_dns_name(plan: Plan, service: str) -> None:
    _, job = job_of(plan, service)
    svc = manifest_of(plan, SERVICE, f"{service}-service")
    dns = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    port = svc["spec"]["ports"][0]["port"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:2] == ["python3", "/smoke/smoke.py"]
    assert arg(command, "--base-url") == f"http://{dns}:{port}"
    assert arg(command, "--checks-file") == "/smoke/checks.json"
    assert arg(command, "--interval") == "2"
    deadline = int(arg(command, "--deadline"))
    assert deadline == {"kokoro": 300, "faster-whisper": 180}[service]  # smokeDeadline 5m / the default
    assert job["spec"]["activeDeadlineSeconds"] == deadline + 60
    assert job["spec"]["backoffLimit"] == 0
    assert pod["restartPolicy"] == "Never"
    assert container["image"] == CPU_BASE_IMAGE
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError", "the FAIL line reaches pulumi"
    assert container["volumeMounts"] == [{"name": "smoke", "mountPath": "/smoke", "readOnly": True}]
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == config_map_of(plan, service)["metadata"]["name"]
    assert job["metadata"]["name"] == volume["configMap"]["name"]
    assert job["metadata"]["namespace"] == "ai"


def test_the_job_pod_is_non_root_unprivileged_and_bounded(plan: Plan) -> None:
    _, job = job_of(plan, "kokoro")
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65534,
        "runAsGroup": 65534,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    assert "runtimeClassName" not in pod and "nodeSelector" not in pod
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    assert container["resources"]["limits"]["memory"] == "128Mi"
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])


def test_the_services_own_service_never_selects_the_smoke_pod(plan: Plan) -> None:
    for service in SMOKE_SERVICES:
        labels = job_of(plan, service)[1]["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "gpu-deploy"
        assert labels["app.kubernetes.io/managed-by"] == "pulumi"
        assert labels["app.kubernetes.io/component"] == "smoke-test"
        for other in SMOKE_SERVICES:
            selector = manifest_of(plan, SERVICE, f"{other}-service")["spec"]["selector"]
            assert not all(labels.get(k) == v for k, v in selector.items()), (service, other)


def test_the_job_waits_for_its_own_workload_only(plan: Plan) -> None:
    for service in SMOKE_SERVICES:
        resource, _ = job_of(plan, service)
        workload = plan.named(WORKLOAD, service)
        children = [r.urn for r in plan.resources if r.parent == workload.urn]
        assert plan.named("kubernetes:apps/v1:Deployment", service).urn in children
        assert set(children) <= set(resource.options["dependsOn"]), f"smoke-{service} waits for {service}"
        other = next(s for s in SMOKE_SERVICES if s != service)
        assert not any(f"::{other}" in urn for urn in resource.options["dependsOn"])
        assert resource.options["deleteBeforeReplace"] is True
        assert resource.options["provider"] == plan.by_type("pulumi:providers:kubernetes")[0].urn
        component = plan.named("gpu-deploy:kubernetes:SmokeJob", f"smoke-{service}")
        assert resource.parent == component.urn


def test_the_policy_pack_passes_on_the_smoke_jobs(plan: Plan) -> None:
    context = StackContext.from_config(read_stack_config(PROJECT_DIR, STACK)[1], stack=STACK)
    jobs = plan.by_type(JOB)
    assert len(jobs) == 3  # two smoke tests and the GPU check (tests/stacks/test_kubernetes_stack.py)
    for job in jobs:
        assert check_resource(job.type, job.inputs, context, name=job.name) == [], job.name


# ---------------------------------------------------------------- when it runs again
def _kokoro(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        services(config)["kokoro"][key] = value

    return edit


def _names(plan: Plan) -> dict[str, str]:
    return {s: job_of(plan, s)[1]["metadata"]["name"] for s in SMOKE_SERVICES}


def test_the_job_name_changes_when_the_image_changes_and_only_then(plan: Plan, tmp_path: Path) -> None:
    names = _names(plan)
    assert names == _names(make_plan(STACK)), "deterministic: a second plan names the same Jobs"
    for service, name in names.items():
        assert name.startswith(f"{service}-smoke-") and len(name) <= 63

    new_image = plan_with(tmp_path, STACK, _kokoro("image", "ghcr.io/remsky/kokoro-fastapi-gpu:v0.2.5"))
    changed = _names(new_image)
    assert changed["kokoro"] != names["kokoro"], "a new image re-runs kokoro's smoke test"
    assert changed["faster-whisper"] == names["faster-whisper"], "the other service's stays"
    assert config_map_of(new_image, "kokoro")["metadata"]["name"] == changed["kokoro"]

    other = plan_with(tmp_path, STACK, _kokoro("smokeDeadline", "4m"))
    assert _names(other)["kokoro"] not in (names["kokoro"], changed["kokoro"])


def test_when_gpu_checks_run_only_where_the_service_is_on_the_gpu(tmp_path: Path) -> None:
    gpu_check = {"http": {"path": "/v1/test", "equals": {"status": "ok"}}, "whenGpu": True}

    def with_gpu_check(config: dict[str, Any]) -> None:
        services(config)["kokoro"]["smoke"].append(gpu_check)

    def on_cpu(config: dict[str, Any]) -> None:
        with_gpu_check(config)
        services(config)["kokoro"]["runOn"] = "cpu"

    on_gpu_plan = plan_with(tmp_path, STACK, with_gpu_check)
    checks = json.loads(config_map_of(on_gpu_plan, "kokoro")["data"]["checks.json"])
    assert {"http": gpu_check["http"]} in checks
    on_cpu_plan = plan_with(tmp_path, STACK, on_cpu)
    cpu_checks = json.loads(config_map_of(on_cpu_plan, "kokoro")["data"]["checks.json"])
    assert {"http": gpu_check["http"]} not in cpu_checks
    assert len(cpu_checks) == len(checks) - 1
    assert _names(on_cpu_plan)["kokoro"] != _names(on_gpu_plan)["kokoro"], "the CPU fallback is tested anew"


def test_no_job_without_checks_or_when_nothing_serves(tmp_path: Path) -> None:
    def no_checks(config: dict[str, Any]) -> None:
        services(config)["kokoro"]["smoke"] = []
        services(config)["faster-whisper"]["replicas"] = 0

    planned = plan_with(tmp_path, STACK, no_checks)
    assert [j.name for j in planned.by_type(JOB)] == ["gpu-check-a2-job"], "only the GPU check"
    assert not any("smoke" in r.name for r in planned.resources)


# ---------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    ("check", "fragment"),
    [
        ({"file": {"path": "/app/voices/af_bella.pt"}}, "check #4 is a file check"),
        ({"gpu": {"command": ["nvidia-smi"]}}, "check #4 is a gpu check"),
        ({"gpu": {"command": ["nvidia-smi"]}, "whenGpu": True}, "check #4 is a gpu check"),
        (
            {"http": {"path": "/v1/models", "headers": {"Authorization": "Bearer sk-1"}}},
            "sends header Authorization: on kubernetes the checks live in a ConfigMap",
        ),
    ],
    ids=["file", "gpu", "gpu-when-gpu", "credential-header"],
)
def test_what_cannot_run_in_cluster_is_a_one_line_config_error(
    tmp_path: Path, check: dict[str, Any], fragment: str
) -> None:
    def add(config: dict[str, Any]) -> None:
        services(config)["kokoro"]["smoke"].append(check)

    result = cli("plan", STACK, "--config-file", str(edited_file(tmp_path, add)))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{NAMESPACE}:services.kokoro.smoke: "), line
    assert fragment in line
    if "file" in check or "gpu" in check:
        assert "on kubernetes only http checks run in-cluster" in line
    assert "sk-1" not in line


def test_http_checks_still_need_a_port(tmp_path: Path) -> None:
    def no_port(config: dict[str, Any]) -> None:
        services(config)["faster-whisper"]["ports"] = []
        services(config)["faster-whisper"]["healthcheck"] = {"command": ["true"]}

    result = cli("plan", STACK, "--config-file", str(edited_file(tmp_path, no_port)))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(
        f"{NAMESPACE}:services.faster-whisper.smoke: HTTP smoke checks need"
    )


def test_the_component_refuses_what_a_pod_cannot_check() -> None:
    base = SmokeJobArgs(service="kokoro", namespace="ai", base_url="http://kokoro.ai:8880", checks=[])
    with pytest.raises(ValueError, match="no smoke checks"):
        check_args(base)
    for check in ({"file": {"path": "/x"}}, {"gpu": None}):
        args = SmokeJobArgs(
            service="kokoro", namespace="ai", base_url="http://kokoro.ai:8880", checks=[check]
        )
        with pytest.raises(ValueError, match="only http checks run in-cluster"):
            check_args(args)
    ok = SmokeJobArgs(
        service="kokoro", namespace="ai", base_url="http://k:1", checks=[{"http": {"path": "/"}}]
    )
    check_args(ok)
    assert ok.timeout_s > ok.active_deadline_s > ok.deadline_s, (
        "the Job's failure ends the wait, not Pulumi's"
    )


# ---------------------------------------------------------------- render
def test_render_writes_the_smoke_objects_and_they_validate(tmp_path: Path, plan: Plan) -> None:
    out = tmp_path / "manifests"
    result = cli("render", STACK, "--out", str(out))
    assert result.returncode == 0, result.stderr
    for service in SMOKE_SERVICES:
        name = _names(plan)[service]
        job = yaml.safe_load((out / f"job-{name}.yaml").read_text())
        config_map = yaml.safe_load((out / f"configmap-{name}.yaml").read_text())
        for manifest in (job, config_map):
            kubernetes_validate.validate(manifest, k8s_version(), strict=True)
        for key, path in SMOKE_FILES.items():
            assert config_map["data"][key].encode("utf-8") == path.read_bytes()
        assert job == job_of(plan, service)[1]
    assert len([m for _, m in objects(plan) if m["kind"] == "Job" and "smoke" in m["metadata"]["name"]]) == 2


# ---------------------------------------------------------------- the Job's command, run here
class _Kokoro(BaseHTTPRequestHandler):
    """Answers like Kokoro-FastAPI: JSON health and voices, audio bytes for speech."""

    healthy = True

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            status = "healthy" if self.healthy else "unhealthy"
            self._send(200, json.dumps({"status": status}).encode(), "application/json")
        elif self.path == "/v1/audio/voices":
            self._send(200, b'{"voices": ["af_bella", "af_sky"]}', "application/json")
        else:
            self._send(404, b"{}", "application/json")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        if self.path == "/v1/audio/speech" and body.get("voice") == "af_bella" and body.get("input"):
            self._send(200, b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav")
        else:
            self._send(400, b'{"error": "validation_error"}', "application/json")


@pytest.fixture
def kokoro() -> Iterator[tuple[str, type[_Kokoro]]]:
    handler = type("Kokoro", (_Kokoro,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def _run_as_the_job(plan: Plan, tmp_path: Path, base_url: str) -> subprocess.CompletedProcess[str]:
    """The Job's command with /smoke -> the ConfigMap's files here and the cluster URL -> the local one."""
    for key, text in config_map_of(plan, "kokoro")["data"].items():
        (tmp_path / key).write_text(text)
    command = list(job_of(plan, "kokoro")[1]["spec"]["template"]["spec"]["containers"][0]["command"])
    command = [c.replace("/smoke/", f"{tmp_path}/") for c in command]
    command[command.index("--base-url") + 1] = base_url
    command[command.index("--deadline") + 1] = "3"
    command[command.index("--interval") + 1] = "0.2"
    return subprocess.run(
        [sys.executable, *command[1:]], capture_output=True, text=True, check=False, timeout=60
    )


def test_the_jobs_command_passes_against_a_service_that_answers_right(
    plan: Plan, tmp_path: Path, kokoro: tuple[str, type[_Kokoro]]
) -> None:
    url, _ = kokoro
    result = _run_as_the_job(plan, tmp_path, url)
    assert result.returncode == 0, result.stderr
    assert [line.split()[:3] for line in result.stdout.splitlines()] == [
        ["PASS", "http", "GET"],
        ["PASS", "http", "GET"],
        ["PASS", "http", "POST"],
    ]


def test_a_failed_check_ends_in_one_fail_line_naming_the_check_and_the_response(
    plan: Plan, tmp_path: Path, kokoro: tuple[str, type[_Kokoro]]
) -> None:
    url, handler = kokoro
    handler.healthy = False
    result = _run_as_the_job(plan, tmp_path, url)
    assert result.returncode == smoke.EXIT_MALFORMED
    (line,) = result.stderr.splitlines()  # the terminated container's message: what pulumi up shows
    assert line.startswith("FAIL http GET /health: ")
    assert """field 'status' is "unhealthy", expected "healthy"; status 200""" in line
    assert line.endswith("(exit 3)")
