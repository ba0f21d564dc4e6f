"""stacks/pulumi_sdk.py and components/core/wire.py: every Pulumi SDK internal the offline tools rely on.

One test per private symbol or internal module name: that it still exists, and that it still does what
the plan relies on. A Pulumi upgrade that moves or changes one fails here, with a message naming it,
before any plan test fails in some less obvious way.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import threading
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pulumi
import pytest
from google.protobuf import struct_pb2
from pulumi.runtime import MockCallArgs, MockResourceArgs, Mocks
from pulumi.runtime.proto import engine_pb2, resource_pb2

from components.core import wire
from components.core.vocabulary import SECRET_PLACEHOLDER, UNKNOWN_PLACEHOLDER

PULUMI = f"pulumi {version('pulumi')}"


def internal(module: str, name: str) -> Any:
    """`module.name` from the SDK, or a failure naming it and where the repository relies on it."""
    try:
        found: Any = importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as err:
        pytest.fail(f"{module}.{name} is gone in {PULUMI} ({err}): stacks/pulumi_sdk.py relies on it")
    return found


def sdk() -> Any:
    return importlib.import_module("stacks.pulumi_sdk")


class _Echo(Mocks):
    """A resource's state is its inputs."""

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        return {}, None


def recording_monitor() -> Any:
    class Recording(sdk().MockMonitor):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(_Echo())
            self.registered: list[str] = []
            self.outputs: list[dict[str, Any]] = []

        def RegisterResource(self, request: Any) -> Any:
            self.registered.append(request.type)
            return super().RegisterResource(request)

        def RegisterResourceOutputs(self, request: Any) -> Any:
            self.outputs.append(sdk().struct_to_dict(request.outputs))
            return super().RegisterResourceOutputs(request)

    return Recording()


def install(monitor: Any, logger: logging.Logger | None = None, config: dict[str, str] | None = None) -> None:
    config = config or {}
    sdk().install_mocked_runtime(
        monitor,
        logger or logging.getLogger("test-pulumi-sdk"),
        project="proj",
        stack="stk",
        preview=True,
        config=config,
        secret_keys=[key for key in config if "secret" in key],
    )


def run(coroutine: Any) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


# ---------------------------------------------------------------- pulumi.runtime.mocks
def test_mock_monitor_registers_and_hands_the_inputs_to_the_mocks() -> None:
    monitor_class = internal("pulumi.runtime.mocks", "MockMonitor")
    for method in ("RegisterResource", "RegisterResourceOutputs", "GetDeploymentInfo"):
        assert callable(getattr(monitor_class, method, None)), f"MockMonitor.{method} is gone in {PULUMI}"
    assert sdk().MockMonitor is monitor_class
    monitor = recording_monitor()
    install(monitor)
    inputs = struct_pb2.Struct()
    inputs.update({"size": 2})
    request = resource_pb2.RegisterResourceRequest(
        type="test:index:Thing", name="t", custom=True, object=inputs
    )
    response = monitor.RegisterResource(request)
    assert response.urn == "urn:pulumi:stk::proj::test:index:Thing::t"
    assert response.id == "t-id"
    assert sdk().struct_to_dict(response.object) == {"size": 2.0}  # a Struct's numbers are floats
    assert monitor.registered == ["test:index:Thing"]


def test_mock_settings_and_engine_make_the_runtime_the_plan_runs_in() -> None:
    internal("pulumi.runtime.mocks", "MockSettings")
    internal("pulumi.runtime.mocks", "MockEngine")
    monitor = recording_monitor()
    heard: list[str] = []

    class Heard(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            heard.append(record.getMessage())

    logger = logging.getLogger("test-pulumi-sdk-engine")
    logger.handlers = [Heard()]
    install(monitor, logger)
    settings = internal("pulumi.runtime.settings", "SETTINGS")
    assert settings.monitor is monitor and sdk().current_monitor() is monitor
    assert settings.monitor_features == set(monitor.GetDeploymentInfo(None).supportedFeatures)
    assert (pulumi.get_project(), pulumi.get_stack(), pulumi.runtime.is_dry_run()) == ("proj", "stk", True)
    settings.engine.Log(engine_pb2.LogRequest(severity=engine_pb2.WARNING, message="careful"))
    assert heard == ["careful"]


# ---------------------------------------------------------------- pulumi.runtime.settings
def test_settings_outputs_are_the_tasks_the_runtime_waits_for() -> None:
    settings = internal("pulumi.runtime.settings", "SETTINGS")
    assert hasattr(settings, "lock") and hasattr(settings, "outputs"), f"SETTINGS.lock/outputs: {PULUMI}"
    settings.outputs = {"an earlier run's task"}
    install(recording_monitor())
    assert settings.outputs == set(), "a fresh runtime starts with no output to wait for"

    async def scenario() -> list[Any]:
        output = pulumi.Output.from_input(1).apply(lambda x: x + 1)
        pending = sdk().take_pending_outputs()
        assert sdk().take_pending_outputs() == [], "the tasks were handed over"
        await asyncio.gather(*pending)
        return [pending, await output.future()]

    pending, value = run(scenario())
    assert pending and all(isinstance(t, asyncio.Future) for t in pending), "an Output registers its task"
    assert value == 2


def test_set_root_resource_forgets_the_last_runs_stack() -> None:
    set_root = internal("pulumi.runtime.settings", "set_root_resource")
    set_root(object())
    install(recording_monitor())
    assert pulumi.runtime.get_root_resource() is None


def test_load_monitor_feature_support_asks_the_monitor() -> None:
    load = internal("pulumi.runtime.settings", "_load_monitor_feature_support")
    assert inspect.iscoroutinefunction(load)
    monitor = recording_monitor()
    install(monitor)
    settings = internal("pulumi.runtime.settings", "SETTINGS")
    settings.monitor_features = set()

    async def scenario() -> set[int]:
        await sdk().load_monitor_features()
        return set(settings.monitor_features)  # a context variable: as the program's task sees it

    assert run(scenario()) == set(monitor.GetDeploymentInfo(None).supportedFeatures)


# ---------------------------------------------------------------- pulumi.runtime.stack
def test_stack_and_its_finish_register_the_exports_once() -> None:
    internal("pulumi.runtime.stack", "Stack")
    internal("pulumi.runtime.stack", "Stack._finish")
    monitor = recording_monitor()
    install(monitor)

    async def scenario() -> None:
        await sdk().load_monitor_features()
        stack = sdk().new_root_stack()
        pulumi.export("answer", 42)
        sdk().finish_root_stack(stack)
        sdk().finish_root_stack(stack)
        await sdk().wait_for_registrations()
        await asyncio.gather(*sdk().take_pending_outputs())
        await sdk().wait_for_registrations()

    run(scenario())
    assert monitor.registered == ["pulumi:pulumi:Stack"]
    assert monitor.outputs == [{"answer": 42.0}]


def test_wait_for_rpcs_can_leave_the_outputs_alone() -> None:
    wait = internal("pulumi.runtime.stack", "wait_for_rpcs")
    assert "await_all_outstanding_tasks" in inspect.signature(wait).parameters
    install(recording_monitor())

    async def scenario() -> bool:
        never = asyncio.get_running_loop().create_future()
        settings = internal("pulumi.runtime.settings", "SETTINGS")
        settings.outputs.add(never)  # an output that never settles
        await asyncio.wait_for(sdk().wait_for_registrations(), timeout=10)
        left = never in settings.outputs
        settings.outputs.discard(never)
        return left

    assert run(scenario()), "waiting for the registrations must not wait for (or take) the outputs"


# ---------------------------------------------------------------- pulumi.runtime.sync_await
def test_ensure_event_loop_makes_one_loop_per_thread() -> None:
    internal("pulumi.runtime.sync_await", "_ensure_event_loop")
    found: list[asyncio.AbstractEventLoop] = []

    def in_thread() -> None:
        first = sdk().thread_event_loop()
        found.extend([first, sdk().thread_event_loop(), asyncio.get_event_loop()])
        first.close()

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert found[0] is found[1] is found[2], "the same loop, set as the thread's own"


# ---------------------------------------------------------------- pulumi.runtime.config
def test_config_holds_the_keys_the_runtime_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    config = internal("pulumi.runtime.config", "CONFIG")
    monkeypatch.setenv("PULUMI_CONFIG", '{"proj:from-engine": "1"}')
    install(recording_monitor(), config={"proj:here": "x", "proj:secret": "y"})
    assert set(config.get()) == {"proj:here", "proj:secret"}
    assert sdk().configured_keys() == {"proj:here", "proj:secret", "proj:from-engine"}


# ---------------------------------------------------------------- pulumi.runtime.rpc: the wire encoding
SIGNATURES = {
    "_special_sig_key": wire.SIG_KEY,
    "_special_secret_sig": wire.SECRET_SIG,
    "_special_resource_sig": wire.RESOURCE_SIG,
    "_special_output_value_sig": wire.OUTPUT_SIG,
    "_special_asset_sig": wire.ASSET_SIG,
    "_special_archive_sig": wire.ARCHIVE_SIG,
    "UNKNOWN": wire.UNKNOWN,
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_components_core_wire_restates_the_sdks_signature(name: str) -> None:
    assert internal("pulumi.runtime.rpc", name) == SIGNATURES[name], (
        f"pulumi.runtime.rpc.{name} changed in {PULUMI}: update components/core/wire.py"
    )


def test_the_sdks_encodings_decode_as_the_plan_shows_them(tmp_path: Path) -> None:
    """Values the SDK serialises for the engine, read back by components.core.wire."""
    serialize = internal("pulumi.runtime.rpc", "serialize_property")
    file = tmp_path / "f.txt"
    file.write_text("content")
    install(recording_monitor())

    async def encoded() -> Any:
        value = {
            "secret": pulumi.Output.secret("s3cret"),
            "asset": pulumi.FileAsset(str(file)),
            "count": 3,
            "nested": [{"ratio": 0.5}],
        }
        return await serialize(value, [], None, keep_output_values=False)

    wired = run(encoded())
    assert wired["secret"] == {wire.SIG_KEY: wire.SECRET_SIG, "value": "s3cret"}
    message = struct_pb2.Struct()
    message.update(wired)  # as the monitor receives it
    plain = wire.decode(sdk().struct_to_dict(message), wire.PLAN)
    assert plain["count"] == 3 and isinstance(plain["count"], int)
    assert plain["secret"] == SECRET_PLACEHOLDER
    assert plain["asset"]["path"] == str(file)
    assert len(plain["asset"]["hash"]) == 64
    assert plain["nested"] == [{"ratio": 0.5}]
    assert wire.decode(wire.UNKNOWN, wire.PLAN) == UNKNOWN_PLACEHOLDER
