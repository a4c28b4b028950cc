"""Latency benchmark: calibrate this machine (1 thread), then estimate vs measure many networks.

    python benchmarks/latency/run.py [--out benchmarks/latency/results] [--min-run-time 1.0]

Writes ``this-machine.yaml`` (the calibrated profile), ``calibration.json`` (micro-benchmarks),
``results.json`` and ``results.md`` (per network and summary) into ``--out``. Measurement:
torch eager, batch 1, one thread, flush-denormal, warm-up, the lowest of five
``blocked_autorange`` medians (other processes only add time; calibration uses the same
statistic); the 1-minute load average is recorded before and after each network. The
FLOPs-only proxy is ``latency = c x FLOPs`` with ``c`` fitted on these same networks (least
squares on log latency, i.e. in-sample and optimistic for the proxy).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch
import yaml

from hwsparse.cost.calibrate import busy_warning, calibrate, median_time_s
from hwsparse.cost.estimate import estimate
from hwsparse.cost.fit import kendall_tau
from hwsparse.cost.profiles import dump_profile, parse_profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nets import Case, apply_masks, cases  # noqa: E402


def summary(est: list[float], meas: list[float]) -> dict[str, float]:
    errors = [abs(e / m - 1) * 100 for e, m in zip(est, meas, strict=True)]
    return {
        "median_abs_error_pct": statistics.median(errors),
        "mean_abs_error_pct": statistics.fmean(errors),
        "within_10_pct": sum(e <= 10 for e in errors) / len(errors),
        "within_20_pct": sum(e <= 20 for e in errors) / len(errors),
        "kendall_tau": kendall_tau(est, meas),
        "n": len(errors),
    }


def measure(case: Case, min_run_time: float) -> tuple[float, float, float]:
    """(median ms, load before, load after) of the network that a deployment would run."""
    if case.build_measured is not None:
        model = case.build_measured()
    else:
        model, masks = case.build()
        apply_masks(model, masks)
    model.eval()
    x = torch.randn(1, *case.input_shape)
    load_before = os.getloadavg()[0]
    with torch.no_grad():
        best = median_time_s(partial(model, x), min_run_time, 1, repeats=5)
    return best * 1e3, load_before, os.getloadavg()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description="estimate vs measured latency on this machine")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--min-run-time", type=float, default=1.0)
    parser.add_argument("--profile", type=Path, default=None, help="reuse a calibrated profile")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"load average at start: {os.getloadavg()}", flush=True)
    if busy_warning(1):
        print(f"warning: {busy_warning(1)}", flush=True)
    if args.profile is None:
        result = calibrate(threads=1, progress=lambda m: print(f"calibrate: {m}", flush=True))
        profile = result.profile
        (args.out / "this-machine.yaml").write_text(
            "# Written by benchmarks/latency/run.py (hwsparse calibrate --threads 1).\n"
            + dump_profile(profile)
        )
        (args.out / "calibration.json").write_text(json.dumps({
            "seconds": result.seconds, "median_error_pct": result.median_error_pct,
            "p90_error_pct": result.p90_error_pct, "load_before": result.load_before,
            "load_after": result.load_after, "warnings": list(result.warnings),
            "measurements": [m.__dict__ for m in result.measurements],
            "networks": [m.__dict__ for m in result.networks],
        }, indent=1))  # fmt: skip
        fit = result.median_error_pct
        print(f"calibration: {result.seconds:.0f} s, layer fit median {fit:.0f} %")
    else:
        profile = parse_profile(yaml.safe_load(args.profile.read_text()), str(args.profile))
    rows = []
    for case in cases():
        model, masks = case.build()
        t0 = time.perf_counter()
        report = estimate(model, case.input_shape, profile, masks=masks)
        est_s = time.perf_counter() - t0
        if case.build_measured is not None:  # the compact net must have the masked net's flops
            compact = estimate(case.build_measured(), case.input_shape, profile)
            assert compact.flops == report.flops, (case.name, compact.flops, report.flops)
        ms, lb, la = measure(case, args.min_run_time)
        assert report.latency_ms is not None
        rows.append({
            "name": case.name, "family": case.family, "input_shape": list(case.input_shape),
            "flops": report.flops, "dense_flops": report.dense_flops,
            "estimate_ms": report.latency_ms, "low_ms": report.latency_ms_low,
            "high_ms": report.latency_ms_high, "measured_ms": ms,
            "load_before": lb, "load_after": la, "estimate_seconds": est_s,
        })  # fmt: skip
        print(f"{case.name:34s} est {report.latency_ms:8.3f} ms  meas {ms:8.3f} ms "
              f"({(report.latency_ms / ms - 1) * 100:+5.0f} %)  load {lb:.2f}/{la:.2f}",
              flush=True)  # fmt: skip
    meas = [r["measured_ms"] for r in rows]
    est = [r["estimate_ms"] for r in rows]
    flops = [r["flops"] for r in rows]
    # FLOPs-only proxy: latency = c x flops, c fitted in log space on these networks.
    c = math.exp(statistics.fmean(math.log(m / f) for m, f in zip(meas, flops, strict=True)))
    proxy = [c * f for f in flops]
    for r, p in zip(rows, proxy, strict=True):
        r["flops_proxy_ms"] = p
    ours, prox = summary(est, meas), summary(proxy, meas)
    inside = sum(r["low_ms"] <= r["measured_ms"] <= r["high_ms"] for r in rows) / len(rows)
    loads = [r["load_before"] for r in rows] + [r["load_after"] for r in rows]
    meta = {
        "started": started, "host": platform.node(), "cpu": profile.name,
        "torch": torch.__version__, "threads": 1, "min_run_time_s": args.min_run_time,
        "load_min": min(loads), "load_median": statistics.median(loads), "load_max": max(loads),
        "cpus": os.cpu_count(), "band_coverage": inside,
        "uncertainty_pct": profile.engines[0].uncertainty_pct, "proxy_ms_per_mflop": c * 1e6,
    }  # fmt: skip
    (args.out / "results.json").write_text(
        json.dumps(
            {"meta": meta, "estimator": ours, "flops_proxy": prox, "networks": rows}, indent=1
        )
    )
    write_markdown(args.out / "results.md", meta, ours, prox, rows)
    print(json.dumps({"estimator": ours, "flops_proxy": prox, "band_coverage": inside}, indent=1))
    return 0


def write_markdown(path: Path, meta: dict, ours: dict, prox: dict, rows: list[dict]) -> None:  # type: ignore[type-arg]
    def line(name: str, s: dict) -> str:  # type: ignore[type-arg]
        return (f"| {name} | {s['median_abs_error_pct']:.1f} % | {s['within_10_pct']:.0%} |"
                f" {s['within_20_pct']:.0%} | {s['kendall_tau']:.3f} |")  # fmt: skip

    out = [
        f"# Latency: estimate vs measurement on this machine ({meta['started']})",
        "",
        f"{meta['cpu']}; torch {meta['torch']}, 1 thread, batch 1; {len(rows)} networks.",
        f"Load average (1 min) during measurement: min {meta['load_min']:.2f}, median"
        f" {meta['load_median']:.2f}, max {meta['load_max']:.2f} on {meta['cpus']} CPUs"
        " (other agents share the machine).",
        "",
        "| predictor | median abs error | within +-10 % | within +-20 % | Kendall tau |",
        "|---|---|---|---|---|",
        line("hwsparse roofline (calibrated profile)", ours),
        line("FLOPs-only proxy (scale fitted in-sample)", prox),
        "",
        f"Measured value inside the estimate's +-{meta['uncertainty_pct']:g} % band:"
        f" {meta['band_coverage']:.0%} of networks.",
        "",
        "| network | family | MFLOPs | measured ms | estimate ms | error | FLOPs proxy ms"
        " | proxy error | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['name']} | {r['family']} | {r['flops'] / 1e6:.3g} | {r['measured_ms']:.3f} |"
            f" {r['estimate_ms']:.3f} | {(r['estimate_ms'] / r['measured_ms'] - 1) * 100:+.0f} % |"
            f" {r['flops_proxy_ms']:.3f} |"
            f" {(r['flops_proxy_ms'] / r['measured_ms'] - 1) * 100:+.0f} % |"
            f" {r['load_before']:.2f} |"
        )
    path.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    sys.exit(main())
