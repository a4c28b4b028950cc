"""Fit a shipped profile's compute efficiencies to its published anchors and list the errors.

For every engine with anchors: efficiencies keep the prior ratios of devices.md §6.3
(conv : pointwise : depthwise : fc = 1 : 0.8 : 0.25 : 0.5) with two free scales, ``a`` for the
dense GEMM-like kinds (conv, pointwise, fc) and ``b`` for depthwise (one scale when the engine's
anchors are a single model, or have no depthwise layer), chosen by
least squares on log latency. Reported: in-sample error and, with three or more anchors,
leave-one-out error (the anchor left out of the fit). Overheads and memory numbers stay as
written in the YAML (estimates or sourced figures).

    python benchmarks/latency/fit_anchors.py                 # all shipped profiles, report only
    python benchmarks/latency/fit_anchors.py --write ID ...  # also write the fitted values
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import replace
from pathlib import Path

from hwsparse.cost.anchors import WORKLOADS
from hwsparse.cost.dataflow import trace
from hwsparse.cost.latency import OpLatency, estimate_latency
from hwsparse.cost.profiles import PROFILE_DIR, Anchor, DeviceProfile, load_profile, profile_ids

DEPTHWISE = ("mobilenet", "mlperf_tiny_vww", "mlperf_tiny_kws")  # anchors with depthwise layers
PRIOR = {"conv": 1.0, "pointwise": 0.8, "depthwise": 0.25, "fc": 0.5}
GRID = [0.01 * 1.05**i for i in range(160)]  # 0.01 .. ~24
_TRACES: dict[str, object] = {}


def unit_rows(profile: DeviceProfile, anchor: Anchor) -> tuple[list[OpLatency], float]:
    """Per-op rows of the anchor with every compute efficiency 1, and the fixed invoke cost."""
    work = WORKLOADS[anchor.model]
    key = f"{anchor.model}:{anchor.input_shape}"
    if key not in _TRACES:
        _TRACES[key] = trace(work.build(), anchor.input_shape)
    eng = profile.engine(anchor.engine)
    unit = replace(
        eng, efficiency=replace(eng.efficiency, conv=1.0, pointwise=1.0, depthwise=1.0, fc=1.0)
    )
    prof = replace(profile, engines=(unit,))
    est = estimate_latency(_TRACES[key], prof, unit.name, anchor.dtype)  # type: ignore[arg-type]
    return list(est.ops), est.invoke_overhead_us


def predict(rows: list[OpLatency], invoke: float, eff: dict[str, float]) -> float:
    total = invoke
    for r in rows:
        if r.kind in eff:
            total += max(r.compute_us / eff[r.kind], r.memory_us) + r.overhead_us
        else:
            total += r.time_us
    return total / 1e3


def effs(a: float, b: float) -> dict[str, float]:
    """``a`` scales the dense GEMM-like kinds (conv, pointwise, fc), ``b`` depthwise."""
    return {"conv": a * PRIOR["conv"], "pointwise": a * PRIOR["pointwise"],
            "depthwise": b * PRIOR["depthwise"], "fc": a * PRIOR["fc"]}  # fmt: skip


def fit(data: list[tuple[list[OpLatency], float, float]], two: bool) -> tuple[float, float]:
    best = (math.inf, 1.0, 1.0)
    for a in GRID:
        for b in GRID if two else [a]:
            err = sum(math.log(predict(r, i, effs(a, b)) / y) ** 2 for r, i, y in data)
            best = min(best, (err, a, b))
    return best[1], best[2]


def write(path: Path, engine: str, eff: dict[str, float]) -> None:
    text = path.read_text()
    start = text.index(f"  - name: {engine}\n")
    match = re.compile(
        r"efficiency: \{conv: [0-9.]+, pointwise: [0-9.]+, depthwise: [0-9.]+, fc: [0-9.]+,"
    ).search(text, start)
    assert match, f"no efficiency line for {engine} in {path}"
    new = (
        f"efficiency: {{conv: {eff['conv']:.3g}, pointwise: {eff['pointwise']:.3g},"
        f" depthwise: {eff['depthwise']:.3g}, fc: {eff['fc']:.3g},"
    )
    path.write_text(text[: match.start()] + new + text[match.end() :])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", nargs="*", default=[], help="profile ids to update in place")
    parser.add_argument("ids", nargs="*", help="profiles (default: all shipped)")
    args = parser.parse_args()
    for pid in args.ids or profile_ids():
        profile = load_profile(pid)
        print(f"\n## {pid}")
        for eng in profile.engines:
            anchors = [a for a in profile.anchors if a.engine == eng.name]
            if not anchors:
                print(f"- engine {eng.name}: no anchors (efficiencies as written)")
                continue
            data = []
            for a in anchors:
                rows, invoke = unit_rows(profile, a)
                data.append((rows, invoke, a.latency_ms))
            models = {a.model for a in anchors}
            two = len(models) >= 2 and any(m.startswith(DEPTHWISE) for m in models)
            a_, b_ = fit(data, two)
            eff = effs(a_, b_)
            print(
                f"- engine {eng.name} ({eng.runtime}): fitted "
                + ", ".join(f"{k} {v:.3g}" for k, v in eff.items())
            )
            print(
                "  | model | dtype | published ms | estimate ms | error % |"
                " leave-one-out error % |"
            )
            print("  |---|---|---|---|---|---|")
            for i, (anchor, (rows, invoke, y)) in enumerate(zip(anchors, data, strict=True)):
                est = predict(rows, invoke, eff)
                loo = ""
                rest = data[:i] + data[i + 1 :]
                rest_models = {x.model for j, x in enumerate(anchors) if j != i}
                if len(rest) >= 2 and anchor.model in rest_models | {anchor.model}:
                    two_rest = len(rest_models) >= 2 and any(
                        m.startswith(DEPTHWISE) for m in rest_models
                    )
                    la, lb = fit(rest, two_rest)
                    loo = f"{(predict(rows, invoke, effs(la, lb)) / y - 1) * 100:+.0f}"
                print(
                    f"  | {anchor.model} | {anchor.dtype} | {y:g} | {est:.1f} |"
                    f" {(est / y - 1) * 100:+.0f} | {loo} |"
                )
            if pid in args.write:
                write(Path(profile.path or PROFILE_DIR / f"{pid}.yaml"), eng.name, eff)
    return 0


if __name__ == "__main__":
    sys.exit(main())
