"""tests/real/engine_api.py: planned Containers -> Docker Engine API requests, with no engine.

Every Container the shipped Docker stacks plan is mapped (placeholders given substitutes) and its
security, resource, GPU, mount, health check, port and network fields are checked against the plan;
unknown keys, placeholders and bad values are errors; the unix-socket client is checked against a
stand-in engine (a tiny HTTP server on a unix socket) for the requests it sends and the engine's
error it surfaces.
"""

from __future__ import annotations

import copy
import http.server
import io
import json
import re
import shutil
import socketserver
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from components.docker.proxy import main_caddyfile
from stacks.plan import Plan
from tests.plans import ShippedPlan, containers, labels_of
from tests.real.engine_api import (
    EngineCreate,
    EngineError,
    MappingError,
    create_and_start,
    create_body,
    go_duration_ns,
    normalize_capabilities,
    placeholder_paths,
    remove,
)

DOCKER_STACKS = ["prod", "a4000", "edu-gpu", "h100", "dev"]
MIB = 1024 * 1024
STAND_IN_IMAGE = "stand-in:latest"
PLACED_GPU = "GPU-00000000-0000-0000-0000-000000000000"


@pytest.fixture(scope="module")
def plans(shipped_plan: ShippedPlan) -> dict[str, Plan]:
    return {stack: shipped_plan(stack) for stack in DOCKER_STACKS}


def substitute_for(path: str) -> Any:
    """A concrete value of the right shape for a placeholder path of a planned Container."""
    if path.endswith("deviceIds"):  # a count placed on devices by the host's preflight (GPU UUIDs)
        return [PLACED_GPU]
    if path.startswith("envs["):
        return "SUBSTITUTED=1"
    return "substituted"


def mapped(inputs: dict[str, Any], logical_name: str = "app") -> EngineCreate:
    """Map with a substitute for every placeholder, and a stand-in image where the plan has none;
    `logical_name` names a container the plan leaves to pulumi-docker's autonaming (the prod app, a
    zero-downtime copy, whose inputs most tests here edit)."""
    substitutes = {path: substitute_for(path) for path in placeholder_paths(inputs) if path != "image"}
    image = STAND_IN_IMAGE if inputs.get("image", "[unknown]") in ("[unknown]", "[secret]") else None
    return create_body(inputs, image_override=image, substitutes=substitutes, logical_name=logical_name)


def seconds_ns(text: str) -> int:
    """The plan writes whole seconds ("30s"): an independent reading of them, in nanoseconds."""
    match = re.fullmatch(r"(\d+)s", text)
    assert match, f"the plan's durations are whole seconds, got {text!r}"
    return int(match.group(1)) * 1_000_000_000


# ---------------------------------------------------------------------------------------------------
# Every planned Container of every shipped Docker stack


@pytest.mark.parametrize("stack", DOCKER_STACKS)
def test_every_planned_container_maps_to_the_engine_body(plans: dict[str, Plan], stack: str) -> None:
    planned = containers(plans[stack])
    assert planned, f"{stack} plans no Container"
    for name, resource in planned.items():
        inputs = resource.inputs
        create = mapped(inputs, name)
        body, host, where = create.body, create.host_config, f"{stack}/{name}"

        if "name" in inputs:
            assert create.name == inputs["name"] and not create.auto_named, where
        else:  # a zero-downtime copy: pulumi-docker's autonaming, `<logical name>-<7 hex>`
            assert create.auto_named and re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{7}}", create.name), where
        copy = create.auto_named
        proxy = name == "proxy"
        # the stack's reverse proxy is the one container without a service label
        service = "io.gpu-deploy.service" in labels_of(resource)
        assert service is not proxy, f"{where}: a service carries its label, the proxy none"
        planned_image = inputs.get("image", "[unknown]")
        assert body["Image"] == (STAND_IN_IMAGE if planned_image == "[unknown]" else planned_image), where
        # Non-root numeric user, all capabilities dropped, no privilege escalation.
        assert body["User"] == inputs["user"], where
        assert re.fullmatch(r"[1-9]\d*:\d+", body["User"]), where
        assert host["CapDrop"] == ["ALL"], where
        assert host["CapAdd"] is None, where
        assert "no-new-privileges:true" in host["SecurityOpt"], where
        assert host["Privileged"] is False, where
        assert host["Init"] is False, where
        # Memory and shm: MB in the plan, bytes on the wire.
        assert host["Memory"] == inputs["memory"] * MIB, where
        assert host["Memory"] > 0, where
        if "shmSize" in inputs:
            assert host["ShmSize"] == inputs["shmSize"] * MIB, where
        else:
            assert "ShmSize" not in host, where
        # GPU: device requests with the capability list nested once, never the legacy `gpus`.
        requests = inputs.get("deviceRequests") or []
        if requests:
            assert host["DeviceRequests"] == [
                {
                    "Driver": r["driver"],
                    "Count": r.get("count", 0),
                    "DeviceIDs": [PLACED_GPU]
                    if r.get("deviceIds") == "[unknown]"
                    else r.get("deviceIds", []),
                    "Capabilities": [r["capabilities"]],
                    "Options": {},
                }
                for r in requests
            ], where
            for request in host["DeviceRequests"]:
                assert request["Driver"] == "nvidia", where
                assert request["Capabilities"] == [["gpu"]], where
                assert request["Count"] != 0 or request["DeviceIDs"], where
        else:
            assert "DeviceRequests" not in host, where
        # Bind mounts.
        assert host["Mounts"] == [
            {
                "Type": "bind",
                "Source": m["source"],
                "Target": m["target"],
                **({"ReadOnly": True} if m["readOnly"] else {}),
            }
            for m in inputs.get("mounts", [])
        ], where
        # Health check: nanoseconds.
        health = inputs.get("healthcheck")
        if health:
            expected_health = {
                "Test": health["tests"],
                "Interval": seconds_ns(health["interval"]),
                "Timeout": seconds_ns(health["timeout"]),
                "StartPeriod": seconds_ns(health["startPeriod"]),
                "Retries": health["retries"],
            }
            # HealthcheckConfig fields are `json:",omitempty"`: a zero ("0s", 0) is not sent.
            assert body["Healthcheck"] == {k: v for k, v in expected_health.items() if v}, where
            assert body["Healthcheck"]["Interval"] > 0 and body["Healthcheck"]["Timeout"] > 0, where
            assert body["Healthcheck"]["Test"][0] in ("CMD", "CMD-SHELL"), where
        else:
            assert "Healthcheck" not in body, where
        # Ports: ExposedPorts and PortBindings, the provider's 0.0.0.0 where the plan gives no ip.
        ports = inputs.get("ports") or []
        expected_bindings: dict[str, list[dict[str, str]]] = {}
        for p in ports:
            expected_bindings.setdefault(f"{p['internal']}/{p.get('protocol', 'tcp')}", []).append(
                {"HostIp": p.get("ip", "0.0.0.0"), "HostPort": str(p["external"])}
            )
        assert host.get("PortBindings", {}) == expected_bindings, where
        assert body.get("ExposedPorts", {}) == {key: {} for key in expected_bindings}, where
        # Networks: connected after the create, with the service name as alias; not in NetworkingConfig.
        assert body["NetworkingConfig"] == {"EndpointsConfig": None}, where
        assert host["NetworkMode"] == "bridge", where
        assert create.disconnect_bridge, where
        assert create.aliases == {n["name"]: n.get("aliases", []) for n in inputs["networksAdvanced"]}, where
        # the service's alias; a copy has none, the proxy carries its zero-downtime services' aliases
        planned_aliases = inputs["networksAdvanced"][0].get("aliases", [])
        expected_aliases = [] if copy else ([name] if service else planned_aliases)
        assert create.aliases[inputs["networksAdvanced"][0]["name"]] == expected_aliases, where
        if copy:
            assert "PortBindings" not in host and "ExposedPorts" not in body, f"{where}: the proxy's ports"
        # Restart, logs, labels, env, command.
        assert host["RestartPolicy"] == {"Name": inputs["restart"], "MaximumRetryCount": 0}, where
        assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}, (
            where
        )
        substituted_labels = {
            k: ("substituted" if v == "[unknown]" else v) for k, v in labels_of(resource).items()
        }
        assert body["Labels"] == substituted_labels, where
        assert body["Labels"].get("io.gpu-deploy.service") == (name if service else None), where
        assert body.get("Env") == (inputs.get("envs") or None), where  # an empty set: not sent
        assert body.get("Cmd") == (inputs.get("command") or None), where
        # Client behaviour, not Engine API fields.
        for key in ("wait", "waitTimeout", "attach", "logs", "mustRun"):
            assert key not in body and key not in host, where
        assert create.start is True, where
        assert create.wait_healthy is inputs.get("wait", False), where
        assert create.wait_timeout_s == inputs.get("waitTimeout", 60), where
        assert create.attach is inputs.get("attach", False), where
        assert create.capture_logs is (inputs.get("attach", False) and inputs.get("logs", False)), where
        assert create.must_run is inputs["mustRun"], where
        # destroyGraceSeconds: the provider's stop timeout at delete, no Engine API field
        assert "destroyGraceSeconds" not in body and create.destroy_grace_s == inputs.get(
            "destroyGraceSeconds", 0
        )
        if copy or proxy:
            assert create.destroy_grace_s > 0, f"{where}: stopped gracefully, not killed, when replaced"
        # sysctls: HostConfig.Sysctls; uploads: files put in before the start
        assert host.get("Sysctls") == (inputs.get("sysctls") or None), where
        assert [(u.file, u.content.decode(), u.mode) for u in create.uploads] == [
            (u["file"], u["content"], 0o644) for u in inputs.get("uploads", [])
        ], where
        if inputs.get("attach"):  # a one-shot job: no restart, not kept running, not waited healthy
            assert host["RestartPolicy"]["Name"] == "no", where
            assert not create.must_run and not create.wait_healthy, where
        # The body is JSON as it goes on the wire.
        assert json.loads(json.dumps(body)) == body, where


def test_the_prod_app_body_pinned(plans: dict[str, Plan]) -> None:
    app = containers(plans["prod"])["app"]
    create = mapped(app.inputs)
    host = create.host_config
    assert host["Memory"] == 16384 * MIB == 17_179_869_184
    assert host["ShmSize"] == 1024 * MIB
    assert host["DeviceRequests"] == [
        {"Driver": "nvidia", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    # a zero-downtime copy: auto-named, no published port, no alias; the proxy owns both
    assert re.fullmatch(r"app-[0-9a-f]{7}", create.name) and create.name != mapped(app.inputs).name
    assert "PortBindings" not in host and "ExposedPorts" not in create.body
    assert create.destroy_grace_s == 30
    proxy = mapped(containers(plans["prod"])["proxy"].inputs, "proxy")
    assert proxy.name == "prod-proxy" and not proxy.auto_named
    assert proxy.host_config["PortBindings"] == {"3000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "3000"}]}
    assert proxy.body["ExposedPorts"] == {"3000/tcp": {}}
    assert proxy.host_config["Sysctls"] == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert proxy.aliases == {"gpu-deploy-prod": ["app"]}
    (upload,) = proxy.uploads
    assert (upload.file, upload.mode) == ("/etc/caddy/Caddyfile", 0o644)
    assert b"import /tmp/gpu-deploy-routes/*.caddy" in upload.content
    health = create.body["Healthcheck"]
    assert (health["Interval"], health["Timeout"], health["StartPeriod"], health["Retries"]) == (
        30_000_000_000,
        10_000_000_000,
        60_000_000_000,
        3,
    )
    assert create.networks[0].network == "gpu-deploy-prod"
    assert create.networks[0].endpoint_config == {
        "Aliases": [],
        "IPAMConfig": {},
        "MacAddress": "",
        "DriverOpts": {},
        "GwPriority": 0,
    }
    assert (create.wait_healthy, create.wait_timeout_s, create.attach, create.must_run) == (
        True,
        240,
        False,
        True,
    )
    migrate = mapped(containers(plans["prod"])["migrate"].inputs)
    assert (migrate.attach, migrate.capture_logs, migrate.must_run, migrate.wait_healthy) == (
        True,
        True,
        False,
        False,
    )
    assert migrate.body["Cmd"] == ["npx", "prisma", "migrate", "deploy"]


def test_gpu_requests_and_loopback_ports_across_stacks(plans: dict[str, Plan]) -> None:
    gpu_requests = [
        request
        for stack in DOCKER_STACKS
        for resource in containers(plans[stack]).values()
        for request in mapped(resource.inputs).host_config.get("DeviceRequests", [])
    ]
    assert len(gpu_requests) >= 4  # prod app, a4000 backend, edu-gpu asr-api, h100 vision
    for request in gpu_requests:
        # all (-1), a count, or devices: a count the stack placed on devices asks for those devices
        assert request["Count"] == -1 or request["Count"] > 0 or request["DeviceIDs"], request
        assert not (request["Count"] and request["DeviceIDs"]), request
    asr = mapped(containers(plans["edu-gpu"])["asr-api"].inputs)
    assert asr.host_config["PortBindings"] == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "58081"}]}
    vision = containers(plans["h100"])["vision"].inputs
    assert mapped(vision).host_config["Memory"] == vision["memory"] * MIB
    redis = mapped(containers(plans["h100"])["redis"].inputs)
    assert "DeviceRequests" not in redis.host_config
    assert redis.host_config["PortBindings"] == {"6379/tcp": [{"HostIp": "127.0.0.1", "HostPort": "6379"}]}


def test_overrides_supply_the_image_and_rename_the_network(plans: dict[str, Plan]) -> None:
    asr = containers(plans["edu-gpu"])["asr-api"].inputs
    assert asr.get("image", "[unknown]") == "[unknown]"  # the build's output: unknown until deploy
    subs = {p: substitute_for(p) for p in placeholder_paths(asr) if p != "image"}
    with pytest.raises(MappingError, match=r"^image: "):
        create_body(asr, substitutes=subs)
    create = create_body(
        asr, image_override="local/asr:test", network_name_override="test-net", substitutes=subs
    )
    assert create.body["Image"] == "local/asr:test"
    assert create.aliases == {"test-net": ["asr-api"]}
    renamed = create_body(
        asr, image_override="x", network_name_override={"gpu-deploy-edu-gpu": "other"}, substitutes=subs
    )
    assert [n.network for n in renamed.networks] == ["other"]


# ---------------------------------------------------------------------------------------------------
# Strictness


@pytest.fixture
def app_inputs(plans: dict[str, Plan]) -> dict[str, Any]:
    inputs: dict[str, Any] = copy.deepcopy(containers(plans["prod"])["app"].inputs)
    return inputs


def test_an_unknown_top_level_key_is_an_error_naming_it(app_inputs: dict[str, Any]) -> None:
    app_inputs["bogusKey"] = True
    with pytest.raises(MappingError, match=r"^bogusKey: not an input of docker:index/container:Container"):
        mapped(app_inputs)


def test_a_pulumi_input_without_a_rule_is_an_error_naming_it(app_inputs: dict[str, Any]) -> None:
    app_inputs["gpus"] = "all"
    with pytest.raises(MappingError, match=r"^gpus: a pulumi-docker Container input that .* does not map"):
        mapped(app_inputs)
    del app_inputs["gpus"]
    app_inputs["pidMode"] = "host"
    with pytest.raises(MappingError, match=r"^pidMode: "):
        mapped(app_inputs)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda i: i["healthcheck"].update(test=["CMD", "true"]), "healthcheck.test"),  # the TF name
        (
            lambda i: i.update(ports=[{"internal": 3000, "external": 3000, "hostPort": 1}]),
            "ports[0].hostPort",
        ),
        (lambda i: i["mounts"][1].update(consistency="cached"), "mounts[1].consistency"),
        (lambda i: i["deviceRequests"][0].update(gpus=1), "deviceRequests[0].gpus"),
        (lambda i: i["capabilities"].update(drop=["ALL"]), "capabilities.drop"),
        (lambda i: i["networksAdvanced"][0].update(alias="x"), "networksAdvanced[0].alias"),
        (lambda i: i["labels"][0].update(key="x"), "labels[0].key"),
    ],
)
def test_an_unknown_nested_key_is_an_error_naming_its_path(
    app_inputs: dict[str, Any], edit: Any, named: str
) -> None:
    edit(app_inputs)
    with pytest.raises(MappingError, match=rf"^{re.escape(named)}: "):
        mapped(app_inputs)


def test_a_placeholder_without_substitute_is_an_error(app_inputs: dict[str, Any]) -> None:
    assert placeholder_paths(app_inputs) == ["labels[4].value"]
    with pytest.raises(MappingError, match=re.escape("labels[4].value: the plan has [unknown] here")):
        create_body(app_inputs, logical_name="app")
    app_inputs["envs"].append("[secret]")
    with pytest.raises(MappingError, match=re.escape("envs[6]: the plan has [secret] here (a secret)")):
        create_body(app_inputs, logical_name="app", substitutes={"labels[4].value": "ok"})
    create = create_body(
        app_inputs, logical_name="app", substitutes={"labels[4].value": "ok", "envs[6]": "JWT_SECRET=s3cret"}
    )
    assert create.body["Env"][-1] == "JWT_SECRET=s3cret"
    app_inputs["image"] = "[unknown]"
    with pytest.raises(MappingError, match=re.escape("image: the plan has [unknown] here")):
        create_body(app_inputs, logical_name="app", substitutes={"labels[4].value": "ok", "envs[6]": "A=b"})


def test_a_substitute_for_a_path_without_placeholder_is_an_error(app_inputs: dict[str, Any]) -> None:
    with pytest.raises(MappingError, match=re.escape("substitutes: user: no placeholder")):
        create_body(app_inputs, logical_name="app", substitutes={"labels[4].value": "ok", "user": "0:0"})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("memory", "16g", "memory: expected an integer"),
        ("memory", True, "memory: expected an integer"),
        ("memory", -1, "memory: -1: must be >= 0"),
        ("restart", "sometimes", "restart: 'sometimes': must be one of"),
        ("command", ["run", ""], "command[1]: values for command may not be empty"),
        ("envs", "A=b", "envs: expected a list of strings"),
        ("logOpts", {"max-file": 3}, "logOpts.max-file: expected a string"),
        ("wait", "yes", "wait: expected true or false"),
    ],
)
def test_bad_values_are_errors(app_inputs: dict[str, Any], key: str, value: Any, message: str) -> None:
    app_inputs[key] = value
    with pytest.raises(MappingError, match=re.escape(message)):
        mapped(app_inputs)


def test_bad_healthcheck_durations_and_wait_without_healthcheck(app_inputs: dict[str, Any]) -> None:
    app_inputs["healthcheck"]["interval"] = "30"
    with pytest.raises(MappingError, match=re.escape("healthcheck.interval: '30' is not a Go duration")):
        mapped(app_inputs)
    del app_inputs["healthcheck"]
    with pytest.raises(MappingError, match="you have supplied a 'wait' argument, but the container does not"):
        mapped(app_inputs)


def test_duplicate_labels_and_a_single_network_name_for_many_networks(app_inputs: dict[str, Any]) -> None:
    app_inputs["labels"].append({"label": "io.gpu-deploy.stack", "value": "other"})
    duplicate = f"labels[{len(app_inputs['labels']) - 1}].label: 'io.gpu-deploy.stack' appears twice"
    with pytest.raises(MappingError, match=re.escape(duplicate)):
        mapped(app_inputs)
    app_inputs["labels"].pop()
    app_inputs["networksAdvanced"].append({"name": "second", "aliases": ["x"]})
    with pytest.raises(MappingError, match="network_name_override: a single name needs exactly one"):
        create_body(
            app_inputs, logical_name="app", network_name_override="n", substitutes={"labels[4].value": "ok"}
        )


# ---------------------------------------------------------------------------------------------------
# The provider's rules, one by one


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("0s", 0),
        ("30s", 30_000_000_000),
        ("1m30s", 90_000_000_000),
        ("1.5h", 5_400_000_000_000),
        ("500ms", 500_000_000),
        ("2h45m0.5s", 9_900_500_000_000),
        ("1µs", 1_000),
        ("10us", 10_000),
        ("7ns", 7),
        (".5s", 500_000_000),
    ],
)
def test_go_durations(text: str, ns: int) -> None:
    assert go_duration_ns(text) == ns


@pytest.mark.parametrize("text", ["30", "-1s", "abc", "1d", "", "s", "1.s.", "+"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(MappingError):
        go_duration_ns(text)


def test_capabilities_are_normalised_as_the_go_client_does() -> None:
    assert normalize_capabilities(["net_admin", "ALL", "cap_chown", "NET_ADMIN"]) == [
        "ALL",
        "CAP_CHOWN",
        "CAP_NET_ADMIN",
    ]
    assert normalize_capabilities([]) is None
    create = create_body(
        {"name": "c", "image": "i", "capabilities": {"adds": ["sys_nice"], "drops": ["all"]}}
    )
    assert (create.host_config["CapAdd"], create.host_config["CapDrop"]) == (["CAP_SYS_NICE"], ["ALL"])


def test_minimal_inputs_get_the_provider_defaults() -> None:
    create = create_body({"name": "c", "image": "i"})
    assert create.body == {
        "Image": "i",
        "Hostname": "",
        "Domainname": "",
        "Tty": False,
        "OpenStdin": False,
        "HostConfig": {
            "Privileged": False,
            "PublishAllPorts": False,
            "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
            "Runtime": "",
            "Mounts": [],
            "AutoRemove": False,
            "ReadonlyRootfs": False,
            "LogConfig": {"Type": ""},
            "CapAdd": None,
            "CapDrop": None,
            "NetworkMode": "bridge",
            "Init": False,
        },
        "NetworkingConfig": {"EndpointsConfig": None},
    }
    assert (create.start, create.wait_healthy, create.wait_timeout_s, create.attach, create.must_run) == (
        True,
        False,
        60,
        False,
        True,
    )
    assert (create.networks, create.disconnect_bridge, create.remove_volumes, create.destroy_grace_s) == (
        (),
        False,
        True,
        0,
    )


def test_port_device_request_mount_and_security_defaults() -> None:
    create = create_body(
        {
            "name": "c",
            "image": "i",
            "ports": [{"internal": 80}, {"internal": 53, "protocol": "udp", "external": 5353, "ip": "::1"}],
            "deviceRequests": [{}],
            "mounts": [
                {
                    "type": "bind",
                    "source": "/s",
                    "target": "/t",
                    "readOnly": True,
                    "bindOptions": {"propagation": "rslave"},
                },
                {"type": "tmpfs", "target": "/tmp", "tmpfsOptions": {"sizeBytes": 1024, "mode": 0o1777}},
            ],
            "securityOpts": ["systempaths=unconfined", "no-new-privileges:true", "no-new-privileges:true"],
            "memorySwap": -1,
            "envs": ["A=1", "A=1", "B=2"],
        }
    )
    host = create.host_config
    assert host["PortBindings"] == {
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "0"}],
        "53/udp": [{"HostIp": "::1", "HostPort": "5353"}],
    }
    assert create.body["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert host["DeviceRequests"] == [
        {"Driver": "cdi", "Count": 0, "DeviceIDs": [], "Capabilities": [[]], "Options": {}}
    ]
    assert host["Mounts"] == [
        {
            "Type": "bind",
            "Target": "/t",
            "Source": "/s",
            "ReadOnly": True,
            "BindOptions": {"Propagation": "rslave"},
        },
        {"Type": "tmpfs", "Target": "/tmp", "TmpfsOptions": {"SizeBytes": 1024, "Mode": 0o1777}},
    ]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert (host["MaskedPaths"], host["ReadonlyPaths"]) == ([], [])
    assert host["MemorySwap"] == -1
    assert create.body["Env"] == ["A=1", "B=2"]


def test_device_ids_keep_their_order_and_the_capability_list_is_nested_once() -> None:
    create = create_body(
        {
            "name": "c",
            "image": "i",
            "deviceRequests": [
                {"driver": "nvidia", "deviceIds": ["MIG-1", "GPU-2"], "capabilities": ["gpu", "utility"]}
            ],
        }
    )
    assert create.host_config["DeviceRequests"] == [
        {
            "Driver": "nvidia",
            "Count": 0,
            "DeviceIDs": ["MIG-1", "GPU-2"],
            "Capabilities": [["gpu", "utility"]],
            "Options": {},
        }
    ]


# ---------------------------------------------------------------------------------------------------
# The unix-socket client, against a stand-in engine


class _Engine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    requests_seen: ClassVar[list[tuple[str, str, Any]]] = []
    fail_start_with: ClassVar[str | None] = None


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the unix socket has no client address
        pass

    def _answer(self, status: int, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        tar = self.headers.get("Content-Type") == "application/x-tar"
        body = data if tar else json.loads(data) if data else None
        _Engine.requests_seen.append((self.command, self.path, body))
        if self.path == "/version":
            self._answer(200, {"ApiVersion": "1.41"})
        elif self.path.startswith("/v1.41/containers/create"):
            self._answer(201, {"Id": "abc123", "Warnings": []})
        elif self.path == "/v1.41/networks/bridge/disconnect":
            self._answer(500, {"message": "container abc123 is not connected to the network bridge"})
        elif self.path.endswith("/start") and _Engine.fail_start_with:
            self._answer(500, {"message": _Engine.fail_start_with})
        elif self.path.startswith("/containers/gone"):
            self._answer(404, {"message": "No such container: gone"})
        else:
            self._answer(204 if self.command != "GET" else 200, None if self.command != "GET" else {})

    do_GET = do_POST = do_DELETE = do_PUT = _handle


@pytest.fixture
def engine() -> Iterator[str]:
    folder = Path(tempfile.mkdtemp(prefix="eapi", dir="/tmp"))  # short: a unix socket path is <= 107 bytes
    sock = str(folder / "sock")
    server = _Engine(sock, _Handler)
    _Engine.requests_seen = []
    _Engine.fail_start_with = None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sock
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(folder, ignore_errors=True)


def test_create_and_start_sends_the_provider_requests_in_order(
    engine: str, app_inputs: dict[str, Any]
) -> None:
    create = mapped(app_inputs)
    assert create_and_start(engine, create) == "abc123"
    seen = [(method, path) for method, path, _ in _Engine.requests_seen]
    assert re.fullmatch(r"app-[0-9a-f]{7}", create.name), "the zero-downtime copy: auto-named"
    assert seen == [
        ("GET", "/version"),
        ("POST", f"/v1.41/containers/create?name={create.name}"),
        ("POST", "/v1.41/networks/bridge/disconnect"),
        ("POST", "/v1.41/networks/gpu-deploy-prod/connect"),
        ("POST", "/v1.41/containers/abc123/start"),
    ]
    bodies = [body for _, _, body in _Engine.requests_seen]
    assert bodies[1] == create.body
    assert bodies[2] == {"Container": "abc123", "Force": False}
    assert bodies[3]["EndpointConfig"]["Aliases"] == [], "the proxy carries the alias"


def test_uploads_go_in_after_the_networks_and_before_the_start(engine: str, plans: dict[str, Plan]) -> None:
    """FUNCS resourceDockerContainerCreate: NetworkConnect, then for each upload a one-file tar through
    CopyToContainer(id, "/"), then ContainerStart. The prod proxy's main Caddyfile, as the engine gets it."""
    create = mapped(containers(plans["prod"])["proxy"].inputs, "proxy")
    assert create_and_start(engine, create) == "abc123"
    seen = [(method, path) for method, path, _ in _Engine.requests_seen]
    assert seen[1:] == [
        ("POST", "/v1.41/containers/create?name=prod-proxy"),
        ("POST", "/v1.41/networks/bridge/disconnect"),
        ("POST", "/v1.41/networks/gpu-deploy-prod/connect"),
        ("PUT", "/v1.41/containers/abc123/archive?path=%2F"),
        ("POST", "/v1.41/containers/abc123/start"),
    ]
    assert _Engine.requests_seen[1][2]["HostConfig"]["Sysctls"] == {
        "net.ipv4.ip_unprivileged_port_start": "0"
    }
    with tarfile.open(fileobj=io.BytesIO(_Engine.requests_seen[4][2])) as archive:
        (member,) = archive.getmembers()
        extracted = archive.extractfile(member)
        assert extracted is not None
        assert (member.name, member.mode, extracted.read().decode()) == (
            "/etc/caddy/Caddyfile",
            0o644,
            main_caddyfile(),
        )


@pytest.mark.parametrize(
    ("upload", "expected"),
    [
        ({"file": "/a", "content": "x"}, (b"x", 0o644)),
        ({"file": "/a", "content": "x", "executable": True}, (b"x", 0o744)),
        ({"file": "/a", "content": "x", "executable": True, "permissions": "0600"}, (b"x", 0o600)),
        ({"file": "/a", "contentBase64": "AAE="}, (b"\x00\x01", 0o644)),
        ({"file": "/a"}, "one of 'content', 'content_base64', or 'source' must be set"),
        ({"file": "/a", "content": "x", "contentBase64": "eA=="}, "only one of"),
        ({"file": "/a", "content": "x", "permissions": "644"}, "uploads[0].permissions"),
        ({"content": "x"}, "uploads[0].file: required"),
        ({"file": "/a", "content": "x", "mode": "0644"}, "uploads[0].mode"),
    ],
)
def test_upload_rules(upload: dict[str, Any], expected: Any) -> None:
    inputs = {"name": "c", "image": "i", "uploads": [upload]}
    if isinstance(expected, str):
        with pytest.raises(MappingError, match=re.escape(expected)):
            create_body(inputs)
        return
    (mapped_upload,) = create_body(inputs).uploads
    assert (mapped_upload.content, mapped_upload.mode) == expected


def test_a_container_without_name_needs_its_logical_name() -> None:
    with pytest.raises(MappingError, match="pulumi-docker auto-names the container"):
        create_body({"image": "i"})
    names = {create_body({"image": "i"}, logical_name="app").name for _ in range(5)}
    assert all(re.fullmatch(r"app-[0-9a-f]{7}", n) for n in names) and len(names) > 1, (
        "a fresh name each time"
    )
    assert create_body({"name": "fixed", "image": "i"}, logical_name="app").name == "fixed"


def test_the_engines_refusal_is_raised_verbatim(engine: str, app_inputs: dict[str, Any]) -> None:
    refusal = 'could not select device driver "nvidia" with capabilities: [[gpu]]'
    _Engine.fail_start_with = refusal
    with pytest.raises(EngineError) as caught:
        create_and_start(engine, mapped(app_inputs))
    assert caught.value.message == refusal
    assert caught.value.status == 500
    assert refusal in str(caught.value)


def test_remove_ignores_a_container_that_is_gone(engine: str) -> None:
    remove(engine, "gone")
    remove(engine, "abc123", grace_s=5, remove_volumes=False)
    assert _Engine.requests_seen[-2:] == [
        ("POST", "/containers/abc123/stop?t=5", None),
        ("DELETE", "/containers/abc123?force=1&v=0", None),
    ]
