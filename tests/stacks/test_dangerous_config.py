"""Nothing dangerous gets through: whole classes of hostile or mistaken config, with generated inputs.

Each class is tried with hypothesis-generated values (the counts are the `max_examples` below) and a few
named cases; whatever is refused is refused as one line naming the key, before any resource exists.
- host paths: no root or bind source in a system location, none re-owned outside target.root;
- every command line the program builds splits into exactly the arguments meant, whatever a string field
  holds (one quoting helper);
- fields: host names, logins, env names, port addresses, bounds, units;
- secrets: a `secure:` value only where it stays secret, only that value kept secret, never echoed.
"""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.core.values import host_path_problem, is_under, looks_secret
from components.host.shell import command_line, command_with_script
from stacks.config import ConfigError, StackConfig, check_secure_places, validate, validate_with_secrets
from stacks.plan import make_plan
from tests.plans import ShippedPlan, containers, env_of, stack_config, write_config
from tests.stacks.test_config import BASE, changed, rejected

EXAMPLES = 200
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SYSTEM = ["/etc", "/.", "//", "/tmp", "/var/tmp", "/var/run/docker.sock", "/run/containerd/containerd.sock",
          "/root", "/home/deploy/.ssh", "/srv/app/.kube/config", "/usr/local/bin", "/proc/1", "/", "/home",
          "/var/lib/docker/volumes", "/boot/grub"]  # fmt: skip


# ---------------------------------------------------------------- host paths
@pytest.mark.parametrize("path", SYSTEM)
def test_a_system_location_is_never_a_root_or_a_bind_source(path: str) -> None:
    rejected(changed(("target.root", path)), "target.root", "")
    rejected(changed(("services.app.volumes", [f"{path}:/data"])), "services.app.volumes.0", "")


segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..")
)


UNDER = ["/etc", "/tmp", "/var/tmp", "/var/run", "/root", "/usr", "/proc", "/boot", "/var/lib/docker",
         "/home/deploy/.ssh", "/srv/app/.kube", "/opt/x/.docker"]  # fmt: skip


@SETTINGS
@given(st.sampled_from(UNDER), st.lists(segment, max_size=4))
def test_nothing_under_a_system_location_is_accepted(base: str, parts: list[str]) -> None:
    path = "/".join([base.rstrip("/"), *parts]) or "/"
    if not path.startswith("/"):
        path = "/" + path
    assert host_path_problem(path) is not None, path


@SETTINGS
@given(st.lists(segment, min_size=1, max_size=5), st.lists(segment, min_size=1, max_size=5))
def test_only_directories_under_the_root_are_created(root_parts: list[str], parts: list[str]) -> None:
    """The plan's directory step gets exactly the volumes under target.root, relative or absolute; one
    outside the root is mounted as it is and never created or re-owned."""
    root = "/srv/" + "/".join(root_parts)
    if host_path_problem(root):
        return
    inside, outside = f"{root}/{'/'.join(parts)}", "/srv/other-" + "/".join(parts)
    assert is_under(inside, root) and not is_under(outside, root)
    assert not is_under(root + "x", root), "a sibling with a longer name is not under the root"


def test_the_plan_creates_nothing_outside_the_root(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["gpu-deploy:services"]["app"]["volumes"] = ["data:/app/data", "/srv/shared-models:/models:ro"]

    plan = make_plan("prod", config_file=write_config(tmp_path, edit))
    create = plan.named("command:remote:Command", "dirs-1001-1001-prepare").inputs["create"]
    assert "ROOT=/srv/english-listening-trainer" in create
    assert "/srv/shared-models" not in create, "outside the root: mounted if it exists, never created"
    mounts = {m["source"] for m in containers(plan)["app"].inputs["mounts"]}
    assert "/srv/shared-models" in mounts


# ---------------------------------------------------------------- one quoting helper
NAME = st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True)
VALUE = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), max_size=40)


@SETTINGS
@given(st.dictionaries(NAME, VALUE, max_size=5), st.lists(VALUE, max_size=6))
def test_every_command_line_splits_into_exactly_its_arguments(env: dict[str, str], args: list[str]) -> None:
    """`env K=V ... bash -s` and the runner's `env K=V bash -c SCRIPT NAME ARGS`: what the remote shell
    reads back are exactly these variables and arguments, whatever they hold ($(...), quotes, ;, \\n)."""
    words = shlex.split(command_line(env))
    assert words[-2:] == ["bash", "-s"]
    assert dict(w.split("=", 1) for w in words[1:-2]) == env if env else words == ["bash", "-s"]
    words = shlex.split(command_with_script("run-verified", env, args))
    start = words.index("run-verified", 1 + len(env) + 2)
    assert words[start + 1 :] == args


@SETTINGS
@given(VALUE)
def test_a_cuda_version_never_reaches_a_shell_unquoted(value: str) -> None:
    """`cuda.version` (also on `auto` stacks) is refused unless it is a CUDA release; either way the
    preflight's command line carries it as one argument."""
    raw = changed(("profile", "auto"), ("cuda", {"version": value}))
    try:
        config = validate(raw)
    except ConfigError:
        return
    from stacks.config import resolve_profile

    try:
        resolve_profile(config, None)
    except ConfigError as err:
        assert str(err).startswith("gpu-deploy:cuda.version: ")
        return
    assert all(c in "0123456789." for c in value.strip()), value


# ---------------------------------------------------------------- fields
@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("target.host", "deploy@p40", "the user goes in `user`"),
        ("target.host", "-oProxyCommand=sh", "host name"),
        ("target.host", "p40 gpu", "host name"),
        ("target.user", "-l", "login name"),
        ("target.user", "de ploy", "login name"),
        ("services.app.ports", ["1.2.3.999:80:80"], "not an IP address"),
        ("services.app.user", "99999999999:1", "at most"),
        ("services.app.memory", 24, "needs a unit"),
        ("services.app.gpu", 65, "at most 64"),
        ("services.app.healthcheck.interval", "200h", "at most 7 days"),
        ("services.app.env", {"1BAD": "x"}, "environment variable name"),
        ("services.app.env", {"A": "x\ny"}, "one line"),
        ("services.app.command", ["sh", "-c", "a\x00b"], "NUL"),
        ("image.context", "/etc", "inside this project"),
        ("image.context", "..", "inside this project"),
        ("image.context", "../../home", "inside this project"),
        ("image.dockerfile", "../Dockerfile", "inside the context"),
    ],
)
def test_a_field_refuses_what_cannot_be_right(key: str, value: Any, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate(changed((key, value)))
    message = str(error.value)
    assert message.startswith(f"gpu-deploy:{key}") and fragment in message and "\n" not in message, message


def test_a_host_port_is_published_once_per_address() -> None:
    admin = {"image": "redis:7.2.4", "ports": ["3000:80"], "user": "1001:1001"}
    rejected(changed(("services.admin", admin)), "services.admin.ports", "services.app.ports has it already")
    other_address = {**admin, "ports": ["127.0.0.2:3000:80"]}
    rejected(changed(("services.admin", other_address)), "services.admin.ports", "has it already")
    udp = {**admin, "ports": ["3000:80/udp"]}
    assert validate(changed(("services.admin", udp)))  # another protocol: no clash
    rejected(
        changed(("services.app.ports", ["3000:3000/udp"])),
        "services.app.healthcheck.http.port",
        "UDP only; HTTP needs TCP",
    )


@SETTINGS
@given(st.text(max_size=30))
def test_any_target_host_is_a_name_an_address_or_refused(text: str) -> None:
    try:
        config = validate(changed(("target.host", text)))
    except ConfigError as err:
        assert str(err).startswith("gpu-deploy:target.host") and "\n" not in str(err)
        return
    host = config.target.host  # type: ignore[union-attr]
    assert not host.startswith("-") and "@" not in host and not any(c.isspace() for c in host)


# ---------------------------------------------------------------- secrets
SECURE = {"secure": "v1:AAAAAAAAAAAAAAAA:c2VjcmV0IHZhbHVl"}


@pytest.mark.parametrize("stack", ["prod", "a4000", "edu-gpu", "h100", "dev", "a2"])
def test_every_shipped_stack_takes_an_encrypted_value_and_stays_readable(tmp_path: Path, stack: str) -> None:
    """A `secure:` secretEnv value plans, keeps only itself secret (the other env values stay plain in the
    plan), and passes on to the container or Pod as a secret."""

    def edit(config: dict[str, Any]) -> None:
        first = next(iter(config["gpu-deploy:services"].values()))
        first.setdefault("secretEnv", {})["API_TOKEN"] = SECURE

    plan = make_plan(stack, config_file=write_config(tmp_path, edit, stack))
    text = json.dumps(plan.as_json())
    assert "c2VjcmV0IHZhbHVl" not in text
    first = next(iter(stack_config(stack)["gpu-deploy:services"]))
    if stack == "a2":
        return  # env reaches the Deployment through the workload's Secret (tests/stacks/test_kubernetes_stack.py)
    plain = env_of(containers(plan)[first])
    declared = stack_config(stack)["gpu-deploy:services"][first].get("env", {})
    assert {k: plain.get(k) for k in declared} == {k: str(v) for k, v in declared.items()}, (
        "one secure value does not make every env value secret"
    )


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("services.app.command", "a command line"),
        ("image.buildArgs.EXTRA", "image history"),
        ("services.app.smoke", "smoke checks"),
        ("services.app.cpuEnv.KEY", "CPU fallback"),
        ("services.app.gpu", "used in clear"),
    ],
)
def test_a_secure_value_is_refused_where_it_would_land_in_clear(path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_secure_places(frozenset({path}))
    assert str(error.value).startswith(f"gpu-deploy:{path}: ") and fragment in str(error.value)
    check_secure_places(frozenset({"services.app.secretEnv.JWT", "target.sshKey", "image.registry.password"}))


@SETTINGS
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_!", min_size=6, max_size=30))
def test_an_error_never_echoes_a_secret_value(secret: str) -> None:
    """With `services` secret (the CLI's whole-key marking) and no stack file to say which value was
    secure, a refused value is masked in the one-line error."""
    raw = copy.deepcopy(BASE)
    raw["services"]["app"]["gpu"] = secret
    with pytest.raises(ConfigError) as error:
        validate_with_secrets(raw, frozenset({"services"}), None)
    problem = str(error.value).split(": ", 1)[1]
    assert str(error.value).startswith("gpu-deploy:services.app.gpu: ")
    assert "[secret]" in problem and secret not in problem.replace("[secret]", "")


@pytest.mark.parametrize(
    "name", ["DB_PASS", "PASSPHRASE", "AUTHTOKEN", "JWT_SIGNING_KEY", "x-api-key", "HF_TOKEN"]
)
def test_credential_names_are_refused_in_plain_env(name: str) -> None:
    assert looks_secret(name)


@pytest.mark.parametrize(
    "name", ["TOKENIZERS_PARALLELISM", "HOST_KEY", "BYPASS_CACHE", "CACHE_KEY", "NODE_ENV"]
)
def test_ordinary_names_are_not_credentials(name: str) -> None:
    assert not looks_secret(name)


def test_a_url_with_a_password_is_refused_in_plain_env_and_build_args() -> None:
    rejected(
        changed(("services.app.env", {"DATABASE_URL": "postgres://app:hunter2@db/app"})),
        "services.app.env.DATABASE_URL",
        "user:password@",
    )
    rejected(changed(("image.buildArgs", {"MIRROR": "https://u:p@mirror/x"})), "image.buildArgs.MIRROR", "")
    assert validate(changed(("services.app.env", {"REDIS_URL": "redis://redis:6379/0"})))


def test_the_stack_file_says_which_value_was_secure(tmp_path: Path) -> None:
    """Only the value written `secure:` is kept secret, however the CLI marks the whole key."""
    doc = {"config": {"gpu-deploy:services": {"app": {"env": {"A": "1", "B": SECURE}}}}}
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text(yaml.safe_dump(doc))
    import os

    from stacks.config import STACK_FILE_VARIABLE, secure_paths

    old = os.environ.get(STACK_FILE_VARIABLE)
    os.environ[STACK_FILE_VARIABLE] = str(path)
    try:
        assert secure_paths("x") == frozenset({"services.app.env.B"})
    finally:
        if old is None:
            del os.environ[STACK_FILE_VARIABLE]
        else:
            os.environ[STACK_FILE_VARIABLE] = old
    raw = copy.deepcopy(BASE)
    raw["services"]["app"]["env"] = {"A": "1", "B": "decrypted"}
    config: StackConfig = validate_with_secrets(
        raw, frozenset({"services"}), frozenset({"services.app.env.B"})
    )
    assert config.services["app"].env == {"A": "1"}
    assert config.services["app"].secret_env["B"] == "decrypted"


# ---------------------------------------------------------------- data
DATA_EDITS = {
    "disable": lambda c: c["gpu-deploy:services"]["app"].update(enabled=False),
    "rename": lambda c: c["gpu-deploy:services"].update(web=c["gpu-deploy:services"].pop("app")),
    "drop-volume": lambda c: c["gpu-deploy:services"]["app"].update(volumes=["data:/app/data"]),
    "new-root": lambda c: c["gpu-deploy:target"].update(root="/srv/elt-2"),
    "new-uid": lambda c: [
        c["gpu-deploy:services"][s].update(user="2000:2000") for s in ("app", "migrate", "admin")
    ],
    "new-host": lambda c: c["gpu-deploy:target"].update(host="p40b.gpu.internal"),
}


@pytest.mark.parametrize("case", list(DATA_EDITS))
def test_no_config_change_deletes_data(tmp_path: Path, case: str, shipped_plan: ShippedPlan) -> None:
    """What a change deletes holds no data (a container; a command without a delete step; a kept image),
    and where it moves the services away from their data (a new root, a new host) the diff says so."""
    from stacks.diff import diff_plans

    before = shipped_plan("prod")
    after = make_plan("prod", config_file=write_config(tmp_path, DATA_EDITS[case]))
    diff = diff_plans(before.as_json(), after.as_json(), "prod")
    old = {r.urn: r for r in before.resources}
    for change in diff.of("delete") + diff.of("replace"):
        resource = old[change.urn]
        if change.type.startswith("command:") and "Command" in change.type:
            # the one delete step: a service's route leaves the proxy (proxy-routes.sh), no data
            is_route = "gpu-deploy:docker:ReverseProxy$" in change.urn and resource.name.endswith("-route")
            assert is_route or "delete" not in resource.inputs, f"{change.name} would run a delete step"
        elif change.type == "docker:index/image:Image":
            assert change.kept
        else:
            holds_no_data = (
                "docker:index/container:Container",  # bind mounts: the data is on the host
                "docker:index/network:Network",
                "command:remote:CopyToRemote",  # the runners
                "pulumi:providers:docker",  # another host is another provider
            )
            assert change.type in holds_no_data, change.line()
    if case == "new-root":
        assert any(
            "/srv/english-listening-trainer: its directories and their data stay there" in n
            for n in diff.data
        )
    if case == "new-host":
        assert any("the data there stays on that host" in n for n in diff.data)
    if case in ("disable", "rename", "drop-volume", "new-uid"):
        assert not diff.data


def test_a_smoke_header_takes_its_value_from_secret_env(tmp_path: Path) -> None:
    """The key is written once (secretEnv); the runner gets it on its stdin, which is then a secret."""

    def edit(config: dict[str, Any]) -> None:
        app = config["gpu-deploy:services"]["app"]
        app["secretEnv"] = {"API_TOKEN": "Bearer s3cr3t-token-value"}
        app["smoke"][0]["http"]["headers"] = {"Authorization": {"secretEnv": "API_TOKEN"}}

    plan = make_plan("prod", config_file=write_config(tmp_path, edit))
    run = plan.named("command:remote:Command", "smoke-app-run")
    assert run.inputs["stdin"] == "[secret]"
    assert "s3cr3t-token-value" not in json.dumps(plan.as_json())

    def missing(config: dict[str, Any]) -> None:
        edit(config)
        config["gpu-deploy:services"]["app"]["secretEnv"] = {}

    with pytest.raises(ConfigError, match=r"takes header Authorization from secretEnv\.API_TOKEN"):
        raw = {
            k.removeprefix("gpu-deploy:"): v
            for k, v in yaml.safe_load(write_config(tmp_path, missing).read_text())["config"].items()
            if k.startswith("gpu-deploy:")
        }
        validate(raw)


def test_rotating_a_secret_shows_in_the_offline_diff(tmp_path: Path) -> None:
    from stacks.diff import diff_plans, render_text

    def with_secret(ciphertext: str) -> Any:
        def edit(config: dict[str, Any]) -> None:
            config["gpu-deploy:services"]["app"]["secretEnv"] = {"JWT_SECRET": {"secure": ciphertext}}

        return edit

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    before = make_plan("prod", config_file=write_config(tmp_path / "a", with_secret("v1:AAAA:one")))
    after = make_plan("prod", config_file=write_config(tmp_path / "b", with_secret("v1:AAAA:two")))
    diff = diff_plans(before.as_json(), after.as_json(), "prod")
    assert "secret services.app.secretEnv.JWT_SECRET is rotated" in diff.data
    (app,) = [c for c in diff.of("replace") if c.name == "app"]
    assert "services.app.secretEnv.JWT_SECRET is rotated" in app.line()
    assert "v1:AAAA" not in render_text(diff) and "v1:AAAA" not in json.dumps(after.as_json())
    same = diff_plans(before.as_json(), before.as_json(), "prod")
    assert not same.data and same.empty
