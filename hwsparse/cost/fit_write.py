"""Write a fit of :mod:`hwsparse.cost.fit` back into a profile YAML, keeping its comments.

The fitted numbers of each engine (efficiencies, overheads, per-call cost, small-layer half,
usable weight cache, band) replace the engine's flow mappings in place; the engine's ``source``
says what was fitted; the anchors of the fitted engines become the rows used, each with its
source key and leave-one-out estimate ``loo_ms``; source keys the rows cite are added.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from hwsparse.cost.fit import (
    EngineResult,
    Row,
    abs_errors_pct,
    anchor_rows,
    cache_level_size,
    free_params,
)
from hwsparse.cost.latency import MEMORY_CLASSES
from hwsparse.cost.profiles import load_profile
from hwsparse.errors import InputError

FIT_SOURCE = (
    "hwsparse/cost/fit.py: MAP fit on log latency with shared priors to this profile's anchors;"
    " band = 80th percentile of leave-one-network-out errors"
)


def _g(x: float) -> str:
    return f"{x:.4g}"


def _flow(values: Mapping[str, float | None]) -> str:
    return (
        "{" + ", ".join(f"{k}: {'null' if v is None else _g(v)}" for k, v in values.items()) + "}"
    )


def fitted_engine_fields(result: EngineResult) -> dict[str, str]:
    """YAML text (flow style) of the fitted engine fields of ``result``."""
    data, v = result.data, result.values
    eng = data.engine
    free = set(free_params(data))
    eff: dict[str, float | None] = {
        f: getattr(eng.efficiency, f)
        for f in ("conv", "pointwise", "depthwise", "fc", *MEMORY_CLASSES, "im2col")
    }
    over: dict[str, float | None] = {
        f: getattr(eng.kernel_overhead_us, f)
        for f in ("conv", "pointwise", "depthwise", "fc", *MEMORY_CLASSES, "view", "im2col")
    }
    for c in ("conv", "pointwise", "depthwise", "fc", "grouped", "winograd"):
        if c in free:
            eff[c] = v[c]
            over[c] = v["overhead_us"]
    if eff["im2col"] is not None:
        over["im2col"] = v["overhead_us"]
    else:
        eff.pop("im2col")
        over.pop("im2col")
    for c in MEMORY_CLASSES:
        if "memory" in free and c not in eng.fused_ops:
            eff[c] = v["memory"]
            over[c] = v["memory_overhead_us"]
    eff["depthwise_bytes"] = v["depthwise_bytes"]
    out = {
        "efficiency": _flow(eff),
        "kernel_overhead_us": _flow(over),
        "invoke_overhead_us": _g(v["invoke_us"]),
        "small_layer": _flow({"channels_half": v["channels_half"], "pixels_half": 0.0}),
        "uncertainty_pct": f"{round(result.band_pct)}",
    }
    if eng.weight_cache is not None:
        out["usable_bytes"] = str(int(v["cache_fraction"] * cache_level_size(data)))
    meas = [r.latency_ms for r in data.rows]
    loo = abs_errors_pct(result.loo_ms, meas)
    loo_text = (
        f"leave-one-network-out median {statistics.median(loo):.0f} %"
        if loo
        else ("no leave-one-out (one network)")
    )
    out["source"] = json_str(
        f"efficiencies, overheads, small-layer half{', cache size' if eng.weight_cache else ''}"
        f" fitted to the {len(meas)} anchors of this engine [FIT]; {loo_text};"
        f" band +-{round(result.band_pct)} % from those errors"
    )
    return out


def json_str(text: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


def _engine_span(text: str, engine: str) -> tuple[int, int]:
    start = text.index(f"\n  - name: {engine}\n") + 1
    nxt = re.compile(r"^(  - name: |\S)", re.M)
    m = nxt.search(text, start + 4)
    return start, (m.start() if m else len(text))


def _replace_field(stanza: str, key: str, value: str) -> str:
    """Replace ``    key: <value>`` (a flow mapping may span lines) inside an engine stanza."""
    m = re.search(rf"^    {key}: ", stanza, re.M)
    if m is None:
        raise ValueError(f"no '{key}:' in the engine stanza")
    end = m.end()
    if stanza[end] == "{":
        depth = 0
        for j in range(end, len(stanza)):
            depth += {"{": 1, "}": -1}.get(stanza[j], 0)
            if depth == 0:
                end = j + 1
                break
    else:
        end = stanza.index("\n", end)
    return stanza[: m.end()] + value + stanza[end:]


def _anchor_line(row: Row, loo: float | None) -> str:
    shape = "[" + ", ".join(str(d) for d in row.input_shape) + "]"
    loo_text = "null" if loo is None else _g(loo)
    return (
        f"  - {{model: {row.network}, input_shape: {shape}, dtype: {row.dtype},"
        f" engine: {row.engine}, runtime: {json_str(row.runtime)}, threads: {row.threads},"
        f" latency_ms: {_g(row.latency_ms)}, source: {json_str(row.source)},"
        f" loo_ms: {loo_text}}}"
    )


def write_back(path: Path, results: Sequence[EngineResult]) -> None:
    """Write the fits of ``results`` (engines of the profile at ``path``) into the file:
    fitted numbers, band and source per engine; the anchors of the fitted engines (rows used,
    with ``loo_ms``) replace theirs, other engines' anchors stay; new source keys are added.

    Raises:
        InputError: the written file does not load (it is then left unchanged).
    """
    original = path.read_text(encoding="utf-8")
    text = original
    for res in results:
        start, end = _engine_span(text, res.data.engine.name)
        stanza = text[start:end]
        for key, value in fitted_engine_fields(res).items():
            if key == "usable_bytes":
                stanza = re.sub(r"usable_bytes: \d+", f"usable_bytes: {value}", stanza)
            else:
                stanza = _replace_field(stanza, key, value)
        text = text[:start] + stanza + text[end:]
    profile = results[0].data.profile
    fitted = {r.data.engine.name for r in results}
    kept = [(row, a.loo_ms) for row, a in zip(anchor_rows(profile), profile.anchors, strict=True)]
    lines = [_anchor_line(row, loo) for row, loo in kept if row.engine not in fitted]
    for res in results:
        lines += [
            _anchor_line(row, loo) for row, loo in zip(res.data.rows, res.loo_ms, strict=True)
        ]
    block = "anchors:\n" + "\n".join(lines) + "\n"
    m = re.search(r"^anchors:.*?(?=^\S|\Z)", text, re.M | re.S)
    text = text[: m.start()] + block + text[m.end() :] if m else text.rstrip("\n") + "\n" + block
    refs: dict[str, str] = {"FIT": FIT_SOURCE}
    for res in results:
        for row in res.data.rows:
            refs.update({k: v for k, v in row.refs.items() if v})
    if "FIT" in profile.sources:
        text = re.sub(r"^  FIT: .*$", f"  FIT: {json_str(FIT_SOURCE)}", text, count=1, flags=re.M)
    missing = {k: v for k, v in refs.items() if k not in profile.sources}
    if missing:
        m = re.search(r"^sources:\n(?:  .*\n)*", text, re.M)
        assert m is not None, "profile without a sources block"
        add = "".join(f"  {k}: {json_str(v)}\n" for k, v in sorted(missing.items()))
        text = text[: m.end()] + add + text[m.end() :]
    path.write_text(text, encoding="utf-8")
    try:
        load_profile(path)
    except InputError:
        path.write_text(original, encoding="utf-8")
        raise
