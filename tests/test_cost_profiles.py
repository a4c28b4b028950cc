"""Device profiles: every shipped profile loads; the schema rejects bad input clearly."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from hwsparse.cost.profiles import (
    PROFILE_DIR,
    dump_profile,
    list_profiles,
    load_profile,
    parse_profile,
    profile_ids,
)
from hwsparse.errors import InputError

REQUIRED = {
    "raspberry-pi-4",
    "raspberry-pi-5",
    "jetson-nano",
    "jetson-orin-nano",
    "coral-edge-tpu",
    "stm32h7",
    "nrf52840",
    "snapdragon-8-gen-2",
    "x86-laptop",
}


def minimal_profile() -> dict[str, Any]:
    """A small valid profile: 100 GFLOP/s FP32, one 10 GB/s memory level."""
    effs = dict.fromkeys(
        (
            "conv",
            "pointwise",
            "depthwise",
            "fc",
            "batch_norm",
            "activation",
            "add",
            "elementwise",
            "pool",
        ),
        0.5,
    )
    over = dict.fromkeys(
        (
            "conv",
            "pointwise",
            "depthwise",
            "fc",
            "batch_norm",
            "activation",
            "add",
            "elementwise",
            "pool",
        ),
        10.0,
    )
    return {
        "schema_version": 1,
        "id": "toy",
        "name": "Toy device",
        "class": "cpu",
        "notes": "for tests",
        "sources": {"T": "tests"},
        "engines": [
            {
                "name": "cpu",
                "kind": "cpu",
                "cores": 1,
                "clock_ghz": 1.0,
                "peak": {"fp32_gflops": 100.0, "fp16_gflops": None, "int8_gops": 400.0},
                "peak_derivation": "made up [T]",
                "dtype": "fp32",
                "runtime": "toy runtime",
                "artifact": "onnx",
                "threads": 1,
                "efficiency": effs,
                "kernel_overhead_us": {**over, "view": 1.0},
                "invoke_overhead_us": 5.0,
                "container_overhead_us": 0.0,
                "small_layer": {"channels_half": 0, "pixels_half": 0},
                "fused_ops": [],
                "channel_alignment": 1,
                "uncertainty_pct": 20,
                "sparsity": {
                    "weight_formats": ["dense", "bitmask", "csr16", "csr8"],
                    "unstructured": {
                        "exploited": False,
                        "eligible_ops": [],
                        "min_sparsity": None,
                        "speedup_curve": [],
                    },
                    "semi_structured": {"pattern": None, "eligible_ops": [], "speedup": None},
                    "channel_pruning": True,
                    "source": "[T]",
                },
                "source": "[T]",
            }
        ],
        "memory": {
            "levels": [
                {
                    "name": "dram",
                    "size_bytes": None,
                    "bandwidth_gbps": 10.0,
                    "bandwidth_gbps_peak": None,
                    "source": "[T]",
                }
            ]
        },
        "capacity": {
            "ram_bytes": 1_000_000,
            "weight_budget_bytes": 500_000,
            "activation_budget_bytes": None,
            "runtime_reserved_bytes": 1000,
            "weights_in_ram": False,
            "source": "[T]",
        },
        "power": {"idle_w": None, "active_w": 2.0, "tdp_w": None, "source": "[T]"},
        "anchors": [],
    }


def test_every_required_profile_is_shipped_and_loads() -> None:
    assert REQUIRED <= set(profile_ids())
    for profile in list_profiles():
        assert profile.id == Path(str(profile.path)).stem
        assert profile.engines and profile.memory.levels
        for eng in profile.engines:  # the dtype the runtime computes in has a known peak
            assert eng.peak.for_dtype(eng.dtype) is not None
            assert eng.source and eng.sparsity.source


def test_load_by_path_and_round_trip(tmp_path: Path) -> None:
    profile = load_profile(PROFILE_DIR / "stm32h7.yaml")
    assert profile.device_class == "mcu" and profile.engine().dtype == "int8"
    copy_path = tmp_path / "mine.yaml"
    copy_path.write_text(dump_profile(profile))
    again = load_profile(str(copy_path))
    assert again.engines == profile.engines and again.anchors == profile.anchors


def test_minimal_profile_parses() -> None:
    profile = parse_profile(minimal_profile())
    assert profile.engine("cpu").peak.fp32_gflops == 100.0
    with pytest.raises(InputError, match="no engine 'gpu'; valid: cpu"):
        profile.engine("gpu")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d.update(colour="red"),
            r"colour: unknown key; valid: anchors, capacity, class",
        ),
        (
            lambda d: d["engines"][0]["efficiency"].update(cnv=0.5),
            r"engines\[0\]\.efficiency\.cnv: unknown key; valid: activation, add, batch_norm",
        ),
        (
            lambda d: d["engines"][0]["peak"].update(fp32_gflops="fast"),
            r"engines\[0\]\.peak\.fp32_gflops: expected a number or null, got 'fast'",
        ),
        (lambda d: d["engines"][0].update(threads=1.5), r"threads: expected an integer, got 1.5"),
        (lambda d: d.update({"class": "tpu"}), r"class: expected one of 'cpu' \| 'gpu'"),
        (lambda d: d["capacity"].pop("ram_bytes"), r"capacity\.ram_bytes: missing key"),
        (lambda d: d["engines"][0].update(source="[NOPE]"), r"source \[NOPE\] is not defined"),
        (
            lambda d: d["engines"][0]["peak"].update(fp32_gflops=None),
            r"computes in fp32 but its peak is null",
        ),
        (
            lambda d: d["engines"][0]["sparsity"]["semi_structured"].update(pattern="4:2"),
            r"expected 'N:M' with N < M",
        ),
        (
            lambda d: d["engines"][0]["sparsity"]["unstructured"].update(
                speedup_curve=[[0.9, 2.0], [0.5, 1.0]]
            ),
            r"increasing sparsity",
        ),
    ],
)
def test_schema_errors_name_the_key_and_what_is_valid(edit: Any, message: str) -> None:
    data = copy.deepcopy(minimal_profile())
    edit(data)
    with pytest.raises(InputError, match=message) as info:
        parse_profile(data, origin="toy.yaml")
    assert "\n" not in str(info.value) and "toy.yaml" in str(info.value)


def test_unknown_target_lists_valid_ids_and_bad_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown target 'pi4'; valid: coral-edge-tpu, "):
        load_profile("pi4")
    with pytest.raises(InputError, match="not found"):
        load_profile(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("id: [unclosed\n")
    with pytest.raises(InputError, match=r"bad device profile .*broken.yaml"):
        load_profile(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(InputError, match="expected a mapping"):
        load_profile(listed)
