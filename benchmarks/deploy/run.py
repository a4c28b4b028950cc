"""Deploy benchmark: measured vs estimated speed-up of tickets in the runtime that runs them.

    python benchmarks/deploy/run.py [--out DIR] [--runtimes onnxruntime,litert]
        [--min-time 0.3] [--quick]

Needs the runtime profiles calibrated on this machine by ``hwsparse calibrate --runtime ...``
in ``--profiles`` (default ``results/``): ``this-machine-onnxruntime.yaml`` and
``this-machine-litert.yaml`` (see README.md).

For every ticket (model x granularity x density): masks by global magnitude
(:func:`hwsparse.masks.top_k_masks`) on the randomly initialised network (latency does not
depend on training; channel tickets mask the classifier by weight, its outputs being the
classes; depthwise convs are not masked: their channels follow their producer's), compaction
(:func:`hwsparse.deploy.compact.compact`), fp32 artifacts of the dense network and of the
compacted ticket (:func:`hwsparse.deploy.artifacts.write_artifact`: ``.onnx`` run in
onnxruntime, ``.tflite`` in LiteRT), both timed in the same run, interleaved, on one thread
(:func:`~hwsparse.deploy.artifacts.time_artifact`, the lowest of 5 medians of about
``--min-time / 5`` seconds each). Measured speed-up = t_dense / t_ticket; estimated speed-up =
estimate(dense) / estimate(dense network + masks) with that runtime's calibrated profile.
Artifact size: fp32 ``.onnx``/``.tflite`` and int8 ``.tflite`` bytes against the estimate's
``weight_bytes`` at that dtype, fitted as ``bytes = a + b x weight_bytes``.

Writes ``results.json`` and ``results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from hwsparse.cost.estimate import estimate  # noqa: E402
from hwsparse.cost.profiles import load_profile  # noqa: E402
from hwsparse.deploy.artifacts import time_artifact, write_artifact  # noqa: E402
from hwsparse.deploy.compact import compaction  # noqa: E402
from hwsparse.masks import PRUNABLE_TYPES, global_density, magnitude_tiebreak, top_k_masks  # noqa: E402
from hwsparse.models import build_model  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # for the user model "nets:dsnet"

FORMAT = {"onnxruntime": "onnx", "litert": "tflite"}


@dataclass(frozen=True)
class Net:
    key: str
    model: str  # hwsparse model name or module:function
    dataset: str  # the dataset whose sample shape is used ("random" = no dataset)
    shape: tuple[int, ...]


NETS = {
    "mlp": Net("mlp", "mlp", "digits", (1, 8, 8)),
    "lenet5": Net("lenet5", "lenet5", "mnist10k", (1, 28, 28)),
    "conv1d": Net("conv1d", "conv1d", "mnist1d", (1, 40)),
    "resnet20": Net("resnet20", "resnet20", "random 3x32x32", (3, 32, 32)),
    "dsnet": Net("dsnet", "nets:dsnet", "random 3x32x32", (3, 32, 32)),
}

# (net, granularity, density)
TICKETS = [
    ("mlp", "weight", 0.2),
    ("mlp", "channel", 0.5),
    ("mlp", "channel", 0.2),
    ("mlp", "channel", 0.05),
    ("lenet5", "weight", 0.2),
    ("lenet5", "channel", 0.5),
    ("lenet5", "channel", 0.2),
    ("lenet5", "channel", 0.05),
    ("conv1d", "weight", 0.05),
    ("conv1d", "channel", 0.5),
    ("conv1d", "channel", 0.2),
    ("resnet20", "weight", 0.2),
    ("resnet20", "channel", 0.5),
    ("resnet20", "channel", 0.2),
    ("resnet20", "channel", 0.05),
    ("dsnet", "weight", 0.2),
    ("dsnet", "channel", 0.5),
    ("dsnet", "channel", 0.2),
    ("dsnet", "channel", 0.05),
]
QUICK = [t for t in TICKETS if t[2] == 0.2]
INT8_TICKETS = {
    ("lenet5", "channel", 0.2),
    ("resnet20", "channel", 0.2),
    ("dsnet", "channel", 0.2),
    ("mlp", "channel", 0.2),
    ("conv1d", "channel", 0.2),
}


def make_masks(model: nn.Module, granularity: str, density: float, seed: int) -> dict[str, Tensor]:
    """Global magnitude masks (ties broken at random) at ``density`` of all Conv/Linear weights."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    # Depthwise convs are not masked: their channels live and die with their producer's (an
    # independent mask per layer would empty the intersection and kill the network).
    layers = [(n, m) for n, m in layers if not (isinstance(m, nn.Conv2d) and m.groups > 1)]
    gen = torch.Generator().manual_seed(seed)
    scores, ties = {}, {}
    for i, (name, mod) in enumerate(layers):
        weight = mod.weight
        assert isinstance(weight, Tensor)
        w = weight.detach()
        # channel tickets: the classifier's outputs are the classes, so it is masked by weight
        by_weight = granularity == "weight" or i == len(layers) - 1
        shape = w.shape if by_weight else torch.Size([w.shape[0]] + [1] * (w.dim() - 1))
        scores[name] = magnitude_tiebreak(w, shape)
        ties[name] = torch.rand(shape, generator=gen)
    return top_k_masks(model, scores, ties, density)


def disconnected(model: nn.Module, shape: tuple[int, ...]) -> bool:
    """True when the output does not depend on the input: the masks cut every path (a
    converter may then fold the whole network into a constant)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn((2, *shape), generator=gen)
    with torch.no_grad():
        y = model(x)
    return bool(torch.equal(y[0], y[1]))


def unaligned(model: nn.Module) -> str:
    """Conv layers of ``model`` whose input or output width is not a multiple of 16, of all."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    odd = [m for m in convs if m.in_channels % 16 or m.out_channels % 16]
    return f"{len(odd)}/{len(convs)}"


def timed_pair(
    a: Path, b: Path, shape: tuple[int, ...], min_time: float, repeats: int = 5
) -> tuple[float, float]:
    """Lowest of ``repeats`` medians of each artifact, interleaved a, b, a, b, ... (us)."""
    runs = []
    for p in (a, b):
        probe = time_artifact(p, shape, runs=20, warmup=5)
        runs.append(int(min(20000, max(30, min_time / repeats / (probe * 1e-6)))))
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(time_artifact(a, shape, runs=runs[0], warmup=min(100, runs[0])))
        tb.append(time_artifact(b, shape, runs=runs[1], warmup=min(100, runs[1])))
    return min(ta), min(tb)


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares of the relative error: y = a + b x minimising sum(((a + b x) / y - 1)^2)."""
    w = [1 / y**2 for y in ys]
    sw = sum(w)
    mx = sum(wi * x for wi, x in zip(w, xs, strict=True)) / sw
    my = sum(wi * y for wi, y in zip(w, ys, strict=True)) / sw
    sxx = sum(wi * (x - mx) ** 2 for wi, x in zip(w, xs, strict=True))
    sxy = sum(wi * (x - mx) * (y - my) for wi, x, y in zip(w, xs, ys, strict=True))
    b = sxy / sxx if sxx else 1.0
    return my - b * mx, b


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument(
        "--profiles", type=Path, default=HERE / "results", help="this-machine-RUNTIME.yaml here"
    )
    ap.add_argument("--runtimes", default="onnxruntime,litert")
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per artifact timing")
    ap.add_argument("--quick", action="store_true", help="the 0.2-density tickets, 0.1 s timings")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 .tflite size check")
    ap.add_argument(
        "--resummarize",
        type=Path,
        help="recompute the summary and results.md of a results.json (no measurement)",
    )
    args = ap.parse_args()
    if args.resummarize:
        result = json.loads(args.resummarize.read_text())
        write(result, list(result["runtime_strings"]), args.out)
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    runtimes = [r for r in args.runtimes.split(",") if r]
    min_time = 0.1 if args.quick else args.min_time
    tickets = QUICK if args.quick else TICKETS
    profiles = {r: load_profile(args.profiles / f"this-machine-{r}.yaml") for r in runtimes}
    started = time.perf_counter()
    load_start = os.getloadavg()
    rows: list[dict[str, Any]] = []
    sizes: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="hwsparse-deploy-bench-"))
    dense_cache: dict[tuple[str, str, str], tuple[Path, int]] = {}
    models: dict[str, nn.Module] = {}
    for key in dict.fromkeys(t[0] for t in tickets):
        net = NETS[key]
        torch.manual_seed(0)
        models[key] = build_model(net.model, net.shape, 10).eval()
    gen = torch.Generator().manual_seed(1)
    calib = {k: torch.randn((32, *n.shape), generator=gen) for k, n in NETS.items()}

    def dense_artifact(key: str, fmt: str, dtype: str) -> tuple[Path, int]:
        if (key, fmt, dtype) not in dense_cache:
            rep = write_artifact(
                models[key],
                NETS[key].shape,
                work,
                format=fmt,
                dtype=dtype,
                calibration=calib[key],
                name=f"{key}-dense",
            )
            dense_cache[key, fmt, dtype] = (rep.path, rep.bytes)
        return dense_cache[key, fmt, dtype]

    def size_row(
        case: str, key: str, fmt: str, dtype: str, nbytes: int, masks: Any, small: nn.Module
    ) -> None:
        prof = next(iter(profiles.values()))
        rep = estimate(models[key], NETS[key].shape, prof, masks, dtype=dtype)
        comp = estimate(small, NETS[key].shape, prof, dtype=dtype)  # what compact() left
        sizes.append(
            {
                "case": case,
                "format": fmt,
                "dtype": dtype,
                "bytes": nbytes,
                "weight_bytes": rep.weight_bytes,
                "weight_bytes_of_compacted": comp.weight_bytes,
                "nonzero_params": rep.nonzero_params,
            }
        )

    for i, (key, gran, density) in enumerate(tickets):
        net, model = NETS[key], models[key]
        case = f"{key} {gran} {density:g}"
        masks = make_masks(model, gran, density, seed=i)
        comp = compaction(model, net.shape, masks)
        small = comp.model.eval()
        row: dict[str, Any] = {
            "case": case,
            "model": net.model,
            "input": list(net.shape),
            "data": net.dataset,
            "granularity": gran,
            "density": density,
            "achieved_density": round(global_density(model, masks), 4),
            "params_dense": sum(p.numel() for p in model.parameters()),
            "params_compacted": comp.params,
            "live_params": comp.live_params,
            "compaction_max_abs_diff": comp.max_abs_diff,
            "kept_dead_channels": sum(len(v) for v in comp.kept_dead.values()),
            "widths_not_multiple_of_16": unaligned(small),
            "disconnected": disconnected(small, net.shape),
        }
        for rt in runtimes:
            fmt, prof = FORMAT[rt], profiles[rt]
            load0 = os.getloadavg()[0]
            dpath, dbytes = dense_artifact(key, fmt, "fp32")
            rep = write_artifact(
                small,
                net.shape,
                work,
                format=fmt,
                dtype="fp32",
                calibration=calib[key],
                name=f"t{i}",
            )
            t_dense, t_ticket = timed_pair(dpath, rep.path, net.shape, min_time)
            e_dense = estimate(model, net.shape, prof)
            e_ticket = estimate(model, net.shape, prof, masks)
            e_comp = estimate(small, net.shape, prof)  # diagnostic: what compact() really left
            assert e_dense.latency_ms and e_ticket.latency_ms and e_comp.latency_ms
            meas = t_dense / t_ticket
            est = e_dense.latency_ms / e_ticket.latency_ms
            row[rt] = {
                "t_dense_us": round(t_dense, 2),
                "t_ticket_us": round(t_ticket, 2),
                "est_dense_us": round(e_dense.latency_ms * 1e3, 2),
                "est_ticket_us": round(e_ticket.latency_ms * 1e3, 2),
                "measured_speedup": round(meas, 3),
                "estimated_speedup": round(est, 3),
                "error_pct": round((est / meas - 1) * 100, 1),
                "est_compacted_us": round(e_comp.latency_ms * 1e3, 2),
                "estimated_speedup_of_compacted": round(e_dense.latency_ms / e_comp.latency_ms, 3),
                "flops_ratio": round(e_dense.flops / max(e_ticket.flops, 1), 3),
                "argmax_agreement": rep.argmax_agreement,
                "max_abs_diff": rep.max_abs_diff,
                "ticket_bytes": rep.bytes,
                "load_before": round(load0, 2),
                "load_after": round(os.getloadavg()[0], 2),
            }
            size_row(case, key, fmt, "fp32", rep.bytes, masks, small)
            rep.path.unlink(missing_ok=True)
            print(
                f"{case:24s} {rt:12s} dense {t_dense:8.1f} us ticket {t_ticket:8.1f} us"
                f"  measured x{meas:5.2f} estimated x{est:5.2f} ({(est / meas - 1) * 100:+.0f} %)",
                flush=True,
            )
        if not args.no_int8 and (key, gran, density) in INT8_TICKETS and "litert" in runtimes:
            q = write_artifact(
                small,
                net.shape,
                work,
                format="tflite",
                dtype="int8",
                calibration=calib[key],
                name=f"t{i}",
            )
            size_row(case, key, "tflite", "int8", q.bytes, masks, small)
            row["int8_tflite_argmax_agreement"] = q.argmax_agreement
            q.path.unlink(missing_ok=True)
        rows.append(row)
    for (key, fmt, dtype), (_, nbytes) in sorted(dense_cache.items()):
        size_row(f"{key} dense", key, fmt, dtype, nbytes, None, models[key])
    if not args.no_int8 and "litert" in runtimes:
        for key in models:
            path, nbytes = dense_artifact(key, "tflite", "int8")
            size_row(f"{key} dense", key, "tflite", "int8", nbytes, None, models[key])

    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "command": "python " + " ".join(sys.argv),
        "seconds": round(time.perf_counter() - started, 1),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "min_time_s": min_time,
        "profiles": {r: str(args.profiles / f"this-machine-{r}.yaml") for r in runtimes},
        "runtime_strings": {r: profiles[r].engine().runtime for r in runtimes},
        "tickets": rows,
        "sizes": sizes,
    }
    write(result, runtimes, args.out)


def write(result: dict[str, Any], runtimes: list[str], out: Path) -> None:
    summarize(result, runtimes)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(markdown(result, runtimes))
    brief = {"speedup": result["speedup_summary"], "sizes": result["size_fits"]}
    print(json.dumps({**brief, "seconds": result["seconds"]}, indent=1))


def summarize(result: dict[str, Any], runtimes: list[str]) -> None:
    """Add the speed-up summary and the size fits to ``result`` (disconnected tickets left out)."""
    summary: dict[str, Any] = {}
    rows, sizes = result["tickets"], result["sizes"]
    valid = [r for r in rows if not r["disconnected"]]  # a constant network is no ticket
    cut = {r["case"] for r in rows if r["disconnected"]}
    for rt in runtimes:
        errs = [abs(r[rt]["error_pct"]) for r in valid]
        summary[rt] = {
            "tickets": len(errs),
            "median_abs_error_pct": round(statistics.median(errs), 1),
            "max_abs_error_pct": round(max(errs), 1),
            "within_15_pct": sum(e <= 15 for e in errs),
            "excluded_disconnected": [r["case"] for r in rows if r["disconnected"]],
            "median_abs_error_pct_compacted_estimate": round(
                statistics.median(
                    abs(r[rt]["estimated_speedup_of_compacted"] / r[rt]["measured_speedup"] - 1)
                    * 100
                    for r in valid
                ),
                1,
            ),
        }
    size_fits: dict[str, Any] = {}
    for s in sizes:  # (re)computed below; disconnected tickets get none
        for key in [k for k in s if k.startswith("fit_")]:
            del s[key]
        s["over_weight_bytes"] = s["bytes"] - s["weight_bytes"]
    for fmt, dtype in sorted({(s["format"], s["dtype"]) for s in sizes}):
        group = [
            s for s in sizes if (s["format"], s["dtype"]) == (fmt, dtype) and s["case"] not in cut
        ]
        # basis: the ticket's estimate (dense network + masks), or the compacted network's
        for basis in ("weight_bytes", "weight_bytes_of_compacted"):
            tag = "" if basis == "weight_bytes" else "_compacted"
            a, b = fit_line([s[basis] for s in group], [s["bytes"] for s in group])
            for s in group:
                fit = a + b * s[basis]
                s[f"fit_bytes{tag}"] = round(fit)
                s[f"fit_error_pct{tag}"] = round((s["bytes"] / fit - 1) * 100, 1)
                # the target's reading: within 10 % of the weights, past the fixed overhead a
                s[f"fit_error_pct_of_weights{tag}"] = round(
                    (s["bytes"] - fit) / max(b * s[basis], 1) * 100, 1
                )
            errs = [abs(s[f"fit_error_pct{tag}"]) for s in group]
            of_w = [abs(s[f"fit_error_pct_of_weights{tag}"]) for s in group]
            size_fits[f"{fmt} {dtype} vs {basis}"] = {
                "n": len(group),
                "a_bytes": round(a),
                "b": round(b, 4),
                "median_abs_error_pct": round(statistics.median(errs), 1),
                "max_abs_error_pct": round(max(errs), 1),
                "within_10_pct_of_weights": f"{sum(e <= 10 for e in of_w)}/{len(group)}",
            }
    result["speedup_summary"] = summary
    result["size_fits"] = size_fits


def markdown(res: dict[str, Any], runtimes: list[str]) -> str:
    out = [
        f"# Deploy benchmark results ({res['date']}, {res['seconds']} s, load"
        f" {res['load_average_start'][0]} -> {res['load_average_end'][0]})",
        "",
    ]
    head = "| ticket | density (achieved) | params compacted / dense | widths not x16 |"
    sep = "|---|---|---|---|"
    for rt in runtimes:
        head += f" {rt} dense / ticket us | measured x | estimated x | error | est. x compacted |"
        sep += "---|---|---|---|---|"
    out += [head, sep]
    for r in res["tickets"]:
        line = (
            f"| {r['case']}{' (disconnected: excluded)' if r['disconnected'] else ''} |"
            f" {r['density']:g} ({r['achieved_density']:.3f}) |"
            f" {r['params_compacted']:,} / {r['params_dense']:,} |"
            f" {r['widths_not_multiple_of_16']} |"
        )
        for rt in runtimes:
            m = r[rt]
            line += (
                f" {m['t_dense_us']:.1f} / {m['t_ticket_us']:.1f} | {m['measured_speedup']:.2f} |"
                f" {m['estimated_speedup']:.2f} | {m['error_pct']:+.1f} % |"
                f" {m['estimated_speedup_of_compacted']:.2f} |"
            )
        out.append(line)
    out += [
        "",
        "| runtime | tickets | median abs error | max abs error | within 15 % |"
        " median abs error, estimate of the compacted network |",
        "|---|---|---|---|---|---|",
    ]
    for rt, s in res["speedup_summary"].items():
        out.append(
            f"| {rt} | {s['tickets']} | {s['median_abs_error_pct']} % |"
            f" {s['max_abs_error_pct']} % | {s['within_15_pct']} |"
            f" {s['median_abs_error_pct_compacted_estimate']} % |"
        )
    out += [
        "",
        "Artifact bytes vs estimate weight_bytes (fit bytes = a + b x weight_bytes, least"
        " squares of the relative error):",
        "",
        "| artifact | n | a (bytes) | b | median abs error | max abs error |"
        " within a + 10 % of b x weights |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, f in res["size_fits"].items():
        out.append(
            f"| {k} | {f['n']} | {f['a_bytes']:,} | {f['b']} | {f['median_abs_error_pct']} % |"
            f" {f['max_abs_error_pct']} % | {f['within_10_pct_of_weights']} |"
        )
    out += [
        "",
        "| case | artifact | bytes | weight_bytes (ticket estimate) | fit error |"
        " weight_bytes (compacted network) | fit error |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in res["sizes"]:
        fit = f"{s['fit_error_pct']:+.1f} %" if "fit_error_pct" in s else "disconnected"
        fit_c = f"{s['fit_error_pct_compacted']:+.1f} %" if "fit_error_pct" in s else "-"
        out.append(
            f"| {s['case']} | {s['format']} {s['dtype']} | {s['bytes']:,} |"
            f" {s['weight_bytes']:,} | {fit} | {s['weight_bytes_of_compacted']:,} | {fit_c} |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
