"""stacks/diff.py and `python -m stacks diff`: what a change would create, replace, update or delete.

The classifier is tested on small hand-written plans; the CLI on an edited copy of Pulumi.prod.yaml
(`--config-file`) and on a throwaway git repository holding a copy of this project (`--against`), so
that neither this checkout's HEAD nor its uncommitted edits decide the outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacks.diff import Diff, diff_plans, render_text
from stacks.diff_sources import empty_plan
from stacks.plan import PROJECT_DIR, mock_id
from stacks.replacement import REPLACE_ON_ANY_CHANGE
from tests.plans import CONTAINER, IMAGE, LOCAL_COMMAND, REMOTE_COMMAND, REMOTE_IMAGE

NETWORK = "docker:index/network:Network"
PROVIDER = "pulumi:providers:docker"
VOLUME = "docker:index/volume:Volume"  # not in the replace table: an in-place update


# ---------------------------------------------------------------- hand-written plans
def res(
    name: str,
    type_: str = CONTAINER,
    /,
    *,
    custom: bool = True,
    parent: str = "pulumi:pulumi:Stack",
    depends_on: list[str] | None = None,
    ignore: list[str] | None = None,
    retain: bool = False,
    **inputs: Any,
) -> dict[str, Any]:
    return {
        "urn": urn(name, type_, parent),
        "type": type_,
        "name": name,
        "parent": None,
        "custom": custom,
        "inputs": inputs,
        "options": {
            "dependsOn": depends_on or [],
            "protect": False,
            "deleteBeforeReplace": False,
            "retainOnDelete": retain,
            "provider": None,
            "ignoreChanges": ignore or [],
        },
    }


def urn(name: str, type_: str = CONTAINER, parent: str = "pulumi:pulumi:Stack") -> str:
    return f"urn:pulumi:s::p::{parent}${type_}::{name}"


def plan(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"project": "p", "stack": "s", "resources": list(resources), "outputs": {}}


def actions(diff: Diff) -> dict[str, str]:
    return {c.name: c.action for c in diff.changes}


def test_only_in_after_is_create_and_only_in_before_is_delete() -> None:
    diff = diff_plans(plan(res("old")), plan(res("new")))
    assert actions(diff) == {"new": "create", "old": "delete"}
    assert diff.unchanged == 0
    assert diff.of("delete")[0].line() == f"delete   {CONTAINER}  old"


def test_delete_of_a_retained_resource_is_noted_kept_on_the_host() -> None:
    diff = diff_plans(plan(res("image-build", IMAGE, retain=True, imageName="a:1")), plan())
    (change,) = diff.of("delete")
    assert change.kept
    assert change.line() == f"delete   {IMAGE}  image-build  (kept on the host)"
    assert "(kept on the host)" in render_text(diff)


def test_equal_inputs_are_unchanged() -> None:
    resources = [res("app", image="a:1", memory=1024), res("net", NETWORK, name="n")]
    diff = diff_plans(plan(*resources), plan(*resources))
    assert diff.empty
    assert diff.unchanged == 2
    assert diff.summary() == "0 to create, 0 to replace, 0 to update, 0 to delete, 2 unchanged"


def test_a_container_change_is_a_replace_naming_the_keys_with_short_values() -> None:
    before = plan(res("app", image="a:1", memory=1024, envs=["A=1"]))
    after = plan(res("app", image="a:2", memory=1024, envs=["A=2"]))
    (change,) = diff_plans(before, after).changes
    assert change.action == "replace"
    assert change.changed == ("envs", "image")
    assert change.line() == f'replace  {CONTAINER}  app  (envs, image: "a:1" -> "a:2")'


@pytest.mark.parametrize("type_", sorted(REPLACE_ON_ANY_CHANGE))
def test_every_replace_on_any_change_type_is_replaced(type_: str) -> None:
    diff = diff_plans(plan(res("r", type_, x=1)), plan(res("r", type_, x=2)))
    assert actions(diff) == {"r": "replace"}


def test_a_type_outside_the_table_is_updated_in_place() -> None:
    (change,) = diff_plans(plan(res("v", VOLUME, labels=["a"])), plan(res("v", VOLUME, labels=["b"]))).changes
    assert change.action == "update"
    assert change.changed == ("labels",)


@pytest.mark.parametrize("type_", [REMOTE_COMMAND, LOCAL_COMMAND])
@pytest.mark.parametrize("key", ["create", "stdin", "environment", "triggers"])
def test_a_command_is_replaced_when_what_it_runs_changes(type_: str, key: str) -> None:
    before, after = res("c", type_), res("c", type_)
    before["inputs"], after["inputs"] = {key: "x"}, {key: "y"}
    assert actions(diff_plans(plan(before), plan(after))) == {"c": "replace"}


def test_a_command_is_updated_when_only_its_connection_or_delete_step_changes() -> None:
    before = plan(res("c", REMOTE_COMMAND, create="run", connection={"host": "a"}, delete="x"))
    after = plan(res("c", REMOTE_COMMAND, create="run", connection={"host": "b"}, delete="y"))
    assert actions(diff_plans(before, after)) == {"c": "update"}


def test_a_command_with_an_update_step_updates_but_triggers_still_replace() -> None:
    before = plan(res("c", REMOTE_COMMAND, create="a", update="u"))
    after = plan(res("c", REMOTE_COMMAND, create="b", update="u"))
    assert actions(diff_plans(before, after)) == {"c": "update"}
    before = plan(res("c", REMOTE_COMMAND, create="a", update="u", triggers=["1"]))
    after = plan(res("c", REMOTE_COMMAND, create="a", update="u", triggers=["2"]))
    assert actions(diff_plans(before, after)) == {"c": "replace"}


def test_a_provider_is_replaced_for_another_host_and_updated_otherwise() -> None:
    before = plan(res("docker", PROVIDER, host="ssh://a", sshOpts=["-o", "x"]))
    assert actions(
        diff_plans(before, plan(res("docker", PROVIDER, host="ssh://b", sshOpts=["-o", "x"])))
    ) == {"docker": "replace"}
    assert actions(
        diff_plans(before, plan(res("docker", PROVIDER, host="ssh://a", sshOpts=["-o", "y"])))
    ) == {"docker": "update"}


def test_ignore_changes_of_the_after_resource_is_honoured() -> None:
    before = plan(res("migrate", image="a:1"))
    assert diff_plans(before, plan(res("migrate", image="a:2", ignore=["image"]))).empty
    # Only the after side counts: ignoreChanges set before but dropped now is a change.
    assert actions(
        diff_plans(plan(res("migrate", image="a:1", ignore=["image"])), plan(res("migrate", image="a:2")))
    ) == {"migrate": "replace"}
    # Keys outside the list still count.
    diff = diff_plans(before, plan(res("migrate", image="a:2", memory=1, ignore=["image"])))
    assert diff.of("replace")[0].changed == ("memory",)


def test_component_resources_are_never_changes() -> None:
    component = "gpu-deploy:docker:GpuContainer"
    before = plan(res("app", component, custom=False, x=1), res("gone", component, custom=False))
    after = plan(res("app", component, custom=False, x=2), res("new", component, custom=False))
    diff = diff_plans(before, after)
    assert diff.empty
    assert diff.unchanged == 0


def test_an_unknown_value_on_either_side_is_a_possible_change() -> None:
    before = plan(res("v", VOLUME, driver="[unknown]"))
    (change,) = diff_plans(before, plan(res("v", VOLUME, driver="local"))).changes
    assert change.action == "update"
    assert change.line() == f"update   {VOLUME}  v  (driver (unknown until deploy))"
    nested = diff_plans(plan(res("app", labels=[{"v": "1"}])), plan(res("app", labels=[{"v": "[unknown]"}])))
    assert nested.of("replace")[0].details == ("labels (unknown until deploy)",)


def test_an_equal_unknown_is_a_change_only_when_a_dependency_changes() -> None:
    job = urn("migrate")
    app_before = res("app", labels=["[unknown]"], depends_on=[job])
    # The job is unchanged: the engine knows its output from the state.
    steady = diff_plans(
        plan(res("migrate", image="a:1"), app_before), plan(res("migrate", image="a:1"), app_before)
    )
    assert steady.empty
    # The job is replaced: its output is computed again, so the label may change too.
    moved = diff_plans(
        plan(res("migrate", image="a:1"), app_before), plan(res("migrate", image="a:2"), app_before)
    )
    assert actions(moved) == {"migrate": "replace", "app": "replace"}
    app = next(c for c in moved.changes if c.name == "app")
    assert app.details == ("labels (unknown until deploy)",)
    assert app.unknown == ("labels",)
    assert not app.certain, "only a possible change"
    assert next(c for c in moved.changes if c.name == "migrate").certain


def test_the_id_of_a_replaced_dependency_is_unknown_until_deploy() -> None:
    # The mocks give every resource the id NAME-id; a real replacement gets a new one.
    app = urn("app")
    smoke = res("smoke-app-run", REMOTE_COMMAND, create="check", triggers=[mock_id("app")], depends_on=[app])
    before = plan(res("app", image="a:1"), smoke)
    assert actions(diff_plans(before, plan(res("app", image="a:2"), smoke))) == {
        "app": "replace",
        "smoke-app-run": "replace",
    }
    # Transitively: what depends on the replaced command's id changes too.
    after_smoke = res(
        "report", VOLUME, labels=[mock_id("smoke-app-run")], depends_on=[urn("smoke-app-run", REMOTE_COMMAND)]
    )
    diff = diff_plans(
        plan(res("app", image="a:1"), smoke, after_smoke), plan(res("app", image="a:2"), smoke, after_smoke)
    )
    assert actions(diff)["report"] == "update"
    # An unchanged dependency's id is known: nothing changes.
    assert diff_plans(before, before).empty
    # A name that merely contains the id is not the id.
    other = res("x", VOLUME, labels=["myapp-id"], depends_on=[app])
    assert "x" not in actions(
        diff_plans(plan(res("app", image="a:1"), other), plan(res("app", image="a:2"), other))
    )


def test_secrets_stay_masked() -> None:
    before = plan(res("c", REMOTE_COMMAND, create="run", environment="[secret]", connection="[secret]"))
    after = plan(res("c", REMOTE_COMMAND, create="run2", environment="[secret]", connection="[secret]"))
    diff = diff_plans(before, after)
    assert diff.of("replace")[0].changed == ("create",)
    before = plan(res("app", password="[secret]", image="a"))
    after = plan(res("app", password="hunter2-in-plain-text", image="a"))
    text = render_text(diff_plans(before, after))
    assert '"[secret]" -> "hunter2-in-plain-text"' in text  # the plan decides what is masked


def test_long_or_structured_values_name_only_the_key() -> None:
    before = plan(res("c", REMOTE_COMMAND, create="x" * 200, stdin="a\nb"))
    after = plan(res("c", REMOTE_COMMAND, create="y" * 200, stdin="a\nc"))
    assert diff_plans(before, after).of("replace")[0].details == ("create", "stdin")
    added = diff_plans(plan(res("app")), plan(res("app", memory=1024)))
    assert added.of("replace")[0].details == ("memory: (unset) -> 1024",)


def test_text_is_a_markdown_section_and_json_has_every_action() -> None:
    before = plan(res("old", IMAGE, retain=True), res("app", image="a:1"), res("net", NETWORK, name="n"))
    after = plan(res("new", REMOTE_IMAGE, name="a:1"), res("app", image="a:2"), res("net", NETWORK, name="n"))
    diff = diff_plans(before, after, "prod")
    assert render_text(diff).splitlines() == [
        "### prod",
        "",
        "```",
        f"create   {REMOTE_IMAGE}  new",
        f'replace  {CONTAINER}  app  (image: "a:1" -> "a:2")',
        f"delete   {IMAGE}  old  (kept on the host)",
        "```",
        "",
        "1 to create, 1 to replace, 0 to update, 1 to delete, 1 unchanged",
    ]
    data = diff.as_json()
    assert data == {
        "stack": "prod",
        "create": [{"urn": urn("new", REMOTE_IMAGE), "type": REMOTE_IMAGE, "name": "new", "changed": []}],
        "replace": [{"urn": urn("app"), "type": CONTAINER, "name": "app", "changed": ["image"]}],
        "update": [],
        "delete": [{"urn": urn("old", IMAGE), "type": IMAGE, "name": "old", "changed": []}],
        "unchanged": 1,
    }
    assert "no changes" in render_text(diff_plans(before, before, "prod"))


def test_an_empty_before_plan_is_all_created() -> None:
    diff = diff_plans(empty_plan("s"), plan(res("a"), res("b", NETWORK)))
    assert [c.action for c in diff.changes] == ["create", "create"]


# ---------------------------------------------------------------- the CLI, --config-file
def run_cli(*args: str, cwd: Path = PROJECT_DIR) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "stacks", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=120,
    )


def edited_prod(tmp_path: Path, edit: Any) -> Path:
    doc = yaml.safe_load((PROJECT_DIR / "Pulumi.prod.yaml").read_text())
    edit(doc["config"])
    path = tmp_path / "Pulumi.prod.other.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def bigger_app(config: dict[str, Any]) -> None:
    config["gpu-deploy:services"]["app"]["memory"] = "24g"


def test_cli_config_file_lists_the_changes_as_markdown(tmp_path: Path) -> None:
    other = edited_prod(tmp_path, bigger_app)
    result = run_cli("diff", "prod", "--config-file", str(other))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "### prod"
    assert f"replace  {CONTAINER}  app  (memory: 16384 -> 24576)" in lines
    assert lines[-1].startswith("0 to create, "), lines[-1]
    assert ", 0 to delete, " in lines[-1]
    assert result.stdout.count("```") == 2


def test_cli_config_file_json(tmp_path: Path) -> None:
    other = edited_prod(tmp_path, bigger_app)
    result = run_cli("diff", "prod", "--config-file", str(other), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"stack", "create", "replace", "update", "delete", "unchanged", "rollout"}
    assert data["stack"] == "prod"
    assert [(r["service"], r["name"]) for r in data["rollout"]] == [("app", "app")]  # how the app rolls
    # The app is replaced; what runs after it (a smoke test triggered by its id) may be re-run with it.
    containers = [(c["name"], c["changed"]) for c in data["replace"] if c["type"] == CONTAINER]
    assert containers == [("app", ["memory"])]
    assert data["create"] == data["update"] == data["delete"] == []
    assert data["unchanged"] > 5


def test_cli_config_error_in_the_other_file_exits_2_with_one_line(tmp_path: Path) -> None:
    def broken(config: dict[str, Any]) -> None:
        config["gpu-deploy:services"]["app"]["gpu"] = "two"

    result = run_cli("diff", "prod", "--config-file", str(edited_prod(tmp_path, broken)))
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("gpu-deploy:services.app.gpu: ")


def test_cli_needs_exactly_one_of_config_file_and_against(tmp_path: Path) -> None:
    assert run_cli("diff", "prod").returncode == 2  # argparse usage error
    other = edited_prod(tmp_path, bigger_app)
    assert run_cli("diff", "prod", "--config-file", str(other), "--against", "HEAD").returncode == 2


def test_cli_missing_config_file_exits_1(tmp_path: Path) -> None:
    result = run_cli("diff", "prod", "--config-file", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert "nope.yaml" in result.stderr


# ---------------------------------------------------------------- the CLI, --against GIT_REF
def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        [
            "git",
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "commit.gpgsign=false",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this project (tracked and untracked-not-ignored files, as they are now), committed."""
    root = tmp_path_factory.mktemp("repo")
    listed = git(PROJECT_DIR, "ls-files", "-z", "--cached", "--others", "--exclude-standard", ".")
    for name in sorted(set(filter(None, listed.split("\0")))):
        source = PROJECT_DIR / name
        if name.startswith(".venv/") or not source.is_file():
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, root / name)
    git(root, "init", "--quiet")
    git(root, "add", "--all")
    git(root, "commit", "--quiet", "-m", "snapshot")
    return root


def worktrees(repo: Path) -> list[str]:
    return [
        line
        for line in git(repo, "worktree", "list", "--porcelain").splitlines()
        if line.startswith("worktree ")
    ]


def test_against_head_on_a_clean_stack_is_all_unchanged(repo: Path) -> None:
    result = run_cli("diff", "prod", "--against", "HEAD", cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "\nno changes\n" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("0 to create, 0 to replace, 0 to update, 0 to delete, ")
    assert len(worktrees(repo)) == 1, "the temporary worktree is removed"


def test_against_head_reports_the_edited_resources(repo: Path) -> None:
    stack_file = repo / "Pulumi.prod.yaml"
    original = stack_file.read_text()
    doc = yaml.safe_load(original)
    doc["config"]["gpu-deploy:services"]["app"]["memory"] = "24g"
    doc["config"]["gpu-deploy:target"]["host"] = "p40-new.gpu.internal"
    stack_file.write_text(yaml.safe_dump(doc))
    try:
        result = run_cli("diff", "prod", "--against", "HEAD", "--json", cwd=repo)
        text = run_cli("diff", "prod", "--against", "HEAD", cwd=repo)
    finally:
        stack_file.write_text(original)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    replaced = {c["name"]: c["changed"] for c in data["replace"]}
    assert "memory" in replaced["app"]
    assert "host" in replaced["host-docker"], "another host is another provider"
    assert data["create"] == data["delete"] == []
    assert f"replace  {PROVIDER}  host-docker  " in text.stdout
    assert (
        '(host: "ssh://deploy@p40.gpu.internal:22" -> "ssh://deploy@p40-new.gpu.internal:22"' in text.stdout
    )
    assert len(worktrees(repo)) == 1


def test_against_a_ref_without_the_stack_is_all_created(repo: Path) -> None:
    new = repo / "Pulumi.prod2.yaml"
    new.write_text((repo / "Pulumi.prod.yaml").read_text())
    try:
        result = run_cli("diff", "prod2", "--against", "HEAD", "--json", cwd=repo)
    finally:
        new.unlink()
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["create"] and not (data["replace"] or data["update"] or data["delete"])
    assert data["unchanged"] == 0
    assert CONTAINER in {c["type"] for c in data["create"]}


def test_against_a_stack_in_neither_is_an_error(repo: Path) -> None:
    result = run_cli("diff", "nosuchstack", "--against", "HEAD", cwd=repo)
    assert result.returncode == 1
    assert "nosuchstack" in result.stderr


def test_against_an_unknown_ref_exits_1(repo: Path) -> None:
    result = run_cli("diff", "prod", "--against", "no-such-ref", cwd=repo)
    assert result.returncode == 1
    assert result.stderr.startswith("error: git worktree add")
    assert len(worktrees(repo)) == 1


def test_against_a_ref_whose_config_is_broken_exits_2(repo: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    git(repo, "clone", "--quiet", str(repo), str(clone))
    stack_file = clone / "Pulumi.prod.yaml"
    good = stack_file.read_text()
    doc = yaml.safe_load(good)
    doc["config"]["gpu-deploy:services"]["app"]["gpu"] = "two"
    stack_file.write_text(yaml.safe_dump(doc))
    git(clone, "commit", "--quiet", "-am", "broken")
    stack_file.write_text(good)  # the working tree is fine, the ref is not
    result = run_cli("diff", "prod", "--against", "HEAD", cwd=clone)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("gpu-deploy:services.app.gpu: ")
    assert "(Pulumi.prod.yaml at HEAD)" in result.stderr
