"""A planned `docker:index/container:Container` as the Docker Engine API requests that create it.

`create_body(inputs)` maps the inputs of one planned Container (exactly as `python -m stacks plan STACK
--json` shows them: camelCase wire names, "[secret]"/"[unknown]" placeholders) to what
terraform-provider-docker, which pulumi-docker 5.x bridges for `Container`, sends to the engine:

- the `POST /containers/create?name=NAME` body (Config fields at the top level, `HostConfig`,
  `NetworkingConfig`), the way `resourceDockerContainerCreate` fills `container.Config` and
  `container.HostConfig` and the Go client's `ContainerCreate` serialises them;
- the network steps the provider takes after the create (disconnect `bridge`, connect each
  `networksAdvanced` entry with its aliases): it never puts them into `NetworkingConfig`;
- the client-side behaviour that is no Engine API field at all (`start`, `wait`/`waitTimeout`,
  `attach`/`logs`, `mustRun`, `destroyGraceSeconds`/`removeVolumes`), as plain attributes;
- `uploads`: each file as a one-entry tar archive put into the container at "/" after the network
  steps and before the start (`PUT /containers/{id}/archive`, the Go client's CopyToContainer);
- a Container without `name`: pulumi-docker names it `<logical name>-<7 hex digits>` (autonaming), so the
  caller says the logical name.

`create_and_start`, `inspect`, `remove` (and `wait_healthy`, `wait_exit`, `run`) then perform those
requests against an engine over its unix socket with the standard library only (`http.client`).

Sources (read at these tags, not guessed):
- pulumi-docker 5.2.0 is what `.venv` holds; the stored pulumi/pulumi-docker history has v5.1.0 and
  later commits up to 237b7899 (after v5.1.0), and all of them pin the `upstream` submodule to
  kreuzwerker/terraform-provider-docker 5074970c = v4.5.0 (pulumi/pulumi-docker@v5.1.0:upstream). Names:
  pulumi/pulumi-docker@v5.1.0:provider/cmd/pulumi-resource-docker/schema.json and
  provider/resources.go (`command` and `networksAdvanced` kept singular, everything else pluralised by
  the bridge: envs, securityOpts, healthcheck.tests, capabilities.drops, ...).
- TFP = kreuzwerker/terraform-provider-docker@v4.5.0:internal/provider/
  FUNCS = TFP resource_docker_container_funcs.go, STRUCT = TFP resource_docker_container_structures.go,
  SCHEMA = TFP resource_docker_container.go, HELPERS = TFP helpers.go.
- Autonaming: pulumi/pulumi-docker provider/resources.go `prov.SetAutonaming(255, "-")`, and
  pulumi/pulumi-terraform-bridge pkg/tfbridge/info/autonaming.go AutoName (Randlen 7;
  ComputeAutoNameDefault: resource.NewUniqueHex(name + separator, 7, maxlen)).
- MOBY = moby/moby@v28.5.2 (the github.com/docker/docker version in TFP's go.mod): client/
  container_create.go (capability normalisation), api/types/** (JSON field names and omitempty).

Zero-valued fields the provider never sets are left out of the body: the engine decodes an absent field
as the same zero value (the Go client would send them explicitly). Pointer fields where nil and zero
differ (HostConfig.Init) are always written, as the provider writes them.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import re
import secrets
import socket
import tarfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

SECRET = "[secret]"
UNKNOWN = "[unknown]"
PLACEHOLDERS = (SECRET, UNKNOWN)

# The Go client negotiates min(its own API version, the daemon's): MOBY api/common.go DefaultVersion.
CLIENT_API_VERSION = "1.51"

# Every input of docker:index/container:Container (pulumi/pulumi-docker@v5.1.0:
# provider/cmd/pulumi-resource-docker/schema.json, resources."docker:index/container:Container".inputProperties).
PULUMI_CONTAINER_INPUTS = frozenset(
    {
        "attach",
        "capabilities",
        "cgroupParent",
        "cgroupnsMode",
        "command",
        "containerReadRefreshTimeoutMilliseconds",
        "cpuPeriod",
        "cpuQuota",
        "cpuSet",
        "cpuShares",
        "cpus",
        "destroyGraceSeconds",
        "deviceReadBps",
        "deviceReadIops",
        "deviceRequests",
        "deviceWriteBps",
        "deviceWriteIops",
        "devices",
        "dns",
        "dnsOpts",
        "dnsSearches",
        "domainname",
        "entrypoints",
        "envs",
        "gpus",
        "groupAdds",
        "healthcheck",
        "hostname",
        "hosts",
        "image",
        "init",
        "ipcMode",
        "labels",
        "logDriver",
        "logOpts",
        "logs",
        "maxRetryCount",
        "memory",
        "memoryReservation",
        "memorySwap",
        "mounts",
        "mustRun",
        "name",
        "networkMode",
        "networksAdvanced",
        "pidMode",
        "platform",
        "ports",
        "privileged",
        "publishAllPorts",
        "readOnly",
        "removeVolumes",
        "restart",
        "rm",
        "runtime",
        "securityOpts",
        "shmSize",
        "start",
        "stdinOpen",
        "stopSignal",
        "stopTimeout",
        "storageOpts",
        "sysctls",
        "tmpfs",
        "tty",
        "ulimits",
        "uploads",
        "user",
        "usernsMode",
        "volumes",
        "wait",
        "waitTimeout",
        "workingDir",
    }
)


class MappingError(ValueError):
    """The planned inputs cannot be mapped: an unknown key, a placeholder, a wrong type or value."""


class EngineError(RuntimeError):
    """The engine refused a request; `message` is the engine's own `message`, verbatim."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.method = method
        self.path = path
        self.status = status
        self.message = message


@dataclass(frozen=True)
class NetworkAttachment:
    """`POST /networks/{network}/connect` with `{"Container": id, "EndpointConfig": endpoint_config}`."""

    network: str
    endpoint_config: dict[str, Any]


@dataclass(frozen=True)
class Upload:
    """FUNCS `upload`: one file put into the container before its start."""

    file: str  # the tar entry's name, as given (an absolute path), extracted at "/"
    content: bytes
    mode: int  # `permissions` (octal), else 0o744 when `executable`, else 0o644

    def archive(self) -> bytes:
        """FUNCS: tar.Header{Name: file, Mode: mode, Size, ModTime: now}, one entry."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
            info = tarfile.TarInfo(self.file)
            info.size = len(self.content)
            info.mode = self.mode
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(self.content))
        return buffer.getvalue()


def auto_name(logical_name: str) -> str:
    """pulumi-docker's name for a Container without `name`: `<logical name>-<7 hex digits>`."""
    return f"{logical_name}-{secrets.token_hex(4)[:7]}"


@dataclass(frozen=True)
class EngineCreate:
    """What the provider asks of the engine for one Container, and what it does on the client side."""

    name: str  # the `name` query parameter of POST /containers/create
    body: dict[str, Any]  # the JSON body: Config fields, "HostConfig", "NetworkingConfig"
    networks: tuple[NetworkAttachment, ...] = ()  # connected after the create, before the start
    uploads: tuple[Upload, ...] = ()  # put into the container after the networks, before the start
    auto_named: bool = False  # the plan had no `name`: `name` is pulumi-docker's autonaming
    disconnect_bridge: bool = False  # POST /networks/bridge/disconnect first (not connected: ignored)
    # Client behaviour (SCHEMA defaults; FUNCS resourceDockerContainerCreate/Read/Update/Delete):
    start: bool = True  # POST /containers/{id}/start after the create
    wait_healthy: bool = False  # poll inspect each second until State.Health.Status == "healthy"
    wait_timeout_s: int = 60  # ... for at most this long, else "container failed to be in healthy state"
    attach: bool = False  # block until the container is not running (POST /containers/{id}/wait)
    capture_logs: bool = False  # `logs`: keep stdout+stderr as container_logs; only with attach
    must_run: bool = True  # found stopped on refresh: must_run drifts to false, `up` starts it again
    destroy_grace_s: int = 0  # delete: stop with this timeout (skipped when attach), then remove
    remove_volumes: bool = True  # delete: DELETE /containers/{id}?force=1&v=1

    @property
    def config(self) -> dict[str, Any]:
        return {k: v for k, v in self.body.items() if k not in ("HostConfig", "NetworkingConfig")}

    @property
    def host_config(self) -> dict[str, Any]:
        host_config: dict[str, Any] = self.body["HostConfig"]
        return host_config

    @property
    def aliases(self) -> dict[str, list[str]]:
        return {n.network: list(n.endpoint_config.get("Aliases", [])) for n in self.networks}


# ---------------------------------------------------------------------------------------------------
# Placeholders and substitutes


def placeholder_paths(inputs: Any, path: str = "") -> list[str]:
    """The paths (`labels[4].value`, `envs[2]`, `image`) whose value is "[secret]" or "[unknown]"."""
    found: list[str] = []
    if isinstance(inputs, Mapping):
        for key, value in inputs.items():
            found += placeholder_paths(value, f"{path}.{key}" if path else str(key))
    elif isinstance(inputs, list):
        for i, value in enumerate(inputs):
            found += placeholder_paths(value, f"{path}[{i}]")
    elif isinstance(inputs, str) and inputs in PLACEHOLDERS:
        found.append(path)
    return found


def _substitute(value: Any, path: str, substitutes: Mapping[str, Any], used: set[str]) -> Any:
    if isinstance(value, Mapping):
        return {
            k: _substitute(v, f"{path}.{k}" if path else str(k), substitutes, used) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", substitutes, used) for i, v in enumerate(value)]
    if isinstance(value, str) and value in PLACEHOLDERS:
        if path in substitutes:
            used.add(path)
            return substitutes[path]
        hint = "a secret" if value == SECRET else "not known until deploy"
        raise MappingError(
            f"{path}: the plan has {value} here ({hint}): pass substitutes={{{path!r}: ...}} "
            "with the concrete value to map it"
        )
    return value


# ---------------------------------------------------------------------------------------------------
# Strict readers


_MISSING = object()


class _Obj:
    """One input object: every key must be read (or it is reported), every value is type-checked."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, Mapping):
            raise MappingError(f"{path or 'inputs'}: expected an object, got {_show(value)}")
        self.data = dict(value)
        self.path = path

    def _p(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _take(self, key: str) -> Any:
        value = self.data.pop(key, _MISSING)
        return _MISSING if value is None else value  # an explicit null is an unset input

    def str_(self, key: str, default: str | None = None) -> str | None:
        value = self._take(key)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            raise MappingError(f"{self._p(key)}: expected a string, got {_show(value)}")
        return value

    def req_str(self, key: str) -> str:
        value = self.str_(key)
        if value is None:
            raise MappingError(f"{self._p(key)}: required, missing from the inputs")
        return value

    def int_(self, key: str, default: int | None = None) -> int | None:
        value = self._take(key)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise MappingError(f"{self._p(key)}: expected an integer, got {_show(value)}")
        return value

    def bool_(self, key: str, default: bool) -> bool:
        value = self._take(key)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise MappingError(f"{self._p(key)}: expected true or false, got {_show(value)}")
        return value

    def strs(self, key: str) -> list[str] | None:
        value = self._take(key)
        if value is _MISSING:
            return None
        if not isinstance(value, list):
            raise MappingError(f"{self._p(key)}: expected a list of strings, got {_show(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise MappingError(f"{self._p(key)}[{i}]: expected a string, got {_show(item)}")
        return list(value)

    def str_map(self, key: str) -> dict[str, str] | None:
        value = self._take(key)
        if value is _MISSING:
            return None
        if not isinstance(value, Mapping):
            raise MappingError(f"{self._p(key)}: expected a map of strings, got {_show(value)}")
        for k, v in value.items():
            if not isinstance(v, str):
                raise MappingError(f"{self._p(key)}.{k}: expected a string, got {_show(v)}")
        return dict(value)

    def obj(self, key: str) -> _Obj | None:
        value = self._take(key)
        return None if value is _MISSING else _Obj(value, self._p(key))

    def objs(self, key: str) -> list[_Obj]:
        value = self._take(key)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            raise MappingError(f"{self._p(key)}: expected a list of objects, got {_show(value)}")
        return [_Obj(item, f"{self._p(key)}[{i}]") for i, item in enumerate(value)]

    def done(self, known: Callable[[str], str] | None = None) -> None:
        """Every key left over is one this mapping does not know: an error naming it, never dropped."""
        for key in sorted(self.data):
            why = known(key) if known else "not an input this mapping knows"
            raise MappingError(f"{self._p(key)}: {why}")


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bytes) else repr(value)


def _top_level_unknown(key: str) -> str:
    if key in PULUMI_CONTAINER_INPUTS:
        return (
            "a pulumi-docker Container input that tests/real/engine_api.py does not map yet: "
            "add its rule (with its source) before planning it"
        )
    return "not an input of docker:index/container:Container (pulumi-docker 5.x schema)"


def _set(values: list[str] | None) -> list[str] | None:
    """A Terraform TypeSet of strings: duplicates collapse (order kept here; it is a set)."""
    return None if values is None else list(dict.fromkeys(values))


# ---------------------------------------------------------------------------------------------------
# Go's time.ParseDuration, for the healthcheck durations (FUNCS: time.ParseDuration(raw), nanoseconds)

_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5
    "μs": 1_000,  # U+03BC
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d*\.?\d*)(ns|us|µs|μs|ms|s|m|h)")


def go_duration_ns(text: str, path: str = "duration") -> int:
    """Nanoseconds of a Go duration ("30s", "1m30s", "1.5h", "500ms", "0"); negatives are refused
    (SCHEMA validateDurationGeq0)."""
    s = text.strip()
    if s in ("0", "+0"):
        return 0
    if s.startswith("+"):
        s = s[1:]
    if not s or s.startswith("-"):
        raise MappingError(f"{path}: {text!r} is not a duration >= 0 (Go time.ParseDuration, e.g. 30s)")
    total = Fraction(0)
    pos = 0
    while pos < len(s):
        match = _DURATION_PART.match(s, pos)
        if not match or match.group(1) in ("", "."):
            raise MappingError(f"{path}: {text!r} is not a Go duration (e.g. 30s, 1m30s, 500ms)")
        total += Fraction(match.group(1)) * _UNIT_NS[match.group(2)]
        pos = match.end()
    return int(total)  # Go truncates the fractional nanoseconds


# ---------------------------------------------------------------------------------------------------
# The mapping


_RESTART = re.compile(r"^(no|on-failure|always|unless-stopped)$")  # SCHEMA restart ValidateDiagFunc
_MOUNT_TYPES = ("bind", "volume", "tmpfs")  # SCHEMA mounts.type
_PROPAGATION = re.compile(r"^(private|rprivate|shared|rshared|slave|rslave)$")  # SCHEMA bind_options


def create_body(
    inputs: Mapping[str, Any],
    *,
    image_override: str | None = None,
    network_name_override: str | Mapping[str, str] | None = None,
    substitutes: Mapping[str, Any] | None = None,
    logical_name: str | None = None,
) -> EngineCreate:
    """Map one planned Container's inputs to the engine requests and client behaviour.

    `logical_name`: the Container's name in the program, which pulumi-docker's autonaming makes the
    container's name from when the inputs have no `name` (a zero-downtime copy).

    `substitutes` gives concrete values for placeholder paths (see `placeholder_paths`); a substitute
    for a path that holds no placeholder is an error too, so a stale one never hides a change.
    `image_override` replaces (or supplies, where the plan left it out as unknown) `image`;
    `network_name_override` renames the one `networksAdvanced` network (a string) or several (a map).
    """
    substitutes = dict(substitutes or {})
    used: set[str] = set()
    raw = dict(inputs)
    if image_override is not None:
        raw["image"] = image_override
    data = _substitute(raw, "", substitutes, used)
    stale = sorted(set(substitutes) - used)
    if stale:
        raise MappingError(f"substitutes: {', '.join(stale)}: no placeholder at this path in the inputs")
    top = _Obj(data, "")

    # -- Config --------------------------------------------------------------------------------
    # SCHEMA name Required, but pulumi-docker auto-names a Container without one (SetAutonaming): the
    # `name` query parameter (MOBY container_create.go) is `<logical name>-<7 hex>` then.
    planned_name = top.str_("name")
    if planned_name is None and logical_name is None:
        raise MappingError(
            "name: missing from the inputs, so pulumi-docker auto-names the container "
            "`<logical name>-<7 hex>`: pass logical_name"
        )
    name = planned_name if planned_name is not None else auto_name(str(logical_name))
    image = top.req_str("image")  # SCHEMA image Required; FUNCS config.Image = image
    config: dict[str, Any] = {"Image": image}
    # FUNCS: Hostname/Domainname/Tty/OpenStdin/StopSignal/StopTimeout are always assigned from d.Get.
    config["Hostname"] = top.str_("hostname", "")
    config["Domainname"] = top.str_("domainname", "")
    config["Tty"] = top.bool_("tty", False)
    config["OpenStdin"] = top.bool_("stdinOpen", False)
    stop_signal = top.str_("stopSignal", "")
    if stop_signal:
        config["StopSignal"] = stop_signal  # MOBY Config.StopSignal `json:",omitempty"`
    stop_timeout = top.int_("stopTimeout")
    if stop_timeout is not None:  # FUNCS: only with GetOk -> a *int
        config["StopTimeout"] = stop_timeout

    envs = _set(top.strs("envs"))  # SCHEMA env TypeSet; FUNCS config.Env = stringSetToStringSlice
    if envs:
        config["Env"] = envs

    command = top.strs("command")  # FUNCS config.Cmd = stringListToStringSlice(command)
    if command:
        for i, arg in enumerate(command):
            if arg == "":
                # FUNCS: return diag.Errorf("values for command may not be empty")
                raise MappingError(f"command[{i}]: values for command may not be empty")
        config["Cmd"] = command

    entrypoint = top.strs("entrypoints")  # FUNCS config.Entrypoint (TF `entrypoint`)
    if entrypoint:
        config["Entrypoint"] = entrypoint

    user = top.str_("user")  # FUNCS: if GetOk("user") { config.User = v }
    if user:
        config["User"] = user

    working_dir = top.str_("workingDir")  # FUNCS config.WorkingDir
    if working_dir:
        config["WorkingDir"] = working_dir

    # FUNCS: exposedPorts, portBindings = portSetToDockerPorts(ports); STRUCT portSetToDockerPorts.
    exposed, bindings = _ports(top.objs("ports"))
    if exposed:
        config["ExposedPorts"] = exposed

    labels = _labels(top.objs("labels"))  # FUNCS config.Labels = labelSetToMap (HELPERS)
    if labels is not None:
        config["Labels"] = labels

    health = top.obj("healthcheck")  # FUNCS: config.Healthcheck = &container.HealthConfig{...}
    if health is not None:
        config["Healthcheck"] = _healthcheck(health)

    # -- HostConfig ----------------------------------------------------------------------------
    restart = top.str_("restart", "no")  # SCHEMA restart Default "no"
    assert restart is not None
    if not _RESTART.match(restart):
        raise MappingError(f"restart: {restart!r}: must be one of no, on-failure, always, unless-stopped")
    host: dict[str, Any] = {
        # FUNCS hostConfig := &container.HostConfig{...}: always assigned from d.Get.
        "Privileged": top.bool_("privileged", False),
        "PublishAllPorts": top.bool_("publishAllPorts", False),
        "RestartPolicy": {"Name": restart, "MaximumRetryCount": top.int_("maxRetryCount", 0)},
        "Runtime": top.str_("runtime", ""),
        "Mounts": _mounts(top.objs("mounts")),  # FUNCS: mounts := []mount.Mount{} (never null)
        "AutoRemove": top.bool_("rm", False),
        "ReadonlyRootfs": top.bool_("readOnly", False),
        "LogConfig": {"Type": top.str_("logDriver", "")},  # SCHEMA log_driver Optional+Computed, no default
    }
    if bindings:
        host["PortBindings"] = bindings  # FUNCS: if len(portBindings) != 0

    # FUNCS: the first capabilities block -> CapAdd/CapDrop = stringSetToStringSlice(add/drop);
    # MOBY client/container_create.go:72 then normalises both lists (upper-case, CAP_ prefix except ALL,
    # de-duplicated, sorted; an empty list becomes null).
    caps = top.obj("capabilities")
    if caps is not None:
        host["CapAdd"] = normalize_capabilities(caps.strs("adds") or [])
        host["CapDrop"] = normalize_capabilities(caps.strs("drops") or [])
        caps.done()
    else:
        host["CapAdd"] = None
        host["CapDrop"] = None

    device_requests = _device_requests(top.objs("deviceRequests"))
    if device_requests:
        host["DeviceRequests"] = device_requests  # FUNCS: deviceRequestsSetToDockerRequests (STRUCT)

    security_opts = _set(top.strs("securityOpts"))
    if security_opts:
        # FUNCS parseSystemPaths: "systempaths=unconfined" is client-side -> empty Masked/ReadonlyPaths.
        filtered = [o for o in security_opts if o != "systempaths=unconfined"]
        host["SecurityOpt"] = filtered
        if len(filtered) != len(security_opts):
            host["MaskedPaths"] = []
            host["ReadonlyPaths"] = []

    mib = 1024 * 1024
    memory = _non_negative(top.int_("memory"), "memory")
    if memory:  # FUNCS: hostConfig.Memory = int64(v) * 1024 * 1024 (SCHEMA: "in MBs")
        host["Memory"] = memory * mib
    reservation = _non_negative(top.int_("memoryReservation"), "memoryReservation")
    if reservation:
        host["MemoryReservation"] = reservation * mib
    swap = top.int_("memorySwap")
    if swap:  # FUNCS: swap > 0 -> * 1024 * 1024; -1 stays -1 (unlimited)
        if swap < -1:
            raise MappingError(f"memorySwap: {swap}: must be >= -1")
        host["MemorySwap"] = swap * mib if swap > 0 else swap
    shm = _non_negative(top.int_("shmSize"), "shmSize")
    if shm:  # FUNCS: hostConfig.ShmSize = int64(v) * 1024 * 1024
        host["ShmSize"] = shm * mib

    # FUNCS: if GetOk("cpus") { hostConfig.NanoCPUs = opts.ParseCPUs(v) } (docker/cli opts/opts.go
    # ParseCPUs: a big.Rat times 1e9, refused unless whole nanoseconds); cpu_period/cpu_quota then ignored.
    cpus = top.str_("cpus")
    if cpus:
        host["NanoCPUs"] = parse_cpus_nanos(cpus)

    # FUNCS: if GetOk("ulimit") { hostConfig.Ulimits = ulimitsToDockerUlimits(set) } (STRUCT: one
    # units.Ulimit{Name, Soft, Hard} per block; MOBY api/types/container HostConfig.Ulimits JSON
    # {"Name", "Hard", "Soft"}); SCHEMA ulimit: name, soft, hard all Required.
    ulimits = []
    for item in top.objs("ulimits"):
        ulimit_name = item.req_str("name")
        soft, hard = item.int_("soft"), item.int_("hard")
        if soft is None or hard is None:
            raise MappingError(f"ulimits: {ulimit_name}: soft and hard are required")
        item.done()
        ulimits.append({"Name": ulimit_name, "Soft": soft, "Hard": hard})
    if ulimits:
        host["Ulimits"] = ulimits

    ipc_mode = top.str_("ipcMode")  # FUNCS: if GetOk("ipc_mode") { hostConfig.IpcMode = v }
    if ipc_mode:
        host["IpcMode"] = ipc_mode

    log_opts = top.str_map("logOpts")
    if log_opts:  # FUNCS: hostConfig.LogConfig.Config = mapTypeMapValsToString(log_opts)
        host["LogConfig"]["Config"] = log_opts

    network_mode = top.str_("networkMode", "bridge")  # SCHEMA network_mode Default "bridge"
    if network_mode:
        host["NetworkMode"] = network_mode

    group_add = _set(top.strs("groupAdds"))
    if group_add:
        host["GroupAdd"] = group_add

    sysctls = top.str_map("sysctls")
    if sysctls:  # FUNCS: if GetOk("sysctls") { hostConfig.Sysctls = mapTypeMapValsToString(v) }
        host["Sysctls"] = sysctls

    uploads = tuple(_upload(item) for item in top.objs("uploads"))

    # FUNCS: init := d.Get("init").(bool); hostConfig.Init = &init -> false (not the daemon default)
    # unless set.
    host["Init"] = top.bool_("init", False)

    # -- Networks (after the create) -----------------------------------------------------------
    networks = _networks(top.objs("networksAdvanced"), network_name_override)

    # -- Client behaviour ----------------------------------------------------------------------
    start = top.bool_("start", True)  # SCHEMA start Default true
    wait = top.bool_("wait", False)  # SCHEMA wait Default false
    wait_timeout = top.int_("waitTimeout", 60)  # SCHEMA wait_timeout Default 60 (seconds)
    attach = top.bool_("attach", False)
    logs = top.bool_("logs", False)
    must_run = top.bool_("mustRun", True)
    grace = top.int_("destroyGraceSeconds", 0)
    remove_volumes = top.bool_("removeVolumes", True)  # SCHEMA remove_volumes Default true
    assert wait_timeout is not None and grace is not None
    if wait and start and health is None:
        # FUNCS: waiting with no State.Health fails after the start:
        raise MappingError(
            "wait: you have supplied a 'wait' argument, but the container does not have a healthcheck "
            "defined. Please remove the 'wait' argument or add a 'healthcheck' attribute"
        )

    top.done(_top_level_unknown)

    body = {**config, "HostConfig": host, "NetworkingConfig": {"EndpointsConfig": None}}
    return EngineCreate(
        name=name,
        body=body,
        networks=networks,
        uploads=uploads,
        auto_named=planned_name is None,
        disconnect_bridge=bool(networks),  # FUNCS: NetworkDisconnect(ctx, "bridge", id, false)
        start=start,
        wait_healthy=wait and start,  # FUNCS: the wait sits inside `if d.Get("start")`
        wait_timeout_s=wait_timeout,
        attach=attach,
        capture_logs=attach and logs,  # FUNCS: logs are read only inside `if d.Get("attach")`
        must_run=must_run,
        destroy_grace_s=grace if grace > 0 else 0,
        remove_volumes=remove_volumes,
    )


def parse_cpus_nanos(text: str) -> int:
    """docker/cli opts/opts.go ParseCPUs: big.Rat SetString (a decimal here), times 1e9, whole only."""
    if not re.fullmatch(r"\d*\.?\d*", text) or text in ("", "."):
        raise MappingError(f"cpus: Error setting cpus: failed to parse {text} as a rational number")
    nanos = Fraction(text) * 10**9
    if nanos.denominator != 1:
        raise MappingError("cpus: Error setting cpus: value is too precise")
    return int(nanos)


_PERMISSIONS = re.compile(r"^0[0-7]{3}$")  # SCHEMA upload.permissions validateStringMatchesPattern


def _upload(item: _Obj) -> Upload:
    """FUNCS `upload`: exactly one of content, contentBase64 (decoded) and source (the local file read
    by the provider); mode from permissions, else executable (0744), else 0644. sourceHash only
    triggers a replacement (SCHEMA ForceNew)."""
    file = item.req_str("file")  # SCHEMA upload.file Required
    content = item.str_("content", "")
    encoded = item.str_("contentBase64", "")
    source = item.str_("source", "")
    item.str_("sourceHash", "")
    executable = item.bool_("executable", False)  # SCHEMA Default false
    permissions = item.str_("permissions", "")
    item.done()
    given = [v for v in (content, encoded, source) if v]
    if not given:  # FUNCS: the provider's own words
        raise MappingError(
            f"{item.path}: error with upload content: one of 'content', 'content_base64', or 'source' must be set"
        )
    if len(given) > 1:
        raise MappingError(
            f"{item.path}: error with upload content: only one of 'content', 'content_base64', or 'source' "
            "can be set"
        )
    if content:
        data = content.encode()
    elif encoded:
        try:
            data = base64.b64decode(encoded, validate=True)  # SCHEMA validateStringIsBase64Encoded
        except ValueError as err:
            raise MappingError(f"{item.path}.contentBase64: not base64: {err}") from err
    else:
        with open(str(source), "rb") as handle:
            data = handle.read()
    if permissions:
        if not _PERMISSIONS.match(permissions):
            raise MappingError(f"{item.path}.permissions: {permissions!r} is not an octal mode like 0644")
        mode = int(permissions, 8)
    else:
        mode = 0o744 if executable else 0o644
    return Upload(file=str(file), content=data, mode=mode)


def _non_negative(value: int | None, path: str) -> int | None:
    if value is not None and value < 0:  # SCHEMA validateIntegerGeqThan(0)
        raise MappingError(f"{path}: {value}: must be >= 0")
    return value


def normalize_capabilities(caps: list[str]) -> list[str] | None:
    """MOBY client/container_create.go normalizeCapabilities/normalizeCap."""
    normalized: list[str] = []
    for raw in caps:
        cap = raw.upper()
        if cap != "ALL" and not cap.startswith("CAP_"):
            cap = "CAP_" + cap
        if cap not in normalized:
            normalized.append(cap)
    return sorted(normalized) or None


def _ports(items: list[_Obj]) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, str]]]]:
    """STRUCT portSetToDockerPorts: "internal/protocol" -> ExposedPorts and PortBindings.

    SCHEMA: protocol Default "tcp", ip Default "0.0.0.0", external Optional+Computed (unset: 0, which
    the engine reads as "any free port"). The SDK hands every field of a list element to the provider,
    so each port gets a binding.
    """
    exposed: dict[str, dict[str, Any]] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for item in items:
        internal = item.int_("internal")
        if internal is None:
            raise MappingError(f"{item.path}.internal: required, missing from the inputs")
        protocol = item.str_("protocol", "tcp")
        external = item.int_("external", 0)
        ip = item.str_("ip", "0.0.0.0")
        item.done()
        key = f"{internal}/{protocol}"
        exposed[key] = {}
        bindings.setdefault(key, []).append({"HostIp": ip or "", "HostPort": str(external)})
    return exposed, bindings


def _labels(items: list[_Obj]) -> dict[str, str] | None:
    """HELPERS labelSetToMap: [{label, value}] -> {label: value}; both Required (newLabelSchema)."""
    if not items:
        return None
    labels: dict[str, str] = {}
    for item in items:
        key = item.req_str("label")
        value = item.req_str("value")
        item.done()
        if key in labels:
            # The set is hashed by label (hashLabel): one of the two would win, unpredictably.
            raise MappingError(f"{item.path}.label: {key!r} appears twice in labels")
        labels[key] = value
    return labels


def _healthcheck(health: _Obj) -> dict[str, Any]:
    """FUNCS: Test = tests; Interval/Timeout/StartPeriod/StartInterval = time.ParseDuration (ns);
    Retries. SCHEMA defaults "0s"/0; MOBY HealthcheckConfig fields are all `json:",omitempty"`."""
    out: dict[str, Any] = {}
    tests = health.strs("tests")
    if tests:
        out["Test"] = tests
    for key, wire in (
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("startPeriod", "StartPeriod"),
        ("startInterval", "StartInterval"),
    ):
        text = health.str_(key, "0s")
        assert text is not None
        ns = go_duration_ns(text, f"{health.path}.{key}")
        if ns:
            out[wire] = ns
    retries = _non_negative(health.int_("retries", 0), f"{health.path}.retries")
    if retries:
        out["Retries"] = retries
    health.done()
    return out


def _mounts(items: list[_Obj]) -> list[dict[str, Any]]:
    """FUNCS `mounts`: Type/Target/Source/ReadOnly, bind_options.propagation (bind),
    tmpfs_options.size_bytes/mode (tmpfs). MOBY mount.Mount fields are `json:",omitempty"`."""
    mounts: list[dict[str, Any]] = []
    for item in items:
        kind = item.req_str("type")
        if kind not in _MOUNT_TYPES:
            raise MappingError(f"{item.path}.type: {kind!r}: must be bind, volume or tmpfs")
        target = item.req_str("target")
        source = item.str_("source", "")
        read_only = item.bool_("readOnly", False)
        out: dict[str, Any] = {"Type": kind, "Target": target}
        if source:
            out["Source"] = source
        if read_only:
            out["ReadOnly"] = True
        bind_options = item.obj("bindOptions")
        if bind_options is not None:
            propagation = bind_options.str_("propagation", "")
            bind_options.done()
            if propagation and not _PROPAGATION.match(propagation):
                raise MappingError(
                    f"{bind_options.path}.propagation: {propagation!r} is not a propagation mode"
                )
            if kind == "bind":  # FUNCS: only read for type bind; BindOptions{} even without propagation
                out["BindOptions"] = {"Propagation": propagation} if propagation else {}
        tmpfs_options = item.obj("tmpfsOptions")
        if tmpfs_options is not None:
            size = tmpfs_options.int_("sizeBytes", 0)
            mode = tmpfs_options.int_("mode", 0)
            tmpfs_options.done()
            if kind == "tmpfs":
                opts: dict[str, Any] = {}
                if size:
                    opts["SizeBytes"] = size
                if mode:
                    opts["Mode"] = mode
                out["TmpfsOptions"] = opts
        item.done()
        mounts.append(out)
    return mounts


def _device_requests(items: list[_Obj]) -> list[dict[str, Any]]:
    """STRUCT deviceRequestsSetToDockerRequests: Driver (SCHEMA Default "cdi"), Count (Default 0),
    DeviceIDs = the set, Capabilities = [[the flat set]] (one AND-list), Options. The SDK hands the
    provider an empty set/map for unset fields, so DeviceIDs [], Capabilities [[]] and Options {} are
    sent as such (MOBY DeviceRequest has no omitempty)."""
    requests: list[dict[str, Any]] = []
    for item in items:
        request = {
            "Driver": item.str_("driver", "cdi"),
            "Count": item.int_("count", 0),
            "DeviceIDs": _set(item.strs("deviceIds")) or [],
            "Capabilities": [_set(item.strs("capabilities")) or []],
            "Options": item.str_map("options") or {},
        }
        item.done()
        requests.append(request)
    return requests


def _networks(items: list[_Obj], override: str | Mapping[str, str] | None) -> tuple[NetworkAttachment, ...]:
    """FUNCS `networks_advanced`: after the create, disconnect bridge, then NetworkConnect(name, {
    Aliases, IPAMConfig{IPv4Address, IPv6Address, LinkLocalIPs}, MacAddress, DriverOpts, GwPriority})."""
    if isinstance(override, str) and len(items) != 1:
        raise MappingError(
            f"network_name_override: a single name needs exactly one networksAdvanced entry, "
            f"the inputs have {len(items)}: pass a mapping old name -> new name"
        )
    attachments: list[NetworkAttachment] = []
    for item in items:
        network = item.req_str("name")
        if isinstance(override, str):
            network = override
        elif override is not None:
            network = override.get(network, network)
        ipam: dict[str, Any] = {}
        ipv4 = item.str_("ipv4Address", "")
        ipv6 = item.str_("ipv6Address", "")
        link_local = _set(item.strs("linkLocalIps"))
        if ipv4:
            ipam["IPv4Address"] = ipv4  # MOBY EndpointIPAMConfig fields are omitempty
        if ipv6:
            ipam["IPv6Address"] = ipv6
        if link_local:
            ipam["LinkLocalIPs"] = link_local
        driver_opts: dict[str, str] = {}
        for opt in _set(item.strs("driverOpts")) or []:  # STRUCT stringSetToMapStringString
            key, sep, value = opt.partition("=")
            if sep:  # entries without "=" are skipped by the provider
                driver_opts[key] = value
        endpoint: dict[str, Any] = {
            "Aliases": _set(item.strs("aliases")) or [],
            "IPAMConfig": ipam,
            "MacAddress": item.str_("macAddress", ""),
            "DriverOpts": driver_opts,
            "GwPriority": _non_negative(item.int_("gwPriority", 0), f"{item.path}.gwPriority"),
        }
        item.done()
        attachments.append(NetworkAttachment(network=network, endpoint_config=endpoint))
    return tuple(attachments)


# ---------------------------------------------------------------------------------------------------
# The engine, over its unix socket (standard library only)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 to a unix socket (the Docker Engine API's own transport)."""

    def __init__(self, socket_path: str, timeout: float = 60.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def _request(
    socket_path: str,
    method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    body: Any = None,
    timeout: float = 60.0,
    raw: bool = False,
    data: bytes | None = None,
    content_type: str = "application/json",
) -> Any:
    url = path + ("?" + urllib.parse.urlencode(query) if query else "")
    conn = UnixHTTPConnection(socket_path, timeout=timeout)
    try:
        payload = data if data is not None else None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type} if payload is not None else {}
        conn.request(method, url, body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status >= 400:
        message = data.decode(errors="replace").strip()
        with contextlib.suppress(ValueError, KeyError, TypeError):
            message = str(json.loads(message)["message"])  # the engine's own words, verbatim
        raise EngineError(method, url, response.status, message)
    if raw:
        return data
    return json.loads(data) if data.strip() else None


def api_version(socket_path: str) -> str:
    """What the Go client negotiates: min(CLIENT_API_VERSION, the daemon's ApiVersion)."""
    server = str(_request(socket_path, "GET", "/version")["ApiVersion"])
    return min(server, CLIENT_API_VERSION, key=_version_key)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def create_and_start(socket_path: str, create: EngineCreate, *, version: str | None = None) -> str:
    """Create the container, move it to its networks and start it, as FUNCS does; the container id.

    The engine's refusal is raised as EngineError with its message verbatim: on a host without the
    NVIDIA runtime, Docker 20.10 (API 1.41) accepts the create and answers the start with HTTP 500
    `could not select device driver "nvidia" with capabilities: [[gpu]]`. A container created before a
    later step failed is left for the caller to `remove` (by `create.name`), as the provider leaves it.
    """
    version = version or api_version(socket_path)
    prefix = f"/v{version}"
    start_interval = create.body.get("Healthcheck", {}).get("StartInterval", 0)
    if start_interval and _version_key(version) < (1, 44):
        # MOBY client/container_create.go NewVersionError("1.44", "specify health-check start interval")
        raise EngineError(
            "POST",
            f"{prefix}/containers/create",
            0,
            f'"specify health-check start interval" requires API version 1.44, '
            f"but the Docker daemon API version is {version}",
        )
    created = _request(
        socket_path, "POST", f"{prefix}/containers/create", query={"name": create.name}, body=create.body
    )
    container_id = str(created["Id"])
    if create.disconnect_bridge:
        try:
            _request(
                socket_path,
                "POST",
                f"{prefix}/networks/bridge/disconnect",
                body={"Container": container_id, "Force": False},
            )
        except EngineError as err:
            # FUNCS containsIgnorableErrorMessage(..., "is not connected to the network bridge")
            if "is not connected to the network bridge" not in err.message:
                raise
    for attachment in create.networks:
        _request(
            socket_path,
            "POST",
            f"{prefix}/networks/{urllib.parse.quote(attachment.network, safe='')}/connect",
            body={"Container": container_id, "EndpointConfig": attachment.endpoint_config},
        )
    for upload in create.uploads:  # FUNCS: CopyToContainer(ctx, id, "/", tar, {}) before the start
        _request(
            socket_path,
            "PUT",
            f"{prefix}/containers/{container_id}/archive",
            query={"path": "/"},
            data=upload.archive(),
            content_type="application/x-tar",
        )
    if create.start:
        _request(socket_path, "POST", f"{prefix}/containers/{container_id}/start")
    return container_id


def inspect(socket_path: str, container_id: str) -> dict[str, Any]:
    """GET /containers/{id}/json."""
    result: dict[str, Any] = _request(socket_path, "GET", f"/containers/{container_id}/json")
    return result


def wait_healthy(socket_path: str, container_id: str, timeout_s: float) -> None:
    """FUNCS `wait`: inspect each second until healthy; no healthcheck or the timeout: an error."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = inspect(socket_path, container_id).get("State") or {}
        health = state.get("Health")
        if not health:
            raise RuntimeError(
                "you have supplied a 'wait' argument, but the container does not have a healthcheck "
                "defined. Please remove the 'wait' argument or add a 'healthcheck' attribute"
            )
        if health.get("Status") == "healthy":
            return
        if time.monotonic() >= deadline:
            raise RuntimeError("container failed to be in healthy state")
        time.sleep(1)


def wait_exit(socket_path: str, container_id: str, timeout_s: float = 3600) -> int:
    """FUNCS `attach`: ContainerWait(not-running); the exit code."""
    result = _request(
        socket_path,
        "POST",
        f"/containers/{container_id}/wait",
        query={"condition": "not-running"},
        timeout=timeout_s,
    )
    return int(result["StatusCode"])


def logs(socket_path: str, container_id: str, *, tty: bool = False) -> str:
    """FUNCS `logs`: stdout and stderr (demultiplexed unless tty, as stdcopy.StdCopy does)."""
    data: bytes = _request(
        socket_path,
        "GET",
        f"/containers/{container_id}/logs",
        query={"stdout": "1", "stderr": "1"},
        raw=True,
    )
    if tty:
        return data.decode(errors="replace")
    return b"".join(_demux(data)).decode(errors="replace")


def _demux(data: bytes) -> Iterator[bytes]:
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4 : pos + 8], "big")
        yield data[pos + 8 : pos + 8 + size]
        pos += 8 + size


def run(socket_path: str, create: EngineCreate) -> tuple[str, int | None, str | None]:
    """The whole provider create: create, networks, start, then `wait` or `attach`/`logs`.

    Returns (id, exit code if attached, logs if captured)."""
    container_id = create_and_start(socket_path, create)
    if create.wait_healthy:
        wait_healthy(socket_path, container_id, create.wait_timeout_s)
    exit_code: int | None = None
    captured: str | None = None
    if create.attach:
        exit_code = wait_exit(socket_path, container_id)
        if create.capture_logs:
            captured = logs(socket_path, container_id, tty=bool(create.body.get("Tty")))
    return container_id, exit_code, captured


def remove(
    socket_path: str,
    container_id: str,
    *,
    grace_s: int = 0,
    remove_volumes: bool = True,
    stop: bool = True,
) -> None:
    """FUNCS resourceDockerContainerDelete: stop (timeout grace_s; skipped for attached jobs), then
    DELETE ?force=1&v=1; "No such container" is not an error."""
    try:
        if stop:
            _request(socket_path, "POST", f"/containers/{container_id}/stop", query={"t": str(grace_s)})
        _request(
            socket_path,
            "DELETE",
            f"/containers/{container_id}",
            query={"force": "1", "v": "1" if remove_volumes else "0"},
        )
    except EngineError as err:
        if "No such container" not in err.message and "is already in progress" not in err.message:
            raise


def create_network(socket_path: str, name: str) -> str:
    """POST /networks/create (a bridge network, as the stacks' docker.Network): its id."""
    created = _request(socket_path, "POST", "/networks/create", body={"Name": name, "CheckDuplicate": True})
    return str(created["Id"])


def remove_network(socket_path: str, name: str) -> None:
    """DELETE /networks/{name}."""
    _request(socket_path, "DELETE", f"/networks/{urllib.parse.quote(name, safe='')}")
