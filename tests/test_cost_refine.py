"""Whole-network refinement of a calibrated profile (calibration step 6)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_cost_profiles import minimal_profile
from torch import nn

from hwsparse.cost.dataflow import trace
from hwsparse.cost.latency import estimate_latency
from hwsparse.cost.profiles import DeviceProfile, KernelOverhead, parse_profile
from hwsparse.cost.refine import refine, synthetic_networks


def _machine(profile: DeviceProfile, overhead: float, memory: float) -> DeviceProfile:
    """A 'true' machine: the profile with every overhead and memory efficiency scaled."""
    eng = profile.engines[0]
    eff = eng.efficiency
    mem = {k: getattr(eff, k) * memory for k in ("batch_norm", "activation", "add", "pool")}
    over = KernelOverhead(**{
        k: None if (v := getattr(eng.kernel_overhead_us, k)) is None else v * overhead
        for k in KernelOverhead.__dataclass_fields__
    })  # fmt: skip
    eng = replace(eng, efficiency=replace(eff, **mem, elementwise=eff.elementwise * memory),
                  kernel_overhead_us=over)  # fmt: skip
    return replace(profile, engines=(eng,))


def test_synthetic_networks_are_seeded_and_run() -> None:
    nets = synthetic_networks(6, seed=0)
    assert [n for n, _, _ in nets] == [n for n, _, _ in synthetic_networks(6, seed=0)]
    assert [n for n, _, _ in nets] != [n for n, _, _ in synthetic_networks(6, seed=1)]
    families = {n.split()[0] for n, _, _ in nets}
    assert families == {"separable", "inverted", "plain", "residual", "grouped", "mlp"}
    for _, build, shape in nets:
        with torch.no_grad():
            assert build().eval()(torch.randn(1, *shape)).shape == (1, 10)


def test_refine_recovers_a_known_machine() -> None:
    base = parse_profile(minimal_profile())
    truth = _machine(base, overhead=2.0, memory=0.5)

    def time_us(model: nn.Module, shape: tuple[int, ...]) -> float:
        ms = estimate_latency(trace(model, shape), truth).latency_ms
        assert ms is not None
        return ms * 1e3

    out = refine(base, time_us, count=12, seed=0)
    assert out.values["overhead"] == pytest.approx(2.0, rel=0.15)
    assert out.values["memory"] == pytest.approx(0.5, rel=0.25)
    err_before = max(abs(b / m - 1) for b, m in zip(out.before_us, out.measured_us, strict=True))
    err_after = max(abs(a / m - 1) for a, m in zip(out.after_us, out.measured_us, strict=True))
    assert err_after < 0.1 < err_before
    # the refined profile estimates what the refinement predicted
    name, build, shape = synthetic_networks(12, seed=0)[0]
    est = estimate_latency(trace(build().eval(), shape), out.profile).latency_ms
    assert est is not None and est * 1e3 == pytest.approx(out.after_us[0], rel=1e-3), name
