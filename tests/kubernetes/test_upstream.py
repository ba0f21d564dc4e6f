"""The NVIDIA upstream rules the Kubernetes target relies on, restated from their source at the pinned
releases and run against every shipped and generated sharing setup.

- GPU feature discovery's product label: k8s-device-plugin v0.17.1 internal/lm/resource.go
  (sanitise, getProductName) and internal/lm/nvml.go (which resource's sharing entry applies).
- The device-plugin config decoder: k8s-device-plugin v0.17.1 api/config/v1 (config.go parseConfigFrom,
  replicas.go ReplicatedResource.UnmarshalJSON, resources.go NewResourceName): a refused config makes the
  plugin and GFD exit(1), so the node advertises no GPU.
The gpu-operator chart v25.3.0 (NVIDIA/gpu-operator deployments/gpu-operator/values.yaml) is the
extract in tests/upstream/.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.core.catalog import PROFILES, GpuProfile
from components.core.sharing import SharingSpec, validate_sharing
from components.kubernetes.cluster import (
    GpuClusterArgs,
    OperatorSpec,
    device_plugin_configs,
    node_product_labels,
    operator_values,
)

UPSTREAM = Path(__file__).resolve().parents[1] / "upstream"


class Refused(ValueError):
    pass


def resource_name(name: str) -> str:  # api/config/v1/resources.go NewResourceName
    if not name.startswith("nvidia.com/"):
        name = "nvidia.com/" + name
    if len(name) > 63:
        raise Refused(f"fully-qualified resource name must be 63 characters or less: {name}")
    short = name.split("/", 1)[1]
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", short):
        raise Refused(f"incorrect format for resource name '{name}'")
    return name


def decode_replicated(document: dict[str, Any]) -> dict[str, Any]:  # replicas.go
    rename_by_default = document.get("renameByDefault", False)
    if not document.get("resources"):
        raise Refused("no resources specified")
    resources = []
    for entry in document["resources"]:
        if "name" not in entry:
            raise Refused("no resource name specified")
        name = resource_name(entry["name"])
        devices = entry.get("devices", "all")
        if isinstance(devices, str) and devices != "all":
            raise Refused(f"devices set as '{devices}' but the only valid string input is 'all'")
        if "replicas" not in entry:
            raise Refused("no replicas specified")
        if entry["replicas"] < 2:
            raise Refused("number of replicas must be >= 2")
        resources.append({"name": name, "replicas": entry["replicas"], "rename": rename_by_default})
    return {"resources": resources}


def decode_config(document: dict[str, Any], env_mig_strategy: str | None) -> dict[str, Any]:  # config.go
    version = document.get("version") or "v1"
    if version != "v1":
        raise Refused(f"unknown version: {version}")
    mig = env_mig_strategy or document.get("flags", {}).get("migStrategy") or "none"  # the env wins
    sharing = document.get("sharing", {})
    slicing = decode_replicated(sharing["timeSlicing"]) if "timeSlicing" in sharing else None
    mps = decode_replicated(sharing["mps"]) if "mps" in sharing else None
    active = mps if mps is not None else slicing
    strategy = "mps" if mps else "time-slicing" if slicing else "none"
    if mig not in ("none", "single", "mixed"):
        raise Refused(f"unknown MIG strategy: {mig}")
    if strategy == "mps" and mig == "mixed":
        raise Refused("using --mig-strategy=mixed is not supported with MPS")
    if strategy == "mps" and mig != "none":
        raise Refused("sharing using MPS is not supported for MIG devices")
    return {"mig": mig, "active": active, "strategy": strategy}


def sanitise(text: str) -> str:  # internal/lm/resource.go
    return "-".join(re.sub(r"[^A-Za-z0-9\-_. ]", "", text).split())


def gfd_product(config: dict[str, Any], model: str, mig_profile: str | None, sharing_disabled: bool) -> str:
    parts = [model, *(["MIG", mig_profile] if mig_profile else [])]
    entry = None
    if not sharing_disabled and config["active"] is not None:
        entry = next((r for r in config["active"]["resources"] if r["name"] == "nvidia.com/gpu"), None)
    product = "-".join(sanitise(p) for p in parts)
    if entry is not None and entry["replicas"] > 1 and not entry["rename"]:
        product += "-SHARED"
    return product


def labels_gfd_sets(config: dict[str, Any], profile: GpuProfile) -> set[str]:
    """Every nvidia.com/gpu.product value a node with this card gets under the decoded config."""
    models = [p.replace("-", " ") for p in profile.gpu_products]  # NVML names, as GFD reads them
    found = set()
    for model in models:
        if config["mig"] == "single":
            found |= {gfd_product(config, model, p, False) for p in profile.mig_profiles}
        else:  # none, or mixed (the full GPU resource is not shared on a MIG GPU)
            found.add(gfd_product(config, model, None, config["mig"] == "mixed"))
    return found


def sharing_setups() -> list[tuple[str, SharingSpec]]:
    setups = []
    for key, profile in PROFILES.items():
        if not profile.is_gpu:
            continue
        migs = ["none", "single", "mixed"] if profile.mig_capable else ["none"]
        for strategy, replicas, rename, mig in itertools.product(
            ["none", "time-slicing", "mps", "mig"], [1, 2, 4], [False, True], migs
        ):
            spec = SharingSpec(
                strategy=strategy,  # type: ignore[arg-type]
                replicas=replicas,
                rename_by_default=rename,
                mig_strategy=mig,  # type: ignore[arg-type]
            )
            setups.append((key, spec))
        setups.append((key, SharingSpec("time-slicing", 2, per_product={profile.gpu_products[0]: 4})))
        setups.append((key, SharingSpec("time-slicing", 2, per_product={profile.gpu_products[0]: 1})))
    return setups


@pytest.mark.parametrize(("profile_key", "spec"), sharing_setups())
def test_what_we_accept_the_plugin_accepts_and_pods_select_what_gfd_sets(
    profile_key: str, spec: SharingSpec
) -> None:
    profile = PROFILES[profile_key]
    try:
        validate_sharing(spec, profile, 0)
        accepted = True
    except ValueError:
        accepted = False
    # the chart passes mig.strategy as MIG_STRATEGY, which beats the file (config.go, flags.go)
    env_mig = operator_values(cluster_args(spec, profile))["mig"]["strategy"]
    decoded: list[dict[str, Any]] = []
    try:
        for document in device_plugin_configs(spec).values():
            decoded.append(decode_config(yaml.safe_load(yaml.safe_dump(document)), env_mig))
        plugin_accepts = True
    except Refused:
        plugin_accepts = False
    if accepted:
        assert plugin_accepts, f"we accept {spec}, the device plugin would exit"
        ours = set(node_product_labels(spec, profile))
        theirs = set().union(*(labels_gfd_sets(c, profile) for c in decoded))
        assert ours == theirs
    elif spec.strategy in ("time-slicing", "mps") and (
        spec.replicas < 2 or min(spec.per_product.values(), default=2) < 2
    ):
        assert not plugin_accepts, "refused for the plugin's own reason"


def cluster_args(spec: SharingSpec, profile: GpuProfile, *, toolkit: bool = False) -> GpuClusterArgs:
    return GpuClusterArgs(
        namespace="gpu-operator",
        distribution="microk8s",
        sharing=spec,
        operator=OperatorSpec(enabled=True, toolkit=toolkit),
        device_plugin_chart_version="0.17.1",
        dcgm=True,
        profile=profile,
    )


def chart_keys(values: Any, prefix: str = "") -> set[str]:
    if not isinstance(values, dict):
        return {prefix}
    keys = {prefix} if prefix else set()
    for key, value in values.items():
        keys |= chart_keys(value, f"{prefix}.{key}" if prefix else str(key))
    return keys


@pytest.mark.parametrize("toolkit", [False, True])
@pytest.mark.parametrize(
    "spec",
    [SharingSpec("time-slicing", 2), SharingSpec("mig", 1, mig_strategy="single")],
    ids=["none", "single"],
)
def test_operator_values_are_keys_the_pinned_chart_has_with_an_effect(
    toolkit: bool, spec: SharingSpec
) -> None:
    chart = yaml.safe_load((UPSTREAM / "gpu-operator-v25.3.0.values.yaml").read_text())
    mig = spec.mig_strategy
    values = operator_values(cluster_args(spec, PROFILES["h100"], toolkit=toolkit))
    known = chart_keys(chart)
    sent = {k for k in chart_keys(values) if not k.startswith("toolkit.env")}
    assert sent <= known, sorted(sent - known)
    assert "operator" not in values or "defaultRuntime" not in values["operator"], "removed before v25.3.0"
    # toolkit.env is read only by the operator's toolkit container (controllers/object_controls.go)
    assert ("env" in values["toolkit"]) == toolkit
    # mig.strategy always: the chart's default `single` would override the ConfigMap through MIG_STRATEGY
    assert values["mig"]["strategy"] == mig
