"""One call for everything the search and the CLI need: ``estimate(model, shape, profile)``.

Combines FLOPs (:mod:`~hwsparse.cost.flops`), memory (:mod:`~hwsparse.cost.memory`) and latency
(:mod:`~hwsparse.cost.latency`) of a (masked) model on a device profile into a
:class:`CostReport`, and checks it against a :class:`Budget`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from hwsparse.cost.dataflow import trace
from hwsparse.cost.flops import (
    CONVENTION,
    FlopCount,
    channel_liveness,
    check_input_shape,
    check_masks,
    count_flops,
    single_thread,
)
from hwsparse.cost.latency import LatencyEstimate, estimate_latency
from hwsparse.cost.memory import MemoryEstimate, memory_cost
from hwsparse.cost.profiles import DeviceProfile, load_profile
from hwsparse.errors import InputError


@dataclass(frozen=True)
class LayerCost:
    """One row of the per-layer breakdown (a module, its own ops; "" = the root's forward).

    Attributes:
        name: module qualified name.
        kind: module class name.
        flops: sparse-aware flops (1 multiply-add = 1 flop).
        dense_flops: flops of the dense layer.
        latency_us: estimated time of its ops, microseconds (None when unknown).
        bound: what dominates: ``compute``, ``memory``, ``overhead`` or ``fused``.
        weight_bytes: bytes of its weight in the chosen format (0 when it has none).
        weight_format: that format (None when it has no Conv/Linear weight).
    """

    name: str
    kind: str
    flops: int
    dense_flops: int
    latency_us: float | None
    bound: str
    weight_bytes: int
    weight_format: str | None


@dataclass(frozen=True)
class CostReport:
    """Cost of one network on one device (batch 1).

    Attributes:
        profile: profile id; engine, runtime, dtype: what the latency is for.
        flops, dense_flops: sparse-aware and dense flops (1 multiply-add = 1 flop).
        params: parameters of the model as built; nonzero_params: after masks and compaction.
        weight_bytes: weight storage in the smallest format the runtime reads;
            dense_weight_bytes: the same dense.
        peak_activation_bytes: activation arena peak over the execution order.
        ram_bytes: peak activations + weights when the device loads them into RAM + the
            runtime's reserved RAM (None when the reserve is unknown).
        latency_ms, latency_ms_low, latency_ms_high: estimate and band (None if unknown).
        energy_mj: latency x the profile's active power, millijoules (None if unknown).
        fits: per capacity budget of the profile, True/False, or None when unknown.
        layers: per-module breakdown in execution order.
        notes: unknowns and assumptions.
        convention: the FLOP convention.
    """

    profile: str
    engine: str
    runtime: str
    dtype: str
    input_shape: tuple[int, ...]
    flops: int
    dense_flops: int
    params: int
    nonzero_params: int
    weight_bytes: int
    dense_weight_bytes: int
    peak_activation_bytes: int
    ram_bytes: int | None
    latency_ms: float | None
    latency_ms_low: float | None
    latency_ms_high: float | None
    uncertainty_pct: float
    energy_mj: float | None
    fits: Mapping[str, bool | None]
    layers: tuple[LayerCost, ...]
    notes: tuple[str, ...]
    convention: str = CONVENTION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (units: flops, bytes, ms, mJ, us in layer rows)."""
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["fits"] = dict(self.fits)
        out["layers"] = [asdict(r) for r in self.layers]
        out["notes"] = list(self.notes)
        return out


@dataclass(frozen=True)
class Budget:
    """Limits for "fits the device"; None = no limit. Units in the names.

    Attributes:
        latency_ms: estimated latency (the point estimate; use ``latency_ms_high`` of the
            report yourself for a conservative check).
        weight_kb: weight storage (flash), KiB (1024 bytes).
        ram_kb: activations (+ weights when loaded into RAM + runtime reserve), KiB.
        activation_kb: activation arena peak, KiB.
        mflops: sparse-aware MFLOPs (10^6 multiply-adds).
    """

    latency_ms: float | None = None
    weight_kb: float | None = None
    ram_kb: float | None = None
    activation_kb: float | None = None
    mflops: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not value > 0:
                raise InputError(f"budget {f.name} must be > 0, got {value}")

    def values(self, report: CostReport) -> dict[str, float]:
        """The report's value for every set limit, in the limit's unit.

        Raises:
            InputError: a limit is set on a quantity the profile cannot estimate.
        """
        measured: dict[str, float | None] = {
            "latency_ms": report.latency_ms,
            "weight_kb": report.weight_bytes / 1024,
            "ram_kb": None if report.ram_bytes is None else report.ram_bytes / 1024,
            "activation_kb": report.peak_activation_bytes / 1024,
            "mflops": report.flops / 1e6,
        }
        out: dict[str, float] = {}
        for f in fields(self):
            if getattr(self, f.name) is None:
                continue
            value = measured[f.name]
            if value is None:
                raise InputError(
                    f"budget {f.name} cannot be checked on {report.profile}: "
                    + ("; ".join(report.notes) or "unknown")
                )
            out[f.name] = value
        return out

    def violations(self, report: CostReport) -> dict[str, float]:
        """Relative excess ``value / limit - 1`` per set limit (<= 0 means within budget).

        Feed these to Optuna's ``trial.set_constraint`` (feasible when every value <= 0).
        """
        limits = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v / limits[k] - 1.0 for k, v in self.values(report).items()}

    def fits(self, report: CostReport) -> bool:
        """True when every set limit holds."""
        return all(v <= 0 for v in self.violations(report).values())


def _layers(
    flop_count: FlopCount,
    latency: LatencyEstimate,
    memory: MemoryEstimate,
    kinds: Mapping[str, str],
) -> tuple[LayerCost, ...]:
    order: list[str] = []
    time: dict[str, float] = {}
    bound: dict[str, dict[str, float]] = {}
    for op in latency.ops:
        if op.module not in time:
            order.append(op.module)
            time[op.module] = 0.0
            bound[op.module] = {}
        time[op.module] += op.time_us
        b = bound[op.module]
        b[op.bound] = b.get(op.bound, 0.0) + op.time_us
    flops = {r.name: r for r in flop_count.layers}
    weights = {r.name: r for r in memory.layers}
    for name in list(flops) + list(weights):
        if name not in time:
            order.append(name)
    known = latency.latency_ms is not None
    rows = []
    for name in order:
        fr = flops.get(name)
        wr = weights.get(name)
        b = bound.get(name, {})
        rows.append(
            LayerCost(
                name=name,
                kind=kinds.get(name, ""),
                flops=fr.flops if fr else 0,
                dense_flops=fr.dense if fr else 0,
                latency_us=time.get(name, 0.0) if known else None,
                bound=max(b, key=lambda k: b[k]) if b else "fused",
                weight_bytes=wr.bytes if wr else 0,
                weight_format=wr.format if wr else None,
            )
        )
    return tuple(rows)


def estimate(
    model: nn.Module,
    input_shape: tuple[int, ...],
    profile: DeviceProfile | str | Path,
    masks: Mapping[str, Tensor] | None = None,
    dtype: str | None = None,
    engine: str | None = None,
) -> CostReport:
    """FLOPs, memory and latency of ``model`` (with optional masks) on a device profile.

    Args:
        model: a plain ``nn.Module``; run in eval mode (training flag restored).
        input_shape: one sample's shape, no batch dimension, e.g. ``(3, 32, 32)``.
        profile: a loaded profile, a shipped id, or a path to a profile YAML.
        masks: binary masks keyed by Conv/Linear qualified names (weight-shaped).
        dtype: ``fp32``, ``fp16`` or ``int8``; default: the engine runtime's dtype.
        engine: profile engine name; default: the profile's first engine.

    Returns:
        A :class:`CostReport` (batch 1).

    Raises:
        InputError: bad shape, masks, dtype, engine or profile.

    The analysis runs on one intra-op thread (restored afterwards): it is many tiny kernels.
    """
    with single_thread():
        return _estimate(model, input_shape, profile, masks, dtype, engine)


def _estimate(
    model: nn.Module,
    input_shape: tuple[int, ...],
    profile: DeviceProfile | str | Path,
    masks: Mapping[str, Tensor] | None,
    dtype: str | None,
    engine: str | None,
) -> CostReport:
    prof = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    eng = prof.engine(engine)
    dt = dtype or eng.dtype
    if dt not in ("fp32", "fp16", "int8"):
        raise InputError(f"unknown dtype {dt!r}; valid: fp16, fp32, int8")
    shape = check_input_shape(input_shape)
    checked = check_masks(model, masks)
    liveness = channel_liveness(model, shape, checked) if checked else None
    flop_count = count_flops(model, shape, checked, liveness=liveness)
    tr = trace(
        model,
        shape,
        checked,
        liveness.kept_outputs if liveness else None,
        liveness.kept_inputs if liveness else None,
    )
    memory = memory_cost(model, tr, checked, liveness, dt, eng.sparsity.weight_formats)
    latency = estimate_latency(tr, prof, eng.name, dt, checked)
    cap = prof.capacity
    notes = list(latency.notes)
    ram: int | None = None
    if cap.runtime_reserved_bytes is not None:
        ram = memory.peak_activation_bytes + cap.runtime_reserved_bytes
        ram += memory.weight_bytes if cap.weights_in_ram else 0
    else:
        notes.append("runtime reserved RAM unknown: ram_bytes not estimated")
    activation_limit = cap.activation_budget_bytes or cap.ram_bytes
    fits: dict[str, bool | None] = {
        "weights": None
        if cap.weight_budget_bytes is None
        else memory.weight_bytes <= cap.weight_budget_bytes,
        "ram": None if ram is None or cap.ram_bytes is None else ram <= cap.ram_bytes,
        "activations": None
        if activation_limit is None
        else memory.peak_activation_bytes <= activation_limit,
    }
    power = prof.power.active_w
    energy = None if power is None or latency.latency_ms is None else power * latency.latency_ms
    return CostReport(
        profile=prof.id,
        engine=latency.engine,
        runtime=latency.runtime,
        dtype=dt,
        input_shape=shape,
        flops=flop_count.total,
        dense_flops=flop_count.dense,
        params=memory.params,
        nonzero_params=memory.nonzero_params,
        weight_bytes=memory.weight_bytes,
        dense_weight_bytes=memory.dense_weight_bytes,
        peak_activation_bytes=memory.peak_activation_bytes,
        ram_bytes=ram,
        latency_ms=latency.latency_ms,
        latency_ms_low=latency.latency_ms_low,
        latency_ms_high=latency.latency_ms_high,
        uncertainty_pct=latency.uncertainty_pct,
        energy_mj=energy,
        fits=fits,
        layers=_layers(flop_count, latency, memory, tr.module_kinds),
        notes=tuple(notes),
    )
