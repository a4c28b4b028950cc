"""Fit every engine's latency parameters to published measurements, and validate out of sample.

Rows are published end-to-end latencies of reference networks (:data:`hwsparse.cost.anchors.
WORKLOADS`) on a profile's engine: ``benchmarks/latency/public/measurements.csv`` or a
profile's own ``anchors``. For each engine the parameters of :mod:`hwsparse.cost.latency`
(:data:`PARAMS`: efficiencies per cost class, per-op and per-call overheads, the small-layer
half, the depthwise byte efficiency, the usable weight-cache size) are the maximum a
posteriori fit on log latency:

    minimise  sum_rows ((log t_est - log t_published) / SIGMA)^2
              + sum_params ((theta - prior mean) / prior sd)^2           (theta = log value)

Efficiencies of the other compute classes are tied to ``conv`` by their prior *ratio*, so an
engine measured on two networks keeps sane values for the classes it has not seen. Prior means
start from :data:`BASE_PRIORS` and are then *shared*: the mean of each parameter over the fits
of the other engines of the same kind (cpu, gpu, npu, mcu_core), averaged with the base value
(leave-one-engine-out: an engine's own rows never inform its prior).

Validation, all out of sample:

- leave-one-network-out per engine: refit without every row of one network, predict them;
- the band of an engine: the 80th percentile of its leave-one-out |log error| (pooled over
  the engines of its kind when it has fewer than :data:`MIN_OWN_BAND` rows); its coverage is
  counted with each row's band computed without that row;
- Kendall tau within each engine, next to a MACs-only proxy (``t = c x MACs``, ``c`` fitted
  in-sample on the same rows).

:func:`hwsparse.cost.fit_write.write_back` writes the fitted numbers, the band and the anchors
used (with sources and their leave-one-out estimate ``loo_ms``) into the profile YAML.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from hwsparse.cost.anchors import WORKLOADS
from hwsparse.cost.dataflow import Trace, trace
from hwsparse.cost.latency import (
    MEMORY_CLASSES,
    OpTerms,
    Params,
    TermArrays,
    _Unknown,
    combine,
    trace_terms,
)
from hwsparse.cost.profiles import DeviceProfile, Engine, load_profile
from hwsparse.errors import InputError

SIGMA = 0.10  # measurement scatter assumed for a published row, log units (~10 %)
MIN_OWN_BAND = 5  # rows an engine needs for a band from its own leave-one-out residuals
BAND_QUANTILE = 0.8


@dataclass(frozen=True)
class Prior:
    """Prior of one parameter: ``log value ~ N(log mean (+ log of ``of``), sd)``.

    Attributes:
        mean: prior value (a ratio to parameter ``of`` when that is set).
        sd: prior standard deviation in log units (``log(3)``: within 3x at 1 sd).
        of: the parameter this one is a ratio of, or None (absolute).
        low, high: bounds of the value.
    """

    mean: float
    sd: float
    of: str | None = None
    low: float = 1e-4
    high: float = 1e7


_LOW, _HIGH = 1e-4, 4.0  # the profile schema's (0, 4] for efficiencies
# Weak prior values; the means are replaced by the other engines' fits (shared priors).
# Sources of the base values: devices.md §2.2 and §6.3 (class ratios 1 : 0.8 : 0.25 : 0.5,
# overheads of microseconds per kernel, eager 1-10 us, GPU launches ~10 us, invoke 0.1-0.5 ms).
BASE_PRIORS: dict[str, dict[str, Prior]] = {
    kind: {
        "conv": Prior(conv, math.log(4), low=_LOW, high=_HIGH),
        "pointwise": Prior(0.8, math.log(2), "conv", low=_LOW, high=_HIGH),
        "fc": Prior(0.5, math.log(3), "conv", low=_LOW, high=_HIGH),
        "grouped": Prior(0.4, math.log(3), "conv", low=_LOW, high=_HIGH),
        "winograd": Prior(2.0, math.log(2), "conv", low=_LOW, high=_HIGH),
        "depthwise": Prior(0.25, math.log(3), "conv", low=_LOW, high=_HIGH),
        "depthwise_bytes": Prior(0.5, math.log(3), None, low=_LOW, high=_HIGH),
        "memory": Prior(0.5, math.log(3), None, low=_LOW, high=_HIGH),
        "overhead_us": Prior(op_us, math.log(10), None, 1e-3, 1e5),
        "memory_overhead_us": Prior(op_us / 4, math.log(10), None, 1e-3, 1e5),
        # the per-call cost sets every device's latency floor, and rows of 1-500 ms networks
        # hardly constrain it: a tighter prior (within 3x at one sd) keeps it credible
        "invoke_us": Prior(invoke, math.log(3), None, 1e-2, 1e6),
        "channels_half": Prior(4.0, math.log(10), None, 1e-2, 1e4),
        "cache_fraction": Prior(0.9, math.log(1.5), None, 0.05, 1.0),
    }
    for kind, conv, op_us, invoke in (
        ("cpu", 0.5, 10.0, 100.0),
        ("gpu", 0.3, 20.0, 300.0),
        ("npu", 0.2, 5.0, 300.0),
        ("mcu_core", 0.3, 20.0, 50.0),
    )
}
PARAMS = tuple(BASE_PRIORS["cpu"])
COMPUTE_PARAMS = ("conv", "pointwise", "fc", "grouped", "winograd", "depthwise")


# ---------------------------------------------------------------------------------------------
# Rows


@dataclass(frozen=True)
class Row:
    """One published measurement of a reference network on a profile's engine.

    Attributes:
        profile: profile id (or path); engine: engine name in it.
        network: :data:`WORKLOADS` key; input_shape: one sample's shape.
        dtype, threads, runtime: what was measured.
        latency_ms: published latency, milliseconds.
        source: bracketed source key(s), e.g. ``[NCNN]``; refs: key -> reference text.
    """

    profile: str
    engine: str
    network: str
    input_shape: tuple[int, ...]
    dtype: str
    threads: int
    latency_ms: float
    runtime: str
    source: str
    refs: Mapping[str, str] = field(default_factory=dict)


def read_csv(path: Path) -> list[Row]:
    """Rows of ``measurements.csv`` (columns device, engine, network, input_shape, dtype,
    threads, latency_ms, statistic, runtime, source_key, source_ref).

    Raises:
        InputError: unreadable file or a missing column.
    """
    need = ("device", "engine", "network", "input_shape", "dtype", "threads", "latency_ms")
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in need if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
            rows = []
            for rec in reader:
                key = (rec.get("source_key") or "").strip().strip("[]")
                rows.append(
                    Row(
                        profile=rec["device"].strip(),
                        engine=rec["engine"].strip(),
                        network=rec["network"].strip(),
                        input_shape=tuple(int(v) for v in re.findall(r"\d+", rec["input_shape"])),
                        dtype=rec["dtype"].strip(),
                        threads=int(float(rec["threads"] or 1)),
                        latency_ms=float(rec["latency_ms"]),
                        runtime=(rec.get("runtime") or "").strip(),
                        source=f"[{key}]" if key else "",
                        refs={key: (rec.get("source_ref") or "").strip()} if key else {},
                    )
                )
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    return rows


def anchor_rows(profile: DeviceProfile) -> list[Row]:
    """The profile's own anchors as rows."""
    return [
        Row(
            profile.id,
            a.engine,
            a.model,
            a.input_shape,
            a.dtype,
            a.threads,
            a.latency_ms,
            a.runtime,
            a.source,
        )  # fmt: skip
        for a in profile.anchors
    ]


# ---------------------------------------------------------------------------------------------
# One engine's data, prepared once


@dataclass
class EngineData:
    """The rows of one engine with their parameter-free terms, ready for fast evaluation."""

    profile: DeviceProfile
    engine: Engine
    rows: list[Row]
    terms: list[list[OpTerms]]
    macs: list[int]
    model_weight_bytes: list[int]
    container_us: list[float]
    classes: set[str] = field(default_factory=set)

    def arrays(self, keep: Sequence[int]) -> tuple[TermArrays, NDArray[np.int64]]:
        ts: list[OpTerms] = []
        ws: list[int] = []
        idx: list[int] = []
        for j, i in enumerate(keep):
            ts += self.terms[i]
            ws += [self.model_weight_bytes[i]] * len(self.terms[i])
            idx += [j] * len(self.terms[i])
        return TermArrays(ts, ws), np.array(idx, dtype=np.int64)


_TRACES: dict[tuple[str, tuple[int, ...]], Trace] = {}


def _trace(network: str, shape: tuple[int, ...]) -> Trace:
    key = (network, shape)
    if key not in _TRACES:
        _TRACES[key] = trace(WORKLOADS[network].build(), shape)
    return _TRACES[key]


def prepare(
    profile: DeviceProfile, engine: Engine, rows: list[Row], skipped: list[str]
) -> EngineData:
    """Trace every row's network once and compute its terms on ``engine``."""
    data = EngineData(profile, engine, [], [], [], [], [])
    for row in rows:
        if row.network not in WORKLOADS:
            skipped.append(f"{row.profile}/{row.engine} {row.network}: no rebuild in WORKLOADS")
            continue
        tr = _trace(row.network, row.input_shape)
        notes: set[str] = set()
        try:
            terms, weight_bytes = trace_terms(tr, profile, engine, row.dtype, {}, notes)
        except _Unknown as exc:
            skipped.append(f"{row.profile}/{row.engine} {row.network}: no {exc.args[0]}")
            continue
        data.rows.append(row)
        data.terms.append(terms)
        data.macs.append(sum(op.macs for op in tr.ops))
        data.model_weight_bytes.append(weight_bytes)
        data.container_us.append(tr.container_calls * (engine.container_overhead_us or 0.0))
        data.classes |= {t.cls for t in terms if not t.free and t.fallback_us is None}
    return data


# ---------------------------------------------------------------------------------------------
# Parameters


def free_params(data: EngineData) -> list[str]:
    """The parameters this engine's structure uses (the others stay unfitted)."""
    names = ["conv", "pointwise", "fc", "depthwise", "depthwise_bytes", "overhead_us"]
    names += ["invoke_us", "channels_half"]
    if "grouped" in data.classes:
        names.append("grouped")
    if "winograd_3x3s1" in data.engine.conv_algorithms:
        names.append("winograd")
    if set(MEMORY_CLASSES) - set(data.engine.fused_ops):
        names += ["memory", "memory_overhead_us"]
    if data.engine.weight_cache is not None:
        names.append("cache_fraction")
    return names


def to_params(values: Mapping[str, float], data: EngineData) -> tuple[Params, float]:
    """(:class:`Params`, invoke overhead us) from named parameter values."""
    eng = data.engine
    eff = {c: values[c] for c in COMPUTE_PARAMS if c in values}
    eff.setdefault("grouped", eff["conv"])
    eff.setdefault("winograd", eff["conv"])
    eff["im2col"] = eng.efficiency.im2col or eff["conv"]
    over = {c: values["overhead_us"] for c in (*COMPUTE_PARAMS, "im2col")}
    for c in MEMORY_CLASSES:
        eff[c] = values.get("memory", 1.0)
        over[c] = values.get("memory_overhead_us", 0.0)
    over["view"] = eng.kernel_overhead_us.view or 0.0
    cache = math.inf
    if eng.weight_cache is not None:
        size = cache_level_size(data)
        cache = values.get("cache_fraction", 1.0) * size
    params = Params(
        efficiency=eff,
        overhead_us=over,
        depthwise_bytes=values["depthwise_bytes"],
        channels_half=values["channels_half"],
        pixels_half=0.0,
        cache_bytes=cache,
    )
    return params, values["invoke_us"]


def cache_level_size(data: EngineData) -> float:
    cache = data.engine.weight_cache
    assert cache is not None
    level = next(lvl for lvl in data.profile.memory.levels if lvl.name == cache.level)
    return float(level.size_bytes or cache.usable_bytes)


def predict(data: EngineData, values: Mapping[str, float], keep: Sequence[int]) -> list[float]:
    """Latency, ms, of rows ``keep`` under parameter values ``values``."""
    arrays, idx = data.arrays(keep)
    params, invoke = to_params(values, data)
    per_op = combine(arrays, params).time_us
    totals = np.bincount(idx, weights=per_op, minlength=len(keep))
    return [(float(totals[j]) + invoke + data.container_us[i]) / 1e3 for j, i in enumerate(keep)]


@dataclass(frozen=True)
class Fit:
    """A MAP fit of one engine: named values and the rows used."""

    values: Mapping[str, float]
    used: tuple[int, ...]


def fit_engine(data: EngineData, priors: Mapping[str, Prior], keep: Sequence[int]) -> Fit:
    """MAP fit of ``data``'s parameters on rows ``keep`` under ``priors`` (see module doc)."""
    # scipy is imported here: importing it adds warning filters to the caller's process
    from scipy.optimize import least_squares

    names = free_params(data)
    # unused parameters: absolute ones at their prior; ratios fall back to conv (to_params)
    fixed = {n: p.mean for n, p in priors.items() if n not in names and p.of is None}
    arrays, idx = data.arrays(keep)
    y = np.log([data.rows[i].latency_ms for i in keep])
    extra = np.array([data.container_us[i] for i in keep])

    def values_of(theta: NDArray[np.float64]) -> dict[str, float]:
        return {**fixed, **{n: float(math.exp(t)) for n, t in zip(names, theta, strict=True)}}

    def residuals(theta: NDArray[np.float64]) -> NDArray[np.float64]:
        vals = values_of(theta)
        params, invoke = to_params(vals, data)
        per_op = combine(arrays, params).time_us
        totals = np.bincount(idx, weights=per_op, minlength=len(keep)) + invoke + extra
        fit_r = (np.log(totals / 1e3) - y) / SIGMA
        prior_r = []
        for n, t in zip(names, theta, strict=True):
            p = priors[n]
            ref = math.log(vals[p.of]) if p.of is not None else 0.0
            prior_r.append((t - ref - math.log(p.mean)) / p.sd)
        return np.concatenate([fit_r, np.array(prior_r)])

    x0 = []
    for n in names:
        p = priors[n]
        base = p.mean * (priors[p.of].mean if p.of is not None else 1.0)
        x0.append(math.log(min(max(base, p.low * 1.01), p.high * 0.99)))
    lo = [math.log(priors[n].low) for n in names]
    hi = [math.log(priors[n].high) for n in names]
    res = least_squares(residuals, np.array(x0), bounds=(lo, hi), x_scale=1.0, max_nfev=400)
    return Fit(values_of(res.x), tuple(keep))


# ---------------------------------------------------------------------------------------------
# Shared priors, leave-one-out, bands


def _relative(values: Mapping[str, float], name: str, prior: Prior) -> float:
    return values[name] / values[prior.of] if prior.of is not None else values[name]


def shared_priors(fits: Mapping[str, tuple[EngineData, Fit]], key: str) -> dict[str, Prior]:
    """Priors of engine ``key``: base means averaged with the other same-kind engines' fits
    (geometric mean; parameters an engine's structure does not use are skipped)."""
    data = fits[key][0]
    base = BASE_PRIORS[data.engine.kind]
    out: dict[str, Prior] = {}
    for name, prior in base.items():
        logs = [math.log(prior.mean)]
        for other, (odata, ofit) in fits.items():
            if other == key or odata.engine.kind != data.engine.kind:
                continue
            if name in free_params(odata) and len(ofit.used) >= 2:
                logs.append(math.log(_relative(ofit.values, name, prior)))
        out[name] = replace(prior, mean=math.exp(statistics.fmean(logs)))
    return out


@dataclass(frozen=True)
class EngineResult:
    """Fitted numbers and validation of one engine.

    Attributes:
        key: ``profile/engine``.
        data: the engine's rows and terms.
        values: parameters fitted on all rows.
        priors: the shared priors used.
        in_sample_ms, loo_ms: estimate per row from the fit on all rows / without its network.
        band_pct: the +- band (80th percentile of leave-one-out |log error|).
        covered: per row, inside a band computed without that row.
    """

    key: str
    data: EngineData
    values: Mapping[str, float]
    priors: Mapping[str, Prior]
    in_sample_ms: tuple[float, ...]
    loo_ms: tuple[float | None, ...]
    band_pct: float
    covered: tuple[bool | None, ...]


def _loo(data: EngineData, priors: Mapping[str, Prior]) -> list[float | None]:
    """Leave-one-network-out estimate of every row (None when no other network remains)."""
    out: list[float | None] = [None] * len(data.rows)
    networks = sorted({r.network for r in data.rows})
    if len(networks) < 2:
        return out
    for net in networks:
        held = [i for i, r in enumerate(data.rows) if r.network == net]
        rest = [i for i, r in enumerate(data.rows) if r.network != net]
        f = fit_engine(data, priors, rest)
        for i, ms in zip(held, predict(data, f.values, held), strict=True):
            out[i] = ms
    return out


def _quantile_band(logs: Sequence[float]) -> float:
    """+- band, percent, holding ``BAND_QUANTILE`` of absolute log errors ``logs``."""
    if not logs:
        return math.nan
    q = float(np.quantile(np.abs(np.array(logs)), BAND_QUANTILE))
    return (math.exp(q) - 1.0) * 100.0


def fit_all(
    rows: Iterable[Row],
    profiles: Callable[[str], DeviceProfile] = load_profile,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[EngineResult], list[str]]:
    """Fit and validate every engine that has rows. Returns (results, skipped-row reasons)."""
    say = progress or (lambda _m: None)
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r.profile, r.engine)].append(r)
    skipped: list[str] = []
    prepared: dict[str, EngineData] = {}
    for (pid, eng_name), grp in sorted(groups.items()):
        profile = profiles(pid)
        try:
            eng = profile.engine(eng_name)
        except InputError as exc:
            skipped.append(f"{pid}/{eng_name}: {exc}")
            continue
        say(f"terms of {pid}/{eng_name} ({len(grp)} rows)")
        data = prepare(profile, eng, grp, skipped)
        if data.rows:
            prepared[f"{pid}/{eng_name}"] = data
    first = {
        k: (d, fit_engine(d, BASE_PRIORS[d.engine.kind], range(len(d.rows))))
        for k, d in prepared.items()
    }
    fitted: dict[str, tuple[EngineData, Fit, dict[str, Prior], list[float | None]]] = {}
    for key, data in prepared.items():
        say(f"fit and leave-one-out of {key}")
        priors = shared_priors(first, key)
        full = fit_engine(data, priors, range(len(data.rows)))
        fitted[key] = (data, full, priors, _loo(data, priors))
    results = []
    for key, (data, full, priors, loo) in fitted.items():
        own = [math.log(m / r.latency_ms) for m, r in zip(loo, data.rows, strict=True) if m]
        kind_pool = [
            math.log(m / r.latency_ms)
            for k, (d, _, _, lo) in fitted.items()
            if k != key and d.engine.kind == data.engine.kind
            for m, r in zip(lo, d.rows, strict=True)
            if m
        ]
        band = _quantile_band(own if len(own) >= MIN_OWN_BAND else own + kind_pool)
        covered: list[bool | None] = []
        for i, (m, r) in enumerate(zip(loo, data.rows, strict=True)):
            if m is None:
                covered.append(None)
                continue
            others = [x for j, x in enumerate(own) if j != i]
            pool = others if len(others) >= MIN_OWN_BAND else others + kind_pool
            b = _quantile_band(pool)
            covered.append(abs(math.log(m / r.latency_ms)) <= math.log1p(b / 100))
        results.append(
            EngineResult(
                key=key,
                data=data,
                values=full.values,
                priors=priors,
                in_sample_ms=tuple(predict(data, full.values, range(len(data.rows)))),
                loo_ms=tuple(loo),
                band_pct=band,
                covered=tuple(covered),
            )
        )
    return results, skipped


# ---------------------------------------------------------------------------------------------
# Metrics


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two equally long sequences (nan when undefined)."""
    conc = disc = tx = ty = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom else math.nan


def abs_errors_pct(est: Sequence[float | None], meas: Sequence[float]) -> list[float]:
    """|est / meas - 1| x 100 for every row with an estimate."""
    return [abs(e / m - 1) * 100 for e, m in zip(est, meas, strict=True) if e is not None]


def macs_proxy_ms(result: EngineResult) -> list[float]:
    """``c x MACs`` with ``c`` fitted in-sample (geometric mean) on the engine's rows."""
    rows, macs = result.data.rows, result.data.macs
    c = math.exp(
        statistics.fmean(math.log(r.latency_ms / m) for r, m in zip(rows, macs, strict=True))
    )
    return [c * m for m in macs]
