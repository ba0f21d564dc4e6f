"""The GitHub workflows: valid against the workflow schema, and wired the way the project needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacks.plan import PROJECT_DIR, list_stacks
from tests.tools import dev_tool

WORKFLOWS = PROJECT_DIR / ".github" / "workflows"
TEST = WORKFLOWS / "test.yml"
PREVIEW = WORKFLOWS / "preview.yml"


def load(path: Path) -> dict[str, Any]:
    raw: dict[Any, Any] = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as the boolean True.
    return {("on" if key is True else str(key)): value for key, value in raw.items()}


def check_schema(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(dev_tool("check-jsonschema")), "--builtin-schema", "vendor.github-workflows", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def steps_using(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if str(s.get("uses", "")).split("@")[0] == action]


def run_lines(job: dict[str, Any]) -> str:
    return "\n".join(str(s.get("run", "")) for s in job["steps"])


def test_workflows_match_the_github_schema() -> None:
    result = check_schema(TEST, PREVIEW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(PREVIEW.read_text().replace("runs-on:", "runs_on:", 1))
    assert check_schema(broken).returncode != 0


def test_test_workflow_runs_make_test() -> None:
    doc = load(TEST)
    assert set(doc["on"]) >= {"push", "pull_request"}
    (job,) = doc["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    assert [s["uses"] for s in steps_using(job, "actions/checkout")] == ["actions/checkout@v4"]
    (setup,) = steps_using(job, "actions/setup-python")
    assert setup["uses"] == "actions/setup-python@v5"
    assert str(setup["with"]["python-version"]) == "3.11"
    assert "make test" in run_lines(job)


def test_preview_job_runs_pulumi_preview_with_the_policy_pack() -> None:
    doc = load(PREVIEW)
    assert "pull_request" in doc["on"]
    job = doc["jobs"]["preview"]
    assert job["permissions"]["pull-requests"] == "write"
    assert set(job["strategy"]["matrix"]["stack"]) >= set(list_stacks(PROJECT_DIR))
    (pulumi,) = steps_using(job, "pulumi/actions")
    assert pulumi["uses"] == "pulumi/actions@v6"
    inputs = pulumi["with"]
    assert inputs["command"] == "preview"
    assert inputs["stack-name"] == "${{ matrix.stack }}"
    assert inputs["comment-on-pr"] is True
    # this repository is checked out into gpu-deploy/, so a stack's ../NAME contexts sit beside it
    (own,) = [c for c in steps_using(job, "actions/checkout") if "repository" not in c.get("with", {})]
    assert inputs["work-dir"] == own["with"]["path"] == "gpu-deploy"
    assert inputs["cloud-url"] == "${{ secrets.PULUMI_BACKEND_URL }}"
    assert inputs["policyPacks"] == "policy"  # the action's input name (not policy-packs)
    assert (PROJECT_DIR / inputs["policyPacks"] / "PulumiPolicy.yaml").is_file()
    assert job["env"]["PULUMI_BACKEND_URL"] == "${{ secrets.PULUMI_BACKEND_URL }}"
    assert job["env"]["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
    assert "policy/requirements.txt" in run_lines(job)  # the pack's virtualenv (PulumiPolicy.yaml)


@pytest.mark.parametrize("stack", list_stacks(PROJECT_DIR))
def test_preview_checks_out_what_each_stack_builds_from(stack: str) -> None:
    """pulumi-docker's Image opens the Dockerfile and hashes the context at preview (pulumi-docker v5.1.0
    provider/provider.go Check): each stack's matrix entry names the sibling repository its contexts are
    in, exactly as `python -m stacks sources` reports them, and the job checks them before previewing."""
    job = load(PREVIEW)["jobs"]["preview"]
    listed = subprocess.run(
        [sys.executable, "-m", "stacks", "sources", stack],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT_DIR,
    ).stdout.split()
    siblings = {Path(c).parts[1] for c in listed if Path(c).parts[0] == ".."}
    named = {e["source"] for e in job["strategy"]["matrix"].get("include", []) if e["stack"] == stack}
    assert named == siblings, f"{stack} builds from {listed}"
    (source,) = [c for c in steps_using(job, "actions/checkout") if "repository" in c.get("with", {})]
    assert source["with"]["path"] == "${{ matrix.source }}" and source["if"] == "matrix.source"
    assert 'python -m stacks sources "${{ matrix.stack }}" --check' in run_lines(job)


@pytest.mark.parametrize("path", [TEST, PREVIEW], ids=["test", "preview"])
def test_only_the_preview_job_sees_secrets(path: Path) -> None:
    for name, job in load(path)["jobs"].items():
        if name != "preview":
            assert "secrets." not in yaml.safe_dump(job), name


def test_offline_diff_job_diffs_every_stack_against_the_base_branch() -> None:
    job = load(PREVIEW)["jobs"]["offline-diff"]
    (checkout,) = steps_using(job, "actions/checkout")
    assert checkout["with"]["fetch-depth"] == 0
    assert steps_using(job, "actions/setup-python")
    script = run_lines(job)
    assert "make venv" in script
    assert '.venv/bin/python -m stacks diff "$stack" --against' in script
    assert "$GITHUB_STEP_SUMMARY" in script
    assert "python -m stacks list" in script  # every stack, including ones added later
    diff_step = next(s for s in job["steps"] if "stacks diff" in str(s.get("run", "")))
    assert diff_step["env"]["BASE_REF"] == "origin/${{ github.base_ref }}"
    assert job.get("permissions") == {"contents": "read"}
