"""Smoke tests as the program deploys them, and the dev stack's smoke command run against the real probe."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stacks.plan import PROJECT_DIR, make_plan
from tests.fake_nvml import cards
from tests.plans import CONTAINER, LOCAL_COMMAND, REMOTE_COMMAND, ShippedPlan, containers, plan_with
from tests.probe import FAKE_NVML, RunningProbe


def test_prod_smoke_runs_the_write_ups_checks_on_the_host_after_every_service(
    shipped_plan: ShippedPlan, tmp_path: Path
) -> None:
    # prod's app rolls with zero downtime: the copy it checks inside is named only once it exists
    rolling = shipped_plan("prod").named(REMOTE_COMMAND, "smoke-app-run")
    assert rolling.inputs["create"] == "[unknown]"
    assert shipped_plan("prod").named(REMOTE_COMMAND, "app-route").urn in rolling.options["dependsOn"]

    def stop_first(config: dict[str, Any]) -> None:
        config["gpu-deploy:services"]["app"]["rollout"] = "stop-first"

    plan = plan_with(tmp_path, "prod", stop_first)
    run = plan.named(REMOTE_COMMAND, "smoke-app-run")
    argv = shlex.split(run.inputs["create"])
    # run-verified.sh checks the copy in the deploy user's own directory, then runs it
    assert argv[:2] == ["env", "RUNNER_DIR=.gpu-deploy/prod"]
    assert argv[argv.index("run-verified") + 1 :][:5] == ["python3", "-E", "-s", "-B", "./smoke.py"]
    assert argv[argv.index("--base-url") + 1] == "http://127.0.0.1:3000"
    assert argv[argv.index("--container") + 1] == "prod-app"
    assert argv[argv.index("--deadline") + 1] == "180"
    assert argv[argv.index("--checks-file") + 1] == "-", "checks travel on stdin, not the command line"
    checks = json.loads(run.inputs["stdin"])
    tts = next(c["http"] for c in checks if "http" in c and c["http"]["path"] == "/api/tts")
    assert tts["method"] == "POST" and tts["json"] == {"audioUrl": "string", "duration": "number"}
    assert {"file": {"path": "/app/public{tts.audioUrl}"}} in checks
    assert {"gpu": {"command": ["nvidia-smi"]}} in checks
    for container in plan.by_type(CONTAINER):
        if container.name == "dcgm-exporter":  # the host's metrics, no service: nothing to wait for
            continue
        assert container.urn in run.options["dependsOn"], f"smoke waits for {container.name}"
    checked = []
    for name in ("smoke.py", "smoke_checklist.py", "smoke_io.py"):  # the runner and what it imports
        copy = plan.named("command:remote:CopyToRemote", f"runners-{name.removesuffix('.py')}")
        assert copy.urn in run.options["dependsOn"]
        assert copy.inputs["remotePath"] == f".gpu-deploy/prod/{name}", "under the deploy user's home"
        assert copy.inputs["source"]["path"] == f"components/host/{name}"
        checked.append(f"{copy.inputs['source']['hash']}  {name}")
    assert "RUNNER_FILES=" + "\n".join(checked) in argv, "what runs is what was copied"


def test_a4000_gpu_check_is_a_cuda_tensor_operation_in_the_container(shipped_plan: ShippedPlan) -> None:
    run = shipped_plan("a4000").named(REMOTE_COMMAND, "smoke-backend-run")
    commands = [c["gpu"]["command"] for c in json.loads(run.inputs["stdin"]) if "gpu" in c]
    assert ["nvidia-smi"] in commands
    assert any(
        "torch.cuda.is_available()" in " ".join(c) and "device='cuda'" in " ".join(c) for c in commands
    )


def test_smoke_config_mistakes_are_config_errors(tmp_path: Path) -> None:
    # the program turns a ConfigError into pulumi.RunError: the CLI prints its one line, no traceback
    from pulumi import RunError as ConfigError

    def bad_type(config: dict[str, Any]) -> None:
        config["gpu-deploy:services"]["app"]["smoke"] = [{"http": {"path": "/x", "json": {"a": "strng"}}}]

    with pytest.raises(ConfigError, match=r"^gpu-deploy:services\.app\.smoke: not a smoke check list"):
        plan_with(tmp_path, "prod", bad_type)

    def no_port(config: dict[str, Any]) -> None:
        config["gpu-deploy:services"]["app"]["ports"] = []

    with pytest.raises(
        ConfigError, match=r"^gpu-deploy:services\.app\.smoke: HTTP smoke checks need a published port"
    ):
        plan_with(tmp_path, "prod", no_port)


def _run_smoke(run: Any, url: str) -> subprocess.CompletedProcess[str]:
    """The plan's smoke command exactly, but aimed at the probe's port and with a short deadline."""
    argv = shlex.split(run.inputs["create"])
    argv[argv.index("--base-url") + 1] = url
    argv[argv.index("--deadline") + 1] = "5"
    argv[0] = sys.executable
    return subprocess.run(
        argv, cwd=PROJECT_DIR, input=run.inputs["stdin"], capture_output=True, text=True, check=False
    )


def test_dev_smoke_passes_against_the_real_probe_on_a_machine_without_gpu(
    gpu_probe: RunningProbe, shipped_plan: ShippedPlan
) -> None:
    plan = shipped_plan("dev")
    assert plan.outputs["profile"] == "cpu"
    run = plan.named(LOCAL_COMMAND, "smoke-probe-run")
    paths = [c["http"]["path"] for c in json.loads(run.inputs["stdin"])]
    assert paths == ["/health", "/metrics"], "no /gpu check without a GPU"
    result = _run_smoke(run, gpu_probe.base)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("PASS") == 2


def test_dev_on_a_detected_gpu_requires_cuda_from_the_probe(
    gpu_probe: RunningProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `auto` runs the real preflight in a subprocess; the fake NVML makes this machine an A4000 host
    # (so this plan is made here, not shared: it depends on the environment).
    monkeypatch.setenv("PYTHONPATH", str(FAKE_NVML))
    monkeypatch.setenv("FAKE_NVML_JSON", json.dumps(cards.machine(cards.A4000)))
    plan = make_plan("dev")
    assert plan.outputs["profile"] == "a4000"
    probe_container = containers(plan)["probe"]
    assert probe_container.inputs["deviceRequests"] == [
        {"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}
    ]
    run = plan.named(LOCAL_COMMAND, "smoke-probe-run")
    checks = json.loads(run.inputs["stdin"])
    assert {"http": {"path": "/gpu", "equals": {"cuda": True}}} in checks
    # The probe here has no torch and no GPU: the check must fail, as it would on a broken GPU host.
    result = _run_smoke(run, gpu_probe.base)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "FAIL http GET /gpu" in result.stderr and "field 'cuda' is false, expected true" in result.stderr
