"""The catalog: the one derivation, the named cards as data, the CUDA facts it rests on, their sources."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from components.core import architectures, cards, catalog, cuda
from components.core.catalog import CARDS, PROFILES, derive_profile, profile_for_gpu

# The four profiles as they shipped before derivation: the compatibility promise, written out.
SHIPPED: dict[str, dict[str, Any]] = {
    "p40": {
        "key": "p40",
        "display_name": "Tesla P40",
        "nvml_names": ("Tesla P40",),
        "gpu_products": ("Tesla-P40",),
        "architecture": "Pascal",
        "compute_capability": (6, 1),
        "memory_mib": 22919,
        "mig_capable": False,
        "kernel_modules": "proprietary",
        "driver_branch": "580",
        "max_cuda_major": 12,
        "max_wheel_cuda": "12.6",
        "cuda_version": "12.4.1",
        "torch_version": "2.6.0",
        "wheel_flavour": "cu124",
        "driver_capabilities": "compute,utility",
        "k8s_sharing": "time-slicing",
        "mig_profiles": {},
        "base_image": "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04",
    },
    "a2": {
        "key": "a2",
        "display_name": "NVIDIA A2",
        "nvml_names": ("NVIDIA A2",),
        "gpu_products": ("NVIDIA-A2",),
        "architecture": "Ampere",
        "compute_capability": (8, 6),
        "memory_mib": 15356,
        "mig_capable": False,
        "kernel_modules": "open",
        "driver_branch": "580",
        "max_cuda_major": None,
        "max_wheel_cuda": None,
        "cuda_version": "12.6.3",
        "torch_version": "2.7.1",
        "wheel_flavour": "cu126",
        "driver_capabilities": "compute,utility",
        "k8s_sharing": "time-slicing",
        "mig_profiles": {},
        "base_image": "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04",
    },
    "a4000": {
        "key": "a4000",
        "display_name": "NVIDIA RTX A4000",
        "nvml_names": ("NVIDIA RTX A4000",),
        "gpu_products": ("NVIDIA-RTX-A4000",),
        "architecture": "Ampere",
        "compute_capability": (8, 6),
        "memory_mib": 16376,
        "mig_capable": False,
        "kernel_modules": "open",
        "driver_branch": "580",
        "max_cuda_major": None,
        "max_wheel_cuda": None,
        "cuda_version": "12.6.3",
        "torch_version": "2.7.1",
        "wheel_flavour": "cu126",
        "driver_capabilities": "compute,utility",
        "k8s_sharing": "none",
        "mig_profiles": {},
        "base_image": "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04",
    },
    "h100": {
        "key": "h100",
        "display_name": "NVIDIA H100",
        "nvml_names": ("NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM3"),
        "gpu_products": ("NVIDIA-H100-PCIe", "NVIDIA-H100-80GB-HBM3"),
        "architecture": "Hopper",
        "compute_capability": (9, 0),
        "memory_mib": 81559,
        "mig_capable": True,
        "kernel_modules": "open",
        "driver_branch": "580",
        "max_cuda_major": None,
        "max_wheel_cuda": None,
        "cuda_version": "12.8.1",
        "torch_version": "2.8.0",
        "wheel_flavour": "cu128",
        "driver_capabilities": "compute,utility",
        "k8s_sharing": "none",
        "mig_profiles": {"1g.10gb": 7, "1g.20gb": 4, "2g.20gb": 3, "3g.40gb": 2, "4g.40gb": 1, "7g.80gb": 1},
        "base_image": "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04",
    },
}
NAMED = [card.key for card in CARDS]


def card(key: str) -> cards.Card:
    return next(c for c in CARDS if c.key == key)


@pytest.mark.parametrize("key", list(SHIPPED))
def test_derivation_reproduces_the_shipped_profiles(key: str) -> None:
    derived = derive_profile(card(key))
    assert {name: getattr(derived, name) for name in SHIPPED[key]} == SHIPPED[key]
    assert PROFILES[key] == derived


def test_profiles_are_the_named_cards_derived_and_cpu() -> None:
    assert list(PROFILES) == [*NAMED, "cpu"]
    assert len(NAMED) >= 21
    assert all(PROFILES[c.key] == derive_profile(c) for c in CARDS)
    assert not PROFILES["cpu"].is_gpu


@pytest.mark.parametrize("key", NAMED)
def test_a_named_card_treated_as_unknown_derives_the_same_profile(key: str) -> None:
    """NVML's facts alone give the named profile, bar what is the card's own data: its key and names, its
    MIG profile table and its sharing default."""
    named = PROFILES[key]
    assert named.compute_capability is not None
    derived = profile_for_gpu(
        "Some Future Name", named.memory_mib, named.compute_capability, named.mig_capable
    )
    assert derived.key == "some-future-name"
    own = {"key", "display_name", "nvml_names", "gpu_products", "mig_profiles", "k8s_sharing"}
    fields = [f.name for f in dataclasses.fields(catalog.GpuProfile) if f.name not in own]
    assert {f: getattr(derived, f) for f in fields} == {f: getattr(named, f) for f in fields}
    assert derived.build_args() | {"GPU_PROFILE": key} == named.build_args()


def test_every_card_and_fact_table_cites_a_source() -> None:
    for c in CARDS:
        assert c.source.strip(), c.key
        assert "http" in c.source or "gpu-facts.md" in c.source, c.key
    for architecture in architectures.ARCHITECTURES:
        assert "http" in architecture.source, architecture.name
    for source in (cuda.SOURCE_DRIVERS, cuda.SOURCE_MINOR_COMPAT, cuda.SOURCE_IMAGES, cuda.SOURCE_WHEELS):
        assert source.startswith("https://")
    assert set(cuda.WHEEL_ARCHS) == set(cuda.WHEEL_CUDA)


def test_card_keys_and_names() -> None:
    keys = [c.key for c in CARDS]
    assert len(set(keys)) == len(keys)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", k) for k in keys)
    names = [n for c in CARDS for n in c.nvml_names]
    assert len(set(names)) == len(names)
    for c in CARDS:
        assert c.gpu_products == tuple(cards.gpu_product_label(n) for n in c.nvml_names)
        assert bool(c.mig_profiles) == c.mig_capable
        assert c.memory_mib > 0
    assert cards.gpu_product_label("NVIDIA RTX 6000 Ada Generation") == "NVIDIA-RTX-6000-Ada-Generation"
    assert cards.gpu_product_label("Tesla V100-SXM2-32GB") == "Tesla-V100-SXM2-32GB"
    assert cards.slug("NVIDIA GeForce RTX 5090") == "geforce-rtx-5090"


def test_mig_profiles_fit_the_card() -> None:
    """Each MIG profile's memory is at most the card's, and the largest uses (nearly) all of it."""
    for c in (c for c in CARDS if c.mig_capable):
        sizes = {name: int(re.fullmatch(r"\d+g\.(\d+)gb", name).group(1)) for name in c.mig_profiles}  # type: ignore[union-attr]
        gib = c.memory_mib / 1024
        assert max(sizes.values()) <= gib + 1, c.key
        assert max(sizes.values()) >= 0.9 * gib, c.key


# --- CUDA facts ---------------------------------------------------------------------------------------------


def test_update_releases_ask_more_than_their_ga() -> None:
    assert cuda.toolkit_min_driver("12.2.2") == "535.104.05"
    assert cuda.toolkit_min_driver("12.2") == cuda.toolkit_min_driver("12.2.0") == "535.54.03"
    assert cuda.toolkit_min_driver("12.0.1") == "525.85.12"
    assert cuda.toolkit_min_driver("12.4.1") == "550.54.15"
    assert cuda.toolkit_min_driver("12.3.2") == cuda.toolkit_min_driver("12.3.1")  # no row of its own
    with pytest.raises(ValueError, match=r"no known minimum driver for CUDA 12.7"):
        cuda.toolkit_min_driver("12.7.0")
    assert catalog.CUDA_MIN_DRIVER["12.8"] == cuda.TOOLKIT_MIN_DRIVER["12.8.0"]


def test_versions_ask_monotonically_more() -> None:
    drivers = [
        cuda.parse_version(d)
        for _, d in sorted(cuda.TOOLKIT_MIN_DRIVER.items(), key=lambda kv: cuda.parse_version(kv[0]))
    ]
    assert drivers == sorted(drivers)


def test_required_versus_advised() -> None:
    """With machine code for the card a 12.x image needs only the 12.x floor; without it, the toolkit's own."""
    with_sass = cuda.driver_need("12.8.1", "cu128", True)
    assert (with_sass.required, with_sass.advised) == (cuda.MINOR_COMPAT_FLOOR[12], "570.124.06")
    without = cuda.driver_need("12.8.1", "cu128", False)
    assert without.required == without.advised == "570.124.06"
    cuda13 = cuda.driver_need("13.0.1", "cu128", True)  # a 13.x image has the 13.x floor
    assert (cuda13.required, cuda13.advised) == (cuda.MINOR_COMPAT_FLOOR[13], "580.82.07")
    newer_wheel = cuda.driver_need("12.4.1", "cu126", True)  # the wheel's CUDA can ask more than the image's
    assert newer_wheel.advised == cuda.toolkit_min_driver("12.6")
    p40 = PROFILES["p40"]
    assert p40.sass_in_wheel  # cu124 carries sm_60, which runs on sm_61
    assert p40.required_driver == cuda.MINOR_COMPAT_FLOOR[12]
    assert p40.min_driver == "550.54.15"
    with pytest.raises(ValueError, match=r"below 550.54.15, the minimum for CUDA 12.4.1"):
        p40.check_driver("535")
    p40.check_driver("535", required_only=True)
    with pytest.raises(ValueError, match=r"required .CUDA 12.x minor-version compatibility"):
        p40.check_driver("520", required_only=True)


@pytest.mark.parametrize(
    ("version", "token"),
    [("11.8.0", "cudnn8"), ("12.2.2", "cudnn8"), ("12.3.0", "cudnn8"), ("12.3.1", "cudnn8"),
     ("12.3.2", "cudnn9"), ("12.4.0", "cudnn"), ("13.0.1", "cudnn")],
)  # fmt: skip
def test_cudnn_token(version: str, token: str) -> None:
    assert cuda.cudnn_token(version) == token
    assert f":{version}-{token}-runtime-ubuntu" in catalog.cuda_base_image(version, cuda.ubuntu_for(version))


def test_wheel_kernels() -> None:
    assert cuda.wheel_has_sass("cu126", "2.7.1", (6, 1))
    assert not cuda.wheel_has_sass("cu128", "2.8.0", (6, 1))
    assert cuda.wheel_has_sass("cu128", "2.8.0", (7, 0))  # 2.8 put Volta back (#157517)
    assert not cuda.wheel_has_sass("cu128", "2.7.1", (7, 0))
    assert not cuda.wheel_has_sass("cu128", "2.11.0", (7, 0))
    assert not cuda.wheel_has_sass("cu130", "2.9.0", (7, 0))
    assert cuda.wheel_has_sass("cu128", "2.8.0", (8, 9))  # sm_86 code runs on sm_89
    assert not cuda.wheel_has_sass("cu126", "2.7.1", (12, 0))


# --- refusals, each with its reason --------------------------------------------------------------------------


def test_kepler_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError) as refused:
        profile_for_gpu("Tesla K80", 11441, (3, 7), False)
    message = str(refused.value)
    assert message.startswith("a 'Tesla K80' cannot be served: compute capability 3.7 (Kepler)")
    assert "CUDA 12.0 removed Kepler" in message
    with pytest.raises(ValueError, match=r"newer than any architecture"):
        profile_for_gpu("NVIDIA Future", 1000, (15, 0), False)


def test_maxwell_pascal_volta_refuse_cuda_13() -> None:
    for name, cc, arch in [
        ("Tesla M60", (5, 2), "Maxwell"),
        ("Tesla P40", (6, 1), "Pascal"),
        ("x", (7, 0), "Volta"),
    ]:
        profile = profile_for_gpu(name, 8000, cc, False)
        assert profile.max_cuda_major == 12
        assert profile.kernel_modules == "proprietary"
        with pytest.raises(ValueError, match=f"CUDA 13 dropped {arch}; use a 12.x release"):
            profile.with_overrides(cuda_version="13.0.1")


def test_blackwell_needs_cuda_12_8_and_cu128() -> None:
    rtx_5090 = profile_for_gpu("NVIDIA GeForce RTX 5090", 32607, (12, 0), False)
    assert (rtx_5090.architecture, rtx_5090.cuda_version, rtx_5090.wheel_flavour) == (
        "Blackwell",
        "12.8.1",
        "cu128",
    )
    with pytest.raises(ValueError, match=r"CUDA 12.8 is the first release for Blackwell"):
        rtx_5090.with_overrides(cuda_version="12.6.3")
    with pytest.raises(ValueError, match=r"cu126 wheels carry no sm_120 kernels.*use cu128 or newer"):
        rtx_5090.with_overrides(wheel_flavour="cu126")


def test_wheel_limits_follow_the_torch_release() -> None:
    v100 = PROFILES["v100-pcie-16gb"]
    assert v100.max_wheel_cuda == "12.9"
    v100.with_overrides(cuda_version="12.8.1", wheel_flavour="cu128", torch_version="2.8.0")
    with pytest.raises(ValueError, match=r"cu128 wheels .torch 2.7.1. carry no sm_70"):
        v100.with_overrides(cuda_version="12.8.1", wheel_flavour="cu128", torch_version="2.7.1")
    with pytest.raises(ValueError, match=r"use cu126 or older"):
        PROFILES["p40"].with_overrides(wheel_flavour="cu128", torch_version="2.8.0")


def test_open_modules_need_turing() -> None:
    pascal = dataclasses.replace(card("p40"), kernel_modules="open")
    with pytest.raises(ValueError, match=r"cannot use the open kernel modules"):
        derive_profile(pascal)
    assert (
        derive_profile(dataclasses.replace(card("a2"), kernel_modules="proprietary")).kernel_modules
        == "proprietary"
    )


# --- a card as JSON (the preflight's report, a stack's own card) ---------------------------------------------


@pytest.mark.parametrize("key", NAMED)
def test_card_json_round_trips(key: str) -> None:
    data = catalog.card_json(PROFILES[key])
    assert data is not None
    assert catalog.profile_from_card_json(data) == PROFILES[key]
    assert cards.card_from_json(card(key).to_json()) == card(key)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"key": "H100"}, "card.key: a key is lowercase"),
        ({"compute_capability": "nine"}, "card.compute_capability:"),
        ({"memory_mib": -1}, "card.memory_mib:"),
        ({"nvml_names": []}, "card.nvml_names:"),
        (
            {"mig_profiles": {"1g.10gb": 7}},
            "card.mig_profiles: MIG profiles on a card that is not mig_capable",
        ),
        ({"k8s_sharing": "all"}, "card.k8s_sharing:"),
        ({"colour": "green"}, "card.colour: unknown field"),
    ],
)
def test_card_json_errors_name_the_field(change: dict[str, Any], problem: str) -> None:
    data = {**card("a2").to_json(), **change}
    with pytest.raises(ValueError, match=re.escape(problem)):
        cards.card_from_json(data)
    with pytest.raises(ValueError, match=r"card.key: missing"):
        cards.card_from_json({k: v for k, v in card("a2").to_json().items() if k != "key"})
