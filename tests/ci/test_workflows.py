"""The GitHub workflows: valid against the workflow schema, and wired the way the project needs.

The rules are stated as invariants over every workflow file (every action pinned to a commit or a
release tag, one version of each action, the Python that pyproject.toml requires, the offline CLI
called as its parser accepts), and the run steps are read as commands (shlex), not as text.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacks.__main__ import parser as stacks_cli
from stacks.plan import PROJECT_DIR, list_stacks
from tests.tools import dev_tool

WORKFLOWS = PROJECT_DIR / ".github" / "workflows"
ALL = sorted(WORKFLOWS.glob("*.yml"))
TEST = WORKFLOWS / "test.yml"
PREVIEW = WORKFLOWS / "preview.yml"
# owner/repo[/path]@ref where ref is a full commit SHA or a release tag (v4, v4.2, v4.2.1)
PINNED_ACTION = re.compile(r"^[\w.-]+/[\w./-]+@(?:[0-9a-f]{40}|v\d+(?:\.\d+){0,2})$")
SHELL_OPERATOR = re.compile(r"^[();<>|&]+$")
WRAPPERS = {"sudo", "env", "{", "}", "do", "then", "else", "exec"}  # words before the command


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


def all_steps() -> list[tuple[str, str, dict[str, Any]]]:
    """(workflow file, job name, step) for every step of every workflow."""
    return [
        (path.name, name, step)
        for path in ALL
        for name, job in load(path)["jobs"].items()
        for step in job.get("steps", [])
    ]


def steps_using(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if str(s.get("uses", "")).split("@")[0] == action]


def commands(job: dict[str, Any]) -> list[list[str]]:
    """Each simple command of the job's run steps as its words (quotes removed, `sudo`, `env` and
    NAME=value prefixes dropped; pipes, lists, `$(...)` and redirections split it), as the shell reads it."""
    found: list[list[str]] = []
    for step in job["steps"]:
        for line in str(step.get("run", "")).splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            words: list[str] = []
            for token in [*lexer, ";"]:
                if SHELL_OPERATOR.match(token):
                    if words:
                        found.append(words)
                    words = [token] if token.startswith(">") else []
                elif token != "$" and (words or (token not in WRAPPERS and not re.match(r"^\w+=", token))):
                    words.append(token)
    return found


def cli_calls(job: dict[str, Any]) -> list[Any]:
    """The `python -m stacks ...` commands of the job, parsed by the CLI's own parser (an invocation it
    would refuse fails here)."""
    calls = []
    for words in commands(job):
        if words[0].endswith("python") and words[1:3] == ["-m", "stacks"]:
            try:
                calls.append(stacks_cli().parse_args(words[3:]))
            except SystemExit:
                pytest.fail(f"`{shlex.join(words)}`: python -m stacks refuses these arguments")
    return calls


def required_python() -> str:
    """The lowest Python pyproject.toml allows (requires-python = ">=X.Y")."""
    spec = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]["requires-python"]
    match = re.fullmatch(r">=\s*(\d+\.\d+)", spec)
    assert match, f"requires-python {spec!r} is not a lower bound"
    return match.group(1)


def test_workflows_match_the_github_schema() -> None:
    assert {TEST, PREVIEW} <= set(ALL)
    result = check_schema(*ALL)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(PREVIEW.read_text().replace("runs-on:", "runs_on:", 1))
    assert check_schema(broken).returncode != 0


def test_every_action_is_pinned_to_a_commit_or_a_release_tag() -> None:
    uses = [(f"{path} {job}", str(step["uses"])) for path, job, step in all_steps() if "uses" in step]
    assert uses
    for where, action in uses:
        assert PINNED_ACTION.match(action), f"{where}: {action} is not pinned to a commit SHA or a vN tag"


def test_each_action_has_one_version_in_every_workflow() -> None:
    versions: dict[str, set[str]] = {}
    for _, _, step in all_steps():
        if "uses" in step:
            action, ref = str(step["uses"]).split("@", 1)
            versions.setdefault(action, set()).add(ref)
    assert {action: refs for action, refs in versions.items() if len(refs) > 1} == {}


def test_every_workflow_sets_up_the_python_the_project_requires() -> None:
    setups = [
        (path, step)
        for path, _, step in all_steps()
        if str(step.get("uses", "")).startswith("actions/setup-python@")
    ]
    assert {path for path, _ in setups} == {path.name for path in ALL}, "every workflow sets up Python"
    for path, setup in setups:
        assert str(setup["with"]["python-version"]) == required_python(), path


def test_the_shell_reading_sees_commands_and_wrappers() -> None:
    """The reading the checks below rely on: quotes, sudo/env prefixes, pipes and $(...) split."""
    job = {
        "steps": [
            {
                "run": 'sudo env "PATH=$PATH" make test\nfor s in $(python -m stacks list | awk \'{print $1}\'); do\n  x "$s" || y=1\n} >> "$OUT"'
            }
        ]
    }
    assert commands(job) == [
        ["make", "test"],
        ["for", "s", "in"],
        ["python", "-m", "stacks", "list"],
        ["awk", "{print $1}"],
        ["x", "$s"],
        [">>", "$OUT"],
    ]


def test_test_workflow_runs_make_test_on_every_push_and_pull_request() -> None:
    doc = load(TEST)
    assert set(doc["on"]) >= {"push", "pull_request"}
    (job,) = doc["jobs"].values()
    # the real-engine tier installs what it needs with apt (.ci/install-real-tier.sh)
    assert str(job["runs-on"]).startswith("ubuntu-")
    assert steps_using(job, "actions/checkout") and steps_using(job, "actions/setup-python")
    assert ["make", "test"] in commands(job), "CI runs the entry point a developer runs"
    assert re.search(r"^test:", (PROJECT_DIR / "Makefile").read_text(), re.M), "and the Makefile has it"


def test_preview_job_runs_pulumi_preview_with_the_policy_pack() -> None:
    doc = load(PREVIEW)
    assert "pull_request" in doc["on"]
    job = doc["jobs"]["preview"]
    assert job["permissions"]["pull-requests"] == "write"
    assert set(job["strategy"]["matrix"]["stack"]) >= set(list_stacks(PROJECT_DIR))
    (pulumi,) = steps_using(job, "pulumi/actions")
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
    # the pack's virtualenv (PulumiPolicy.yaml) gets the pack's own requirements, installed from the pack's
    # directory as the Pulumi CLI does (its `-e ..` line is the repository, relative to that directory)
    installs = [
        (Path(step.get("working-directory", ".")), w[w.index("-r") + 1])
        for step in job["steps"]
        for w in commands({"steps": [step]})
        if w[1:4] == ["-m", "pip", "install"] and "-r" in w
    ]
    pack_dir = Path(own["with"]["path"]) / inputs["policyPacks"]
    assert (pack_dir, "requirements.txt") in installs
    assert (PROJECT_DIR / inputs["policyPacks"] / "requirements.txt").is_file()


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
    checks = [c for c in cli_calls(job) if c.command == "sources"]
    assert [(c.stack, c.check) for c in checks] == [("${{ matrix.stack }}", True)]


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_only_the_preview_job_sees_secrets(path: Path) -> None:
    for name, job in load(path)["jobs"].items():
        if name != "preview":
            assert "secrets." not in yaml.safe_dump(job), name


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_every_offline_cli_call_in_a_workflow_is_one_the_cli_accepts(path: Path) -> None:
    for job in load(path)["jobs"].values():
        cli_calls(job)  # fails on a subcommand or flag that python -m stacks does not have


def test_offline_diff_job_diffs_every_stack_against_the_base_branch() -> None:
    job = load(PREVIEW)["jobs"]["offline-diff"]
    (checkout,) = steps_using(job, "actions/checkout")
    assert checkout["with"]["fetch-depth"] == 0
    assert steps_using(job, "actions/setup-python")
    run = commands(job)
    assert ["make", "venv"] in run
    calls = cli_calls(job)
    # every stack, including ones added later: the loop takes the names from `stacks list`
    assert "list" in [c.command for c in calls]
    (diff,) = [c for c in calls if c.command == "diff"]
    assert (diff.stack, diff.against, diff.config_file) == ("$stack", "$BASE_REF", None)
    assert [">>", "$GITHUB_STEP_SUMMARY"] in run, "the diffs go to the job summary"
    diff_step = next(s for s in job["steps"] if "stacks diff" in str(s.get("run", "")))
    assert diff_step["env"]["BASE_REF"] == "origin/${{ github.base_ref }}"
    assert job.get("permissions") == {"contents": "read"}
