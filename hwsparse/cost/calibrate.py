"""Calibration: measure this machine with PyTorch and write a device profile of it.

``calibrate()`` runs micro-benchmarks in about a minute (``quick=True``: a few seconds, for
tests) with pinned threads, warm-up and medians (``torch.utils.benchmark.Timer``), then fits
the profile's numbers so that the estimator of :mod:`hwsparse.cost.latency` reproduces them:

1. peak: the best ``torch.mm`` GFLOP/s over square sizes (2 flops per multiply-add);
2. memory levels: the CPU caches from sysfs (Linux) plus DRAM, each with the bandwidth of
   ``dst.copy_(src)`` at a size that fits the level (read + write bytes, the per-call cost of a
   1-element copy subtracted);
3. overheads: per op kind, the fixed cost left after the memory term, median over several
   sizes (views, activations, adds, batch-norm, pooling, copies; module call included, as a
   network's leaf modules pay it too); the call of an empty module and of a container;
4. compute efficiencies: for conv, pointwise, depthwise, grouped and fc layers of
   representative shapes, the efficiency and per-op overhead per class, and the engine's
   small-layer halves (shared by the conv classes), by least squares on log time over a grid;
5. sparse speed-up: ``torch.mm`` of a CSR weight vs dense across sparsities (recorded with
   ``exploited: false``: eager PyTorch runs masked weights densely; flip it if you deploy CSR);
6. whole networks (PyTorch eager only): seeded random small networks, timed end to end, refine
   the per-op overheads, the compute and memory-bound efficiencies, the depthwise byte
   efficiency and the container cost by MAP on log time (:mod:`hwsparse.cost.refine`); the
   latency benchmark's networks are never used.

The machine load is read before and after (``os.getloadavg``); a busy machine gives a warning.

``runtime="onnxruntime"`` or ``"litert"`` calibrates that graph runtime instead of PyTorch eager:
every op micro-benchmark module is written as an fp32 artifact (``.onnx`` / ``.tflite``, by
:func:`hwsparse.deploy.artifacts.write_artifact`) and timed there at batch 1 on one thread
(:func:`~hwsparse.deploy.artifacts.time_artifact`, lowest of 3 medians). Steps 1-2 stay torch
probes of the machine. The per-invoke overhead is the intercept of chains of 1-16 tiny adds
(a network is one invoke) and is taken off every lone-module time before the fit; there is no
container overhead, batch-norm and activations are fused into their producer
(``fused_ops``), every convolution uses its class numbers (``conv_dispatch: uniform``), views
cost nothing (weights are stored pre-transposed, a reshape is metadata), and unstructured
sparsity is not exploited (no curve measured). ``.tflite`` benchmarks use
channel-last input and output (``litert_torch.to_channel_last_io``) so that no layout
transpose is timed with the op. The runtimes are imported lazily.
"""

from __future__ import annotations

import math
import os
import platform
import random
import resource
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from functools import partial
from importlib import import_module
from importlib import util as importlib_util
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import torch
from torch import nn
from torch.utils.benchmark import Timer

from hwsparse.cost.dataflow import COMPUTE_KINDS, Trace, trace
from hwsparse.cost.latency import OpLatency, engine_params, op_latencies, trace_terms
from hwsparse.cost.profiles import (
    ArtifactFormat,
    Capacity,
    DeviceProfile,
    Efficiency,
    Engine,
    KernelOverhead,
    Memory,
    MemoryLevel,
    Peak,
    Power,
    SemiStructured,
    SmallLayer,
    Sparsity,
    Unstructured,
)
from hwsparse.cost.refine import Refinement, refine
from hwsparse.errors import InputError, valid_names

RUNTIMES = ("torch", "onnxruntime", "litert")
INSTALL = "pip install 'hwsparse[deploy]'"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Measurement:
    """One micro-benchmark: what ran, its median time and the calibrated model's estimate."""

    name: str
    kind: str
    measured_us: float
    estimated_us: float


@dataclass(frozen=True)
class CalibrationResult:
    """Result of :func:`calibrate`.

    Attributes:
        profile: the fitted profile (loads and validates like a shipped one).
        measurements: micro-benchmarks with their fitted estimates.
        median_error_pct: median |estimate / measured - 1| over compute micro-benchmarks, %.
        p90_error_pct: 90th percentile of the same, %.
        load_before, load_after: 1-minute load average before and after.
        warnings: e.g. a busy machine.
        seconds: wall time of the calibration.
        networks: the synthetic networks of the whole-network refinement (step 6), with the
            refined estimate (empty for graph runtimes, which are not refined).
    """

    profile: DeviceProfile
    measurements: tuple[Measurement, ...]
    median_error_pct: float
    p90_error_pct: float
    load_before: float
    load_after: float
    warnings: tuple[str, ...]
    seconds: float
    networks: tuple[Measurement, ...] = ()


def median_time_s(
    fn: Callable[[], object], min_run_time_s: float, threads: int = 1, repeats: int = 3
) -> float:
    """Seconds per call of ``fn``: the lowest of ``repeats`` medians of ``blocked_autorange``.

    Three warm-up calls first. On a shared machine other processes only ever add time, so the
    lowest median is the best estimate of an undisturbed run (reference devices.md §6.4).
    """
    for _ in range(3):
        fn()
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return min(
        float(timer.blocked_autorange(min_run_time=min_run_time_s / repeats).median)
        for _ in range(repeats)
    )


def busy_warning(threads: int) -> str | None:
    """A warning when other processes occupy the CPUs the measurement needs."""
    cpus = os.cpu_count() or 1
    load = os.getloadavg()[0]
    if load > cpus - threads + 0.5:
        return (
            f"machine is busy: load average {load:.2f} on {cpus} CPUs with {threads} thread(s)"
            " wanted; timings will be slow and noisy (close other work and re-run)"
        )
    return None


# ---------------------------------------------------------------------------------------------
# Raw micro-benchmarks


def gemm_peak_gflops(sizes: tuple[int, ...], min_time: float, threads: int) -> float:
    """Best ``torch.mm`` throughput, GFLOP/s (2 flops per multiply-add), over square sizes."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        t = median_time_s(partial(torch.mm, a, b), min_time, threads)
        best = max(best, 2 * n**3 / t / 1e9)
    return best


def _cache_levels() -> list[tuple[str, int]]:
    """(name, bytes) of the data/unified caches of CPU 0 from sysfs, smallest first."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    levels: list[tuple[str, int]] = []
    for index in sorted(base.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = (index / "level").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind not in ("Data", "Unified") or not size:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1], 1)
        number = int(size[:-1]) if size[-1] in "KMG" else int(size)
        levels.append((f"l{level}", number * unit))
    return sorted(levels, key=lambda item: item[1])


def _ram_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def copy_bandwidth_gbps(n_bytes: int, min_time: float, threads: int, call_s: float) -> float:
    """Copy bandwidth (read + write bytes), 10^9 B/s, the per-call cost ``call_s`` removed."""
    n = max(n_bytes // 4, 1)
    src, dst = torch.randn(n), torch.empty(n)
    t = median_time_s(lambda: dst.copy_(src), min_time, threads)
    return 2 * 4 * n / max(t - call_s, t * 0.05) / 1e9


def memory_levels(quick: bool, min_time: float, threads: int) -> list[MemoryLevel]:
    """Caches (sysfs) and DRAM with measured copy bandwidth."""
    one = torch.randn(1), torch.empty(1)
    call_s = median_time_s(lambda: one[1].copy_(one[0]), min_time, threads)
    levels = []
    source = "[CAL] copy_ bandwidth (read+write) at a buffer fitting the level; sysfs sizes"
    caches = _cache_levels()
    for name, size in caches:
        if name == "l1" and quick:
            continue
        bw = copy_bandwidth_gbps(size // 4, min_time, threads, call_s)
        levels.append(MemoryLevel(name, size, round(bw, 1), None, source))
    dram_test = (16 if quick else 128) * 2**20
    bw = copy_bandwidth_gbps(dram_test, min_time, threads, call_s)
    levels.append(MemoryLevel("dram", _ram_bytes(), round(bw, 1), None, source))
    return levels


def sparse_curve(min_time: float, threads: int, quick: bool) -> tuple[tuple[float, float], ...]:
    """Speed-up of ``torch.mm`` with a CSR weight over dense, per sparsity."""
    n, cols = (256, 32) if quick else (512, 64)
    w, x = torch.randn(n, n), torch.randn(n, cols)
    dense = median_time_s(lambda: torch.mm(w, x), min_time, threads)
    curve = []
    for s in (0.5, 0.8, 0.9, 0.95) if quick else (0.5, 0.7, 0.8, 0.9, 0.95, 0.98):
        gen = torch.Generator().manual_seed(int(s * 1000))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            csr = (w * (torch.rand(w.shape, generator=gen) >= s)).to_sparse_csr()
        t = median_time_s(partial(torch.mm, csr, x), min_time, threads)
        curve.append((s, round(dense / t, 2)))
    return tuple(curve)


# ---------------------------------------------------------------------------------------------
# Op micro-benchmarks and fitting


@dataclass(frozen=True)
class _Bench:
    name: str
    kind: str
    module: nn.Module
    shape: tuple[int, ...]


def _memory_benches(quick: bool) -> list[_Bench]:
    sizes = (
        [(8, 4), (32, 16), (64, 32)]
        if quick
        else [(8, 4), (16, 8), (32, 16), (64, 32), (64, 56), (128, 28)]
    )
    out = []
    for c, hw in sizes:
        shape = (c, hw, hw)
        out += [
            _Bench(f"relu {c}x{hw}x{hw}", "activation", nn.ReLU(), shape),
            _Bench(f"add {c}x{hw}x{hw}", "add", _Add(), shape),
            _Bench(f"batchnorm {c}x{hw}x{hw}", "batch_norm", nn.BatchNorm2d(c), shape),
            _Bench(f"maxpool {c}x{hw}x{hw}", "pool", nn.MaxPool2d(2), shape),
            _Bench(f"avgpool-global {c}x{hw}x{hw}", "elementwise", nn.AdaptiveAvgPool2d(1), shape),
            _Bench(f"cat {c}x{hw}x{hw}", "elementwise", _Cat(), shape),
        ]
    out.append(_Bench("flatten", "view", nn.Flatten(), (8, 2, 2)))
    out.append(_Bench("flatten-big", "view", nn.Flatten(), (64, 8, 8)))
    return out


class _Add(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x


class _Cat(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x], dim=1)


def _compute_benches(quick: bool, seed: int) -> list[_Bench]:
    """Layers of the shapes hwsparse's models use: 8-256 channels, 4-56 pixels, stride 1-2."""
    rng = random.Random(seed)
    counts = {"conv": 5, "pointwise": 4, "depthwise": 3, "fc": 3, "grouped": 2} if quick else {
        "conv": 28, "pointwise": 18, "depthwise": 14, "fc": 14, "grouped": 10
    }  # fmt: skip
    chans = [8, 16, 24, 32, 48, 64, 96, 128, 256]
    out: list[_Bench] = []
    for kind, count in counts.items():
        made = 0
        while made < count:
            hw = rng.choice([4, 7, 8, 14, 16, 28, 32, 56])
            ci, co = rng.choice([3, *chans]), rng.choice(chans)
            stride = rng.choice([1, 1, 2])
            if kind == "fc":
                fi = rng.choice([16, 64, 128, 256, 512, 1024, 2048])
                fo = rng.choice([10, 32, 64, 128, 256, 512, 1024])
                out.append(_Bench(f"linear {fi}->{fo}", kind, nn.Linear(fi, fo), (fi,)))
            elif kind == "conv":
                k = rng.choice([3, 3, 3, 5])
                if ci * co * k * k * hw * hw / stride**2 > 1.2e8:
                    continue
                mod = nn.Conv2d(ci, co, k, stride, k // 2, bias=False)
                name = f"conv{k}x{k} {ci}->{co} @{hw} s{stride}"
                out.append(_Bench(name, kind, mod, (ci, hw, hw)))
            elif kind == "pointwise":
                if ci * co * hw * hw > 6e7:
                    continue
                mod = nn.Conv2d(ci, co, 1, bias=False)
                out.append(_Bench(f"conv1x1 {ci}->{co} @{hw}", kind, mod, (ci, hw, hw)))
            elif kind == "grouped":
                g, k = rng.choice([2, 4, 8]), rng.choice([1, 3])
                c = max(g * 4, co // g * g)
                mod = nn.Conv2d(c, c, k, stride, k // 2, groups=g, bias=False)
                name = f"grouped{k}x{k} g{g} {c} @{hw} s{stride}"
                out.append(_Bench(name, kind, mod, (c, hw, hw)))
            else:
                mod = nn.Conv2d(co, co, 3, stride, 1, groups=co, bias=False)
                out.append(_Bench(f"dw3x3 {co} @{hw} s{stride}", kind, mod, (co, hw, hw)))
            made += 1
    return out


def _predict(tr: Trace, profile: DeviceProfile) -> list[OpLatency]:
    notes: set[str] = set()
    eng = profile.engines[0]
    terms, weight_bytes = trace_terms(tr, profile, eng, eng.dtype, {}, notes)
    params = engine_params(eng, {t.cls for t in terms if not t.free}, notes)
    return op_latencies(terms, params, weight_bytes)


FIT_CLASSES = (*COMPUTE_KINDS, "im2col", "grouped")


def _classes(tr: Trace, profile: DeviceProfile) -> set[str]:
    return {r.kind for r in _predict(tr, profile)}


def _flushes_denormals() -> bool:
    """Whether the CPU now flushes denormal floats to zero (torch has no getter for it)."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a denormal float32
    return bool((tiny * 1.0).item() == 0.0)


@contextmanager
def flush_denormal() -> Iterator[None]:
    """Flush denormals to zero while the block runs (measurements do not hit the slow path),
    then put back what the caller had: a library does not change its caller's arithmetic."""
    before = _flushes_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def calibrate(
    threads: int = 1,
    quick: bool = False,
    profile_id: str = "this-machine",
    name: str | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    runtime: str = "torch",
) -> CalibrationResult:
    """Measure this machine and fit a device profile of it (FP32, one runtime).

    Args:
        threads: intra-op threads (``torch.set_num_threads``) for every measurement; the graph
            runtimes are timed on one thread only (``threads`` must be 1).
        quick: a few seconds of tiny benchmarks (tests); the numbers are then rough.
        profile_id: id of the written profile.
        name: human-readable name (default: CPU model, thread count and runtime).
        seed: seed of the sampled layer shapes.
        progress: callback receiving one line per stage.
        runtime: ``torch`` (PyTorch eager, the default), ``onnxruntime`` (CPU execution
            provider, ``.onnx``) or ``litert`` (LiteRT interpreter with XNNPACK, ``.tflite``).

    Returns:
        A :class:`CalibrationResult` whose ``profile`` loads like any shipped profile.

    Raises:
        InputError: unknown runtime, ``threads != 1`` with a graph runtime, or the runtime's
            packages are missing (``pip install 'hwsparse[deploy]'``).
    """
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; valid: {valid_names(RUNTIMES)}")
    described = None
    if runtime != "torch":
        if threads != 1:
            raise InputError(
                f"--runtime {runtime} is timed on one thread; use --threads 1 (got {threads})"
            )
        described = _require_runtime(runtime)
    say = progress or (lambda _msg: None)
    refined: Refinement | None = None
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    alerts = [w for w in [busy_warning(threads)] if w]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    min_time = 0.003 if quick else 0.3
    try:
        with torch.no_grad(), flush_denormal():
            say("GEMM peak")
            peak = gemm_peak_gflops(
                (128, 256) if quick else (128, 256, 512, 1024), min_time, threads
            )
            say(f"GEMM peak {peak:.1f} GFLOP/s; memory bandwidth")
            levels = memory_levels(quick, min_time, threads)
            say("per-op overheads")
            profile = _initial_profile(profile_id, name, threads, peak, levels, runtime, described)
            if described is None:
                profile, measurements = _fit_ops(profile, quick, seed, min_time, threads, say)
                say("whole-network refinement")
                refined = refine(
                    profile,
                    lambda m, shape: (
                        median_time_s(partial(m, torch.randn(1, *shape)), min_time, threads) * 1e6
                    ),
                    count=6 if quick else 18,
                    seed=seed,
                )
                profile = refined.profile
                say("sparse CSR speed-up")
                curve = sparse_curve(min_time, threads, quick)
            else:
                with TemporaryDirectory(prefix="hwsparse-calibrate-") as folder:
                    graph = _GraphTimer(runtime, min_time, Path(folder))
                    profile, measurements = _fit_ops(
                        profile, quick, seed, min_time, threads, say, graph
                    )
    finally:
        torch.set_num_threads(old_threads)
    eng = profile.engines[0]
    if described is None:
        even = [s for s, x in curve if x >= 1.0]
        sparsity = replace(
            eng.sparsity,
            unstructured=Unstructured(
                exploited=False,
                eligible_ops=("pointwise", "fc"),
                min_sparsity=even[0] if even else None,
                speedup_curve=curve,
            ),
        )
        profile = replace(profile, engines=(replace(eng, sparsity=sparsity),))
    else:  # fused kinds and the unused im2col class: never read, so not claimed
        unused = {k: None for k in (*eng.fused_ops, "im2col")}
        eng = replace(
            eng,
            efficiency=replace(eng.efficiency, **unused),
            kernel_overhead_us=replace(eng.kernel_overhead_us, **unused),
        )
        profile = replace(profile, engines=(eng,))
    compute = [m for m in measurements if m.kind in FIT_CLASSES]
    errors = sorted(abs(m.estimated_us / m.measured_us - 1) * 100 for m in compute)
    median_err = statistics.median(errors) if errors else 0.0
    p90 = errors[min(len(errors) - 1, int(0.9 * len(errors)))] if errors else 0.0
    eng = profile.engines[0]
    profile = replace(
        profile,
        engines=(replace(eng, uncertainty_pct=round(max(10.0, min(60.0, p90)), 0)),),
    )
    load_after = os.getloadavg()[0]
    warn_after = busy_warning(threads)
    if warn_after and not alerts:
        alerts.append(warn_after)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    flag = "" if described is None else f" --runtime {runtime}"
    sources = {
        "CAL": f"hwsparse calibrate{flag} --threads {threads}{' --quick' if quick else ''} on"
        f" {platform.node() or 'this host'}, {stamp}, torch {torch.__version__}"
        + ("" if described is None else f", {described}")
        + f"; load average {load_before:.2f} before, {load_after:.2f} after"
    }
    if described is None:
        how = (
            "Timings: torch.utils.benchmark medians, warm-up,"
            f" {threads} thread(s), flush-denormal on."
        )
    else:
        how = (
            f"Timings: every benchmark module written as an fp32 {eng.artifact} artifact and"
            f" run in {described}: lowest of 3 medians with warm-up; GEMM peak and copy"
            " bandwidth from torch probes. Per-invoke overhead"
            f" {eng.invoke_overhead_us} us = intercept over chains of 1-16 tiny adds."
        )
    networks: tuple[Measurement, ...] = ()
    if refined is not None:
        networks = tuple(
            Measurement(n, "network", round(m, 2), round(float(e), 2))
            for n, m, e in zip(refined.names, refined.measured_us, refined.after_us, strict=True)
        )
        before = statistics.median(
            abs(e / m - 1) * 100
            for e, m in zip(refined.before_us, refined.measured_us, strict=True)
        )
        after = statistics.median(abs(m.estimated_us / m.measured_us - 1) * 100 for m in networks)
        v = refined.values
        how += (
            f" Refined on {len(networks)} synthetic networks (hwsparse/cost/refine.py, not the"
            f" latency benchmark's): per-op overheads x{v['overhead']:.2f}, compute efficiencies"
            f" x{v['compute']:.2f}, memory-bound x{v['memory']:.2f}, depthwise bytes"
            f" {v['depthwise_bytes']:.2f}, container {v['container']:.2f} us; their median error"
            f" {before:.0f} % -> {after:.0f} %."
        )
    notes = (
        f"Measured by hwsparse calibrate ({'quick, rough' if quick else 'full'}); median fit"
        f" error of layer micro-benchmarks {median_err:.0f} %, p90 {p90:.0f} % (the"
        f" engine's uncertainty_pct). {how}"
        + (" Warnings: " + "; ".join(alerts) if alerts else "")
    )
    profile = replace(profile, sources=sources, notes=notes)
    return CalibrationResult(
        profile=profile,
        measurements=tuple(measurements),
        median_error_pct=median_err,
        p90_error_pct=p90,
        load_before=load_before,
        load_after=load_after,
        warnings=tuple(alerts),
        seconds=time.perf_counter() - start,
        networks=networks,
    )


def _alignment() -> int:
    """SIMD width in FP32 lanes of this CPU (AVX-512: 16, AVX/AVX2: 8, NEON: 4)."""
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    if " avx512f" in flags:
        return 16
    if " avx2" in flags or " avx " in flags:
        return 8
    if " asimd" in flags or platform.machine().lower() in ("arm64", "aarch64"):
        return 4
    return 1


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "this CPU"


def _initial_profile(
    profile_id: str,
    name: str | None,
    threads: int,
    peak: float,
    levels: list[MemoryLevel],
    runtime: str = "torch",
    described: str | None = None,
) -> DeviceProfile:
    zero = KernelOverhead(*(0.0,) * 11)
    engine = Engine(
        name="cpu",
        kind="cpu",
        cores=threads,
        clock_ghz=None,
        peak=Peak(fp32_gflops=round(peak, 1), fp16_gflops=None, int8_gops=None),
        peak_derivation="[CAL] measured: best torch.mm GFLOP/s (2 flops per multiply-add),"
        f" {threads} thread(s)",
        dtype="fp32",
        runtime=f"PyTorch {torch.__version__.split('+')[0]} eager (CPU), {threads} thread(s),"
        " batch 1",
        artifact="onnx",
        threads=threads,
        efficiency=Efficiency(*(1.0,) * 10),
        kernel_overhead_us=zero,
        invoke_overhead_us=0.0,
        container_overhead_us=0.0,
        small_layer=SmallLayer(0.0, 0.0),
        fused_ops=(),
        channel_alignment=_alignment(),
        conv_dispatch="pytorch_cpu",
        uncertainty_pct=30.0,
        sparsity=Sparsity(
            weight_formats=("dense",),
            unstructured=Unstructured(False, (), None, ()),
            semi_structured=SemiStructured(None, (), None),
            channel_pruning=True,
            source="[CAL] eager PyTorch runs masked weights densely; channel-pruned networks"
            " are exported compacted; CSR curve measured with torch.mm",
        ),
        source="[CAL] fitted to layer micro-benchmarks (least squares on log time)",
    )
    if described is not None:
        fmt: ArtifactFormat = "onnx" if runtime == "onnxruntime" else "tflite"
        what = (
            "onnxruntime's CPU execution provider has no sparse Conv/Gemm kernel"
            if fmt == "onnx"
            else "LiteRT/XNNPACK uses sparse kernels only for models converted with sparsity"
            " metadata, which litert-torch does not write"
        )
        engine = replace(
            engine,
            runtime=described,
            artifact=fmt,
            fused_ops=("batch_norm", "activation"),
            conv_dispatch="uniform",
            sparsity=Sparsity(
                weight_formats=("dense",),
                unstructured=Unstructured(False, (), None, ()),
                semi_structured=SemiStructured(None, (), None),
                channel_pruning=True,
                source=f"[CAL] {what}: masked weights run densely; channel-pruned networks"
                " are exported compacted (hwsparse.deploy.compact)",
            ),
            source=f"[CAL] fitted to layer micro-benchmarks written as fp32 .{fmt} files and"
            f" timed in {described} (least squares on log time, per-invoke overhead removed);"
            " batch-norm and activations are folded into the producing conv/GEMM by the"
            " exporter and runtime",
        )
    reserved = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    label = "PyTorch eager" if described is None else described.split(",")[0]
    return DeviceProfile(
        schema_version=1,
        id=profile_id,
        name=name or f"{_cpu_name()} ({threads} thread{'s' if threads > 1 else ''}, {label})",
        device_class="cpu",
        notes="",
        sources={"CAL": "hwsparse calibrate"},
        engines=(engine,),
        memory=Memory(levels=tuple(levels)),
        capacity=Capacity(
            ram_bytes=_ram_bytes(),
            weight_budget_bytes=None,
            activation_budget_bytes=None,
            runtime_reserved_bytes=reserved,
            weights_in_ram=True,
            source="[CAL] physical RAM (sysconf); reserve = peak RSS of the calibrating Python"
            " process with torch loaded; weight budget unknown (disk)",
        ),
        power=Power(None, None, None, source="not measured"),
        anchors=(),
    )


def _measure(
    benches: list[_Bench], min_time: float, threads: int
) -> list[tuple[_Bench, Trace, float]]:
    out = []
    for b in benches:
        mod = b.module.eval()
        x = torch.randn(1, *b.shape)
        tr = trace(mod, b.shape)
        t = median_time_s(partial(mod, x), min_time, threads) * 1e6
        out.append((b, tr, t))
    return out


# ---------------------------------------------------------------------------------------------
# Graph runtimes: every benchmark module written as an fp32 artifact and timed in its runtime

_TOOLCHAINS = {
    "onnxruntime": (("onnx", "onnx"), ("onnxruntime", "onnxruntime")),
    "litert": (("litert_torch", "litert-torch"), ("ai_edge_litert", "ai-edge-litert")),
}


def _require_runtime(runtime: str) -> str:
    """Check the runtime's packages are installed (not imported yet); describe the runtime."""
    for module, dist in _TOOLCHAINS[runtime]:
        try:
            found = importlib_util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise InputError(
                f"--runtime {runtime} needs {dist}, which is not installed: {INSTALL}"
            )
    dist = _TOOLCHAINS[runtime][1][1]
    try:
        ver = version(dist)
    except PackageNotFoundError:  # pragma: no cover - found above
        ver = "?"
    if runtime == "onnxruntime":
        return f"onnxruntime {ver} CPU EP, 1 thread, batch 1"
    return f"LiteRT (ai-edge-litert {ver}) with XNNPACK, 1 thread, batch 1"


class _AddChain(nn.Module):
    """``n`` dependent adds of a tiny tensor: the per-invoke overhead is the intercept."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n):
            x = x + x
        return x


class _GraphTimer:
    """Writes each module as an fp32 artifact in ``folder`` and times it in its runtime."""

    def __init__(self, runtime: str, min_time: float, folder: Path) -> None:
        self.format = "onnx" if runtime == "onnxruntime" else "tflite"
        self.min_time = min_time
        self.folder = folder
        self.count = 0
        self.invoke = 0.0

    def time_us(self, module: nn.Module, shape: tuple[int, ...]) -> float:
        """Lowest of 3 medians (each over about ``min_time / 3``) of one batch-1 inference."""
        from hwsparse.deploy.artifacts import time_artifact, write_artifact

        mod, io_shape = module.eval(), tuple(shape)
        if self.format == "tflite" and len(shape) == 3:
            mod, io_shape = _channel_last(mod, io_shape)
        self.count += 1
        gen = torch.Generator().manual_seed(self.count)
        report = write_artifact(
            mod,
            io_shape,
            self.folder,
            format=self.format,
            dtype="fp32",
            calibration=torch.randn((2, *io_shape), generator=gen),
            name=f"bench{self.count}",
        )
        try:
            probe = time_artifact(report.path, io_shape, runs=10, warmup=3)
            runs = int(min(5000, max(20, self.min_time / 3 / max(probe * 1e-6, 1e-7))))
            return min(
                time_artifact(report.path, io_shape, runs=runs, warmup=min(50, runs))
                for _ in range(3)
            )
        finally:
            report.path.unlink(missing_ok=True)

    def invoke_overhead_us(self) -> float:
        """Intercept of a least-squares line through chains of 1, 2, 4, 8 and 16 tiny adds."""
        ks = (1, 2, 4, 8, 16)
        ts = [self.time_us(_AddChain(k), (8,)) for k in ks]
        mk, mt = statistics.fmean(ks), statistics.fmean(ts)
        slope = sum((k - mk) * (t - mt) for k, t in zip(ks, ts, strict=True)) / sum(
            (k - mk) ** 2 for k in ks
        )
        self.invoke = round(max(0.0, mt - slope * mk), 2)
        return self.invoke

    def measure(self, benches: list[_Bench]) -> list[tuple[_Bench, Trace, float]]:
        """(bench, trace, time minus the per-invoke overhead) per bench."""
        out = []
        for b in benches:
            tr = trace(b.module.eval(), b.shape)
            t = self.time_us(b.module, b.shape)
            out.append((b, tr, max(t - self.invoke, 0.01)))
        return out


def _channel_last(module: nn.Module, shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    """Wrap a C x H x W module for NHWC input (and output, when 4-D): no transposes timed."""
    import contextlib
    import io

    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        litert_torch: Any = import_module("litert_torch")
    with torch.no_grad():
        out_dims = module(torch.zeros(1, *shape)).dim()
    wrapped = litert_torch.to_channel_last_io(
        module, args=[0], outputs=[0] if out_dims == 4 else None
    ).eval()
    return wrapped, (*shape[1:], shape[0])


def _fit_ops(
    profile: DeviceProfile,
    quick: bool,
    seed: int,
    min_time: float,
    threads: int,
    say: Progress,
    graph: _GraphTimer | None = None,
) -> tuple[DeviceProfile, list[Measurement]]:
    """Fit overheads and efficiencies; ``graph`` times in a graph runtime instead of eager.

    In a graph runtime a lone benchmark module is a whole network: one invoke, whose overhead
    is measured first and taken off every time (``lone``) before the per-op fit.
    """
    eng = profile.engines[0]
    if graph is None:
        ident, seq = nn.Identity(), nn.Sequential(nn.Identity())
        x1 = torch.ones(1)
        invoke = median_time_s(lambda: ident(x1), min_time, threads) * 1e6
        container = max(0.0, median_time_s(lambda: seq(x1), min_time, threads) * 1e6 - 2 * invoke)
        lone = 0.0  # a lone leaf module: its call cost is inside the fitted op overhead
        mem = _measure(_memory_benches(quick), min_time, threads)
    else:
        say("per-invoke overhead")
        invoke, container = graph.invoke_overhead_us(), 0.0
        lone = invoke
        mem = graph.measure([b for b in _memory_benches(quick) if b.kind not in eng.fused_ops])
    overheads: dict[str, float] = {}
    efficiency: dict[str, float] = {}
    for kind in ("view", "activation", "add", "batch_norm", "pool", "elementwise"):
        if kind in eng.fused_ops:  # graph runtimes: folded into the producer, never timed
            continue
        prof = _with_overheads(profile, eng, overheads, efficiency, invoke, container)
        if kind == "view" and graph is not None:
            # A graph runtime stores weights pre-transposed and reshapes by metadata: the views
            # of the trace (Linear's weight transpose, flatten) run no kernel of their own.
            overheads[kind] = 0.0
            continue
        if kind == "view":  # a Flatten module: its call plus one view op
            overheads[kind] = round(statistics.median(t for b, _, t in mem if b.kind == kind), 2)
            continue
        data = [(tr, t) for b, tr, t in mem if kind in _classes(tr, prof)]
        e, o, _ = _fit_class(prof, kind, data)
        efficiency[kind], overheads[kind] = round(e, 3), round(o, 2)
    say("compute efficiencies")
    benches = _compute_benches(quick, seed)
    comp = _measure(benches, min_time, threads) if graph is None else graph.measure(benches)
    best: tuple[float, dict[str, tuple[float, float]], tuple[float, float]] | None = None
    for ch_half in (0.0, 4.0, 8.0, 16.0, 32.0):
        for px_half in (0.0, 8.0, 32.0, 128.0):
            small = SmallLayer(ch_half, px_half)
            prof = _with_overheads(
                profile, replace(eng, small_layer=small), overheads, efficiency, invoke, container
            )
            score = 0.0
            params: dict[str, tuple[float, float]] = {}
            for kind in FIT_CLASSES:
                data = [(tr, t) for b, tr, t in comp if kind in _classes(tr, prof)]
                e, o, err = _fit_class(prof, kind, data)
                params[kind] = (e, o)
                score += err * len(data)
            if best is None or score < best[0]:
                best = (score, params, (ch_half, px_half))
    assert best is not None
    _, params, (ch_half, px_half) = best
    overheads.update({k: round(o, 2) for k, (e, o) in params.items()})
    efficiency.update({k: round(e, 3) for k, (e, o) in params.items()})
    final_eng = replace(eng, small_layer=SmallLayer(ch_half, px_half))
    final = _with_overheads(profile, final_eng, overheads, efficiency, invoke, container)
    measurements = []
    for b, tr, t in [*mem, *comp]:
        # Eager: a lone leaf module's call cost is inside the fitted op overhead (lone = 0).
        # Graph runtime: the module is a network, one invoke (lone = invoke overhead).
        est = sum(r.time_us for r in _predict(tr, final))
        measurements.append(Measurement(b.name, b.kind, round(t + lone, 2), round(est + lone, 2)))
    return final, measurements


def _with_overheads(
    profile: DeviceProfile,
    eng: Engine,
    overheads: dict[str, float],
    efficiency: dict[str, float],
    invoke: float,
    container: float,
) -> DeviceProfile:
    # PyTorch's CPU convolutions have no Winograd path: that class stays unset (null)
    over = KernelOverhead(
        **{f.name: overheads.get(f.name, None if f.name == "winograd" else 0.0)
           for f in fields(KernelOverhead)}
    )  # fmt: skip
    eff = Efficiency(
        **{f.name: efficiency.get(f.name, None if f.name == "winograd" else 1.0)
           for f in fields(Efficiency)}
    )  # fmt: skip
    new = replace(
        eng,
        efficiency=eff,
        kernel_overhead_us=over,
        invoke_overhead_us=round(invoke, 2),
        container_overhead_us=round(container, 2),
    )
    return replace(profile, engines=(new,))


def _fit_class(
    profile: DeviceProfile, kind: str, data: list[tuple[Trace, float]]
) -> tuple[float, float, float]:
    """(efficiency, overhead_us, mean squared log error) of one compute class."""
    if not data:
        return 1.0, 0.0, 0.0
    eng = profile.engines[0]
    unit_eff = replace(eng.efficiency, **{kind: 1.0})
    unit = replace(profile, engines=(replace(eng, efficiency=unit_eff),))
    rows = []
    for tr, t in data:
        pred = _predict(tr, unit)
        compute = sum(r.compute_us for r in pred if r.kind == kind)
        memory = sum(r.memory_us for r in pred if r.kind == kind)
        others = sum(r.time_us for r in pred if r.kind != kind)
        rows.append((compute, memory, max(t - others, 1e-3)))
    memory_bound = kind not in FIT_CLASSES
    best = (1.0, 0.0, math.inf)
    for i in range(78):  # the profile schema accepts efficiencies in (0, 4]
        e = 0.005 * 1.09**i  # 0.005 .. ~3.8
        busy = [m / e if memory_bound else max(c / e, m) for c, m, _ in rows]
        w = [1 / y**2 for _, _, y in rows]
        o = sum(wi * (y - b) for wi, b, (_, _, y) in zip(w, busy, rows, strict=True)) / sum(w)
        o = max(o, 0.0)
        err = sum(
            math.log((o + b) / y) ** 2 for b, (_, _, y) in zip(busy, rows, strict=True)
        ) / len(rows)
        if err < best[2]:
            best = (e, o, err)
    return best
