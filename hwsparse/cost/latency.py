"""Latency estimate: a per-op roofline with fitted efficiencies, overheads and structure terms.

For every op of :func:`hwsparse.cost.dataflow.trace` on one engine of a profile (microseconds):

    t_op      = max(t_compute, t_memory) + kernel_overhead_us[class]
    t_compute = 2 x MACs_run / (peak x efficiency[class] x small-layer factor)    (compute classes)
    t_memory  = activation bytes / bandwidth(op working set)
                + weight bytes x (resident / bandwidth(cache) + streamed / bandwidth(below))
                (/ efficiency.depthwise_bytes for depthwise; act. bytes / (bw x eff) for
                memory-bound classes)
    latency   = sum(t_op) + invoke_overhead_us (+ container calls x container_overhead_us)

Cost classes (:data:`CLASSES`): the op kinds of :mod:`hwsparse.cost.dataflow`, with
convolutions refined by the engine's rules (:func:`cost_class`): ``grouped`` (1 < groups <
channels), ``winograd`` (3 x 3 stride 1 where the runtime documents a Winograd kernel:
``conv_algorithms: [winograd_3x3s1]``), ``im2col`` (PyTorch's CPU fallback). A class without
its own numbers in the profile is costed as ``conv``.

- Depthwise layers move as many bytes as they compute on (about 2 flops per byte), so their
  time is bounded by a byte-based term as well as the MAC term: a 7 x 7 depthwise layer moves
  the same activations as a 3 x 3 one.
- Small layers: the efficiency of conv-type ops is scaled by ``c / (c + channels_half)`` x
  ``p / (p + pixels_half)`` (``small_layer``; fitted).
- Weight cache (``weight_cache``): the first ``usable_bytes`` of the model's weights are read
  from the on-chip level, the rest streams from the level below on every inference (Coral
  Edge TPU: ~8 MB of SRAM caches parameters; a model that does not fit streams the rest from
  host memory, coral.ai/docs/edgetpu/compiler "parameter data caching").
- CPU fallback (``cpu_fallback``): listed ops run on another engine of the profile and their
  activations cross the link there and back.

:func:`trace_terms` computes the parameter-free part of every op once (:class:`OpTerms`);
:func:`combine` applies an engine's :class:`Params`. The estimate and the fitter
(:mod:`hwsparse.cost.fit`) both go through :func:`combine`, so the fitted model is the one that
estimates.

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
- Each op reports the term that dominates it (``bound``): ``compute``, ``memory``,
  ``weights`` (weight traffic), ``overhead``, ``fallback`` or ``fused``.

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

import numpy as np
from numpy.typing import NDArray
from torch import Tensor

from hwsparse.cost.dataflow import Op, Trace
from hwsparse.cost.memory import DTYPE_BYTES
from hwsparse.cost.profiles import DeviceProfile, Engine

# ATen ops that run no kernel of their own (allocation, autograd bookkeeping).
_FREE = {"empty", "empty_like", "empty_strided", "detach", "alias", "lift_fresh"}

# Priors for numbers a profile leaves null (see the module docstring for the justification).
PRIOR_BYTES_PER_CYCLE = 1.0  # bandwidth of a memory level with no number, bytes per clock cycle
PRIOR_BAND_FACTOR = 2.0  # a prior is right within this factor: band (1 + u) -> (1 + u) x 2
_PRIOR_MARK = "assumed, band widened to"  # in every note of an estimate that used a prior
_COMPUTE_GROUP = ("conv", "pointwise", "depthwise", "fc", "im2col", "grouped", "winograd")
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


# ---------------------------------------------------------------------------------------------
# The model in two steps: parameter-free terms per op, then the engine's fitted parameters.

CLASSES = (
    "conv", "winograd", "grouped", "pointwise", "depthwise", "fc", "im2col",
    "batch_norm", "activation", "add", "elementwise", "pool", "view",
)  # fmt: skip
COMPUTE_CLASSES = CLASSES[:7]
MEMORY_CLASSES = CLASSES[7:12]
_CLS = {c: i for i, c in enumerate(CLASSES)}
BOUNDS = ("compute", "memory", "weights", "overhead", "fallback", "fused")


@dataclass(frozen=True)
class OpTerms:
    """What one op costs before the engine's fitted numbers are applied.

    Attributes:
        op: the traced op.
        cls: its cost class (:data:`CLASSES`).
        compute_us: ``2 x MACs_run / peak / sparse speed-up``: compute time at efficiency 1.
        channels, pixels: output channels and positions (the small-layer term).
        act_us: activation bytes / bandwidth of the level that holds the op's working set.
        weight_bytes: weight bytes read.
        weight_us_per_byte: (resident, streamed) inverse bandwidths, us per byte: the level
            that caches weights and the level below it (both the level holding the whole
            model's weights when the engine has no ``weight_cache``).
        macs, bytes, speedup: reported quantities.
        fallback_us: time when the op runs on the fallback engine (incl. the link), else None.
        free: the op runs no kernel (fused into its producer, or an allocation).
    """

    op: Op
    cls: str
    compute_us: float
    channels: int
    pixels: int
    act_us: float
    weight_bytes: int
    weight_us_per_byte: tuple[float, float]
    macs: int
    bytes: int
    speedup: float
    fallback_us: float | None = None
    free: bool = False


@dataclass(frozen=True)
class Params:
    """An engine's fitted numbers, one value per cost class (see :data:`CLASSES`).

    Attributes:
        efficiency: class -> fraction of peak (compute classes) or of bandwidth (memory).
        overhead_us: class -> fixed cost per op, microseconds.
        depthwise_bytes: fraction of bandwidth that depthwise layers reach.
        channels_half, pixels_half: small-layer halves (0 disables).
        cache_bytes: usable weight-cache size, bytes (``inf`` without a weight cache).
    """

    efficiency: Mapping[str, float]
    overhead_us: Mapping[str, float]
    depthwise_bytes: float
    channels_half: float
    pixels_half: float
    cache_bytes: float


@dataclass(frozen=True)
class Times:
    """Per-op result arrays of :func:`combine` (microseconds; ``bound`` indexes BOUNDS)."""

    time_us: NDArray[np.float64]
    compute_us: NDArray[np.float64]
    memory_us: NDArray[np.float64]
    overhead_us: NDArray[np.float64]
    bound: NDArray[np.int64]


class TermArrays:
    """The terms of many ops (of one or many networks) as arrays, for :func:`combine`."""

    def __init__(self, terms: list[OpTerms], model_weight_bytes: list[int]) -> None:
        self.n = len(terms)
        self.cls = np.array([_CLS[t.cls] for t in terms], dtype=np.int64)
        self.compute = np.array([t.compute_us for t in terms], dtype=np.float64)
        self.channels = np.array([t.channels for t in terms], dtype=np.float64)
        self.pixels = np.array([t.pixels for t in terms], dtype=np.float64)
        self.act = np.array([t.act_us for t in terms], dtype=np.float64)
        self.weights = np.array([t.weight_bytes for t in terms], dtype=np.float64)
        self.w_fast = np.array([t.weight_us_per_byte[0] for t in terms], dtype=np.float64)
        self.w_slow = np.array([t.weight_us_per_byte[1] for t in terms], dtype=np.float64)
        self.model_w = np.array(model_weight_bytes, dtype=np.float64)
        self.fallback = np.array(
            [np.nan if t.fallback_us is None else t.fallback_us for t in terms], dtype=np.float64
        )
        self.free = np.array([t.free for t in terms], dtype=bool)
        is_compute = self.cls < len(COMPUTE_CLASSES)
        self.scaled = is_compute & (self.cls != _CLS["fc"])  # small-layer term applies
        self.is_compute = is_compute
        self.is_memory = (self.cls >= _CLS["batch_norm"]) & (self.cls <= _CLS["pool"])
        self.is_dw = self.cls == _CLS["depthwise"]


def _param_vectors(p: Params) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    eff = np.array([p.efficiency.get(c, 1.0) for c in CLASSES], dtype=np.float64)
    over = np.array([p.overhead_us.get(c, 0.0) for c in CLASSES], dtype=np.float64)
    return eff, over


def combine(a: TermArrays, p: Params) -> Times:
    """Per-op times of ``a`` under parameters ``p`` (the model's formula, in one place).

    ``t = max(compute, memory) + overhead`` with ``compute = compute_us / (eff x small)``;
    ``memory = act_us + weight bytes x (resident share / fast bw + streamed share / slow bw)``
    (divided by ``depthwise_bytes`` for depthwise layers; ``act_us / eff`` for memory-bound
    classes). Fallback ops take their fallback time; free ops 0.
    """
    eff_v, over_v = _param_vectors(p)
    eff, over = eff_v[a.cls], over_v[a.cls]
    small = np.ones(a.n)
    if p.channels_half > 0:
        small *= np.where(a.channels > 0, a.channels / (a.channels + p.channels_half), 1.0)
    if p.pixels_half > 0:
        small *= np.where(a.pixels > 0, a.pixels / (a.pixels + p.pixels_half), 1.0)
    small = np.where(a.scaled, small, 1.0)
    compute = np.where(a.is_compute, a.compute / (eff * small), 0.0)
    resident = np.where(
        a.model_w > 0, np.minimum(1.0, p.cache_bytes / np.maximum(a.model_w, 1)), 1
    )
    weight_us = a.weights * (resident * a.w_fast + (1.0 - resident) * a.w_slow)
    memory = np.where(a.is_memory, a.act / eff, a.act + weight_us)
    memory = np.where(a.is_dw, memory / p.depthwise_bytes, memory)
    busy = np.maximum(compute, memory)
    time = busy + over
    bound = np.where(
        over >= busy,
        BOUNDS.index("overhead"),
        np.where(
            compute >= memory,
            BOUNDS.index("compute"),
            np.where(weight_us > a.act, BOUNDS.index("weights"), BOUNDS.index("memory")),
        ),
    )
    fb = ~np.isnan(a.fallback)
    time = np.where(fb, np.nan_to_num(a.fallback), time)
    bound = np.where(fb, BOUNDS.index("fallback"), bound)
    zero = a.free
    return Times(
        time_us=np.where(zero, 0.0, time),
        compute_us=np.where(zero | fb, 0.0, compute),
        memory_us=np.where(zero | fb, 0.0, memory),
        overhead_us=np.where(zero | fb, 0.0, over),
        bound=np.where(zero, BOUNDS.index("fused"), bound).astype(np.int64),
    )


def _efficiency(engine: Engine, cls: str, notes: set[str]) -> float:
    """The engine's efficiency of ``cls``, or its substitute (see the module docstring)."""
    eff = engine.efficiency
    if cls in ("grouped", "winograd") and getattr(eff, cls) is None:
        cls = "conv"  # an engine without the class runs it as a dense k x k convolution
    value: float | None = getattr(eff, cls)
    if value is not None:
        return value
    group = _COMPUTE_GROUP if cls in COMPUTE_CLASSES else _MEMORY_GROUP
    known: dict[str, float] = {k: v for k in group if (v := getattr(eff, k)) is not None}
    if not known:
        raise _Unknown(f"efficiency.{cls}")
    lowest = min(known, key=lambda k: known[k])
    notes.add(
        f"efficiency.{cls} unknown: prior {known[lowest]:g} (the engine's lowest,"
        f" efficiency.{lowest}) {_PRIOR_MARK} +-{widened_pct(engine.uncertainty_pct):.0f} %"
    )
    return known[lowest]


def _overhead(engine: Engine, cls: str) -> float:
    over = engine.kernel_overhead_us
    if cls in ("grouped", "winograd") and getattr(over, cls) is None:
        cls = "conv"
    return _need(getattr(over, cls), f"kernel_overhead_us.{cls}")


def engine_params(engine: Engine, classes: set[str], notes: set[str]) -> Params:
    """The engine's :class:`Params` for the cost classes in ``classes`` (others: unused).

    Raises:
        _Unknown: a class in ``classes`` has neither a number nor a prior.
    """
    eff = {c: _efficiency(engine, c, notes) for c in classes if c != "view"}
    over = {c: _overhead(engine, c) for c in classes}
    cache = engine.weight_cache
    return Params(
        efficiency=eff,
        overhead_us=over,
        depthwise_bytes=engine.efficiency.depthwise_bytes or 1.0,
        channels_half=engine.small_layer.channels_half,
        pixels_half=engine.small_layer.pixels_half,
        cache_bytes=math.inf if cache is None else float(cache.usable_bytes),
    )


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


def winograd_eligible(op: Op) -> bool:
    """ncnn's Winograd rule (src/layer/arm/convolution_arm.cpp, ``create_pipeline``): a 3 x 3,
    stride-1, dilation-1, ungrouped convolution with at least 8 input or output channels."""
    c_in = op.weight_elems // max(op.c_out * 9, 1)
    return (
        op.kind == "conv"
        and op.groups == 1
        and tuple(op.kernel[-2:]) == (3, 3)
        and op.stride == 1
        and op.dilation == 1
        and (c_in >= 8 or op.c_out >= 8)
    )


def cost_class(op: Op, engine: Engine, compacted: bool) -> str:
    """The efficiency/overhead class of an op: its kind, refined by the engine's rules.

    Grouped (not depthwise) convolutions are ``grouped``; 3 x 3 stride-1 convolutions of an
    engine with the ``winograd_3x3s1`` rule are ``winograd``; PyTorch's CPU rule
    (``conv_dispatch: pytorch_cpu``) sends small k x k convolutions to ``im2col``.
    """
    if op.kind != "conv":
        return op.kind
    if op.groups > 1:
        return "grouped"
    if "winograd_3x3s1" in engine.conv_algorithms and winograd_eligible(op):
        return "winograd"
    if engine.conv_dispatch != "pytorch_cpu":
        return "conv"
    # PyTorch CPU (aten/src/ATen/native/Convolution.cpp, ConvParams::use_mkldnn), batch 1, FP32:
    # k x k convolutions (k > 1) that fail this test are unfolded (im2col) and run as a GEMM.
    # (1x1 convolutions on one thread take the same fallback without unfolding: they stay in
    # the pointwise class, which is then calibrated on that path.)
    kh = op.kernel[-2] if len(op.kernel) >= 2 else 1
    kw = op.kernel[-1] if op.kernel else 1
    elems = op.live_in_elems if compacted else op.in_elems
    return "conv" if (kh > 3 and kw > 3) or elems > 20480 else "im2col"


def _falls_back(op: Op, engine: Engine) -> bool:
    fb = engine.cpu_fallback
    return fb is not None and (op.kind in fb.ops or op.aten.rstrip("_") in fb.ops)


def op_terms(
    op: Op,
    profile: DeviceProfile,
    engine: Engine,
    dtype: str,
    masks: Mapping[str, Tensor],
    nm_cache: dict[str, bool],
    notes: set[str],
    model_weight_bytes: int = 0,
) -> OpTerms:
    """The parameter-free terms of one op on one engine (see :class:`OpTerms`).

    Raises:
        _Unknown: the profile lacks a peak or a bandwidth the op needs.
    """
    compacted = engine.sparsity.channel_pruning
    cls = cost_class(op, engine, compacted)
    act = DTYPE_BYTES[dtype]
    if op.aten.rstrip("_") in _FREE or op.kind in engine.fused_ops:
        return OpTerms(op, cls, 0.0, 0, 0, 0.0, 0, (0.0, 0.0), 0, 0, 1.0, free=True)
    in_elems = op.live_in_elems if compacted else op.in_elems
    out_elems = op.live_out_elems if compacted else op.out_elems
    if cls == "view":
        return OpTerms(op, cls, 0.0, 0, 0, 0.0, 0, (0.0, 0.0), 0, 0, 1.0)
    compute = 0.0
    macs = 0
    speedup = 1.0
    weight_bytes = 0
    c_out = 0
    if cls in COMPUTE_CLASSES:
        peak = _need(engine.peak.for_dtype(dtype), f"peak for {dtype}")
        base = op.live_macs if compacted else op.macs
        c_out = op.live_c_out if compacted else op.c_out
        macs = base * _aligned(c_out, engine.channel_alignment) // c_out if c_out else base
        speedup = _sparse_speedup(op, engine, masks, nm_cache)
        compute = 2.0 * macs / (peak * 1e3) / speedup
        weights = op.live_weight_elems if compacted else op.weight_elems
        weight_bytes = weights * act
        if speedup > 1.0 and weights:  # sparse storage: nnz values + 16-bit indices
            kept = round(weights * op.kept_macs / max(op.live_macs, 1))
            weight_bytes = kept * (act + 2)
    act_bytes = (in_elems + out_elems) * act
    moved = act_bytes + weight_bytes
    # Activations come from the level that holds this op's working set; weights are re-read
    # every inference from the level that holds the whole model's weights, or, with a weight
    # cache, from the cache for the resident share and the level below it for the rest.
    bandwidth, note = _bandwidth(profile, moved, engine)
    if engine.weight_cache is not None:
        names = [lvl.name for lvl in profile.memory.levels]
        at = names.index(engine.weight_cache.level)
        fast, n_fast = _level_bandwidth(profile, at, engine)
        slow, n_slow = _level_bandwidth(profile, at + 1, engine)
    else:
        fast, n_fast = _bandwidth(profile, max(model_weight_bytes, moved), engine)
        slow, n_slow = fast, None
    for n in (note, n_fast, n_slow):
        if n:
            notes.add(n)
    fallback = None
    if _falls_back(op, engine):
        fb = engine.cpu_fallback
        assert fb is not None
        host = profile.engine(fb.engine)
        inner = op_terms(op, profile, host, host.dtype, masks, nm_cache, notes, model_weight_bytes)
        host_params = engine_params(host, {inner.cls}, notes)
        alone = TermArrays([inner], [model_weight_bytes])
        fallback = float(combine(alone, host_params).time_us[0]) + act_bytes / (fb.link_gbps * 1e3)
    return OpTerms(
        op=op,
        cls=cls,
        compute_us=compute,
        channels=c_out,
        pixels=op.out_pixels,
        act_us=act_bytes / bandwidth,
        weight_bytes=weight_bytes,
        weight_us_per_byte=(1.0 / fast, 1.0 / slow),
        macs=macs,
        bytes=moved,
        speedup=speedup,
        fallback_us=fallback,
    )


def _level_bandwidth(
    profile: DeviceProfile, index: int, engine: Engine
) -> tuple[float, str | None]:
    """Bandwidth (bytes/us) of memory level ``index`` (a working set that only it holds)."""
    levels = profile.memory.levels
    below = sum(lvl.size_bytes or 0 for lvl in levels[:index])
    size = levels[index].size_bytes
    return _bandwidth(profile, (size if size is not None else below + 1), engine)


def op_latencies(terms: list[OpTerms], params: Params, model_weight_bytes: int) -> list[OpLatency]:
    """Per-op rows of ``terms`` under ``params``."""
    if not terms:
        return []
    t = combine(TermArrays(terms, [model_weight_bytes] * len(terms)), params)
    return [
        OpLatency(
            index=x.op.index,
            module=x.op.module,
            kind=x.cls,
            aten=x.op.aten,
            time_us=float(t.time_us[i]),
            compute_us=float(t.compute_us[i]),
            memory_us=float(t.memory_us[i]),
            overhead_us=float(t.overhead_us[i]),
            bound=BOUNDS[int(t.bound[i])],
            macs=0 if x.free else x.macs,
            bytes=0 if x.free else x.bytes,
            speedup=x.speedup,
        )
        for i, x in enumerate(terms)
    ]


def trace_terms(
    trace: Trace,
    profile: DeviceProfile,
    engine: Engine,
    dtype: str,
    masks: Mapping[str, Tensor],
    notes: set[str],
) -> tuple[list[OpTerms], int]:
    """The terms of every op of ``trace`` and the model's weight bytes.

    Raises:
        _Unknown: the profile lacks a number the estimate needs.
    """
    compacted = engine.sparsity.channel_pruning
    weights = sum(op.live_weight_elems if compacted else op.weight_elems for op in trace.ops)
    weight_bytes = weights * DTYPE_BYTES[dtype]
    nm_cache: dict[str, bool] = {}
    terms = [
        op_terms(op, profile, engine, dtype, masks, nm_cache, notes, weight_bytes)
        for op in trace.ops
    ]
    return terms, weight_bytes


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
    try:
        terms, weight_bytes = trace_terms(trace, profile, eng, dt, masks or {}, notes)
        classes = {t.cls for t in terms if not t.free and t.fallback_us is None}
        params = engine_params(eng, classes, notes)
        rows = op_latencies(terms, params, weight_bytes)
        invoke = _need(eng.invoke_overhead_us, "invoke_overhead_us")
        invoke += trace.container_calls * _need(eng.container_overhead_us, "container_overhead_us")
    except _Unknown as exc:
        notes.add(f"latency unknown: engine {eng.name!r} of {profile.id!r} has no {exc.args[0]}")
        return LatencyEstimate(
            None, None, None, eng.uncertainty_pct, eng.name, eng.runtime, dt, eng.threads,
            0.0, (), tuple(sorted(notes)),
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
