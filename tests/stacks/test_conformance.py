"""Conformance of the planned resources with the providers' own schemas and Check-time rules.

Every Docker-target stack is planned with the real program (stacks/plan.py); each resource whose type
is in tests/upstream/ is checked against the provider's schema there (unknown inputs, required inputs,
JSON types, enums, nested object types through `$ref`). The rules a provider applies when it checks or
creates a resource, which no schema states, are restated below as functions, each citing where it
lives upstream (repo@tag:path), and applied to the plans; each rule also has negative cases so the
checks are known to fail on a wrong resource.

"[secret]" and "[unknown]" (components.core.values placeholders) stand for any value of any type.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import posixpath
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pulumi_command
import pulumi_docker
import pytest
from pulumi._types import input_type_py_to_pulumi_names, is_input_type

import stacks.plan
from components.core import wire
from components.core.vocabulary import SECRET_PLACEHOLDER, UNKNOWN_PLACEHOLDER
from stacks.plan import PROJECT_DIR, Plan, PlannedResource, make_plan
from tests.plans import (
    CONTAINER,
    DOCKER_PROVIDER,
    IMAGE,
    LOCAL_COMMAND,
    REMOTE_COMMAND,
    REMOTE_IMAGE,
    plan_with,
    shipped_plan,
    stack_config,
)

UPSTREAM = Path(__file__).resolve().parents[1] / "upstream"
COMMAND_SCHEMA_FILE = UPSTREAM / "pulumi-command-1.2.1.schema.json"
DOCKER_SCHEMA_FILE = UPSTREAM / "pulumi-docker-5.1.0.schema.json"
COPY_TO_REMOTE = "command:remote:CopyToRemote"
DOCKER_STACKS = ["prod", "a4000", "edu-gpu", "h100", "dev"]
SSH_STACKS = ["prod", "a4000", "edu-gpu", "h100"]
PLACEHOLDERS = {SECRET_PLACEHOLDER, UNKNOWN_PLACEHOLDER}
NS = "gpu-deploy:"

# The installed pulumi-docker is 5.2.0, which has no tag in the mirrored repository: its SDK has these
# inputs beyond the v5.1.0 schema (the tests/upstream README says why the extract is v5.1.0).
DOCKER_5_2_ADDITIONS = {
    "docker:index/container:Container": {"deviceCgroupRules"},
    "docker:index/ContainerUpload:ContainerUpload": {"owner", "group"},
}


def placeholder(value: Any) -> bool:
    return isinstance(value, str) and value in PLACEHOLDERS


# ---------------------------------------------------------------- the schema checker
@dataclass(frozen=True)
class Schema:
    doc: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.doc["name"])

    @property
    def types(self) -> dict[str, Any]:
        return dict(self.doc.get("types", {}))

    def resource(self, type_: str) -> dict[str, Any] | None:
        """inputProperties and requiredInputs of a resource type, or of this package's provider."""
        if type_ == f"pulumi:providers:{self.name}":
            return dict(self.doc["provider"]) if "provider" in self.doc else None
        found = self.doc["resources"].get(type_)
        return dict(found) if found is not None else None


@functools.cache
def schemas() -> tuple[Schema, ...]:
    return tuple(Schema(json.loads(path.read_text())) for path in (COMMAND_SCHEMA_FILE, DOCKER_SCHEMA_FILE))


def schema_for(type_: str) -> tuple[Schema, dict[str, Any]] | None:
    for schema in schemas():
        spec = schema.resource(type_)
        if spec is not None:
            return schema, spec
    return None


def _is_plain_string(spec: Mapping[str, Any]) -> bool:
    return spec.get("type") == "string" and "enum" not in spec


def check_value(value: Any, spec: Mapping[str, Any], path: str, schema: Schema) -> list[str]:
    """Problems with `value` against a schema property spec (JSON type, enum, items, $ref objects)."""
    if placeholder(value):
        return []
    ref = spec.get("$ref")
    if isinstance(ref, str):
        if ref == "pulumi.json#/Any":
            return []
        if ref in ("pulumi.json#/Asset", "pulumi.json#/Archive", "pulumi.json#/AssetOrArchive"):
            # stacks/plan.py keeps an asset's or archive's path, text or uri (an in-memory archive is {})
            if not isinstance(value, dict) or set(value) - {"path", "text", "uri", "hash"}:
                return [f"{path}: expected an asset or archive, got {value!r}"]
            return []
        if not ref.startswith("#/types/"):
            return [f"{path}: unsupported $ref {ref}"]
        target = schema.types.get(ref[len("#/types/") :])
        if target is None:
            return [f"{path}: $ref {ref} is not in the extract"]
        return check_value(value, target, path, schema)
    problems: list[str] = []
    if "enum" in spec:
        allowed = [e.get("value") if isinstance(e, dict) else e for e in spec["enum"]]
        if value not in allowed:
            problems.append(f"{path}: {value!r} is not one of {allowed}")
    typ = spec.get("type")
    if typ == "string":
        ok = isinstance(value, str)
    elif typ == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif typ == "boolean":
        ok = isinstance(value, bool)
    elif typ == "array":
        ok = isinstance(value, list)
        if ok:
            for i, item in enumerate(value):
                problems += check_value(item, spec.get("items", {}), f"{path}[{i}]", schema)
    elif typ == "object":
        ok = isinstance(value, dict)
        if ok and "properties" in spec:
            problems += check_object(value, spec["properties"], spec.get("required", []), path, schema)
        elif ok and "additionalProperties" in spec:
            for key, item in value.items():
                problems += check_value(item, spec["additionalProperties"], f"{path}.{key}", schema)
    else:
        return [f"{path}: the schema gives no type ({dict(spec)})"]
    if not ok:
        problems.insert(0, f"{path}: expected {typ}, got {type(value).__name__} {value!r}")
    return problems


def check_object(
    obj: Mapping[str, Any], properties: Mapping[str, Any], required: list[str], path: str, schema: Schema
) -> list[str]:
    problems = [f"{path}.{key}: not an input in the schema" for key in sorted(set(obj) - set(properties))]
    problems += [f"{path}.{key}: required, missing" for key in required if key not in obj]
    for key in sorted(set(obj) & set(properties)):
        problems += check_value(obj[key], properties[key], f"{path}.{key}", schema)
    return problems


def check_resource(resource: Mapping[str, Any]) -> list[str]:
    """Problems with one planned resource ({"type", "name", "inputs"}) against its provider's schema."""
    type_ = resource["type"]
    found = schema_for(type_)
    if found is None:
        return [f"{type_}: not in the schema extracts"]
    schema, spec = found
    inputs = dict(resource["inputs"])
    properties = spec.get("inputProperties", {})
    where = f"{type_} {resource['name']}"
    problems: list[str] = []
    if type_.startswith("pulumi:providers:"):
        # The generated SDKs send every non-string provider input as JSON text
        # (pulumi/pulumi-docker@v5.1.0:sdk/python/pulumi_docker/provider.py: `.apply(pulumi.runtime.to_json)`).
        for key, value in inputs.items():
            if (
                key in properties
                and isinstance(value, str)
                and not placeholder(value)
                and not _is_plain_string(properties[key])
            ):
                try:
                    inputs[key] = json.loads(value)
                except json.JSONDecodeError:
                    problems.append(f"{where}.{key}: provider inputs that are not strings travel as JSON")
    return problems + check_object(inputs, properties, spec.get("requiredInputs", []), where, schema)


# ---------------------------------------------------------------- plans
def planned(stack: str) -> Plan:
    return shipped_plan(stack)


def checked_resources(plan: Plan) -> list[PlannedResource]:
    return [r for r in plan.resources if r.custom and schema_for(r.type) is not None]


def as_dict(resource: PlannedResource) -> dict[str, Any]:
    return {"type": resource.type, "name": resource.name, "inputs": resource.inputs}


# ---------------------------------------------------------------- schema conformance of the plans
@pytest.mark.parametrize("stack", DOCKER_STACKS)
def test_every_planned_resource_conforms_to_its_provider_schema(stack: str) -> None:
    plan = planned(stack)
    resources = checked_resources(plan)
    assert resources, f"{stack}: nothing of the extracts' types was planned"
    problems = [p for r in resources for p in check_resource(as_dict(r))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("stack", DOCKER_STACKS)
def test_every_provider_resource_type_is_covered_by_an_extract(stack: str) -> None:
    """A new resource type (or a provider of another package) must get its schema extract first."""
    uncovered = sorted(
        {
            r.type
            for r in planned(stack).resources
            if r.custom
            and r.type.split(":")[0] in ("docker", "command", "pulumi")
            and r.type != "pulumi:pulumi:Stack"
        }
        - {r.type for r in checked_resources(planned(stack))}
    )
    assert not uncovered, f"no schema extract for {uncovered}"


def _sdk_input_types() -> Iterator[tuple[str, type]]:
    """(type token, the installed SDK's args class) for every object with inputs in the extracts."""
    for schema, package in zip(schemas(), (pulumi_command, pulumi_docker), strict=True):

        def args_class(token: str, package: Any = package) -> type:
            module = token.split(":")[1]
            owner = package if module.startswith("index") else getattr(package, module)
            cls: type = getattr(owner, f"{token.rsplit(':', 1)[1]}Args")
            return cls

        for token in schema.doc["resources"]:
            yield token, args_class(token)
        for token, spec in schema.types.items():
            if "properties" in spec and not token.startswith(f"{schema.name}:config/"):
                yield token, args_class(token)
        if "provider" in schema.doc:
            yield f"pulumi:providers:{schema.name}", package.ProviderArgs


def test_the_extracts_match_the_installed_sdks() -> None:
    """The extracts are of the installed versions: the installed SDKs accept exactly these inputs."""
    mismatches = []
    count = 0
    for token, args_class in _sdk_input_types():
        count += 1
        assert is_input_type(args_class), args_class
        sdk = set(input_type_py_to_pulumi_names(args_class).values())
        found = schema_for(token)
        spec = found[1] if found else next(s.types[token] for s in schemas() if token in s.types)
        extract = set(spec.get("inputProperties", spec.get("properties", {})))
        extra = sdk - extract - DOCKER_5_2_ADDITIONS.get(token, set())
        if extra or extract - sdk:
            mismatches.append(f"{token}: SDK only {sorted(extra)}, extract only {sorted(extract - sdk)}")
    assert count > 20
    assert not mismatches, "\n".join(mismatches)


# ---------------------------------------------------------------- negative cases for the schema checker
GOOD_CONTAINER: dict[str, Any] = {
    "type": CONTAINER,
    "name": "app",
    "inputs": {
        "image": "app:tag",
        "memory": 1024,
        "restart": "unless-stopped",
        "mounts": [{"type": "bind", "source": "/srv/x", "target": "/data", "readOnly": False}],
        "deviceRequests": [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}],
        "envs": [SECRET_PLACEHOLDER, "A=1"],
        "logOpts": {"max-size": "10m"},
    },
}


def _edited(resource: dict[str, Any], edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(resource))
    edit(copy["inputs"])
    return copy


def test_the_schema_checker_accepts_a_good_container() -> None:
    assert check_resource(GOOD_CONTAINER) == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda i: i.update(gpus2="all"), "gpus2: not an input"),
        (lambda i: i.pop("image"), "image: required, missing"),
        (lambda i: i.update(memory="1g"), "memory: expected integer"),
        (lambda i: i.update(memory=True), "memory: expected integer"),
        (lambda i: i["mounts"][0].pop("target"), "mounts[0].target: required, missing"),
        (lambda i: i["mounts"][0].update(readonly=True), "mounts[0].readonly: not an input"),
        (lambda i: i["deviceRequests"][0].update(count="all"), "deviceRequests[0].count: expected integer"),
        (lambda i: i.update(logOpts={"max-size": 10}), "logOpts.max-size: expected string"),
        (lambda i: i.update(envs="A=1"), "envs: expected array"),
        (lambda i: i.update(healthcheck={"test": ["CMD", "true"]}), "healthcheck.test: not an input"),
    ],
)
def test_the_schema_checker_refuses_a_wrong_container(
    edit: Callable[[dict[str, Any]], None], expected: str
) -> None:
    problems = check_resource(_edited(GOOD_CONTAINER, edit))
    assert any(expected in p for p in problems), problems


def test_the_schema_checker_checks_enums_refs_and_provider_json() -> None:
    command: dict[str, Any] = {
        "type": REMOTE_COMMAND,
        "name": "c",
        "inputs": {"connection": {"host": "h", "hostKey": "k", "proxy": {"host": "b"}}, "logging": "stdout"},
    }
    assert check_resource(command) == []
    command["inputs"]["logging"] = "everything"
    command["inputs"]["connection"]["proxy"]["hostkey"] = "k"
    command["inputs"]["connection"]["port"] = "22"
    problems = check_resource(command)
    assert any("logging: 'everything' is not one of" in p for p in problems), problems
    assert any("connection.proxy.hostkey: not an input" in p for p in problems), problems
    assert any("connection.port: expected number" in p for p in problems), problems
    assert check_resource({"type": REMOTE_COMMAND, "name": "c", "inputs": {}}) == [
        f"{REMOTE_COMMAND} c.connection: required, missing"
    ]
    image = {
        "type": IMAGE,
        "name": "i",
        "inputs": {"imageName": "x", "build": {"builderVersion": "BuildKit"}},
    }
    assert any("builderVersion: 'BuildKit' is not one of" in p for p in check_resource(image))
    provider: dict[str, Any] = {
        "type": DOCKER_PROVIDER,
        "name": "p",
        "inputs": {"host": "ssh://h", "sshOpts": '["-o", "A=b"]'},
    }
    assert check_resource(provider) == []
    provider["inputs"]["sshOpts"] = "-o A=b"
    assert any("travel as JSON" in p for p in check_resource(provider))
    provider["inputs"]["sshOpts"] = '"-o A=b"'
    assert any("sshOpts: expected array" in p for p in check_resource(provider))
    assert check_resource({"type": "docker:index/volume:Volume", "name": "v", "inputs": {}}) == [
        "docker:index/volume:Volume: not in the schema extracts"
    ]


# ---------------------------------------------------------------- Container rules the schema does not state
_RESTART = re.compile(r"^(no|on-failure|always|unless-stopped)$")
_MOUNT_TYPE = re.compile(r"^(bind|volume|tmpfs)$")
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$|^0$")


def container_rule_failures(inputs: Mapping[str, Any]) -> list[str]:
    """terraform-provider-docker@v4.5.0:internal/provider/resource_docker_container.go validators, and
    resource_docker_container_funcs.go create/read behaviour (bridged by pulumi-docker@v5.1.0)."""
    problems = []
    restart = inputs.get("restart", "no")
    if not placeholder(restart) and not _RESTART.match(str(restart)):
        problems.append(f"restart {restart!r} does not match ^(no|on-failure|always|unless-stopped)$")
    for key in ("memory", "shmSize"):  # both in MB; validateIntegerGeqThan(0)
        value = inputs.get(key)
        if isinstance(value, int) and value < 0:
            problems.append(f"{key} {value} < 0")
    for i, m in enumerate(inputs.get("mounts", [])):
        if (
            isinstance(m, dict)
            and not placeholder(m.get("type"))
            and not _MOUNT_TYPE.match(str(m.get("type")))
        ):
            problems.append(f"mounts[{i}].type {m.get('type')!r} is not bind, volume or tmpfs")
    health = inputs.get("healthcheck")
    if isinstance(health, dict):
        for key in ("interval", "timeout", "startPeriod", "startInterval"):  # validateDurationGeq0
            value = health.get(key)
            if isinstance(value, str) and not placeholder(value) and not _DURATION.match(value):
                problems.append(f"healthcheck.{key} {value!r} is not a Go duration")
    for i, request in enumerate(inputs.get("deviceRequests", [])):
        # `driver` defaults to "cdi": a GPU request without it asks the CDI registry, not the NVIDIA runtime
        if (
            isinstance(request, dict)
            and "driver" not in request
            and ("count" in request or "capabilities" in request)
        ):
            problems.append(f"deviceRequests[{i}] has no driver: it would default to cdi")
    if inputs.get("wait") is True and not (isinstance(health, dict) and health.get("tests")):
        # create: "you have supplied a 'wait' argument, but the container does not have a healthcheck defined"
        problems.append("wait without a healthcheck fails the create")
    if inputs.get("attach") is True and inputs.get("mustRun", True) is True:
        # read sets must_run false in state once the job has exited: a diff, and a restart, on every update
        problems.append("attach (a job that exits) with mustRun true restarts the job on every update")
    if inputs.get("logs") is True and inputs.get("attach") is not True:
        problems.append("logs needs attach")
    return problems


@pytest.mark.parametrize("stack", DOCKER_STACKS)
def test_containers_pass_the_terraform_provider_validators(stack: str) -> None:
    problems = [
        f"{c.name}: {p}" for c in planned(stack).by_type(CONTAINER) for p in container_rule_failures(c.inputs)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ({"restart": "on_failure"}, "restart"),
        ({"memory": -1}, "memory -1 < 0"),
        ({"mounts": [{"type": "bnd", "target": "/x"}]}, "mounts[0].type"),
        ({"healthcheck": {"tests": ["CMD", "true"], "interval": "30"}}, "healthcheck.interval"),
        ({"deviceRequests": [{"count": -1, "capabilities": ["gpu"]}]}, "default to cdi"),
        ({"wait": True}, "wait without a healthcheck"),
        ({"attach": True}, "mustRun true"),
        ({"logs": True}, "logs needs attach"),
    ],
)
def test_the_container_rules_refuse_wrong_inputs(inputs: dict[str, Any], expected: str) -> None:
    assert any(expected in p for p in container_rule_failures(inputs)), container_rule_failures(inputs)


def test_the_container_rules_accept_good_inputs() -> None:
    good = {
        **GOOD_CONTAINER["inputs"],
        "healthcheck": {"tests": ["CMD", "true"], "interval": "30s", "startPeriod": "1m30s"},
        "wait": True,
    }
    assert container_rule_failures(good) == []
    assert container_rule_failures({"attach": True, "mustRun": False, "logs": True}) == []


# ---------------------------------------------------------------- CopyToRemote
def copy_source_failures(inputs: Mapping[str, Any], cwd: Path) -> list[str]:
    """pulumi/pulumi-command@v1.2.1:provider/pkg/provider/remote/copyController.go `Check` (and `Create`:
    the source is opened with os.Open in the provider, whose working directory is the program's)."""
    source = inputs.get("source")
    if placeholder(source):
        return []
    if not isinstance(source, dict) or not source:
        # stacks/plan.py keeps only path/text/uri: an in-memory AssetArchive plans as {}
        return ["archive must be a path to a file or directory (an in-memory AssetArchive has no path)"]
    if "text" in source:
        return []  # a StringAsset: accepted since v1.2.0
    if "path" not in source:
        return ["asset must be a path-based file asset or a text asset"]
    path = Path(str(source["path"]))
    if not (path if path.is_absolute() else cwd / path).exists():
        return [f"the local source {source['path']} does not exist"]
    return []


def landing_paths(source_path: str, remote_path: str, cwd: Path) -> list[str]:
    """Where the files land on the host on the first copy (remotePath absent); the same when it is an
    existing directory for a directory source. pulumi/pulumi-command@v1.2.1:
    provider/pkg/provider/remote/copyController.go `sftpCopy`: a directory without a trailing slash goes
    to remotePath/<its base name>, with one its contents go into remotePath; a file is written AT remotePath."""
    local = Path(source_path) if Path(source_path).is_absolute() else cwd / source_path
    if not local.is_dir():
        return [remote_path]
    base = (
        remote_path
        if source_path.endswith("/")
        else posixpath.join(remote_path, PurePosixPath(source_path).name)
    )
    return sorted(
        posixpath.join(base, p.relative_to(local).as_posix()) for p in local.rglob("*") if p.is_file()
    )


def _users_of(plan: Plan, copy: PlannedResource) -> list[PlannedResource]:
    return [
        r
        for r in plan.by_type(REMOTE_COMMAND)
        if copy.urn in r.options["dependsOn"] or f"{copy.name}-id" in (r.inputs.get("triggers") or [])
    ]


def _paths_under(command: str, root: str) -> list[str]:
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    return [w for w in words if w == root or w.startswith(root.rstrip("/") + "/")]


@pytest.mark.parametrize("stack", SSH_STACKS)
def test_copy_to_remote_sources_are_path_backed(stack: str) -> None:
    """pulumi-command's Check refuses an in-memory archive: the upload needs a FileAsset, a StringAsset or
    a FileArchive of an existing directory."""
    copies = planned(stack).by_type(COPY_TO_REMOTE)
    assert copies
    problems = [f"{c.name}: {p}" for c in copies for p in copy_source_failures(c.inputs, PROJECT_DIR)]
    assert not problems, "\n".join(problems)


def landing_failures(plan: Plan, cwd: Path) -> list[str]:
    """Every file a copy puts on the host is named by a command that waits for it (as a whole path, or as
    its directory and its name), and every path under a copied directory that such a command names is one
    the copy puts there."""
    problems = []
    for copy in plan.by_type(COPY_TO_REMOTE):
        source, remote = copy.inputs.get("source"), str(copy.inputs["remotePath"])
        users = _users_of(plan, copy)
        if not users:
            problems.append(f"{copy.name}: no remote command waits for the copy")
        if not isinstance(source, dict) or "path" not in source or placeholder(remote):
            continue  # not path-backed: copy_source_failures says so
        if any(placeholder(str(u.inputs.get("create", ""))) for u in users):
            continue  # a command line known only at deploy (a smoke test in an auto-named copy) may name it
        landed = landing_paths(str(source["path"]), remote, cwd)
        text = "\n".join(
            str(u.inputs.get("create", "")) + "\n" + str(u.inputs.get("stdin", "")) for u in users
        )
        for path in landed:
            directory, name = posixpath.split(path)
            if path not in text and not (directory and directory in text and name in text):
                problems.append(
                    f"{copy.name} puts {path} on the host, but no command that waits for it names it"
                )
        if len(landed) > 1 or landed != [remote]:  # a directory was copied: remotePath is a directory
            for user in users:
                for path in _paths_under(str(user.inputs.get("create", "")), remote):
                    if path not in landed and path.rstrip("/") != remote.rstrip("/"):
                        problems.append(
                            f"{user.name} names {path}, but {copy.name} puts its files at {landed}"
                        )
    return problems


@pytest.mark.parametrize("stack", SSH_STACKS)
def test_copied_files_are_where_the_remote_commands_look_for_them(stack: str) -> None:
    plan = planned(stack)
    assert plan.by_type(COPY_TO_REMOTE)
    problems = landing_failures(plan, PROJECT_DIR)
    assert not problems, "\n".join(problems)


def test_the_copy_rules_refuse_wrong_sources(tmp_path: Path) -> None:
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "preflight.py").write_text("")
    (tmp_path / "smoke.py").write_text("")
    assert copy_source_failures({"source": {"path": "bundle"}}, tmp_path) == []
    assert copy_source_failures({"source": {"path": "smoke.py"}}, tmp_path) == []
    assert copy_source_failures({"source": {"text": "x"}}, tmp_path) == []
    assert "in-memory AssetArchive" in copy_source_failures({"source": {}}, tmp_path)[0]
    assert "path-based" in copy_source_failures({"source": {"uri": "https://x/y"}}, tmp_path)[0]
    assert "does not exist" in copy_source_failures({"source": {"path": "missing"}}, tmp_path)[0]
    # the directory itself, or (trailing slash) its contents; a file lands at remotePath itself
    assert landing_paths("bundle", "/var/tmp/p", tmp_path) == ["/var/tmp/p/bundle/preflight.py"]
    assert landing_paths("bundle/", "/var/tmp/p", tmp_path) == ["/var/tmp/p/preflight.py"]
    assert landing_paths("smoke.py", "/var/tmp/s/smoke.py", tmp_path) == ["/var/tmp/s/smoke.py"]
    assert _paths_under("python3 /var/tmp/p/preflight.py --json", "/var/tmp/p") == ["/var/tmp/p/preflight.py"]

    def plan_of(source: str, remote: str, create: str) -> Plan:
        plan = Plan(project="p", stack="s")
        copy = PlannedResource(
            "urn:copy",
            COPY_TO_REMOTE,
            "files",
            None,
            True,
            {"source": {"path": source}, "remotePath": remote},
            {},
        )
        run = PlannedResource(
            "urn:run", REMOTE_COMMAND, "run", None, True, {"create": create}, {"dependsOn": ["urn:copy"]}
        )
        plan.resources = [copy, run]
        return plan

    run = "python3 /var/tmp/p/preflight.py --json"
    assert landing_failures(plan_of("bundle/", "/var/tmp/p", run), tmp_path) == []
    assert landing_failures(plan_of("smoke.py", "/var/tmp/p/preflight.py", run), tmp_path) == []
    assert (
        landing_failures(
            plan_of("smoke.py", ".x/s/smoke.py", "env DIR=.x/s FILES=smoke.py bash -s"), tmp_path
        )
        == []
    )
    trap = landing_failures(plan_of("bundle", "/var/tmp/p", run), tmp_path)  # lands in /var/tmp/p/bundle/
    assert any("/var/tmp/p/bundle/preflight.py" in p and "names it" in p for p in trap), trap
    assert any("run names /var/tmp/p/preflight.py" in p for p in trap), trap
    orphan = plan_of("smoke.py", "/var/tmp/s/smoke.py", run)
    orphan.resources[1].options["dependsOn"] = []
    assert "no remote command waits" in landing_failures(orphan, tmp_path)[0]


# ---------------------------------------------------------------- Image
def _has_domain(name: str) -> bool:
    first, sep, _ = name.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def push_destination(image_name: str) -> str:
    """The registry host `ImagePush(imageName)` goes to (docker reference normalisation)."""
    return image_name.partition("/")[0] if _has_domain(image_name) else "docker.io"


def registry_hostname(server: str) -> str:
    """github.com/docker/cli credentials.ConvertToHostname: scheme and path dropped."""
    return re.sub(r"^[a-z]+://", "", server).split("/", 1)[0]


def image_check_failures(inputs: Mapping[str, Any], cwd: Path) -> list[str]:
    """pulumi/pulumi-docker@v5.1.0:provider/provider.go `Check` with provider/image.go
    `marshalBuildAndApplyDefaults`: the Dockerfile is stat'ed relative to the provider's working
    directory (the program's), not to the context; the context is walked to hash it; and a pushed image
    (or one with cacheFrom) needs a fully qualified name unless registry.server is given."""
    problems = []
    build = inputs.get("build") or {}
    context = build.get("context", ".")
    dockerfile = build.get("dockerfile")
    if dockerfile is None and not placeholder(context):
        dockerfile = posixpath.join(str(context), "Dockerfile")
    if not placeholder(dockerfile) and dockerfile is not None:
        path = Path(str(dockerfile))
        if not (path if path.is_absolute() else cwd / path).exists():
            if path.is_absolute():
                problems.append(f"expected a relative Dockerfile path; got {dockerfile!r} instead")
            elif not placeholder(context) and (cwd / str(context) / path).exists():
                problems.append(
                    f"could not open dockerfile at relative path {dockerfile!r}. "
                    f"Try setting `dockerfile` to {posixpath.join(str(context), str(dockerfile))!r}"
                )
            else:
                problems.append(f"could not open dockerfile at relative path {dockerfile!r}")
        elif not placeholder(context) and not (cwd / str(context)).is_dir():
            problems.append(f"unable to hash build context: {context} is not a directory")
    name = inputs.get("imageName")
    cache = (build.get("cacheFrom") or {}).get("images") or []
    if (cache or not inputs.get("skipPush", False)) and isinstance(name, str) and not placeholder(name):
        server = (inputs.get("registry") or {}).get("server")
        if not server and not _has_domain(name):
            problems.append(f"{name!r}: This resource requires all image names to be fully qualified")
    return problems


def registry_naming_failures(inputs: Mapping[str, Any]) -> list[str]:
    """pulumi/pulumi-docker@v5.1.0:provider/image.go `dockerBuild`: the credentials are for
    registry.server, but the image is pushed as `imageName` (ImagePush(ctx, img.Name, ...)): a name
    without that server prefix goes to Docker Hub."""
    name, server = inputs.get("imageName"), (inputs.get("registry") or {}).get("server")
    if inputs.get("skipPush", False) or not server or placeholder(name) or placeholder(server):
        return []
    if push_destination(str(name)) != registry_hostname(str(server)):
        return [f"{name} is pushed to {push_destination(str(name))}, the credentials are for {server}"]
    return []


def _materialise_sources(stack: str, root: Path) -> Path:
    """A temp copy of the layout the stack's config describes (contexts and Dockerfiles relative to the
    project directory), for stacks whose application sources are not checked out here."""
    config = stack_config(stack)
    image = config.get(f"{NS}image", {})
    contexts = {str(image.get("context", "."))}
    dockerfiles = {str(image.get("dockerfile", "Dockerfile"))}
    for svc in config.get(f"{NS}services", {}).values():
        build = svc.get("build") or {}
        contexts.add(str(build.get("context", image.get("context", "."))))
        dockerfiles.add(str(build.get("dockerfile", image.get("dockerfile", "Dockerfile"))))
        if (svc.get("test") or {}).get("dockerfile"):  # a test image's own Dockerfile (docker_tests.py)
            dockerfiles.add(str(svc["test"]["dockerfile"]))
    project = root / "project"
    project.mkdir(parents=True, exist_ok=True)
    for context in contexts:
        for dockerfile in dockerfiles:
            path = project / context / dockerfile
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("FROM scratch\n")
    return project


@pytest.mark.parametrize("stack", DOCKER_STACKS)
def test_image_builds_pass_the_providers_check(stack: str, tmp_path: Path) -> None:
    images = planned(stack).by_type(IMAGE)
    assert images, f"{stack}: no image is built (a pinned tag?)"
    problems = []
    for image in images:
        build = image.inputs.get("build") or {}
        here = (
            not placeholder(build.get("context")) and (PROJECT_DIR / str(build.get("context", "."))).is_dir()
        )
        # where the sources are checked out, the real tree; elsewhere, the layout the config describes
        cwd = PROJECT_DIR if here else _materialise_sources(stack, tmp_path)
        problems += [f"{image.name}: {p}" for p in image_check_failures(image.inputs, cwd)]
        problems += [f"{image.name}: {p}" for p in registry_naming_failures(image.inputs)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("stack", ["prod", "h100"])
def test_a_registry_gets_the_images_it_has_credentials_for(stack: str, tmp_path: Path) -> None:
    def add_registry(config: dict[str, Any]) -> None:
        config[f"{NS}image"]["registry"] = {
            "server": "registry.example.com",
            "username": "ci",
            "password": "x",
        }

    plan = plan_with(tmp_path, stack, add_registry)
    problems = [f"{i.name}: {p}" for i in plan.by_type(IMAGE) for p in registry_naming_failures(i.inputs)]
    problems += [
        f"{i.name}: {p}"
        for i in plan.by_type(IMAGE)
        for p in image_check_failures(i.inputs, PROJECT_DIR)
        if "fully qualified" in p
    ]
    assert not problems, "\n".join(problems)


def remote_image_auth_failures(plan: Plan) -> list[str]:
    """terraform-provider-docker@v4.5.0:internal/provider/resource_docker_image_funcs.go `pullImage`: a
    RemoteImage that is not on the host is pulled with the provider's registryAuth entry for the
    registry in its name (provider.go `providerSetToRegistryAuth`, keyed by host name), else anonymously."""
    problems = []
    for remote in plan.by_type(REMOTE_IMAGE):
        name = remote.inputs.get("name")
        if placeholder(name) or not _has_domain(str(name)):
            continue
        provider = next(
            (p for p in plan.by_type(DOCKER_PROVIDER) if p.urn == remote.options["provider"]), None
        )
        raw = (provider.inputs if provider else {}).get("registryAuth", "[]")
        auths = json.loads(raw) if isinstance(raw, str) and not placeholder(raw) else raw
        hosts = {registry_hostname(str(a.get("address", ""))) for a in auths or [] if isinstance(a, dict)}
        if push_destination(str(name)) not in hosts and not placeholder(raw):
            problems.append(
                f"{remote.name}: {name} would be pulled without credentials (registryAuth: {sorted(hosts)})"
            )
    return problems


def test_a_pinned_image_from_a_registry_is_pulled_with_its_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def pin_from_registry(config: dict[str, Any]) -> None:
        image = config[f"{NS}image"]
        image["registry"] = {"server": "registry.example.com", "username": "ci", "password": "x"}
        image["repository"] = "registry.example.com/team/english-listening-trainer"
        image["tag"] = "p40-0123456789ab"

    monkeypatch.setattr(stacks.plan, "plain", _unmasking_plain)  # registryAuth holds a secret: show it
    plan = plan_with(tmp_path, "prod", pin_from_registry)
    assert plan.by_type(REMOTE_IMAGE)
    assert not any(placeholder(p.inputs.get("registryAuth")) for p in plan.by_type(DOCKER_PROVIDER))
    problems = remote_image_auth_failures(plan)
    assert not problems, "\n".join(problems)


def test_the_image_rules_refuse_wrong_builds(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text("FROM scratch\n")
    good = {
        "imageName": "app:1",
        "skipPush": True,
        "build": {"context": "app", "dockerfile": "app/Dockerfile"},
    }
    assert image_check_failures(good, tmp_path) == []
    assert (
        image_check_failures({"imageName": "app:1", "skipPush": True, "build": {"context": "app"}}, tmp_path)
        == []
    )
    relative_to_context = {**good, "build": {"context": "app", "dockerfile": "Dockerfile"}}
    assert (
        "Try setting `dockerfile` to 'app/Dockerfile'"
        in image_check_failures(relative_to_context, tmp_path)[0]
    )
    missing_context = {**good, "build": {"context": "gone", "dockerfile": "app/Dockerfile"}}
    assert "unable to hash build context" in image_check_failures(missing_context, tmp_path)[0]
    absolute = {**good, "build": {"context": "app", "dockerfile": "/nowhere/Dockerfile"}}
    assert "expected a relative Dockerfile path" in image_check_failures(absolute, tmp_path)[0]
    pushed = {**good, "skipPush": False}
    assert "fully qualified" in image_check_failures(pushed, tmp_path)[0]
    with_registry = {**pushed, "registry": {"server": "registry.example.com"}}
    assert image_check_failures(with_registry, tmp_path) == []  # Check passes: the push is what goes wrong
    assert "pushed to docker.io" in registry_naming_failures(with_registry)[0]
    assert registry_naming_failures({**with_registry, "imageName": "registry.example.com/app:1"}) == []
    assert registry_naming_failures({**with_registry, "skipPush": True}) == []
    assert push_destination("localhost/app:1") == "localhost"
    assert registry_hostname("https://registry.example.com:5000/v2/") == "registry.example.com:5000"


def test_the_pull_auth_rule_refuses_a_provider_without_credentials() -> None:
    plan = Plan(project="p", stack="s")
    plan.resources = [
        PlannedResource("urn:prov", DOCKER_PROVIDER, "p", None, True, {"host": "ssh://h"}, {}),
        PlannedResource(
            "urn:img",
            REMOTE_IMAGE,
            "i",
            None,
            True,
            {"name": "registry.example.com/a:1"},
            {"provider": "urn:prov"},
        ),
    ]
    assert "without credentials" in remote_image_auth_failures(plan)[0]
    plan.resources[0].inputs["registryAuth"] = json.dumps([{"address": "https://registry.example.com"}])
    assert remote_image_auth_failures(plan) == []


# ---------------------------------------------------------------- SSH connections
def host_key_type(text: str) -> str:
    """golang.org/x/crypto@v0.48.0:ssh/keys.go `ParseAuthorizedKey` (used by
    pulumi/pulumi-command@v1.2.1:provider/pkg/provider/remote/connection.go `SSHConfig`): the first key
    line, `TYPE BASE64 [comment]` (or with one leading options field); the type comes from the key data."""
    for line in text.splitlines():
        fields = line.strip().split()
        if not fields or fields[0].startswith("#"):
            continue
        for blob in fields[1:3]:
            try:
                data = base64.b64decode(blob, validate=True)
            except (binascii.Error, ValueError):
                continue
            size = int.from_bytes(data[:4], "big")
            if 0 < size <= len(data) - 4:
                return data[4 : 4 + size].decode("ascii", "replace")
    raise ValueError("ssh: no key found")


def connection_failures(connection: Mapping[str, Any], where: str = "connection") -> list[str]:
    """pulumi/pulumi-command@v1.2.1:provider/pkg/provider/remote/connection.go `SSHConfig`: without hostKey
    the server is not verified at all (InsecureIgnoreHostKey); with it, HostKeyAlgorithms is exactly
    [key.Type()], so an RSA pin offers only SHA-1 `ssh-rsa`, which OpenSSH >= 8.8 refuses. The proxy
    (bastion) has its own SSHConfig."""
    problems = []
    key = connection.get("hostKey")
    if key is None:
        problems.append(f"{where}: no hostKey: the host is not verified (InsecureIgnoreHostKey)")
    elif not placeholder(key):
        try:
            key_type = host_key_type(str(key))
        except ValueError as err:
            problems.append(f"{where}.hostKey: failed to parse host key: {err}")
        else:
            if key_type in ("ssh-rsa", "ssh-dss"):
                problems.append(
                    f"{where}.hostKey: a {key_type} pin offers only {key_type}, refused by OpenSSH >= 8.8"
                )
    proxy = connection.get("proxy")
    if isinstance(proxy, dict):
        problems += connection_failures(proxy, f"{where}.proxy")
    return problems


_UNMASKED = replace(wire.PLAN, reveal_secrets=True)


def _unmasking_plain(value: Any) -> Any:
    """stacks.plan.plain, but a secret shows its value: the connection as the provider receives it."""
    return wire.decode(value, _UNMASKED)


def _with_bastion_and_key(config: dict[str, Any]) -> None:
    target = config[f"{NS}target"]
    target["sshKey"] = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----"
    target["bastion"] = {"host": "bastion.example.com", "user": "jump", "hostKey": target["hostKey"]}


@pytest.mark.parametrize("variant", ["as shipped", "with a bastion and a key"])
@pytest.mark.parametrize("stack", SSH_STACKS)
def test_remote_connections_conform_and_pin_the_host_key(
    stack: str, variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan shows a connection as "[secret]" (the SDK marks `connection` secret); planned again with
    secrets unmasked, every remote command's and copy's connection is checked against the schema and
    connection.go's rules."""
    masked = planned(stack).by_type(REMOTE_COMMAND) + planned(stack).by_type(COPY_TO_REMOTE)
    assert masked
    assert all(r.inputs["connection"] == SECRET_PLACEHOLDER for r in masked)
    monkeypatch.setattr(stacks.plan, "plain", _unmasking_plain)
    plan = make_plan(stack) if variant == "as shipped" else plan_with(tmp_path, stack, _with_bastion_and_key)
    users = plan.by_type(REMOTE_COMMAND) + plan.by_type(COPY_TO_REMOTE)
    connections = {json.dumps(r.inputs["connection"], sort_keys=True) for r in users}
    assert len(connections) == 1, "every remote step should reach the host the same way"
    connection = json.loads(connections.pop())
    problems = check_resource({"type": REMOTE_COMMAND, "name": "c", "inputs": {"connection": connection}})
    problems += connection_failures(connection)
    assert not problems, "\n".join(problems)
    pinned = stack_config(stack)[f"{NS}target"]["hostKey"].split()[1]
    assert pinned in connection["hostKey"]
    if variant != "as shipped":
        assert connection["privateKey"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert connection["proxy"]["host"] == "bastion.example.com"
        assert pinned in connection["proxy"]["hostKey"]


def test_the_connection_rules_refuse_unpinned_and_rsa_host_keys() -> None:
    ed25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPP40HostKeyPlaceholderReplaceMe000000000000"
    rsa = "ssh-rsa " + base64.b64encode(b"\x00\x00\x00\x07ssh-rsa" + b"\x00" * 16).decode()
    assert connection_failures({"host": "h", "hostKey": ed25519}) == []
    assert connection_failures({"host": "h", "hostKey": "gpu1 " + ed25519}) == []  # an options field
    assert host_key_type(ed25519) == "ssh-ed25519"
    assert "not verified" in connection_failures({"host": "h"})[0]
    assert "refused by OpenSSH" in connection_failures({"host": "h", "hostKey": rsa})[0]
    assert "failed to parse" in connection_failures({"host": "h", "hostKey": "ssh-ed25519 !!"})[0]
    assert (
        "connection.proxy: no hostKey"
        in connection_failures({"host": "h", "hostKey": ed25519, "proxy": {"host": "b"}})[0]
    )


# ---------------------------------------------------------------- the Docker provider's ssh command
def ssh_argv(host: str, ssh_opts: list[str]) -> list[str]:
    """docker/cli@v28.5.2:cli/connhelper/connhelper.go `getConnectionHelper` and
    cli/connhelper/ssh/ssh.go `Spec.args`/`Command`, as used by pulumi/pulumi-docker@v5.1.0
    (provider/image.go) and terraform-provider-docker@v4.5.0 (internal/provider/config.go)."""
    url = urlsplit(host)
    if url.scheme != "ssh":
        raise ValueError(f"not an ssh:// host: {host}")
    if not url.hostname:
        raise ValueError("invalid SSH URL: hostname is empty")
    if url.password is not None:
        raise ValueError("invalid SSH URL: plain-text password is not supported")
    if url.query or url.fragment:
        raise ValueError("invalid SSH URL: query parameters and fragments are not allowed")
    flags = list(ssh_opts)
    if "ConnectTimeout" not in "".join(flags):
        flags.append("-o ConnectTimeout=30")
    if "-T" not in flags:
        flags.append("-T")
    remote = ["docker", "system", "dial-stdio"]
    if url.path.strip("/"):
        remote = ["docker", f"--host=unix://{url.path}", "system", "dial-stdio"]
    args = ["ssh"]
    if url.username:
        args += ["-l", url.username]
    if url.port:
        args += ["-p", str(url.port)]
    return [*args, *flags, "--", url.hostname, shlex.join(remote)]


def ssh_options(argv: list[str]) -> dict[str, str]:
    """The -o options in argv (ssh keeps the first value of each)."""
    options: dict[str, str] = {}
    words = iter(argv[: argv.index("--")])
    for word in words:
        if word.startswith("-o"):
            option = word[2:].strip() or next(words)
            key, _, value = option.partition("=")
            options.setdefault(key.strip().lower(), value.strip())
    return options


def provider_ssh_failures(
    provider: Mapping[str, Any], pinned_key: str, known_hosts_written: set[str]
) -> list[str]:
    """The Docker provider runs the operator's OpenSSH client with `ssh_argv`: the host must be verified
    against the pinned key (StrictHostKeyChecking=yes, and the key reachable through KnownHostsCommand or
    a known_hosts file the deployment writes), and -o User/Port cannot change what -l/-p say."""
    host = provider.get("host", "")
    if not str(host).startswith("ssh://"):
        return []
    raw = provider.get("sshOpts", "[]")
    try:
        argv = ssh_argv(str(host), json.loads(raw) if isinstance(raw, str) else list(raw))
    except ValueError as err:
        return [str(err)]
    options = ssh_options(argv)
    problems = []
    strict = options.get("stricthostkeychecking")
    if strict != "yes":
        problems.append(f"ssh does not insist on a known key: StrictHostKeyChecking={strict}")
    key_type, _, rest = pinned_key.strip().partition(" ")
    blob = rest.split()[0] if rest.split() else ""
    command = options.get("knownhostscommand", "")
    files = [f for f in options.get("userknownhostsfile", "").split() if f != "/dev/null"]
    if not (blob and blob in command) and not any(f in known_hosts_written for f in files):
        problems.append(
            f"ssh gets the pinned key from nowhere (KnownHostsCommand={command!r}, UserKnownHostsFile={files}, "
            f"written by the plan: {sorted(known_hosts_written)})"
        )
    algorithms = options.get("hostkeyalgorithms")
    if algorithms and key_type not in algorithms.split(","):
        problems.append(f"HostKeyAlgorithms={algorithms} does not offer the pinned {key_type} key")
    if "user" in options or "port" in options:
        problems.append(
            "-o User/Port in sshOpts cannot override -l/-p from the URL (ssh keeps the first value)"
        )
    return problems


def _known_hosts_written(plan: Plan) -> set[str]:
    files = set()
    for command in plan.by_type(LOCAL_COMMAND):
        match = re.search(r"KNOWN_HOSTS_FILE=(\S+)", str(command.inputs.get("create", "")))
        if match:
            files.add(shlex.split(match.group(1))[0])
    return files


@pytest.mark.parametrize("stack", SSH_STACKS)
def test_the_docker_provider_reaches_the_host_with_the_pinned_key(stack: str) -> None:
    plan = planned(stack)
    providers = plan.by_type(DOCKER_PROVIDER)
    assert providers
    pinned = stack_config(stack)[f"{NS}target"]["hostKey"]
    problems = [
        p for pr in providers for p in provider_ssh_failures(pr.inputs, pinned, _known_hosts_written(plan))
    ]
    assert not problems, "\n".join(problems)


def test_the_ssh_argv_is_dockers() -> None:
    argv = ssh_argv("ssh://deploy@gpu.example.com:2222", ["-o", "StrictHostKeyChecking=yes"])
    assert argv == [
        "ssh", "-l", "deploy", "-p", "2222", "-o", "StrictHostKeyChecking=yes", "-o ConnectTimeout=30", "-T",
        "--", "gpu.example.com", "docker system dial-stdio",
    ]  # fmt: skip
    assert ssh_argv("ssh://h/run/d.sock", ["-T", "-o", "ConnectTimeout=5"])[-1] == (
        "docker --host=unix:///run/d.sock system dial-stdio"
    )
    for bad in ("ssh://u:pw@h", "ssh://h?x=1", "ssh://"):
        with pytest.raises(ValueError):
            ssh_argv(bad, [])


def test_the_provider_ssh_rules_refuse_an_unpinned_provider() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPP40HostKeyPlaceholderReplaceMe000000000000"
    written = {".gpu-deploy/known_hosts-h-22"}
    by_file = ["-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=.gpu-deploy/known_hosts-h-22"]
    by_command = [
        *("-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=/dev/null"),
        *("-o", f"KnownHostsCommand=/bin/echo h {key}", "-o", "HostKeyAlgorithms=ssh-ed25519"),
    ]
    good = {"host": "ssh://u@h:22", "sshOpts": json.dumps(by_file)}
    assert provider_ssh_failures(good, key, written) == []
    assert provider_ssh_failures({**good, "sshOpts": json.dumps(by_command)}, key, set()) == []
    assert provider_ssh_failures({"host": "unix:///var/run/docker.sock"}, key, set()) == []
    tofu = ["-o", "StrictHostKeyChecking=accept-new", *by_file]
    problems = provider_ssh_failures({**good, "sshOpts": json.dumps(tofu)}, key, written)
    assert any("accept-new" in p for p in problems), problems
    assert any("from nowhere" in p for p in provider_ssh_failures(good, key, set()))
    nothing = ["-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=/dev/null"]
    assert any(
        "from nowhere" in p
        for p in provider_ssh_failures({**good, "sshOpts": json.dumps(nothing)}, key, written)
    )
    rsa_only = [*by_command[:-1], "HostKeyAlgorithms=ssh-rsa"]
    assert any(
        "does not offer" in p
        for p in provider_ssh_failures({**good, "sshOpts": json.dumps(rsa_only)}, key, set())
    )
    override = [*by_file, "-o", "User=root"]
    assert any(
        "cannot override" in p
        for p in provider_ssh_failures({**good, "sshOpts": json.dumps(override)}, key, written)
    )
    assert "password" in provider_ssh_failures({"host": "ssh://u:pw@h"}, key, written)[0]
