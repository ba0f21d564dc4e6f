"""The offline plan: the real program run under Pulumi mocks, with no CLI, no network and no host.

It reads `Pulumi.yaml` and `Pulumi.<stack>.yaml` (or `--config-file`) the way the CLI does, hands the
config to the runtime, runs `__main__.py`, and records every resource registration exactly as the
engine would receive it: type, name, parent, inputs (camelCase wire names, secrets as "[secret]",
values not known until deploy time as "[unknown]") and options (dependsOn, protect,
deleteBeforeReplace, retainOnDelete, provider; `engine` keeps more for the tests, outside --json).
The text plan also gets, outside --json, the order in which the program constructed each resource
(`engine["order"]`: the registrations themselves arrive in no fixed order) and each component's registered
outputs (`engine["outputs"]`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import runpy
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import MockCallArgs, MockResourceArgs, Mocks

from components.core import wire
from components.core.vocabulary import SECRET_PLACEHOLDER
from stacks import pulumi_sdk as sdk
from stacks.config import STACK_FILE_VARIABLE, secure_values
from stacks.stackfile import read_project, read_stack

PROJECT_DIR = Path(__file__).resolve().parent.parent


class PlanError(Exception):
    """The plan could not be made (missing files, a program failure): exit code 1."""


@dataclass
class PlannedResource:
    urn: str
    type: str
    name: str
    parent: str | None
    custom: bool
    inputs: dict[str, Any]
    options: dict[str, Any]
    engine: dict[str, Any] = field(default_factory=dict)  # more options the engine gets; not in --json

    def as_json(self) -> dict[str, Any]:
        return {
            "urn": self.urn,
            "type": self.type,
            "name": self.name,
            "parent": self.parent,
            "custom": self.custom,
            "inputs": self.inputs,
            "options": self.options,
        }


@dataclass
class Plan:
    project: str
    stack: str
    resources: list[PlannedResource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)  # secure config path -> digest of its ciphertext

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "project": self.project,
            "stack": self.stack,
            "resources": [r.as_json() for r in self.resources],
            "outputs": self.outputs,
        }
        if self.secrets:  # only where the stack has `secure:` values: the diff sees a rotation
            doc["secrets"] = dict(sorted(self.secrets.items()))
        return doc

    def by_type(self, type_: str) -> list[PlannedResource]:
        return [r for r in self.resources if r.type == type_]

    def named(self, type_: str, name: str) -> PlannedResource:
        for resource in self.resources:
            if resource.type == type_ and resource.name == name:
                return resource
        raise KeyError(f"no {type_} named {name}")


# ---------------------------------------------------------------- what the engine receives
def plain(value: Any) -> Any:
    """A wire value (as the engine receives it) -> JSON: secrets "[secret]", unknowns "[unknown]"."""
    return wire.decode(value, wire.PLAN)


def mock_id(name: str) -> str:
    """The id the plan's mocks give a resource named `name` (the same on every run, unlike a real one)."""
    return f"{name}-id"


def _provider_urn(reference: str) -> str | None:
    return reference.split("::" + reference.rsplit("::", 1)[-1], maxsplit=1)[0] if reference else None


class RecordingMonitor(sdk.MockMonitor):
    """The mock monitor, also keeping each registration's options and the stack's outputs."""

    def __init__(self, plan: Plan) -> None:
        self.plan_mocks = _PlanMocks()
        super().__init__(self.plan_mocks)
        self.plan = plan
        self.stack_urn = ""
        self.thread_loops: set[asyncio.AbstractEventLoop] = set()
        self.component_outputs: dict[str, Any] = {}  # urn -> a component's registered outputs

    def RegisterResource(self, request: Any) -> Any:
        # The SDK leaves unknown inputs out of what it hands the mocks: tell them which ones they were.
        self.plan_mocks.unknown_inputs = {
            key
            for key, value in request.object.fields.items()
            if value.WhichOneof("kind") == "string_value" and value.string_value == wire.UNKNOWN
        }
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        self.thread_loops.add(sdk.thread_event_loop())
        dependencies = set(request.dependencies)
        for deps in request.propertyDependencies.values():
            dependencies.update(deps.urns)
        if request.type == "pulumi:pulumi:Stack":
            self.stack_urn = response.urn
        self.plan.resources.append(
            PlannedResource(
                urn=response.urn,
                type=request.type,
                name=request.name,
                parent=request.parent or None,
                custom=bool(request.custom),
                inputs=plain(sdk.struct_to_dict(request.object)),
                options={
                    "dependsOn": sorted(dependencies),
                    "protect": bool(request.protect),
                    "deleteBeforeReplace": bool(request.deleteBeforeReplace),
                    "retainOnDelete": bool(request.retainOnDelete),
                    "provider": _provider_urn(request.provider),
                    "ignoreChanges": sorted(request.ignoreChanges),
                    "propertyDependencies": {
                        key: sorted(deps.urns) for key, deps in sorted(request.propertyDependencies.items())
                    },
                },
                engine={
                    # whether deleteBeforeReplace was set at all (an explicit false overrides the provider's
                    # default: a zero-downtime copy), and replaceOnChanges
                    "deleteBeforeReplaceDefined": bool(request.deleteBeforeReplaceDefined),
                    "replaceOnChanges": sorted(request.replaceOnChanges),
                },
            )
        )
        return response

    def RegisterResourceOutputs(self, request: Any) -> Any:
        if request.urn == self.stack_urn:
            self.plan.outputs = plain(sdk.struct_to_dict(request.outputs))
        else:
            self.component_outputs[request.urn] = plain(sdk.struct_to_dict(request.outputs))
        return super().RegisterResourceOutputs(request)  # type: ignore[no-untyped-call]


# Outputs only a real deployment knows: they stay unknown in the plan instead of being made up.
DEPLOY_TIME_OUTPUTS: dict[str, tuple[str, ...]] = {
    "command:remote:Command": ("stdout", "stderr"),
    "command:local:Command": ("stdout", "stderr"),
    "docker:index/container:Container": ("exitCode",),
}
# Inputs a provider generates when not given: unknown in the plan too (pulumi-docker auto-names a container
# without `name`, provider/resources.go SetAutonaming: a zero-downtime copy).
GENERATED_WHEN_ABSENT: dict[str, tuple[str, ...]] = {"docker:index/container:Container": ("name",)}


class _PlanMocks(Mocks):
    """No cloud: a resource's state is what it was given; nothing else is invented.

    An input that was unknown stays unknown in the state. The SDK leaves unknown inputs out of what it
    hands the mocks, and resolves a missing output as a known None in a plan of `pulumi up`, which would
    show an `auto` stack's image as None and drop the containers' dependency on the build.
    """

    def __init__(self) -> None:
        self.unknown_inputs: set[str] = set()

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
        state = dict(args.inputs)
        for key in self.unknown_inputs:
            state[key] = wire.UNKNOWN
        for output in DEPLOY_TIME_OUTPUTS.get(args.typ, ()):
            state[output] = wire.UNKNOWN
        for output in GENERATED_WHEN_ABSENT.get(args.typ, ()):
            state.setdefault(output, wire.UNKNOWN)
        return mock_id(args.name), state

    def call(self, args: MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        return {}, None


# ---------------------------------------------------------------- config files
def _secure_to_placeholder(value: Any) -> tuple[Any, bool]:
    """`{secure: ...}` -> "[secret]" anywhere inside a value; reports whether any was found."""
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            return SECRET_PLACEHOLDER, True
        found = False
        result = {}
        for key, item in value.items():
            result[key], inner = _secure_to_placeholder(item)
            found = found or inner
        return result, found
    if isinstance(value, list):
        items = [_secure_to_placeholder(v) for v in value]
        return [v for v, _ in items], any(s for _, s in items)
    return value, False


def _wire(value: Any) -> str:
    """How the CLI hands a config value to the program: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value)


def read_stack_config(
    project_dir: Path, stack: str, config_file: Path | None = None
) -> tuple[str, dict[str, str], list[str]]:
    """(project name, config as the CLI passes it, secret keys) from Pulumi.yaml + the stack file."""
    project_file = project_dir / "Pulumi.yaml"
    if not project_file.is_file():
        raise PlanError(f"{project_file} not found")
    project_doc = read_project(project_file) or {}
    project = str(project_doc.get("name", ""))
    stack_file = config_file or project_dir / f"Pulumi.{stack}.yaml"
    if not stack_file.is_file():
        raise PlanError(f"{stack_file} not found (stacks: {', '.join(list_stacks(project_dir))})")
    stack_doc = read_stack(stack_file) or {}
    if not isinstance(stack_doc, dict):
        raise PlanError(f"{stack_file} is not a YAML mapping")

    values: dict[str, Any] = {}
    for key, spec in (project_doc.get("config") or {}).items():
        if isinstance(spec, dict) and ("default" in spec or "value" in spec):
            values[key if ":" in key else f"{project}:{key}"] = spec.get("value", spec.get("default"))
    for key, value in (stack_doc.get("config") or {}).items():
        values[key if ":" in key else f"{project}:{key}"] = value

    config: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in values.items():
        masked, secret = _secure_to_placeholder(value)
        config[key] = _wire(masked)
        if secret:
            secret_keys.append(key)
    return project, config, secret_keys


def list_stacks(project_dir: Path) -> list[str]:
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in project_dir.glob("Pulumi.*.yaml"))


# ---------------------------------------------------------------- running the program
class _Collect(logging.Handler):
    def __init__(self, plan: Plan) -> None:
        super().__init__(logging.WARNING)
        self.plan = plan

    def emit(self, record: logging.LogRecord) -> None:
        self.plan.warnings.append(record.getMessage())


@contextlib.contextmanager
def _in_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    added = str(path) not in sys.path
    if added:
        sys.path.insert(0, str(path))
    try:
        yield
    finally:
        os.chdir(before)
        if added:
            sys.path.remove(str(path))


def configure_runtime(
    project: str, stack: str, config: dict[str, str], secret_keys: list[str], plan: Plan, *, preview: bool
) -> None:
    """A fresh mocked runtime for one run: settings, config, no root stack yet."""
    logger = logging.getLogger(f"gpu-deploy.plan.{id(plan)}")
    logger.propagate = False
    logger.handlers = [_Collect(plan)]
    sdk.install_mocked_runtime(
        RecordingMonitor(plan),
        logger,
        project=project,
        stack=stack,
        preview=preview,
        config=config,
        secret_keys=secret_keys,
    )


def prepare(
    stack: str, *, project_dir: Path = PROJECT_DIR, config_file: Path | None = None, preview: bool = False
) -> Plan:
    """Set up the mocked runtime for `stack` and return the (empty) plan it will fill."""
    project, config, secret_keys = read_stack_config(project_dir, stack, config_file)
    # the program reads where the `secure:` values are from the stack file itself (stacks.config)
    os.environ[STACK_FILE_VARIABLE] = str(config_file or project_dir / f"Pulumi.{stack}.yaml")
    plan = Plan(
        project=project,
        stack=stack,
        secrets=secret_digests(config_file or project_dir / f"Pulumi.{stack}.yaml"),
    )
    configure_runtime(project, stack, config, secret_keys, plan, preview=preview)
    return plan


def secret_digests(stack_file: Path) -> dict[str, str]:
    """Each `secure:` value of the stack file: its config path and a short digest of its ciphertext, so the
    offline diff can say a secret was rotated without ever seeing it (a plan shows it as "[secret]")."""
    found = secure_values(read_stack(stack_file) or {}) or {}
    return {path: hashlib.sha256(text.encode()).hexdigest()[:12] for path, text in found.items()}


def _record_construction(order: dict[tuple[str, str], int]) -> Any:
    """A stack transformation that changes nothing and notes each resource's (type, name) in the order the
    program constructs it: the deploy order the program is written in, the same on every run."""

    def record(args: pulumi.ResourceTransformationArgs) -> None:
        order.setdefault((args.type_, args.name), len(order))

    return record


async def _run_in_stack(program: Path, order: dict[tuple[str, str], int] | None = None) -> None:
    """What `pulumi.runtime.run_in_stack` does, waiting for outputs in linear time.

    The SDK's own loop calls `asyncio.wait(FIRST_COMPLETED)` over every pending output each time one
    settles, which is quadratic in the number of outputs (a Docker container has about 80): a plan of
    200 services took a minute. Here every registration is an RPC awaited in turn, and the outputs left
    over are gathered in waves, so the cost grows with the number of resources.
    """
    await sdk.load_monitor_features()
    stack = sdk.new_root_stack()
    if order is not None:
        pulumi.runtime.register_stack_transformation(_record_construction(order))
    try:
        runpy.run_path(str(program), run_name="__main__")
    except BaseException:
        # Like the SDK: let what was registered finish before the program's error is reported.
        sdk.finish_root_stack(stack)
        with contextlib.suppress(Exception):
            await _settle(raise_errors=False)
        raise
    sdk.finish_root_stack(stack)
    await _settle(raise_errors=True)


async def _settle(*, raise_errors: bool) -> None:
    """Wait until no RPC, output or other task of the program is left, in waves (linear time)."""
    while True:
        await sdk.wait_for_registrations()
        outputs = sdk.take_pending_outputs()
        waiting = {*outputs, asyncio.current_task()}
        others = [t for t in asyncio.all_tasks() if t not in waiting]
        if not outputs and not others:
            return
        results = await asyncio.gather(*outputs, *others, return_exceptions=True)
        failures = [r for r in results[: len(outputs)] if isinstance(r, BaseException)]
        if raise_errors and failures:
            raise failures[0]


def execute(plan: Plan, *, project_dir: Path = PROJECT_DIR) -> Plan:
    """Run __main__.py in the prepared runtime; the plan fills as the program registers resources."""
    program = project_dir / "__main__.py"
    order: dict[tuple[str, str], int] = {}
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        with _in_directory(project_dir):
            loop.run_until_complete(_run_in_stack(program, order))
    finally:
        # The mock monitor runs in executor threads and makes each an event loop it never closes; left to
        # the garbage collector at interpreter exit, one sometimes fails on already-closed sockets.
        loop.run_until_complete(loop.shutdown_default_executor())
        monitor = sdk.current_monitor()
        for thread_loop in getattr(monitor, "thread_loops", ()):
            if thread_loop is not loop and not thread_loop.is_running():
                thread_loop.close()
        loop.close()
        asyncio.set_event_loop(None)
    # Registrations arrive in whatever order the event loop ran them; the plan is stable.
    plan.resources.sort(key=lambda r: r.urn)
    outputs = getattr(sdk.current_monitor(), "component_outputs", {})
    for resource in plan.resources:
        resource.engine["order"] = order.get((resource.type, resource.name), -1)  # -1: the root stack
        if resource.urn in outputs:
            resource.engine["outputs"] = outputs[resource.urn]
    return plan


def make_plan(
    stack: str, *, project_dir: Path = PROJECT_DIR, config_file: Path | None = None, preview: bool = False
) -> Plan:
    return execute(
        prepare(stack, project_dir=project_dir, config_file=config_file, preview=preview),
        project_dir=project_dir,
    )
