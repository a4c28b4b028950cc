"""Latency estimate: a per-op roofline with per-class efficiencies and fixed overheads.

For every op of :func:`hwsparse.cost.dataflow.trace` on one engine of a profile:

    t_op = max(t_compute, t_memory) + kernel_overhead_us[kind]          (microseconds)
    t_compute = 2 x MACs_run / (peak x efficiency[kind] x small-layer factor)  (conv, fc kinds)
    t_memory  = activation bytes / bandwidth(op working set) [x efficiency[kind] if memory-bound]
                + weight bytes / bandwidth(all weights of the model), where bandwidth(s) is
                that of the fastest memory level whose size holds s bytes
    latency   = sum(t_op) + invoke_overhead_us

- ``MACs_run``: the multiply-adds of the channel-compacted op (channel pruning always runs
  compacted when ``sparsity.channel_pruning``), output channels rounded up to
  ``channel_alignment`` (widths off the SIMD multiple cost as much as the next multiple), then
  divided by the sparse speed-up only where the runtime exploits the pattern: unstructured
  sparsity for ``eligible_ops`` at or above ``min_sparsity`` (the profile's speed-up curve,
  linearly interpolated), or N:M when every row of the layer's mask satisfies the pattern.
- ``bytes``: activations read and written (live channels only) plus weights, in the estimate's
  dtype (weights of exploited unstructured layers in CSR-16 size).
- Batch-norm, activations and binary adds are separate memory-bound passes unless the engine
  lists them in ``fused_ops``; views cost only ``kernel_overhead_us.view``.

The band is ``[t / (1 + u), t x (1 + u)]`` with ``u = engine.uncertainty_pct / 100``.

Priors. Two numbers the profile may leave null have a conservative prior, so that a budget on
latency stays checkable; every estimate that uses one says so in ``notes`` and gets a wider band:

- A memory level with neither an achievable nor a spec bandwidth (typically MCU flash, whose
  wait states and prefetch buffers are rarely published): ``PRIOR_BYTES_PER_CYCLE`` = 1 byte
  per engine clock cycle (0.064 GB/s on the 64 MHz nRF52840, 0.28 GB/s on the 280 MHz
  STM32H7A3). Why: a 32-bit flash read with 3 wait states delivers 4 bytes per 4 cycles; MCU
  flash runs at 0-7 wait states and most parts add a prefetch buffer or cache that does
  better, so the prior errs slow (a conservative latency). Not used when the engine's clock is
  unknown (the latency then stays unknown).
- A null efficiency of an op class: the lowest efficiency the same engine states for a class of
  the same group (compute: conv, pointwise, depthwise, fc, im2col; memory-bound: batch_norm,
  activation, add, elementwise, pool). Why: the runtime is no better at an unmeasured kernel
  than at its worst measured one (an assumption that errs slow). None in the group: unknown.

The prior is taken to be right within a factor of ``PRIOR_BAND_FACTOR`` = 2, so the band of an
estimate that used one widens from ``1 + u`` to ``(1 + u) x 2`` (the nRF52840's +-50 % becomes
+-200 %, the STM32H7's +-30 % becomes +-160 %); the point estimate, not the band, is what a budget
checks. Everything else the estimate needs but the profile leaves null (a peak, an overhead, a
bandwidth with an unknown clock) makes the latency unknown (None) with the reason in ``notes``;
it is never guessed.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from hwsparse.cost.dataflow import COMPUTE_KINDS, Op, Trace
from hwsparse.cost.memory import DTYPE_BYTES
from hwsparse.cost.profiles import DeviceProfile, Engine

# ATen ops that run no kernel of their own (allocation, autograd bookkeeping).
_FREE = {"empty", "empty_like", "empty_strided", "detach", "alias", "lift_fresh"}

# Priors for numbers a profile leaves null (see the module docstring for the justification).
PRIOR_BYTES_PER_CYCLE = 1.0  # bandwidth of a memory level with no number, bytes per clock cycle
PRIOR_BAND_FACTOR = 2.0  # a prior is right within this factor: band (1 + u) -> (1 + u) x 2
_PRIOR_MARK = "assumed, band widened to"  # in every note of an estimate that used a prior
_COMPUTE_GROUP = ("conv", "pointwise", "depthwise", "fc", "im2col")
_MEMORY_GROUP = ("batch_norm", "activation", "add", "elementwise", "pool")


def widened_pct(uncertainty_pct: float) -> float:
    """The +- band, percent, of an estimate that used a prior (engine band ``uncertainty_pct``)."""
    return ((1.0 + uncertainty_pct / 100.0) * PRIOR_BAND_FACTOR - 1.0) * 100.0


@dataclass(frozen=True)
class OpLatency:
    """Estimated time of one op, microseconds.

    Attributes:
        index: op index in the trace.
        module: module that ran it.
        kind: op kind (profile class).
        aten: ATen op name.
        time_us: total time of the op.
        compute_us: compute term (0 for memory-only ops).
        memory_us: memory term.
        overhead_us: fixed per-op cost.
        bound: ``compute``, ``memory``, ``overhead`` (fixed cost dominates) or ``fused``.
        macs: multiply-adds executed (compacted, aligned, before the sparse speed-up).
        bytes: bytes moved.
        speedup: sparse speed-up applied (1.0 when none).
    """

    index: int
    module: str
    kind: str
    aten: str
    time_us: float
    compute_us: float
    memory_us: float
    overhead_us: float
    bound: str
    macs: int
    bytes: int
    speedup: float


@dataclass(frozen=True)
class LatencyEstimate:
    """Result of :func:`estimate_latency`.

    Attributes:
        latency_ms: point estimate, milliseconds (None when the profile lacks a needed number).
        latency_ms_low, latency_ms_high: uncertainty band, milliseconds.
        uncertainty_pct: the band, percent: the engine's, widened when a prior was used.
        engine, runtime, dtype, threads: what the estimate is for.
        invoke_overhead_us: fixed per-inference part (incl. container module calls).
        ops: per-op rows in execution order.
        notes: what was unknown or assumed.
    """

    latency_ms: float | None
    latency_ms_low: float | None
    latency_ms_high: float | None
    uncertainty_pct: float
    engine: str
    runtime: str
    dtype: str
    threads: int
    invoke_overhead_us: float
    ops: tuple[OpLatency, ...]
    notes: tuple[str, ...]


class _Unknown(Exception):
    """A number the estimate needs is null in the profile."""


def interpolate(curve: tuple[tuple[float, float], ...], x: float) -> float:
    """Piecewise-linear interpolation of ``[[x, y], ...]``, clamped at both ends."""
    if not curve:
        return 1.0
    if x <= curve[0][0]:
        return curve[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return curve[-1][1]


def satisfies_nm(mask: Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive weights in each output row keeps <= ``n``."""
    rows = mask.reshape(mask.shape[0], -1)
    cols = rows.shape[1]
    if cols % m:
        return False
    return bool(((rows != 0).reshape(rows.shape[0], cols // m, m).sum(dim=-1) <= n).all())


def small_layer_factor(engine: Engine, channels: int, pixels: int) -> float:
    """Efficiency factor of a conv-type op with ``channels`` outputs over ``pixels`` positions."""
    small = engine.small_layer
    factor = 1.0
    if small.channels_half > 0:
        factor *= channels / (channels + small.channels_half) if channels else 1.0
    if small.pixels_half > 0:
        factor *= pixels / (pixels + small.pixels_half) if pixels else 1.0
    return factor


def _need(value: float | None, what: str) -> float:
    if value is None:
        raise _Unknown(what)
    return value


def _bandwidth(
    profile: DeviceProfile, working_set: int, engine: Engine | None = None
) -> tuple[float, str | None]:
    """Achievable bandwidth (bytes/us) of the fastest level holding ``working_set`` bytes.

    The last level with no number gets the prior of 1 byte per ``engine`` clock cycle.
    """
    levels = profile.memory.levels
    for i, lvl in enumerate(levels):
        last = i == len(levels) - 1
        if last or (lvl.size_bytes is not None and working_set <= lvl.size_bytes):
            if lvl.bandwidth_gbps is not None:
                return lvl.bandwidth_gbps * 1e3, None
            if lvl.bandwidth_gbps_peak is not None:
                return lvl.bandwidth_gbps_peak * 1e3, (
                    f"memory level {lvl.name}: achievable bandwidth unknown, used the spec peak"
                    " (optimistic)"
                )
            if last and engine is not None and engine.clock_ghz is not None:
                gbps = PRIOR_BYTES_PER_CYCLE * engine.clock_ghz
                return gbps * 1e3, (
                    f"{lvl.name} bandwidth unknown: prior {gbps:.3g} GB/s"
                    f" ({PRIOR_BYTES_PER_CYCLE:g} byte per cycle at {engine.clock_ghz:g} GHz)"
                    f" {_PRIOR_MARK} +-{widened_pct(engine.uncertainty_pct):.0f} %"
                )
            if last:
                raise _Unknown(f"memory level {lvl.name} bandwidth")
    raise _Unknown("memory bandwidth")  # pragma: no cover - loop always returns on last level


def _efficiency(engine: Engine, kind: str, notes: set[str]) -> float:
    """The engine's efficiency for ``kind``, or the prior: its lowest of the same group."""
    value: float | None = getattr(engine.efficiency, kind)
    if value is not None:
        return value
    group = _COMPUTE_GROUP if kind in _COMPUTE_GROUP else _MEMORY_GROUP
    known: dict[str, float] = {
        k: v for k in group if (v := getattr(engine.efficiency, k)) is not None
    }
    if not known:
        raise _Unknown(f"efficiency.{kind}")
    lowest = min(known, key=lambda k: known[k])
    notes.add(
        f"efficiency.{kind} unknown: prior {known[lowest]:g} (the engine's lowest,"
        f" efficiency.{lowest}) {_PRIOR_MARK} +-{widened_pct(engine.uncertainty_pct):.0f} %"
    )
    return known[lowest]


def _aligned(count: int, align: int) -> int:
    return int(math.ceil(count / align) * align) if count else 0


def _sparse_speedup(
    op: Op,
    engine: Engine,
    masks: Mapping[str, Tensor],
    nm_cache: dict[str, bool],
) -> float:
    sp = engine.sparsity
    if op.live_macs == 0:
        return 1.0
    if sp.unstructured.exploited and op.kind in sp.unstructured.eligible_ops:
        sparsity = 1.0 - op.kept_macs / op.live_macs
        threshold = sp.unstructured.min_sparsity or 0.0
        if sparsity >= threshold and sparsity > 0:
            return max(interpolate(sp.unstructured.speedup_curve, sparsity), 1e-6)
    semi = sp.semi_structured
    if semi.pattern and semi.speedup and op.kind in semi.eligible_ops and op.module in masks:
        if op.module not in nm_cache:
            n, m = (int(v) for v in re.split(":", semi.pattern))
            nm_cache[op.module] = satisfies_nm(masks[op.module], n, m)
        if nm_cache[op.module]:
            return semi.speedup
    return 1.0


def cost_class(op: Op, engine: Engine, compacted: bool) -> str:
    """The efficiency/overhead class of an op: its kind, or ``im2col`` per ``conv_dispatch``."""
    if engine.conv_dispatch != "pytorch_cpu" or op.kind != "conv":
        return op.kind
    # PyTorch CPU (aten/src/ATen/native/Convolution.cpp, ConvParams::use_mkldnn), batch 1, FP32:
    # k x k convolutions (k > 1) that fail this test are unfolded (im2col) and run as a GEMM.
    # (1x1 convolutions on one thread take the same fallback without unfolding: they stay in
    # the pointwise class, which is then calibrated on that path.)
    kh = op.kernel[-2] if len(op.kernel) >= 2 else 1
    kw = op.kernel[-1] if op.kernel else 1
    elems = op.live_in_elems if compacted else op.in_elems
    return "conv" if (kh > 3 and kw > 3) or elems > 20480 else "im2col"


def _op_latency(
    op: Op,
    profile: DeviceProfile,
    engine: Engine,
    dtype: str,
    masks: Mapping[str, Tensor],
    nm_cache: dict[str, bool],
    notes: set[str],
    model_weight_bytes: int = 0,
) -> OpLatency:
    compacted = engine.sparsity.channel_pruning
    kind = cost_class(op, engine, compacted)
    act = DTYPE_BYTES[dtype]
    if op.aten.rstrip("_") in _FREE:
        return OpLatency(
            op.index, op.module, kind, op.aten, 0.0, 0.0, 0.0, 0.0, "fused", 0, 0, 1.0
        )
    if op.kind in engine.fused_ops:
        return OpLatency(
            op.index, op.module, kind, op.aten, 0.0, 0.0, 0.0, 0.0, "fused", 0, 0, 1.0
        )
    overhead = _need(getattr(engine.kernel_overhead_us, kind), f"kernel_overhead_us.{kind}")
    in_elems = op.live_in_elems if compacted else op.in_elems
    out_elems = op.live_out_elems if compacted else op.out_elems
    if kind == "view":
        return OpLatency(
            op.index, op.module, kind, op.aten, overhead, 0.0, 0.0, overhead, "overhead", 0, 0, 1.0
        )
    compute = 0.0
    macs = 0
    speedup = 1.0
    weight_bytes = 0
    if kind in (*COMPUTE_KINDS, "im2col"):
        peak = _need(engine.peak.for_dtype(dtype), f"peak for {dtype}")
        eff = _efficiency(engine, kind, notes)
        base = op.live_macs if compacted else op.macs
        c_out = op.live_c_out if compacted else op.c_out
        macs = base * _aligned(c_out, engine.channel_alignment) // c_out if c_out else base
        if kind != "fc":
            eff *= small_layer_factor(engine, c_out, op.out_pixels)
        speedup = _sparse_speedup(op, engine, masks, nm_cache)
        compute = 2.0 * macs / (peak * 1e3 * eff) / speedup
        weights = op.live_weight_elems if compacted else op.weight_elems
        weight_bytes = weights * act
        if speedup > 1.0 and weights:  # sparse storage: nnz values + 16-bit indices
            kept = round(weights * op.kept_macs / max(op.live_macs, 1))
            weight_bytes = kept * (act + 2)
    act_bytes = (in_elems + out_elems) * act
    moved = act_bytes + weight_bytes
    # Activations come from the level that holds this op's working set; weights are re-read
    # every inference from the level that holds the whole model's weights.
    bandwidth, note = _bandwidth(profile, moved, engine)
    w_bandwidth, w_note = _bandwidth(profile, max(model_weight_bytes, moved), engine)
    for n in (note, w_note):
        if n:
            notes.add(n)
    if kind not in (*COMPUTE_KINDS, "im2col"):
        bandwidth *= _efficiency(engine, kind, notes)
    memory = act_bytes / bandwidth + weight_bytes / w_bandwidth
    busy = max(compute, memory)
    if overhead >= busy:
        bound = "overhead"
    else:
        bound = "compute" if compute >= memory else "memory"
    return OpLatency(
        op.index,
        op.module,
        kind,
        op.aten,
        busy + overhead,
        compute,
        memory,
        overhead,
        bound,
        macs,
        moved,
        speedup,
    )


def estimate_latency(
    trace: Trace,
    profile: DeviceProfile,
    engine: str | None = None,
    dtype: str | None = None,
    masks: Mapping[str, Tensor] | None = None,
) -> LatencyEstimate:
    """Estimate batch-1 latency of a traced (masked) network on one engine of a profile.

    Args:
        trace: :func:`hwsparse.cost.dataflow.trace` of the model with its masks.
        profile: the device profile.
        engine: engine name (default: the profile's first engine).
        dtype: ``fp32``/``fp16``/``int8`` (default: the dtype the engine's runtime uses).
        masks: the validated masks (name -> keep tensor), needed for N:M pattern checks.

    Returns:
        A :class:`LatencyEstimate`; ``latency_ms`` is None (and ``notes`` says why) when the
        profile leaves a needed number unknown.
    """
    eng = profile.engine(engine)
    dt = dtype or eng.dtype
    notes: set[str] = set()
    if dt != eng.dtype:
        notes.add(
            f"efficiencies were measured for {eng.dtype} on {eng.runtime}; applied to {dt} as is"
        )
    rows: list[OpLatency] = []
    nm_cache: dict[str, bool] = {}
    try:
        compacted = eng.sparsity.channel_pruning
        weights = sum(op.live_weight_elems if compacted else op.weight_elems for op in trace.ops)
        weight_bytes = weights * DTYPE_BYTES[dt]
        for op in trace.ops:
            rows.append(
                _op_latency(op, profile, eng, dt, masks or {}, nm_cache, notes, weight_bytes)
            )
        invoke = _need(eng.invoke_overhead_us, "invoke_overhead_us")
        invoke += trace.container_calls * _need(eng.container_overhead_us, "container_overhead_us")
    except _Unknown as exc:
        notes.add(f"latency unknown: engine {eng.name!r} of {profile.id!r} has no {exc.args[0]}")
        return LatencyEstimate(
            None, None, None, eng.uncertainty_pct, eng.name, eng.runtime, dt, eng.threads,
            0.0, tuple(rows), tuple(sorted(notes)),
        )  # fmt: skip
    total_ms = (sum(r.time_us for r in rows) + invoke) / 1e3
    pct = eng.uncertainty_pct
    if any(_PRIOR_MARK in n for n in notes):
        pct = widened_pct(pct)
    band = 1.0 + pct / 100.0
    return LatencyEstimate(
        latency_ms=total_ms,
        latency_ms_low=total_ms / band,
        latency_ms_high=total_ms * band,
        uncertainty_pct=pct,
        engine=eng.name,
        runtime=eng.runtime,
        dtype=dt,
        threads=eng.threads,
        invoke_overhead_us=invoke,
        ops=tuple(rows),
        notes=tuple(sorted(notes)),
    )
