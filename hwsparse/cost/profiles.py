"""Device profiles: the YAML schema, strict loading, and the registry of shipped profiles.

A profile describes one device *and the runtime that executes the network on it* (the same
silicon differs by 1.4-2.3x between runtimes, reference/devices.md §3). Units are in the field
names (``_gflops`` counts 2 flops per multiply-add; ``_gops`` 2 integer ops per multiply-add;
``_us`` microseconds; ``_gbps`` 10^9 bytes/s; ``_bytes``; ``_w`` watts). An unknown number is
``null``, never a guess; an estimate is allowed only when its ``source`` says so. Every block
has a ``source`` whose bracketed keys (``[NCNN]``) must be defined under ``sources``.

Loading is strict: an unknown key, a missing key or a wrong type is an :class:`InputError`
naming the file, the key path and the valid keys. Profiles are found by id in the repository
folder ``device_profiles/`` (file name = id) or by a path to a YAML file.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

import hwsparse
from hwsparse.errors import InputError

SCHEMA_VERSION = 1
_PACKAGE = Path(hwsparse.__file__).resolve().parent
# shipped profiles: inside an installed wheel (setup.py copies them), else the checkout's folder
PROFILE_DIR = next(
    (p for p in (_PACKAGE / "_profiles", _PACKAGE.parent / "device_profiles") if p.is_dir()),
    _PACKAGE.parent / "device_profiles",
)

Dtype = Literal["fp32", "fp16", "int8"]
DeviceClass = Literal["cpu", "gpu", "npu", "mcu"]
EngineKind = Literal["cpu", "gpu", "npu", "mcu_core"]
WeightFormat = Literal["dense", "bitmask", "csr16", "csr8"]
FusableOp = Literal["batch_norm", "activation", "add"]
ComputeClass = Literal["conv", "pointwise", "depthwise", "fc"]
ConvDispatch = Literal["uniform", "pytorch_cpu"]
ConvAlgorithm = Literal["winograd_3x3s1"]
ArtifactFormat = Literal["onnx", "tflite"]


@dataclass(frozen=True)
class Peak:
    """Dense peak throughput of the whole engine (all its ``threads``), per dtype.

    Attributes:
        fp32_gflops: FP32 peak, 10^9 flop/s, 2 flops per multiply-add.
        fp16_gflops: FP16 arithmetic peak (null when the engine has no FP16 arithmetic).
        int8_gops: INT8 peak, 10^9 op/s, 2 ops per multiply-add.
    """

    fp32_gflops: float | None
    fp16_gflops: float | None
    int8_gops: float | None

    def for_dtype(self, dtype: str) -> float | None:
        """Peak for ``fp32``/``fp16``/``int8`` in 10^9 (fl)op/s, or None when unknown."""
        return {"fp32": self.fp32_gflops, "fp16": self.fp16_gflops, "int8": self.int8_gops}[dtype]


@dataclass(frozen=True)
class Efficiency:
    """Achieved fraction of the roofline for large ops of each kind, on this runtime.

    Compute kinds are a fraction of the engine's peak (may exceed 1 when the runtime does fewer
    multiplies than the nominal count, e.g. Winograd 3x3); memory-bound kinds a fraction of the
    memory level's bandwidth (below 1 when the kernel, not DRAM, is the limit).

    Attributes:
        conv: dense k x k convolution (k > 1, not depthwise).
        pointwise: 1 x 1 convolution.
        depthwise: depthwise convolution (groups = channels).
        fc: matrix products (a Linear layer at batch 1 is a matrix-vector product).
        batch_norm, activation, add, elementwise, pool: memory-bound passes (unless fused).
        im2col: convolutions that the engine's ``conv_dispatch`` rule sends to an im2col + GEMM
            fallback kernel (optional; only read when the rule routes an op there).
        grouped: grouped convolutions that are not depthwise (1 < groups < channels), a
            fraction of peak on the nominal MACs (optional; null: costed as ``conv``).
        winograd: 3 x 3 stride-1 convolutions that the engine's ``conv_algorithms`` rule sends
            to a Winograd kernel, a fraction of peak on the *nominal* MACs (so above the
            ``conv`` value when the transform saves multiplies; optional; null: ``conv``).
        depthwise_bytes: the fraction of the memory level's bandwidth that depthwise layers
            reach (their byte-based, memory-bound term; optional; null: 1, i.e. only the
            compute term and the plain bytes / bandwidth bound).
    """

    conv: float | None
    pointwise: float | None
    depthwise: float | None
    fc: float | None
    batch_norm: float | None
    activation: float | None
    add: float | None
    elementwise: float | None
    pool: float | None
    im2col: float | None = None
    grouped: float | None = None
    winograd: float | None = None
    depthwise_bytes: float | None = None


@dataclass(frozen=True)
class KernelOverhead:
    """Fixed cost per executed op of each kind, microseconds (launch, dispatch, framework).

    Attributes mirror the op kinds of :mod:`hwsparse.cost.dataflow`; ``view`` is the cost of an
    op that moves no data (reshape, transpose) and is usually 0 outside eager frameworks.
    """

    conv: float | None
    pointwise: float | None
    depthwise: float | None
    fc: float | None
    batch_norm: float | None
    activation: float | None
    add: float | None
    elementwise: float | None
    pool: float | None
    view: float | None
    im2col: float | None = None
    grouped: float | None = None
    winograd: float | None = None


@dataclass(frozen=True)
class Unstructured:
    """Unstructured (element) sparsity support of the runtime.

    Attributes:
        exploited: the runtime has a sparse kernel it really uses for eligible ops.
        eligible_ops: compute classes the sparse kernel covers.
        min_sparsity: below this sparsity the dense path is used (speed-up 1).
        speedup_curve: ``[[sparsity, speed-up of eligible ops vs dense], ...]``, increasing
            sparsity; linear interpolation, clamped at the ends.
    """

    exploited: bool
    eligible_ops: tuple[ComputeClass, ...]
    min_sparsity: float | None
    speedup_curve: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class SemiStructured:
    """N:M sparsity (e.g. NVIDIA 2:4) support.

    Attributes:
        pattern: ``"N:M"`` (at most N kept in every M consecutive weights of a row) or null.
        eligible_ops: compute classes that run the N:M kernel.
        speedup: speed-up of an eligible op whose mask satisfies the pattern.
    """

    pattern: str | None
    eligible_ops: tuple[ComputeClass, ...]
    speedup: float | None


@dataclass(frozen=True)
class Sparsity:
    """What the runtime reads and exploits.

    Attributes:
        weight_formats: storage formats the runtime can read (``dense`` always works).
        unstructured: element sparsity.
        semi_structured: N:M sparsity.
        channel_pruning: channel-pruned networks are run compacted (smaller layers).
        source: where the rules come from.
    """

    weight_formats: tuple[WeightFormat, ...]
    unstructured: Unstructured
    semi_structured: SemiStructured
    channel_pruning: bool
    source: str


@dataclass(frozen=True)
class SmallLayer:
    """Efficiency of conv/pointwise/depthwise ops scaled by ``c / (c + channels_half)`` x
    ``p / (p + pixels_half)`` (``c`` output channels, ``p`` output pixels): small layers
    cannot fill the vector units and blocks. 0 disables a factor.

    Attributes:
        channels_half: output channels at which efficiency is halved by this factor.
        pixels_half: output pixels (H x W) at which efficiency is halved by this factor.
    """

    channels_half: float
    pixels_half: float


@dataclass(frozen=True)
class WeightCache:
    """On-chip memory that holds the weights between inferences (an accelerator's SRAM).

    The first ``usable_bytes`` of the model's weights are read from memory level ``level``;
    the rest stream from the next (slower) level on every inference.

    Attributes:
        level: name of the memory level that caches weights (not the last level).
        usable_bytes: how much of it holds weights (fitted: compilers keep part of the SRAM
            for activations and instructions).
        source: where the numbers come from.
    """

    level: str
    usable_bytes: int
    source: str


@dataclass(frozen=True)
class CpuFallback:
    """Ops the runtime cannot run on the accelerator: they run on another engine of the
    profile and their activations cross the link to it and back.

    Attributes:
        ops: op kinds (``pool``, ``elementwise``...) or ATen op names (``avg_pool3d``).
        engine: name of the engine of this profile that runs them (typically the host CPU).
        link_gbps: bandwidth of the link the activations cross, 10^9 bytes/s.
        source: where the op list comes from (the runtime's supported-op list).
    """

    ops: tuple[str, ...]
    engine: str
    link_gbps: float
    source: str


@dataclass(frozen=True)
class Engine:
    """A compute unit plus the runtime configuration that runs the network on it.

    Attributes:
        name: engine id within the profile (``cpu``, ``gpu``, ``npu``...).
        kind: ``cpu``, ``gpu``, ``npu`` or ``mcu_core``.
        cores: cores / SMs / MAC arrays used (null if unknown).
        clock_ghz: sustained clock used for the peak, GHz.
        peak: dense peak throughput per dtype.
        peak_derivation: how the peak was derived (``cores x GHz x lanes x 2 (FMA)``).
        dtype: the dtype the runtime really computes in; the default for estimates.
        runtime: runtime, version and thread setting, e.g. ``XNNPACK FP32, 4 threads``.
        artifact: the file format that runtime reads, which ``hwsparse export`` writes:
            ``tflite`` (TFLite Micro, LiteRT/XNNPACK, the Edge TPU compiler's input) or
            ``onnx`` (onnxruntime, TensorRT, and ncnn's converter pnnx).
        threads: threads the runtime uses.
        efficiency: achieved / peak per compute class.
        kernel_overhead_us: fixed cost per executed op, per op kind.
        invoke_overhead_us: fixed cost per inference (framework call, host sync).
        container_overhead_us: cost per call of a container module (``Sequential``, a residual
            block) in Python frameworks; 0 for runtimes that execute a flat graph.
        small_layer: efficiency loss of conv-type layers with few channels or pixels.
        fused_ops: op kinds folded into the producing conv/GEMM at no cost.
        channel_alignment: output channels are rounded up to a multiple of this for compute.
        uncertainty_pct: +- band of a latency estimate, percent (a factor of 1 + pct/100).
        sparsity: what this runtime reads and exploits.
        source: where these numbers come from.
        conv_dispatch: ``uniform`` (every convolution uses its class numbers) or
            ``pytorch_cpu``: PyTorch's CPU rule (``ConvParams::use_mkldnn`` in
            aten/src/ATen/native/Convolution.cpp) sends k x k convolutions (1 < k <= 3, or a
            kernel dimension of 1) with at most 20480 input elements to the im2col + GEMM
            fallback, costed as ``im2col``.
        conv_algorithms: documented algorithm rules of the runtime; ``winograd_3x3s1``: 3 x 3,
            stride 1, dilation 1, ungrouped convolutions with at least 8 input or output
            channels run a Winograd kernel, costed as ``winograd`` (ncnn's rule in
            src/layer/arm/convolution_arm.cpp; cuDNN/TensorRT's Winograd tactics).
        weight_cache: on-chip weight memory with a usable size (null: weights come from the
            level that holds the whole model's weights).
        cpu_fallback: ops that run off the accelerator (null: every op runs on it).
    """

    name: str
    kind: EngineKind
    cores: int | None
    clock_ghz: float | None
    peak: Peak
    peak_derivation: str
    dtype: Dtype
    runtime: str
    artifact: ArtifactFormat
    threads: int
    efficiency: Efficiency
    kernel_overhead_us: KernelOverhead
    invoke_overhead_us: float | None
    container_overhead_us: float | None
    small_layer: SmallLayer
    fused_ops: tuple[FusableOp, ...]
    channel_alignment: int
    uncertainty_pct: float
    sparsity: Sparsity
    source: str
    conv_dispatch: ConvDispatch = "uniform"
    conv_algorithms: tuple[ConvAlgorithm, ...] = ()
    weight_cache: WeightCache | None = None
    cpu_fallback: CpuFallback | None = None


@dataclass(frozen=True)
class MemoryLevel:
    """One memory level; levels are listed fastest first, the last one holds everything.

    Attributes:
        name: e.g. ``l2``, ``sram``, ``dram``, ``npu_cache``.
        size_bytes: capacity (null if unknown; then only usable as the last level).
        bandwidth_gbps: achievable (copy/STREAM-like) bandwidth, 10^9 bytes/s.
        bandwidth_gbps_peak: theoretical bandwidth from the spec.
        source: where the numbers come from.
    """

    name: str
    size_bytes: int | None
    bandwidth_gbps: float | None
    bandwidth_gbps_peak: float | None
    source: str


@dataclass(frozen=True)
class Memory:
    """The memory hierarchy seen by the engines."""

    levels: tuple[MemoryLevel, ...]


@dataclass(frozen=True)
class Capacity:
    """Hard budgets for "does it fit".

    Attributes:
        ram_bytes: RAM/SRAM available to the application.
        weight_budget_bytes: storage for weights (flash on MCUs; disk/RAM elsewhere).
        activation_budget_bytes: largest buffer the activation arena can use (null: ram_bytes).
        runtime_reserved_bytes: RAM taken by OS/interpreter/runtime before the model.
        weights_in_ram: weights are loaded into RAM (True) or read in place from flash (False).
        source: where the numbers come from.
    """

    ram_bytes: int | None
    weight_budget_bytes: int | None
    activation_budget_bytes: int | None
    runtime_reserved_bytes: int | None
    weights_in_ram: bool
    source: str


@dataclass(frozen=True)
class DefaultBudget:
    """The budget ``hwsparse search --target ID`` uses when no budget flag is given.

    Keys match :class:`hwsparse.cost.estimate.Budget` (null or absent = no limit); every value
    must be above the device's floors (see :func:`hwsparse.cost.budget.floors`).

    Attributes:
        latency_ms: estimated latency, ms.
        weight_kb: weight storage, KiB.
        ram_kb: RAM (activations + runtime reserve, + weights when loaded into RAM), KiB.
        activation_kb: activation arena peak, KiB.
        mflops: sparse-aware MFLOPs.
        reason: why these numbers (shown by ``hwsparse devices ID``).
    """

    reason: str
    latency_ms: float | None = None
    weight_kb: float | None = None
    ram_kb: float | None = None
    activation_kb: float | None = None
    mflops: float | None = None

    def limits(self) -> dict[str, float]:
        """The set limits, Budget field name -> value."""
        keys = ("latency_ms", "weight_kb", "ram_kb", "activation_kb", "mflops")
        return {k: v for k in keys if (v := getattr(self, k)) is not None}


@dataclass(frozen=True)
class Power:
    """Power figures, watts (null if unknown)."""

    idle_w: float | None
    active_w: float | None
    tdp_w: float | None
    source: str


@dataclass(frozen=True)
class Anchor:
    """A published end-to-end measurement used to fit or check the profile.

    Attributes:
        model: reference architecture name (:mod:`hwsparse.cost.anchors`).
        input_shape: one sample's shape, e.g. ``[3, 224, 224]``.
        dtype: dtype of the measured run.
        engine: engine of this profile that ran it.
        runtime: runtime as published.
        threads: threads of the measured run.
        latency_ms: published latency, milliseconds.
        source: source key(s).
        loo_ms: the estimate of this anchor when its network was left out of the fit
            (written by ``hwsparse.cost.fit``; null when not computed): the out-of-sample check.
    """

    model: str
    input_shape: tuple[int, ...]
    dtype: Dtype
    engine: str
    runtime: str
    threads: int
    latency_ms: float
    source: str
    loo_ms: float | None = None


@dataclass(frozen=True)
class DeviceProfile:
    """One device profile (schema version 1). See device_profiles/*.yaml for examples.

    Attributes:
        schema_version: 1.
        id: machine-readable id (= file name without ``.yaml`` for shipped profiles).
        name: human-readable name.
        device_class: ``cpu``, ``gpu``, ``npu`` or ``mcu`` (YAML key ``class``).
        notes: free text (caveats, variants, modes).
        sources: key -> URL or ``repo path`` of every source used.
        engines: compute units with their runtime; the first is the default.
        memory: memory levels.
        capacity: budgets.
        power: power figures.
        anchors: published measurements.
        default_budget: the budget a search on this target uses when none is given (optional
            in the schema; every shipped profile has one).
        path: file the profile was loaded from (not a YAML key).
    """

    schema_version: int
    id: str
    name: str
    device_class: DeviceClass = field(metadata={"yaml": "class"})
    notes: str
    sources: Mapping[str, str]
    engines: tuple[Engine, ...]
    memory: Memory
    capacity: Capacity
    power: Power
    anchors: tuple[Anchor, ...] = ()
    default_budget: DefaultBudget | None = None
    path: str | None = field(default=None, metadata={"yaml": None})

    def engine(self, name: str | None = None) -> Engine:
        """The engine called ``name`` (default: the first)."""
        if name is None:
            return self.engines[0]
        for eng in self.engines:
            if eng.name == name:
                return eng
        valid = ", ".join(e.name for e in self.engines)
        raise InputError(f"profile {self.id!r} has no engine {name!r}; valid: {valid}")


# ---------------------------------------------------------------------------------------------
# Strict loading


def _yaml_key(f: Any) -> str | None:
    meta = f.metadata.get("yaml", f.name)
    return None if meta is None else str(meta)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin is tuple:
        return "a list"
    if is_dataclass(tp):
        return "a mapping"
    names = {float: "a number", int: "an integer", str: "a string", bool: "true/false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


class _SchemaError(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _convert(opt, value, where)
            except _SchemaError as exc:
                errors.append(exc)
        if len(errors) == 1 and isinstance(value, dict):  # an optional mapping: its own error
            raise errors[0]
        raise _SchemaError(where, f"expected {_type_name(tp)}, got {_shown(value)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise _SchemaError(where, f"expected one of {_type_name(tp)}, got {_shown(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _SchemaError(where, f"expected true/false, got {_shown(value)}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _SchemaError(where, f"expected an integer, got {_shown(value)}")
        return value
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _SchemaError(where, f"expected a number, got {_shown(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _SchemaError(where, f"expected a string, got {_shown(value)}")
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list):
            raise _SchemaError(where, f"expected a list, got {_shown(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _SchemaError(where, f"expected a list of {len(args)}, got {len(value)} items")
        return tuple(
            _convert(a, v, f"{where}[{i}]")
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is Mapping or origin is dict:
        key_t, val_t = get_args(tp)
        if not isinstance(value, dict):
            raise _SchemaError(where, f"expected a mapping, got {_shown(value)}")
        return {
            _convert(key_t, k, f"{where}.{k}"): _convert(val_t, v, f"{where}.{k}")
            for k, v in value.items()
        }
    if is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, where)
    raise TypeError(f"unsupported schema type {tp!r}")  # a bug in this module, not user input


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _build(cls: type[Any], data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise _SchemaError(where, f"expected a mapping, got {_shown(data)}")
    hints = typing.get_type_hints(cls)
    by_key = {_yaml_key(f): f for f in fields(cls) if _yaml_key(f) is not None}
    valid = ", ".join(sorted(k for k in by_key if k is not None))
    for key in data:
        if key not in by_key:
            raise _SchemaError(_join(where, str(key)), f"unknown key; valid: {valid}")
    kwargs: dict[str, Any] = {}
    for key, f in by_key.items():
        assert key is not None
        if key not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise _SchemaError(_join(where, key), "missing key (write null if unknown)")
            continue
        kwargs[f.name] = _convert(hints[f.name], data[key], _join(where, key))
    return cls(**kwargs)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


_SOURCE_KEY = re.compile(r"\[([A-Za-z0-9_.\-]+)\]")
_PATTERN = re.compile(r"^(\d+):(\d+)$")


def _check(profile: DeviceProfile) -> None:
    """Semantic checks the types cannot express."""
    if profile.schema_version != SCHEMA_VERSION:
        raise _SchemaError("schema_version", f"expected {SCHEMA_VERSION}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9\-_.]*", profile.id):
        raise _SchemaError("id", "use lower-case letters, digits, '-', '_' or '.'")
    if not profile.engines:
        raise _SchemaError("engines", "at least one engine is required")
    names = [e.name for e in profile.engines]
    if len(set(names)) != len(names):
        raise _SchemaError("engines", f"engine names must be unique, got {names}")
    for i, eng in enumerate(profile.engines):
        at = f"engines[{i}]"
        if eng.threads < 1 or eng.channel_alignment < 1:
            raise _SchemaError(at, "threads and channel_alignment must be >= 1")
        if eng.peak.for_dtype(eng.dtype) is None:
            raise _SchemaError(
                f"{at}.peak", f"the engine computes in {eng.dtype} but its peak is null"
            )
        for cls_name in (f.name for f in fields(Efficiency)):
            e = getattr(eng.efficiency, cls_name)
            if e is not None and not 0 < e <= 4:
                raise _SchemaError(f"{at}.efficiency.{cls_name}", "must be in (0, 4]")
        for over in fields(KernelOverhead):
            v = getattr(eng.kernel_overhead_us, over.name)
            if v is not None and v < 0:
                raise _SchemaError(f"{at}.kernel_overhead_us.{over.name}", "must be >= 0")
        if eng.small_layer.channels_half < 0 or eng.small_layer.pixels_half < 0:
            raise _SchemaError(f"{at}.small_layer", "halves must be >= 0")
        if not 0 <= eng.uncertainty_pct <= 1000:
            raise _SchemaError(f"{at}.uncertainty_pct", "must be in [0, 1000]")
    levels = [lvl.name for lvl in profile.memory.levels]
    for i, eng in enumerate(profile.engines):
        at = f"engines[{i}]"
        cache = eng.weight_cache
        if cache is not None and (cache.level not in levels[:-1] or cache.usable_bytes <= 0):
            raise _SchemaError(
                f"{at}.weight_cache",
                f"level must be one of {', '.join(levels[:-1]) or 'none (one level only)'}"
                " (not the last) and usable_bytes > 0",
            )
        fb = eng.cpu_fallback
        if fb is not None:
            others = [n for n in names if n != eng.name]
            if fb.engine not in others:
                raise _SchemaError(
                    f"{at}.cpu_fallback.engine",
                    f"must be another engine of the profile; valid: {', '.join(others) or 'none'}",
                )
            if fb.link_gbps <= 0 or not fb.ops:
                raise _SchemaError(f"{at}.cpu_fallback", "needs ops and link_gbps > 0")
            if profile.engine(fb.engine).cpu_fallback is not None:
                raise _SchemaError(f"{at}.cpu_fallback.engine", "that engine falls back itself")
    if not profile.memory.levels:
        raise _SchemaError("memory.levels", "at least one level is required")
    for i, lvl in enumerate(profile.memory.levels[:-1]):
        if lvl.size_bytes is None:
            raise _SchemaError(f"memory.levels[{i}].size_bytes", "only the last level may be null")
    for i, eng in enumerate(profile.engines):
        at = f"engines[{i}].sparsity"
        curve = eng.sparsity.unstructured.speedup_curve
        if any(not 0 <= s <= 1 or x <= 0 for s, x in curve) or list(curve) != sorted(curve):
            raise _SchemaError(
                f"{at}.unstructured.speedup_curve",
                "points must be [sparsity in 0..1, speed-up > 0] in increasing sparsity",
            )
        pattern = eng.sparsity.semi_structured.pattern
        if pattern is not None:
            match = _PATTERN.match(pattern)
            if not match or not 0 < int(match[1]) < int(match[2]):
                raise _SchemaError(f"{at}.semi_structured.pattern", "expected 'N:M' with N < M")
    for i, anchor in enumerate(profile.anchors):
        if anchor.engine not in names:
            raise _SchemaError(
                f"anchors[{i}].engine", f"unknown engine; valid: {', '.join(names)}"
            )
    if profile.default_budget is not None:
        limits = profile.default_budget.limits()
        if not limits:
            raise _SchemaError("default_budget", "set at least one limit (or drop the section)")
        for key, value in limits.items():
            if not value > 0:
                raise _SchemaError(f"default_budget.{key}", "must be > 0")
    for where, text in _source_fields(profile):
        for key in _SOURCE_KEY.findall(text):
            if key not in profile.sources:
                known = ", ".join(sorted(profile.sources)) or "none"
                raise _SchemaError(where, f"source [{key}] is not defined in sources ({known})")


def _source_fields(profile: DeviceProfile) -> list[tuple[str, str]]:
    out = [(f"engines[{i}].source", e.source) for i, e in enumerate(profile.engines)]
    out += [
        (f"engines[{i}].peak_derivation", e.peak_derivation) for i, e in enumerate(profile.engines)
    ]
    out += [(f"memory.levels[{i}].source", m.source) for i, m in enumerate(profile.memory.levels)]
    out += [("capacity.source", profile.capacity.source), ("power.source", profile.power.source)]
    out += [
        (f"engines[{i}].sparsity.source", e.sparsity.source) for i, e in enumerate(profile.engines)
    ]
    out += [(f"anchors[{i}].source", a.source) for i, a in enumerate(profile.anchors)]
    for i, e in enumerate(profile.engines):
        for name, extra in (("weight_cache", e.weight_cache), ("cpu_fallback", e.cpu_fallback)):
            if extra is not None:
                out.append((f"engines[{i}].{name}.source", extra.source))
    return out


def parse_profile(data: Any, origin: str = "<profile>") -> DeviceProfile:
    """Build and validate a profile from already-parsed YAML data.

    Raises:
        InputError: one line naming ``origin``, the key path and what is valid.
    """
    try:
        profile = _build(DeviceProfile, data, "")
        _check(profile)
    except _SchemaError as exc:
        raise InputError(f"bad device profile {origin}: {exc}") from None
    return typing.cast(DeviceProfile, profile)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read device profile {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"bad device profile {path}: not UTF-8 text ({exc.reason})") from None
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise InputError(f"bad device profile {path}: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise InputError(f"bad device profile {path}: {problem}{at}") from None


@lru_cache(maxsize=64)
def _load_path(path: str, mtime_ns: int) -> DeviceProfile:
    data = _read_yaml(Path(path))
    profile = parse_profile(data, origin=path)
    stem = Path(path).stem
    if Path(path).parent == PROFILE_DIR and profile.id != stem:
        raise InputError(
            f"bad device profile {path}: id {profile.id!r} must equal the file name {stem!r}"
        )
    return DeviceProfile(**{**_fields_dict(profile), "path": path})


def _fields_dict(profile: DeviceProfile) -> dict[str, Any]:
    return {f.name: getattr(profile, f.name) for f in fields(profile)}


def profile_ids() -> list[str]:
    """Ids of the shipped profiles (file names in ``device_profiles/``), sorted."""
    if not PROFILE_DIR.is_dir():
        return []
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(id_or_path: str | Path) -> DeviceProfile:
    """Load a profile by shipped id (``raspberry-pi-4``) or by a path to a YAML file.

    Raises:
        InputError: unknown id (the message lists the valid ids), unreadable or invalid file.
    """
    text = str(id_or_path)
    path = Path(text).expanduser()
    looks_like_path = text.endswith((".yaml", ".yml")) or "/" in text or path.is_file()
    if not looks_like_path:
        ids = profile_ids()
        if text not in ids:
            raise InputError(
                f"unknown target {text!r}; valid: {', '.join(ids)} (or a path to a profile YAML)"
            )
        path = PROFILE_DIR / f"{text}.yaml"
    if not path.is_file():
        raise InputError(f"device profile file not found: {path}")
    resolved = path.resolve()
    return _load_path(str(resolved), resolved.stat().st_mtime_ns)


def list_profiles() -> list[DeviceProfile]:
    """All shipped profiles, sorted by id (raises InputError if one of them is invalid)."""
    return [load_profile(i) for i in profile_ids()]


def profile_to_dict(profile: DeviceProfile) -> dict[str, Any]:
    """The profile as YAML-ready plain data (the inverse of :func:`parse_profile`)."""
    return typing.cast(dict[str, Any], _to_plain(profile))


def _to_plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in fields(value):
            key = _yaml_key(f)
            if key is not None:
                out[key] = _to_plain(getattr(value, f.name))
        return out
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v) for k, v in value.items()}
    return value


def dump_profile(profile: DeviceProfile) -> str:
    """YAML text of a profile (keys in schema order)."""
    return yaml.safe_dump(profile_to_dict(profile), sort_keys=False, allow_unicode=True, width=99)
