"""Where a stack's config comes from: the values the Pulumi engine hands the program, which of them are
secret, the stack file's `secure:` values; a secure value is kept secret to where it is used, and never
shown in an error message."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pulumi.runtime import get_config, is_config_secret

from stacks import pulumi_sdk
from stacks.config.errors import NAMESPACE, ConfigError
from stacks.config.stack import StackConfig, validate


def read_pulumi_config() -> tuple[dict[str, Any], frozenset[str]]:
    """The raw `gpu-deploy:` values the engine handed this program, and which keys are secret."""
    raw: dict[str, Any] = {}
    secret: set[str] = set()
    keys = pulumi_sdk.configured_keys()
    for full_key in sorted(keys):
        namespace, _, key = full_key.partition(":")
        if namespace != NAMESPACE:
            continue
        value = get_config(full_key)
        if isinstance(value, str) and value[:1] in ("{", "["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(key, "is not valid JSON structured config") from None
        raw[key] = value
        if is_config_secret(full_key):
            secret.add(key)
    return raw, frozenset(secret)


STACK_FILE_VARIABLE = "GPU_DEPLOY_STACK_FILE"  # set by the offline tools: the stack file they read


def _secure_leaves(value: Any, key: str) -> list[tuple[str, str]]:
    if isinstance(value, Mapping):
        if set(value) == {"secure"}:
            return [(key, str(value["secure"]))]
        return [p for k, v in value.items() for p in _secure_leaves(v, f"{key}.{k}" if key else str(k))]
    if isinstance(value, list):
        return [p for v in value for p in _secure_leaves(v, key)]
    return []


def secure_values(doc: Any) -> dict[str, str] | None:
    """A stack file's `secure:` values: config key (`services.app.secretEnv.JWT_SECRET`) -> ciphertext.
    None when the document has no config mapping."""
    config = doc.get("config") if isinstance(doc, Mapping) else None
    if not isinstance(config, Mapping):
        return None
    found: dict[str, str] = {}
    for full_key, value in config.items():
        namespace, _, key = str(full_key).partition(":")
        if namespace == NAMESPACE and key:
            found.update(_secure_leaves(value, key))
    return found


def secure_paths(stack: str) -> frozenset[str] | None:
    """Where the stack file has `secure:` values, as config keys (`services.app.secretEnv.JWT_SECRET`).

    The CLI hands the program a whole top-level key as secret when one value inside it is `secure:`; the
    stack file says which value it was, so only that one is kept secret (the rest of `services` stays
    readable in plans and reviews). None when the file cannot be read: then every value under a secret
    key is treated as secret."""
    from stacks.stackfile import read_stack  # noqa: PLC0415 (stackfile imports this module)

    path = Path(os.environ.get(STACK_FILE_VARIABLE) or f"Pulumi.{stack}.yaml")
    try:
        doc = read_stack(path) or {}
    except (OSError, ConfigError):
        return None
    found = secure_values(doc)
    return None if found is None else frozenset(found)


# Where a secret may stand: each is kept a Pulumi secret all the way to where it is used (an env value
# becomes secretEnv). Anywhere else it would land in clear: in image history (build args), in a command
# line `docker inspect` shows, in a ConfigMap (Kubernetes smoke checks), in a CPU fallback's plain env.
_SECRET_PLACES = (
    re.compile(r"target\.(sshKey|kubeconfig)"),
    re.compile(r"nodes\.[^.]+\.sshKey"),
    re.compile(r"image\.registry\.password"),
    re.compile(r"services\.[^.]+\.(secretEnv|env)\.[^.]+"),
)
_SECRET_ELSEWHERE = {
    "buildArgs": "build args are kept in the image history",
    "command": "a command line is shown by docker inspect and ps",
    "smoke": "smoke checks travel in clear (on Kubernetes in a ConfigMap)",
    "cpuEnv": "the CPU fallback's env is plain; give it secretEnv",
}


def check_secure_places(paths: frozenset[str]) -> None:
    """A `secure:` value only where it can stay secret; one line naming the key otherwise."""
    for path in sorted(paths):
        if any(p.fullmatch(path) for p in _SECRET_PLACES):
            continue
        why = next(
            (v for k, v in _SECRET_ELSEWHERE.items() if f".{k}" in f".{path}"), "it would be used in clear"
        )
        raise ConfigError(
            path,
            f"a secure value cannot stay secret here ({why}): put the credential in "
            "services.<name>.secretEnv and refer to it at run time",
        )


def validate_with_secrets(
    raw: Mapping[str, Any], secret_keys: frozenset[str], secure: frozenset[str] | None = None
) -> StackConfig:
    """Validate, then keep every secure env value secret: move it to secretEnv.

    With the stack file's `secure` paths, only the env values that were `secure:` move; without them (no
    stack file to read) every env value under a secret `services` key does, rather than leak one."""
    if secure is not None:
        check_secure_places(secure)
    try:
        config = validate(raw)
    except ConfigError as err:
        raise _masked(err, raw, secret_keys, secure) from None
    if "services" not in secret_keys:
        return config
    services = {}
    for name, svc in config.services.items():
        moved = {k: v for k, v in svc.env.items() if secure is None or f"services.{name}.env.{k}" in secure}
        plain = {k: v for k, v in svc.env.items() if k not in moved}
        services[name] = svc.model_copy(update={"env": plain, "secret_env": {**moved, **svc.secret_env}})
    return config.model_copy(update={"services": services})


def _masked(
    err: ConfigError, raw: Mapping[str, Any], secret_keys: frozenset[str], secure: frozenset[str] | None
) -> ConfigError:
    """The error without any secret value in it (a message may quote the value it refuses)."""
    key, _, message = str(err).removeprefix(f"{NAMESPACE}:").partition(": ")
    secrets: list[str] = []

    def collect(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                collect(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list):
            for v in value:
                collect(v, key)
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            top = key.split(".", 1)[0]
            if (secure is not None and key in secure) or (secure is None and top in secret_keys):
                secrets.append(str(value))

    collect(raw, "")
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= 3:
            message = message.replace(json.dumps(secret), '"[secret]"').replace(secret, "[secret]")
    return ConfigError(key, message)
