"""Fit every shipped profile's engines to the public measurements and report out-of-sample errors.

A thin caller of :mod:`hwsparse.cost.fit`: rows are ``public/measurements.csv`` plus the
profile anchors of engines the CSV does not cover; every engine with rows is fitted jointly
(shared priors), validated leave-one-network-out, and reported per device.

    python benchmarks/latency/fit_anchors.py                  # report -> results/public.{md,json}
    python benchmarks/latency/fit_anchors.py --write          # also write profiles (numbers,
                                                              # bands, anchors with loo_ms)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from hwsparse.cost.fit import (
    EngineResult,
    Row,
    abs_errors_pct,
    anchor_rows,
    fit_all,
    kendall_tau,
    macs_proxy_ms,
    read_csv,
    to_params,
)
from hwsparse.cost.fit_write import write_back
from hwsparse.cost.latency import TermArrays, combine
from hwsparse.cost.profiles import PROFILE_DIR, load_profile, profile_ids

HERE = Path(__file__).resolve().parent
CSV = HERE / "public" / "measurements.csv"


def rows_to_fit(csv_path: Path) -> list[Row]:
    """CSV rows, plus the anchors of every (profile, engine) the CSV has no row for."""
    rows = read_csv(csv_path) if csv_path.is_file() else []
    covered = {(r.profile, r.engine) for r in rows}
    for pid in profile_ids():
        prof = load_profile(pid)
        rows += [r for r in anchor_rows(prof) if (r.profile, r.engine) not in covered]
    return rows


def class_shares(res: EngineResult, i: int) -> str:
    """The two cost classes (and bound terms) that take most of row ``i``'s estimated time."""
    data = res.data
    params, _ = to_params(res.values, data)
    terms = data.terms[i]
    t = combine(TermArrays(terms, [data.model_weight_bytes[i]] * len(terms)), params)
    by: dict[str, float] = defaultdict(float)
    for term, us in zip(terms, t.time_us, strict=True):
        by[term.cls] += float(us)
    total = sum(by.values()) + res.values["invoke_us"]
    by["invoke"] = res.values["invoke_us"]
    top = sorted(by, key=lambda k: -by[k])[:2]
    return ", ".join(f"{k} {by[k] / total:.0%}" for k in top)


def engine_summary(res: EngineResult) -> dict[str, object]:
    meas = [r.latency_ms for r in res.data.rows]
    ins = abs_errors_pct(res.in_sample_ms, meas)
    loo = abs_errors_pct(res.loo_ms, meas)
    pairs = [(m, y) for m, y in zip(res.loo_ms, meas, strict=True) if m is not None]
    proxy = macs_proxy_ms(res)
    cov = [c for c in res.covered if c is not None]
    return {
        "engine": res.key,
        "kind": res.data.engine.kind,
        "runtime": res.data.engine.runtime,
        "rows": len(meas),
        "networks": len({r.network for r in res.data.rows}),
        "in_sample_median_pct": statistics.median(ins),
        "loo_median_pct": statistics.median(loo) if loo else None,
        "loo_within_20": sum(e <= 20 for e in loo) / len(loo) if loo else None,
        "tau_loo": kendall_tau([p for p, _ in pairs], [y for _, y in pairs]) if len(pairs) > 2
        else None,
        "tau_macs_proxy": kendall_tau(proxy, meas) if len(meas) > 2 else None,
        "proxy_median_pct": statistics.median(abs_errors_pct(proxy, meas)),
        "band_pct": res.band_pct,
        "coverage": sum(cov) / len(cov) if cov else None,
        "covered_rows": len(cov),
        "values": dict(res.values),
    }  # fmt: skip


def pooled_tau(results: list[EngineResult], proxy: bool) -> tuple[float, int]:
    """Within-engine Kendall tau pooled over engines (pairs counted within engines only)."""
    num = den = 0.0
    for res in results:
        meas = [r.latency_ms for r in res.data.rows]
        est = macs_proxy_ms(res) if proxy else list(res.loo_ms)
        pts = [(e, y) for e, y in zip(est, meas, strict=True) if e is not None]
        n = len(pts)
        if n < 3:
            continue
        pairs = n * (n - 1) / 2
        tau = kendall_tau([e for e, _ in pts], [y for _, y in pts])
        if not math.isnan(tau):
            num += tau * pairs
            den += pairs
    return (num / den if den else math.nan), int(den)


def _f(x: object, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def report(results: list[EngineResult], skipped: list[str], n_rows: int) -> tuple[str, dict]:  # type: ignore[type-arg]
    all_meas: list[float] = []
    all_loo: list[float | None] = []
    all_ins: list[float] = []
    cov: list[bool] = []
    for res in results:
        meas = [r.latency_ms for r in res.data.rows]
        all_meas += meas
        all_loo += list(res.loo_ms)
        all_ins += list(res.in_sample_ms)
        cov += [c for c in res.covered if c is not None]
    loo = abs_errors_pct(all_loo, all_meas)
    ins = abs_errors_pct(all_ins, all_meas)
    tau, pairs = pooled_tau(results, proxy=False)
    ptau, _ = pooled_tau(results, proxy=True)
    overall = {
        "rows_read": n_rows,
        "rows_fitted": len(all_meas),
        "engines": len(results),
        "in_sample_median_pct": statistics.median(ins),
        "loo_median_pct": statistics.median(loo),
        "loo_rows": len(loo),
        "loo_within_20": sum(e <= 20 for e in loo) / len(loo),
        "tau_within_engine_loo": tau,
        "tau_within_engine_macs_proxy": ptau,
        "tau_pairs": pairs,
        "band_coverage": sum(cov) / len(cov) if cov else None,
        "coverage_rows": len(cov),
    }
    out = [
        "# Public measurements: fitted in-sample and leave-one-out errors per engine",
        "",
        f"{overall['rows_fitted']} rows fitted ({n_rows} read) on {len(results)} engines."
        " Written by `benchmarks/latency/fit_anchors.py` (hwsparse/cost/fit.py).",
        "",
        "| all engines | value |",
        "|---|---|",
        f"| in-sample median abs error | {overall['in_sample_median_pct']:.1f} % |",
        f"| leave-one-network-out median abs error ({len(loo)} rows) |"
        f" **{overall['loo_median_pct']:.1f} %** |",
        f"| leave-one-out within +-20 % | {overall['loo_within_20']:.0%} |",
        f"| within-engine Kendall tau, leave-one-out estimates ({pairs} pairs) | **{tau:.3f}** |",
        f"| within-engine Kendall tau, MACs-only proxy (same rows) | {ptau:.3f} |",
        f"| band coverage (each row's band computed without it; {len(cov)} rows) |"
        f" **{_f(overall['band_coverage'], '{:.0%}')}** |",
        "",
    ]
    by_device: dict[str, list[EngineResult]] = defaultdict(list)
    for res in results:
        by_device[res.key.split("/")[0]].append(res)
    summaries = []
    for device, group in sorted(by_device.items()):
        out += [f"## {device}", ""]
        out += [
            "| engine | runtime | rows (networks) | in-sample median | LOO median |"
            " tau LOO | tau MACs proxy | band | coverage |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        worst: list[tuple[float, str]] = []
        for res in group:
            s = engine_summary(res)
            summaries.append(s)
            out.append(
                f"| {res.data.engine.name} | {s['runtime']} | {s['rows']} ({s['networks']}) |"
                f" {s['in_sample_median_pct']:.1f} % | {_f(s['loo_median_pct'], '{:.1f} %')} |"
                f" {_f(s['tau_loo'], '{:.2f}')} | {_f(s['tau_macs_proxy'], '{:.2f}')} |"
                f" +-{s['band_pct']:.0f} % | {_f(s['coverage'], '{:.0%}')}"
                f" ({s['covered_rows']}) |"
            )
            for i, (row, m) in enumerate(zip(res.data.rows, res.loo_ms, strict=True)):
                if m is None:
                    continue
                err = (m / row.latency_ms - 1) * 100
                worst.append((
                    abs(err),
                    f"| {row.network} {'x'.join(map(str, row.input_shape))} {row.dtype} |"
                    f" {res.data.engine.name} | {row.latency_ms:g} | {m:.3g} | {err:+.0f} % |"
                    f" {class_shares(res, i)} | {row.source} |",
                ))  # fmt: skip
        worst.sort(key=lambda w: -w[0])
        if worst:
            out += ["", "Worst five (leave-one-out):", ""]
            out += [
                "| network | engine | published ms | LOO ms | LOO error | largest estimated"
                " shares | source |",
                "|---|---|---|---|---|---|---|",
            ]
            out += [w[1] for w in worst[:5]]
        out.append("")
    if skipped:
        out += ["## Rows not fitted", ""] + [f"- {s}" for s in sorted(set(skipped))] + [""]
    payload = {"overall": overall, "engines": summaries, "skipped": sorted(set(skipped))}
    return "\n".join(out) + "\n", payload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=CSV)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--write", action="store_true", help="write the shipped profiles")
    args = parser.parse_args()
    rows = rows_to_fit(args.csv)
    results, skipped = fit_all(rows, progress=lambda m: print(m, flush=True))
    text, payload = report(results, skipped, len(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "public.md").write_text(text)
    (args.out / "public.json").write_text(json.dumps(payload, indent=1))
    print(text)
    if args.write:
        by_profile: dict[str, list[EngineResult]] = defaultdict(list)
        for res in results:
            by_profile[res.key.split("/")[0]].append(res)
        for pid, group in by_profile.items():
            write_back(PROFILE_DIR / f"{pid}.yaml", group)
            print(f"wrote {pid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
