"""The Pulumi SDK internals the offline plan stands on: one module, so that a Pulumi upgrade breaks here.

`python -m stacks plan` runs the real program under the SDK's mocks and records every registration as the
engine would receive it. The SDK's public `pulumi.runtime.set_mocks` is made for unit tests: it takes no
monitor of ours with the registration options, keeps the last run's output tasks, and its program loop
(`run_in_stack`) waits for outputs in quadratic time. What the plan needs beyond the public API is here,
behind small named functions; nothing else in the repository imports a private name or an internal
module of `pulumi`. tests/stacks/test_pulumi_sdk.py has one test per internal, naming it, so that an
upgrade which moves or changes one fails there and nowhere else first.

The internals (module: name, and what the plan does with it):
- pulumi.runtime.mocks: `MockMonitor`, `MockSettings`, `MockEngine` (not exported by pulumi.runtime):
  the base of the plan's recording monitor, and a mocked runtime with that monitor and the plan's logger;
- pulumi.runtime.settings: `SETTINGS` (its `outputs`, `lock`, `monitor`), `set_root_resource` (not
  exported), `_load_monitor_feature_support`: a fresh runtime per plan, the outputs left to wait for;
- pulumi.runtime.stack: `Stack`, `wait_for_rpcs` (not exported) and `Stack._finish`: the root stack
  resource and the RPCs of a run;
- pulumi.runtime.sync_await: `_ensure_event_loop`: the event loop the mock monitor makes in each thread;
- pulumi.runtime.config: `CONFIG` (not exported): the config keys the runtime holds (`configured_keys`);
- pulumi.runtime.rpc: `_special_*_sig`, `UNKNOWN`: the wire encoding, restated in components/core/wire.py
  (standard library, for the policy pack) and checked against the SDK's by the tests.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from google.protobuf import json_format
from pulumi.runtime import config as runtime_config
from pulumi.runtime import mocks, settings
from pulumi.runtime.stack import Stack, wait_for_rpcs
from pulumi.runtime.sync_await import _ensure_event_loop

# The mock monitor: the plan's recording monitor extends its RegisterResource and RegisterResourceOutputs.
MockMonitor = mocks.MockMonitor


def struct_to_dict(message: Any) -> dict[str, Any]:
    """A protobuf Struct (a registration's inputs or outputs) as JSON data; every number is a float."""
    result: dict[str, Any] = json_format.MessageToDict(message) if message is not None else {}
    return result


def thread_event_loop() -> asyncio.AbstractEventLoop:
    """The event loop of this thread, made (and left open) by the SDK when there was none."""
    loop: asyncio.AbstractEventLoop = _ensure_event_loop()  # type: ignore[no-untyped-call]
    return loop


def install_mocked_runtime(
    monitor: mocks.MockMonitor,
    logger: logging.Logger,
    *,
    project: str,
    stack: str,
    preview: bool,
    config: dict[str, str],
    secret_keys: list[str],
) -> None:
    """A fresh mocked runtime: this monitor and logger, the stack's config, no root stack resource yet, and
    none of an earlier run's (maybe failed) output tasks."""
    features = monitor.GetDeploymentInfo(None).supportedFeatures  # type: ignore[no-untyped-call]
    settings.configure(
        mocks.MockSettings(  # type: ignore[no-untyped-call]
            monitor=monitor,
            monitor_features=set(features),
            engine=mocks.MockEngine(logger),
            project=project,
            stack=stack,
            dry_run=preview,
            organization="organization",
            callbacks=None,
        )
    )
    settings.set_root_resource(None)  # type: ignore[arg-type]
    settings.SETTINGS.outputs = set()
    runtime_config.set_all_config(config, secret_keys)


def current_monitor() -> Any:
    """The monitor the runtime registers resources with."""
    return settings.SETTINGS.monitor


async def load_monitor_features() -> None:
    """Ask the monitor what it supports, as the SDK's `run_in_stack` does before the program runs."""
    await settings._load_monitor_feature_support()  # type: ignore[no-untyped-call]


def new_root_stack() -> Stack:
    """The root `pulumi:pulumi:Stack` resource every registration of the program is parented to."""
    return Stack()


def finish_root_stack(stack: Stack) -> None:
    """Register the root stack's outputs (the program's exports), once."""
    stack._finish()


async def wait_for_registrations() -> None:
    """Wait for the RPCs the program started (registrations), not for its outputs."""
    await wait_for_rpcs(await_all_outstanding_tasks=False)


def take_pending_outputs() -> list[asyncio.Task[Any]]:
    """The output tasks the runtime is waiting for, handed over: the runtime forgets them."""
    with settings.SETTINGS.lock:
        outputs = list(settings.SETTINGS.outputs)
        settings.SETTINGS.outputs.clear()
    return outputs


def configured_keys() -> set[str]:
    """Every config key the runtime holds: set in this process, or handed over by the engine."""
    return set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
