"""The rollback story, proved on offline plans with stacks/diff.py.

- Pinning `image.tag` to a previous release replaces only the containers that run the built images (never
  a one-shot job: a migration does not run backwards) and swaps each CudaImage's build for a reference
  to the kept tag; the host, its directories, the provider and the network do not change, nothing is
  built, and the exports say which tag runs.
- `enabled: false` removes one service's container and nothing of the host's data, for every service
  of every Docker stack; a service that others depend on cannot be disabled alone.
- Clearing the tag again gives back the original plan.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stacks.config import ConfigError, validate
from stacks.diff import Diff, diff_plans
from stacks.plan import Plan
from tests.plans import CONTAINER, IMAGE, REMOTE_IMAGE, ShippedPlan, plan_with, stack_config

DOCKER_STACKS = ["prod", "a4000", "edu-gpu", "h100", "dev"]
NS = "gpu-deploy:"
CUDA_IMAGE = "gpu-deploy:docker:CudaImage"
HOST_DIRS = "gpu-deploy:host:HostDirectories"
GPU_HOST = "gpu-deploy:host:GpuHost"
DOCKER_HOST = "gpu-deploy:docker:DockerHost"
PINNED = {"prod": "p40-0123456789ab", "h100": "h100-0123456789ab"}


@pytest.fixture(scope="module")
def originals(shipped_plan: ShippedPlan) -> dict[str, Plan]:
    return {stack: shipped_plan(stack) for stack in DOCKER_STACKS}


def services(stack: str) -> dict[str, dict[str, Any]]:
    return dict(stack_config(stack)[f"{NS}services"])


def enabled(stack: str) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services(stack).items() if svc.get("enabled", True)}


def pin(tag: str) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        config[f"{NS}image"]["tag"] = tag

    return edit


def parent_types(plan: Plan) -> dict[str, str]:
    """URN of each custom resource -> the type of its parent component."""
    types = {r.urn: r.type for r in plan.resources}
    return {r.urn: types.get(r.parent or "", "") for r in plan.resources if r.custom}


def under(plan_json: dict[str, Any], urn: str, component: str) -> bool:
    parents = {r["urn"]: r for r in plan_json["resources"]}
    resource = parents.get(urn)
    return resource is not None and parents.get(resource["parent"] or "", {}).get("type") == component


def dependents_of(plan: Plan, urns: set[str]) -> set[str]:
    """Custom resources that depend, directly or not, on any of `urns`."""
    found: set[str] = set()
    frontier = set(urns)
    while frontier:
        step = {r.urn for r in plan.resources if r.custom and frontier & set(r.options["dependsOn"])} - found
        found |= step
        frontier = step
    return found


# ---------------------------------------------------------------- pinning a previous tag
@pytest.mark.parametrize("stack", ["prod", "h100"])
def test_pinning_a_previous_tag_replaces_only_the_containers_of_built_images(
    tmp_path: Path, originals: dict[str, Plan], stack: str
) -> None:
    before = originals[stack]
    after = plan_with(tmp_path, stack, pin(PINNED[stack]))
    diff = diff_plans(before.as_json(), after.as_json())

    built = {n for n, s in enabled(stack).items() if s.get("image") == "build"}
    jobs = {n for n in built if enabled(stack)[n].get("oneShot")}
    replaced = {c.name for c in diff.of("replace") if c.type == CONTAINER}
    assert replaced == built - jobs
    assert not any(c.type == CONTAINER for c in diff.of("create") + diff.of("delete") + diff.of("update"))
    if stack == "prod":
        assert replaced == {"app"}
        migrate = after.named(CONTAINER, "migrate")
        assert "image" in migrate.options["ignoreChanges"], "a migration never runs backwards"
        assert migrate.inputs["image"].endswith(f"{PINNED[stack]}-deps")
    else:
        assert replaced == {"vision", "queue-worker", "celery"}
    for change in diff.of("replace"):
        if change.type == CONTAINER:
            assert "image" in change.changed
            assert set(change.changed) <= {"image", "labels"}, change.line()
    for name in replaced:
        assert after.named(CONTAINER, name).inputs["image"].split(":", 1)[1].startswith(PINNED[stack])

    # Each CudaImage swaps its build (kept on the host) for a reference to the pinned tag.
    deleted_images = [c for c in diff.of("delete") if c.type == IMAGE]
    created_images = [c for c in diff.of("create") if c.type == REMOTE_IMAGE]
    assert deleted_images and created_images
    assert all(c.kept for c in deleted_images), "retainOnDelete: the old build stays on the host"
    assert all(under(before.as_json(), c.urn, CUDA_IMAGE) for c in deleted_images)
    assert all(under(after.as_json(), c.urn, CUDA_IMAGE) for c in created_images)
    assert {c.name.removesuffix("-build") for c in deleted_images} == {
        c.name.removesuffix("-pinned") for c in created_images
    }
    assert {c.type for c in diff.of("delete")} == {IMAGE}
    assert {c.type for c in diff.of("create")} == {REMOTE_IMAGE}
    assert not after.by_type(IMAGE), "nothing is built"
    for remote in after.by_type(REMOTE_IMAGE):
        assert PINNED[stack] in remote.inputs["name"]

    # Anything else that changes runs after a replaced container (e.g. a smoke test triggered by its id);
    # the host, its directories, the provider and the network never change.
    replaced_urns = {c.urn for c in diff.of("replace") if c.type == CONTAINER}
    downstream = dependents_of(after, replaced_urns)
    others = [c for c in diff.changes if c.type not in (CONTAINER, IMAGE, REMOTE_IMAGE)]
    assert all(c.urn in downstream and c.action == "replace" for c in others), [c.line() for c in others]
    untouched_parents = {HOST_DIRS, GPU_HOST, DOCKER_HOST}
    parents = parent_types(after)
    for change in diff.changes:
        assert parents.get(change.urn) not in untouched_parents, change.line()
        assert not change.type.startswith("pulumi:providers:"), change.line()
        assert change.type != "docker:index/network:Network", change.line()
    assert any(parents[r.urn] == HOST_DIRS for r in after.resources if r.custom), "the check sees host dirs"
    if stack == "h100":
        assert "redis" not in {c.name for c in diff.changes}


@pytest.mark.parametrize("stack", ["prod", "h100"])
def test_exports_name_the_running_release_and_follow_the_pin(
    tmp_path: Path, originals: dict[str, Plan], stack: str
) -> None:
    outputs = originals[stack].outputs
    assert {"imageRepository", "imageTag", "imageRef"} <= set(outputs)
    assert outputs["imageRef"] == f"{outputs['imageRepository']}:{outputs['imageTag']}"
    assert outputs["imageTag"] != PINNED[stack]
    pinned = plan_with(tmp_path, stack, pin(PINNED[stack])).outputs
    assert pinned["imageTag"] == PINNED[stack]
    assert pinned["imageRepository"] == outputs["imageRepository"]
    assert pinned["imageRef"] == f"{outputs['imageRepository']}:{PINNED[stack]}"


def test_pinning_the_release_that_runs_now_replaces_no_container(
    tmp_path: Path, originals: dict[str, Plan]
) -> None:
    current = originals["prod"].outputs["imageTag"]
    diff = diff_plans(originals["prod"].as_json(), plan_with(tmp_path, "prod", pin(current)).as_json())
    certain = [c for c in diff.changes if c.certain]
    assert {c.type for c in certain} == {IMAGE, REMOTE_IMAGE}, [c.line() for c in certain]
    # What is left is only possible until deploy (a new RemoteImage's outputs are unknown in a preview).
    for change in diff.changes:
        if not change.certain:
            assert change.action == "replace" and change.unknown == change.changed, change.line()


@pytest.mark.parametrize("stack", ["prod", "h100"])
def test_clearing_the_tag_gives_back_the_original_plan(
    tmp_path: Path, originals: dict[str, Plan], stack: str
) -> None:
    pinned = plan_with(tmp_path, stack, pin(PINNED[stack]))
    unpinned = plan_with(tmp_path, stack, pin(""))
    assert diff_plans(originals[stack].as_json(), unpinned.as_json()).empty
    assert unpinned.outputs == originals[stack].outputs
    # And going forward again rebuilds: the images come back, the containers move to the built tag.
    forward = diff_plans(pinned.as_json(), unpinned.as_json())
    assert {c.type for c in forward.of("create")} == {IMAGE}
    assert {c.type for c in forward.of("delete")} == {REMOTE_IMAGE}


# ---------------------------------------------------------------- enabled: false
def service_cases() -> list[tuple[str, str]]:
    return [(stack, name) for stack in DOCKER_STACKS for name in enabled(stack)]


def needed_by(stack: str, name: str) -> list[str]:
    return [other for other, svc in enabled(stack).items() if name in (svc.get("dependsOn") or {})]


def disable(name: str) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        config[f"{NS}services"][name]["enabled"] = False

    return edit


def disabled_diff(tmp_path: Path, originals: dict[str, Plan], stack: str, name: str) -> tuple[Plan, Diff]:
    after = plan_with(tmp_path, stack, disable(name))
    return after, diff_plans(originals[stack].as_json(), after.as_json())


def test_every_stack_has_services_to_disable() -> None:
    assert len(service_cases()) >= 9
    assert any(not needed_by(s, n) for s, n in service_cases())
    assert any(needed_by(s, n) for s, n in service_cases())


def before_parent(plan: Plan, urn: str) -> str | None:
    """The parent URN of a planned resource."""
    return next(r.parent for r in plan.resources if r.urn == urn)


@pytest.mark.parametrize(("stack", "name"), service_cases())
def test_enabled_false_removes_one_container_and_keeps_the_host_data(
    tmp_path: Path, originals: dict[str, Plan], stack: str, name: str
) -> None:
    dependents = needed_by(stack, name)
    if dependents:
        config = {k.removeprefix(NS): v for k, v in stack_config(stack).items() if k.startswith(NS)}
        disable(name)({f"{NS}services": config["services"]})
        with pytest.raises(ConfigError) as info:
            validate(config)
        message = str(info.value)
        assert any(message.startswith(f"{NS}services.{d}.dependsOn.{name}: ") for d in dependents), message
        assert "\n" not in message
        return

    before = originals[stack]
    after, diff = disabled_diff(tmp_path, originals, stack, name)
    container = before.named(CONTAINER, name)
    # Exactly one container goes: this service's (its GpuContainer component goes too: not a change), and
    # the reverse proxy with it when no service left rolls with zero downtime (only they need the proxy).
    proxy = [r.urn for r in before.by_type(CONTAINER) if r.name == "proxy"]
    left = (after.outputs.get("rollout") or {}).values()
    gone = [container.urn] + (proxy if not any(r["mode"] == "zero-downtime" for r in left) else [])
    # its GPU test job (services.<name>.test) runs only before it: it goes too
    gone += [r.urn for r in before.by_type(CONTAINER) if r.name == f"{name}-test"]
    assert sorted(c.urn for c in diff.changes if c.type == CONTAINER) == sorted(gone)
    assert container.urn in {c.urn for c in diff.of("delete")}
    assert not (diff.of("create") or diff.of("replace") or diff.of("update")), [
        c.line() for c in diff.changes
    ]
    # The other deletes are only what this service alone needed: its own image build (kept on the host,
    # retainOnDelete) when no enabled service uses it any more, and what ran after its container.
    downstream = dependents_of(before, {container.urn})
    # each removed container's component goes whole (its GPU memory gate, the test job's gate, the proxy's
    # claim), with what depends on them
    own = {r.urn for u in gone for r in before.resources if r.parent == before_parent(before, u)}
    downstream |= own | set(gone) | dependents_of(before, set(gone))
    for change in diff.of("delete"):
        if change.urn == container.urn:
            continue
        if change.type == IMAGE:
            assert change.kept
            # no container left runs it: none names it (an `auto` stack's names are unknown until the
            # host answers) and none waits for its build
            image_name = before.named(IMAGE, change.name).inputs["imageName"]
            if image_name != "[unknown]":
                assert image_name not in {c.inputs.get("image") for c in after.by_type(CONTAINER)}
            assert not any(change.urn in c.options["dependsOn"] for c in after.by_type(CONTAINER))
        else:
            assert change.urn in downstream, change.line()
    # The host's data is untouched: no HostDirectories command changes (they cover disabled services).
    parents = parent_types(before)
    for change in diff.changes:
        assert parents.get(change.urn) not in (HOST_DIRS, GPU_HOST, DOCKER_HOST), change.line()
    host_dirs = [r.urn for r in before.resources if r.custom and parents[r.urn] == HOST_DIRS]
    assert {r.urn for r in after.resources} >= set(host_dirs)
    assert not any(r.name == name and r.type == "gpu-deploy:docker:GpuContainer" for r in after.resources)
