"""The latency model's structure terms (issue 9) and the joint fitter, on small real models."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_cost_profiles import minimal_profile
from torch import nn

from hwsparse.cost.anchors import check_anchors
from hwsparse.cost.dataflow import trace
from hwsparse.cost.fit import (
    BASE_PRIORS,
    Row,
    abs_errors_pct,
    anchor_rows,
    fit_all,
    kendall_tau,
    read_csv,
)
from hwsparse.cost.fit_write import write_back
from hwsparse.cost.latency import estimate_latency
from hwsparse.cost.profiles import PROFILE_DIR, DeviceProfile, load_profile, parse_profile
from hwsparse.errors import InputError


def _profile(**engine: Any) -> DeviceProfile:
    data = minimal_profile()
    data["engines"][0].update(engine)
    return parse_profile(data)


def _two_levels(**engine: Any) -> dict[str, Any]:
    """Toy profile with an 8 MB on-chip level (100 GB/s) above a 1 GB/s link."""
    data = minimal_profile()
    data["memory"]["levels"] = [
        {"name": "sram", "size_bytes": 8 * 2**20, "bandwidth_gbps": 100.0,
         "bandwidth_gbps_peak": None, "source": "[T]"},
        {"name": "link", "size_bytes": None, "bandwidth_gbps": 1.0,
         "bandwidth_gbps_peak": None, "source": "[T]"},
    ]  # fmt: skip
    data["engines"][0].update(engine)
    return data


def _op(est: Any, kind: str) -> Any:
    return next(op for op in est.ops if op.kind == kind)


def test_depthwise_byte_term_does_not_grow_with_kernel_size() -> None:
    prof = _profile(
        efficiency={**minimal_profile()["engines"][0]["efficiency"], "depthwise": 4.0,
                    "depthwise_bytes": 0.1},
    )  # fmt: skip
    times = {}
    for k in (3, 7):
        layer = nn.Conv2d(64, 64, k, padding=k // 2, groups=64, bias=False)
        op = _op(estimate_latency(trace(layer, (64, 56, 56)), prof), "depthwise")
        assert op.bound == "memory"
        times[k] = op.time_us
    # 7x7 has 5.4x the MACs of 3x3 but moves the same activations (+ a few weights)
    assert times[7] / times[3] == pytest.approx(1.0, abs=0.02)
    # by hand: (2 x 64x56x56 x 4 B + 64 x 9 x 4 B) / (10 GB/s x 0.1) + 10 us overhead
    assert times[3] == pytest.approx((2 * 64 * 56 * 56 * 4 + 64 * 9 * 4) / 1e3 + 10, rel=1e-6)


def test_grouped_conv_has_its_own_class() -> None:
    effs = {**minimal_profile()["engines"][0]["efficiency"], "grouped": 0.05}
    prof = _profile(efficiency=effs)
    layer = nn.Conv2d(64, 64, 1, groups=8, bias=False)
    op = _op(estimate_latency(trace(layer, (64, 28, 28)), prof), "grouped")
    macs = 64 * 8 * 28 * 28
    assert op.compute_us == pytest.approx(2 * macs / (100e3 * 0.05))
    # without a grouped number the class is costed as conv (the old behaviour)
    base = _op(estimate_latency(trace(layer, (64, 28, 28)), _profile()), "grouped")
    assert base.compute_us == pytest.approx(2 * macs / (100e3 * 0.5))


def test_winograd_rule_only_for_3x3_stride_1() -> None:
    effs = {**minimal_profile()["engines"][0]["efficiency"], "winograd": 2.0}
    rule = _profile(efficiency=effs, conv_algorithms=["winograd_3x3s1"])
    kinds = {}
    for stride in (1, 2):
        layer = nn.Conv2d(32, 32, 3, stride, 1, bias=False)
        est = estimate_latency(trace(layer, (32, 16, 16)), rule)
        kinds[stride] = [op.kind for op in est.ops if op.kind in ("conv", "winograd")]
    assert kinds == {1: ["winograd"], 2: ["conv"]}
    plain = estimate_latency(
        trace(nn.Conv2d(32, 32, 3, 1, 1), (32, 16, 16)), _profile(efficiency=effs)
    )
    assert [op.kind for op in plain.ops if op.kind in ("conv", "winograd")] == ["conv"]


def test_weight_cache_streams_what_does_not_fit() -> None:
    fc = nn.Linear(2048, 2048, bias=False)  # 16 MiB of fp32 weights
    tr = trace(fc, (2048,))
    cache = {"level": "sram", "usable_bytes": 8 * 2**20, "source": "[T]"}
    half = parse_profile(_two_levels(weight_cache=cache))
    full = parse_profile(_two_levels(weight_cache={**cache, "usable_bytes": 16 * 2**20}))
    t_half = _op(estimate_latency(tr, half), "fc")
    t_full = _op(estimate_latency(tr, full), "fc")
    w = 2048 * 2048 * 4
    # half the weights from 100 GB/s SRAM, half streamed over the 1 GB/s link
    assert t_half.bound == "weights"
    assert t_half.memory_us == pytest.approx((2 * 2048 * 4) / 1e3 + w / 2 / 1e5 + w / 2 / 1e3)
    assert t_full.memory_us == pytest.approx((2 * 2048 * 4) / 1e3 + w / 1e5)


def test_cpu_fallback_runs_listed_ops_on_the_host_engine() -> None:
    data = minimal_profile()
    host = copy.deepcopy(data["engines"][0])
    npu = copy.deepcopy(host)
    npu.update(name="npu", kind="npu", cpu_fallback={
        "ops": ["pool"], "engine": "cpu", "link_gbps": 1.0, "source": "[T]"})  # fmt: skip
    data["engines"] = [npu, host]
    prof = parse_profile(data)
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2))
    tr = trace(net, (8, 16, 16))
    on_npu = _op(estimate_latency(tr, prof, "npu"), "pool")
    on_cpu = _op(estimate_latency(tr, prof, "cpu"), "pool")
    link = (8 * 16 * 16 + 8 * 8 * 8) * 4 / 1e3  # activations over the 1 GB/s link, us
    assert on_npu.bound == "fallback"
    assert on_npu.time_us == pytest.approx(on_cpu.time_us + link)


def test_schema_rejects_bad_cache_and_fallback() -> None:
    with pytest.raises(InputError, match=r"weight_cache: level must be one of sram"):
        parse_profile(
            _two_levels(weight_cache={"level": "link", "usable_bytes": 1, "source": "[T]"})
        )
    bad = {"ops": ["pool"], "engine": "gpu", "link_gbps": 1.0, "source": "[T]"}
    with pytest.raises(InputError, match=r"cpu_fallback.engine: must be another engine"):
        _profile(cpu_fallback=bad)


def test_kendall_tau_and_errors() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert abs_errors_pct([1.1, None, 0.5], [1.0, 2.0, 1.0]) == pytest.approx([10.0, 50.0])


def test_read_csv_rows_and_missing_column(tmp_path: Path) -> None:
    good = tmp_path / "m.csv"
    good.write_text(
        "device,engine,network,input_shape,dtype,threads,latency_ms,statistic,runtime,"
        "source_key,source_ref\n"
        "raspberry-pi-4,cpu,mobilenet_v2,3x224x224,fp32,4,44.0,mean,XNNPACK,XNN,github x\n"
    )
    (row,) = read_csv(good)
    assert (row.profile, row.input_shape, row.latency_ms, row.source) == (
        "raspberry-pi-4", (3, 224, 224), 44.0, "[XNN]")  # fmt: skip
    bad = tmp_path / "bad.csv"
    bad.write_text("device,engine\nx,y\n")
    with pytest.raises(InputError, match="missing column"):
        read_csv(bad)


TINY = ("mlperf_tiny_ic", "mlperf_tiny_vww", "mlperf_tiny_kws", "mlperf_tiny_ad")


def _synthetic_rows(path: Path, engine: str) -> list[Row]:
    """'Published' rows: the profile's own estimates of five small networks."""
    from hwsparse.cost.anchors import WORKLOADS

    prof = load_profile(path)
    rows = []
    for net, shape in (
        ("mlperf_tiny_ic", (3, 32, 32)),
        ("mlperf_tiny_vww", (3, 96, 96)),
        ("mlperf_tiny_kws", (1, 49, 10)),
        ("mlperf_tiny_ad", (640,)),
        ("mobilenet_v1", (3, 64, 64)),
    ):
        ms = estimate_latency(trace(WORKLOADS[net].build(), shape), prof, engine).latency_ms
        assert ms is not None
        rows.append(Row(str(path), engine, net, shape, "fp32", 1, ms, "ncnn", "[NCNN]"))
    return rows


def test_fit_reproduces_its_rows_and_write_back_matches_estimate(tmp_path: Path) -> None:
    path = tmp_path / "raspberry-pi-4.yaml"
    path.write_text((PROFILE_DIR / "raspberry-pi-4.yaml").read_text())
    rows = _synthetic_rows(path, "cpu-ncnn-1t")
    others = [a for a in load_profile(path).anchors if a.engine != "cpu-ncnn-1t"]
    results, skipped = fit_all(rows, profiles=lambda p: load_profile(p))
    assert skipped == []
    (res,) = results
    meas = [r.latency_ms for r in rows]
    assert max(abs_errors_pct(res.in_sample_ms, meas)) < 10
    assert all(m is not None and m > 0 for m in res.loo_ms)
    assert 0 < res.band_pct < 1000 and len(res.covered) == len(rows)
    write_back(path, [res])
    text = path.read_text()
    assert text.startswith("# Raspberry Pi 4 Model B.")  # comments survive
    written = load_profile(path)
    mine = [a for a in written.anchors if a.engine == "cpu-ncnn-1t"]
    assert [a.loo_ms for a in mine] == pytest.approx(list(res.loo_ms), rel=1e-3)
    assert [a for a in written.anchors if a.engine != "cpu-ncnn-1t"] == others  # kept as they were
    assert "hwsparse/cost/fit.py" in written.sources["FIT"]
    assert written.engine("cpu-ncnn-1t").uncertainty_pct == round(res.band_pct)
    # the package's estimate of the written profile is the fitter's prediction (one formula)
    checks = [c for c in check_anchors(written) if c.anchor.engine == "cpu-ncnn-1t"]
    for check, ins in zip(checks, res.in_sample_ms, strict=True):
        assert check.estimate_ms == pytest.approx(ins, rel=2e-3)


def test_shared_priors_leave_the_engine_out() -> None:
    rows = [r for r in anchor_rows(load_profile("raspberry-pi-4")) if r.engine != "cpu"]
    before = {r.key: r for r in fit_all(rows)[0]}
    doubled = [replace(r, latency_ms=r.latency_ms * 2) if r.engine == "cpu-ncnn" else r
               for r in rows]  # fmt: skip
    after = {r.key: r for r in fit_all(doubled)[0]}
    ncnn, one = "raspberry-pi-4/cpu-ncnn", "raspberry-pi-4/cpu-ncnn-1t"
    # an engine's own rows never inform its prior; they do inform the other engine's
    assert after[ncnn].priors == before[ncnn].priors
    assert after[one].priors["conv"].mean != pytest.approx(before[one].priors["conv"].mean)
    assert set(BASE_PRIORS) == {"cpu", "gpu", "npu", "mcu_core"}
    # and the fit follows the data: twice the latency, about half the efficiency
    ratio = after[ncnn].values["conv"] / before[ncnn].values["conv"]
    assert 0.3 < ratio < 0.8
