"""Memory, latency and the combined estimate, checked by hand on small models."""

from __future__ import annotations

import copy

import pytest
import torch
from test_cost_flops import _Residual
from test_cost_profiles import minimal_profile
from torch import nn

from hwsparse.cost.dataflow import trace
from hwsparse.cost.estimate import Budget, estimate
from hwsparse.cost.flops import check_masks
from hwsparse.cost.latency import estimate_latency, interpolate, satisfies_nm
from hwsparse.cost.memory import format_bytes, peak_activation
from hwsparse.cost.profiles import parse_profile
from hwsparse.errors import InputError

TOY = parse_profile(minimal_profile())


def test_weight_format_bytes_by_hand() -> None:
    keep = torch.zeros(4, 8, dtype=torch.bool)
    keep[:, 0] = True  # 4 of 32 kept, fp32
    assert format_bytes(keep, 4, "dense") == 128
    assert format_bytes(keep, 4, "bitmask") == 4 + 16  # 32 bits + 4 values
    assert format_bytes(keep, 4, "csr16") == 4 * 6 + 5 * 2  # values+indices, row pointers
    assert format_bytes(keep, 4, "csr8") == 4 * 5 + 5 * 2
    row = torch.zeros(1, 600, dtype=torch.bool)
    row[0, [0, 599]] = True  # a 599-column gap needs two explicit zeros with 8-bit deltas
    assert format_bytes(row, 1, "csr8") == (2 + 2) * 2 + 2 * 2


def test_peak_activation_chain_and_residual_by_hand() -> None:
    chain = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    # relu is not in place: its input (20) and output (20) are live together -> 40 floats.
    assert peak_activation(trace(chain, (10,)), "fp32")[0] == 40 * 4
    # Residual: the stem output (36) stays live across branch, relu and add -> 3 x 36.
    assert peak_activation(trace(_Residual(), (1, 3, 3)), "fp32")[0] == 108 * 4
    assert peak_activation(trace(_Residual(), (1, 3, 3)), "int8")[0] == 108


def test_latency_memory_bound_linear_by_hand() -> None:
    # Linear(1000, 1000): t (view, 1 us) + addmm: compute 2e6 / (100e3 * 0.5) = 40 us,
    # memory (8000 B activations + 4e6 B weights) / 10e3 B/us = 400.8 us -> memory-bound,
    # + 10 us overhead; + 5 us per call.
    est = estimate_latency(trace(nn.Linear(1000, 1000), (1000,)), TOY)
    assert est.latency_ms == pytest.approx((1 + 400.8 + 10 + 5) / 1e3)
    gemm = [op for op in est.ops if op.kind == "fc"][0]
    assert gemm.bound == "weights" and gemm.compute_us == pytest.approx(40.0)
    assert est.latency_ms_low == pytest.approx(est.latency_ms / 1.2)
    assert est.latency_ms_high == pytest.approx(est.latency_ms * 1.2)


def _profile(**engine_changes: object) -> object:
    data = copy.deepcopy(minimal_profile())
    data["engines"][0].update(engine_changes)
    return parse_profile(data)


def test_channel_alignment_staircase() -> None:
    aligned = _profile(channel_alignment=16)
    t63 = estimate_latency(trace(nn.Conv2d(64, 63, 3, padding=1), (64, 16, 16)), aligned)
    t64 = estimate_latency(trace(nn.Conv2d(64, 64, 3, padding=1), (64, 16, 16)), aligned)
    c63 = [o for o in t63.ops if o.kind == "conv"][0]
    c64 = [o for o in t64.ops if o.kind == "conv"][0]
    assert c63.macs == c64.macs  # 63 channels cost as much compute as 64


def test_fused_ops_cost_nothing_and_unknown_numbers_make_latency_unknown() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    fused = _profile(fused_ops=["batch_norm", "activation"])
    est = estimate_latency(trace(net, (3, 8, 8)), fused)
    assert all(o.time_us == 0 for o in est.ops if o.kind in ("batch_norm", "activation"))
    data = copy.deepcopy(minimal_profile())
    data["engines"][0]["kernel_overhead_us"]["conv"] = None  # no prior for an overhead
    unknown = estimate_latency(trace(net, (3, 8, 8)), parse_profile(data))
    assert unknown.latency_ms is None
    assert any("kernel_overhead_us.conv" in n for n in unknown.notes)


def test_sparsity_only_where_the_runtime_exploits_it() -> None:
    lin = nn.Linear(256, 256, bias=False)
    mask = (torch.rand(256, 256, generator=torch.Generator().manual_seed(0)) > 0.9).float()
    dense_rt = estimate(lin, (256,), TOY, masks={"": mask})
    assert dense_rt.latency_ms == estimate(lin, (256,), TOY).latency_ms  # not exploited
    data = copy.deepcopy(minimal_profile())
    data["engines"][0]["sparsity"]["unstructured"] = {
        "exploited": True,
        "eligible_ops": ["fc"],
        "min_sparsity": 0.8,
        "speedup_curve": [[0.8, 1.0], [0.9, 2.0], [1.0, 3.0]],
    }
    sparse_rt = parse_profile(data)
    masks = check_masks(lin, {"": mask})
    fast = estimate_latency(trace(lin, (256,), {"": mask}), sparse_rt, masks=masks)
    gemm = [o for o in fast.ops if o.kind == "fc"][0]
    curve = ((0.8, 1.0), (0.9, 2.0), (1.0, 3.0))
    assert gemm.speedup == pytest.approx(interpolate(curve, 1 - float(mask.mean())))
    assert gemm.speedup > 1.5
    half = (torch.rand(256, 256, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    slow = estimate_latency(trace(lin, (256,), {"": half}), sparse_rt)
    assert [o for o in slow.ops if o.kind == "fc"][0].speedup == 1.0  # below min_sparsity


def test_nm_pattern_and_curve_helpers() -> None:
    two_four = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 0]], dtype=torch.float32)
    assert satisfies_nm(two_four, 2, 4)
    assert not satisfies_nm(torch.ones(1, 8), 2, 4)
    assert interpolate(((0.5, 1.0), (0.9, 3.0)), 0.7) == pytest.approx(2.0)
    assert interpolate(((0.5, 1.0), (0.9, 3.0)), 0.99) == 3.0


def test_channel_pruning_shrinks_estimate_flops_memory_and_latency() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 64, 10),
    )  # fmt: skip
    m0 = torch.ones(32, 3, 3, 3)
    m0[16:] = 0
    m2 = torch.ones(32, 32, 3, 3)
    m2[8:] = 0
    dense = estimate(net, (3, 8, 8), TOY)
    pruned = estimate(net, (3, 8, 8), TOY, masks={"0": m0, "2": m2})
    assert pruned.flops < dense.flops and pruned.dense_flops == dense.dense_flops
    assert pruned.weight_bytes < dense.weight_bytes
    # relu2's input and output (32 x 64 each) set the dense peak; 8 live channels after pruning.
    assert dense.peak_activation_bytes == 2 * 32 * 64 * 4
    assert pruned.peak_activation_bytes == 2 * 16 * 64 * 4  # now relu1: 16 live channels in+out
    assert pruned.latency_ms is not None and dense.latency_ms is not None
    assert pruned.latency_ms < dense.latency_ms
    assert pruned.params == dense.params  # the model as built


def test_report_fields_budget_and_unknowns() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    report = estimate(net, (1, 8, 8), TOY)
    assert report.flops == report.dense_flops == 64 * 32 + 32 * 10
    assert report.params == 64 * 32 + 32 + 32 * 10 + 10
    assert report.weight_bytes == report.params * 4
    assert report.ram_bytes == report.peak_activation_bytes + 1000  # weights stay in flash
    assert report.fits == {"weights": True, "ram": True, "activations": True}
    assert report.energy_mj == pytest.approx(2.0 * report.latency_ms)  # type: ignore[operator]
    payload = report.to_dict()
    for key in ("flops", "dense_flops", "params", "weight_bytes", "peak_activation_bytes",
                "latency_ms", "latency_ms_low", "latency_ms_high", "layers"):  # fmt: skip
        assert key in payload
    assert {row["name"] for row in payload["layers"]} >= {"1", "3"}
    budget = Budget(latency_ms=report.latency_ms * 2, mflops=0.001)  # type: ignore[operator]
    v = budget.violations(report)
    assert v["latency_ms"] == pytest.approx(-0.5) and v["mflops"] > 0
    assert not budget.fits(report)
    with pytest.raises(InputError, match="must be > 0"):
        Budget(weight_kb=0)
    data = copy.deepcopy(minimal_profile())
    data["capacity"]["runtime_reserved_bytes"] = None
    no_reserve = estimate(net, (1, 8, 8), parse_profile(data))
    assert no_reserve.ram_bytes is None
    with pytest.raises(InputError, match="ram_kb cannot be checked"):
        Budget(ram_kb=10).violations(no_reserve)


def test_shipped_profiles_estimate_a_small_net() -> None:
    from hwsparse.cost.profiles import list_profiles

    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
    for profile in list_profiles():
        for eng in profile.engines:
            report = estimate(net, (1, 8, 8), profile, engine=eng.name)
            assert report.latency_ms is not None and report.latency_ms > 0, (profile.id, eng.name)
            low, high = report.latency_ms_low, report.latency_ms_high
            assert low is not None and high is not None and low < report.latency_ms < high
