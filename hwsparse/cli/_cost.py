"""CLI commands of the hardware cost model: devices, estimate, calibrate."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
import yaml
from rich.table import Table
from torch import nn

from hwsparse._files import atomic_write_text
from hwsparse.cli import app
from hwsparse.cli._common import TrustCode, err, out, print_json, user_errors
from hwsparse.cost.estimate import CostReport, estimate
from hwsparse.cost.flops import CONVENTION
from hwsparse.cost.profiles import (
    DeviceProfile,
    Engine,
    list_profiles,
    load_profile,
    profile_to_dict,
)
from hwsparse.errors import InputError

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON on stdout, nothing else.")]
NARROW = 120  # terminal columns below which tables drop or stack their wide columns
Target = Annotated[
    str, typer.Option(help="Device profile id (see `hwsparse devices`) or a path to a YAML.")
]


def _bytes(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _num(x: float | None, fmt: str = "{:g}", unit: str = "") -> str:
    return "unknown" if x is None else fmt.format(x) + (f" {unit}" if unit else "")


# --- devices -------------------------------------------------------------------------------------


def _engine_row(eng: Engine) -> dict[str, Any]:
    return {"name": eng.name, "runtime": eng.runtime, "dtype": eng.dtype, "threads": eng.threads}


@app.command()
def devices(
    target: Annotated[
        str | None, typer.Argument(help="Profile id or YAML path to show (omit to list all).")
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Also estimate the profile's published anchors and show the error."
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """List device profiles, or show one with its numbers and their sources."""
    with user_errors():
        if target is None:
            profiles = list_profiles()
            if as_json:
                print_json(
                    [
                        {
                            "id": p.id,
                            "name": p.name,
                            "class": p.device_class,
                            "engines": [_engine_row(e) for e in p.engines],
                            "anchors": len(p.anchors),
                            "path": p.path,
                        }
                        for p in profiles
                    ]
                )
                return
            table = Table(title="Device profiles (device_profiles/*.yaml)")
            narrow = out.width < NARROW  # engine names only: `devices ID` has the rest
            id_width = max((len(p.id) for p in profiles), default=2)
            table.add_column("id", no_wrap=True, overflow="fold", min_width=id_width)
            table.add_column("class", no_wrap=True)
            table.add_column("name")
            table.add_column("engines (default first)")
            table.add_column("anchors", no_wrap=True, justify="right")
            for p in profiles:
                engines = ", ".join(
                    e.name if narrow else f"{e.name}: {e.runtime}" for e in p.engines
                )
                table.add_row(p.id, p.device_class, p.name, engines, str(len(p.anchors)))
            out.print(table)
            out.print(
                "Show one: hwsparse devices ID [--check]; a YAML path works as --target too."
            )
            return
        profile = load_profile(target)
        checks = _anchor_checks(profile) if check else None
        if as_json:
            payload = {**profile_to_dict(profile), "path": profile.path}
            payload["floors"] = _floors_json(profile)
            if checks is not None:
                payload["anchor_checks"] = checks
            print_json(payload)
            return
        _show_profile(profile, checks)


def _anchor_checks(profile: DeviceProfile) -> list[dict[str, Any]]:
    from hwsparse.cost.anchors import check_anchors

    return [
        {
            "model": c.anchor.model,
            "engine": c.anchor.engine,
            "dtype": c.anchor.dtype,
            "published_ms": c.anchor.latency_ms,
            "estimate_ms": c.estimate_ms,
            "error_pct": c.error_pct,
            "loo_ms": c.anchor.loo_ms,
            "loo_error_pct": None
            if c.anchor.loo_ms is None
            else (c.anchor.loo_ms / c.anchor.latency_ms - 1) * 100,
            "within_band": c.within_band,
            "source": c.anchor.source,
        }
        for c in check_anchors(profile)
    ]


def _check_summary(profile: DeviceProfile, checks: list[dict[str, Any]]) -> list[str]:
    """One line per engine: anchors, median in-sample and leave-one-out errors, band."""
    lines = []
    for eng in profile.engines:
        mine = [c for c in checks if c["engine"] == eng.name]
        if not mine:
            continue
        ins = [abs(c["error_pct"]) for c in mine if c["error_pct"] is not None]
        loo = [abs(c["loo_error_pct"]) for c in mine if c["loo_error_pct"] is not None]
        inside = [c["within_band"] for c in mine if c["within_band"] is not None]
        text = f"{eng.name}: {len(mine)} anchors; in-sample median error"
        text += f" {statistics.median(ins):.0f} %" if ins else " unknown"
        text += (
            f"; leave-one-network-out median {statistics.median(loo):.0f} % ({len(loo)} rows)"
            if loo
            else "; no leave-one-out figures (not fitted by hwsparse.cost.fit)"
        )
        if inside:
            text += f"; {sum(inside)}/{len(inside)} inside the +-{eng.uncertainty_pct:g} % band"
        lines.append(text)
    return lines


def _show_floors(profile: DeviceProfile) -> None:
    """The floors no budget can go below, and the default budget of `hwsparse search`."""
    from hwsparse.cost.budget import floors

    reserve = _bytes(profile.capacity.runtime_reserved_bytes)
    invoke = ", ".join(
        f"{_num(floors(profile, engine=e.name).invoke_ms, '{:.3g}', 'ms')} per invoke on {e.name}"
        for e in profile.engines
    )
    out.print(
        f"Floors: latency {invoke} (the least any network costs); RAM {reserve} runtime"
        " reserve (--ram-kb must exceed it). A model's own floors (every weight pruned) are"
        " checked when a search starts.",
        highlight=False,
    )
    db = profile.default_budget
    if db is None:
        out.print("Default budget: none (hwsparse search --target needs budget flags).")
        return
    limits = ", ".join(f"{k} {v:g}" for k, v in db.limits().items())
    out.print(f"Default budget (hwsparse search --target {profile.id}): {limits}. {db.reason}",
              highlight=False)  # fmt: skip


def _floors_json(profile: DeviceProfile) -> list[dict[str, Any]]:
    from hwsparse.cost.budget import floors

    return [floors(profile, engine=e.name).to_dict() for e in profile.engines]


def _show_profile(profile: DeviceProfile, checks: list[dict[str, Any]] | None) -> None:
    out.print(f"[bold]{profile.name}[/bold]  ({profile.id}, class {profile.device_class})")
    if profile.notes:
        out.print(profile.notes, highlight=False)
    engine_cols = ("engine", "runtime", "dtype", "peak", "efficiency", "overhead", "band",
                   "source")  # fmt: skip
    narrow = out.width < NARROW  # one engine per block of rows instead of 8 thin columns
    engines = Table(title="Engines (the first is the default; efficiency = achieved / peak)")
    if narrow:
        engines.add_column("engine", no_wrap=True, style="bold")
        engines.add_column("value")
    for col in () if narrow else engine_cols:
        engines.add_column(col, overflow="fold")
    for e in profile.engines:
        peak = e.peak
        peaks = ", ".join(
            f"{k} {_num(v)}"
            for k, v in (
                ("fp32 GFLOP/s", peak.fp32_gflops),
                ("fp16 GFLOP/s", peak.fp16_gflops),
                ("int8 GOP/s", peak.int8_gops),
            )
        )
        eff = e.efficiency
        effs = ", ".join(
            f"{k} {_num(getattr(eff, k))}" for k in ("conv", "pointwise", "depthwise", "fc")
        )
        over = e.kernel_overhead_us
        overhead = (
            f"conv {_num(over.conv)} us/op, elementwise {_num(over.activation)} us/op,"
            f" {_num(e.invoke_overhead_us)} us/call"
        )
        cells = (
            e.name,
            f"{e.runtime}; fused: {', '.join(e.fused_ops) or 'none'}",
            e.dtype,
            f"{peaks} ({e.peak_derivation})",
            effs,
            overhead,
            f"+-{e.uncertainty_pct:g} %",
            e.source,
        )
        if not narrow:
            engines.add_row(*cells)
            continue
        for i, (col, cell) in enumerate(zip(engine_cols, cells, strict=True)):
            engines.add_row(e.name if i == 0 else f"  {col}", cell if i else "",
                            end_section=i == len(cells) - 1)  # fmt: skip
    out.print(engines)
    mem = Table(title="Memory levels (fastest first)")
    for col in ("level", "size", "achievable GB/s", "peak GB/s", "source"):
        mem.add_column(col, overflow="fold", no_wrap=col != "source")
    for lvl in profile.memory.levels:
        mem.add_row(
            lvl.name,
            _bytes(lvl.size_bytes),
            _num(lvl.bandwidth_gbps),
            _num(lvl.bandwidth_gbps_peak),
            lvl.source,
        )
    out.print(mem)
    cap, power = profile.capacity, profile.power
    out.print(
        f"Capacity: RAM {_bytes(cap.ram_bytes)}, weights {_bytes(cap.weight_budget_bytes)}"
        f" ({'loaded into RAM' if cap.weights_in_ram else 'read in place'}), activations"
        f" {_bytes(cap.activation_budget_bytes or cap.ram_bytes)}, runtime reserve"
        f" {_bytes(cap.runtime_reserved_bytes)}. Source: {cap.source}",
        highlight=False,
    )
    _show_floors(profile)
    out.print(
        f"Power: idle {_num(power.idle_w, unit='W')}, active {_num(power.active_w, unit='W')},"
        f" TDP {_num(power.tdp_w, unit='W')}. Source: {power.source}",
        highlight=False,
    )
    for e in profile.engines:
        sp = e.sparsity
        un = sp.unstructured
        rule = (
            f"unstructured on {', '.join(un.eligible_ops)} from {un.min_sparsity} sparsity,"
            f" curve {list(un.speedup_curve)}"
            if un.exploited
            else "unstructured not exploited"
        )
        semi = sp.semi_structured
        if semi.pattern:
            rule += f"; {semi.pattern} on {', '.join(semi.eligible_ops)} x{semi.speedup}"
        out.print(
            f"Sparsity ({e.name}): {rule}; channel pruning"
            f" {'runs compacted' if sp.channel_pruning else 'not exploited'}; weight formats"
            f" {', '.join(sp.weight_formats)}. Source: {sp.source}",
            highlight=False,
        )
    if profile.anchors:
        anchors = Table(title="Published anchors" + (" vs estimate" if checks else ""))
        cols = ["model", "engine", "dtype", "runtime", "published ms", "source"]
        if checks:
            cols = ["model", "engine", "pub. ms", "est. ms", "err %", "LOO ms", "LOO %"]
            cols += ["in band"]
        for col in cols:
            anchors.add_column(col, overflow="fold", no_wrap=col in ("model", "engine"))
        for i, a in enumerate(profile.anchors):
            row = [a.model, a.engine, a.dtype, a.runtime, f"{a.latency_ms:g}", a.source]
            if checks:
                c = checks[i]
                row = [a.model, a.engine, f"{a.latency_ms:g}"]
                row += [
                    _num(c["estimate_ms"], "{:.3g}"),
                    _num(c["error_pct"], "{:+.0f}"),
                    _num(c["loo_ms"], "{:.3g}"),
                    _num(c["loo_error_pct"], "{:+.0f}"),
                    "unknown"
                    if c["within_band"] is None
                    else ("yes" if c["within_band"] else "no"),
                ]
            anchors.add_row(*row)
        out.print(anchors)
        if checks:
            for line in _check_summary(profile, checks):
                out.print(line, highlight=False)
            out.print(
                "The profile's numbers were fitted to these anchors, so 'error %' is in-sample;"
                " 'LOO' is the estimate when the anchor's network was left out of the fit"
                " (hwsparse/cost/fit.py), the out-of-sample check.",
                highlight=False,
            )
    out.print(
        "Sources: " + "; ".join(f"[{k}] {v}" for k, v in profile.sources.items()), highlight=False
    )


# --- estimate ------------------------------------------------------------------------------------


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` -> ``(1, 3, 32, 32)`` (commas or x as separators)."""
    parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"--input-shape takes integers like 1,3,32,32, got {text!r}") from None
    if not shape or any(d < 1 for d in shape):
        raise InputError(f"--input-shape needs positive integers like 1,3,32,32, got {text!r}")
    return shape


def _runs(model: nn.Module, shape: tuple[int, ...]) -> bool:
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape))
    except (RuntimeError, ValueError, TypeError, IndexError):
        return False
    return True


def _build(
    name: str, shape: tuple[int, ...], num_classes: int
) -> tuple[nn.Module, tuple[int, ...]]:
    """Build ``name``; a leading 1 of ``shape`` is the batch dim if the model accepts the rest."""
    from hwsparse.models import build_model

    candidates = [shape[1:], shape] if shape[0] == 1 and len(shape) > 1 else [shape]
    last: Exception | None = None
    for cand in candidates:
        try:
            model = build_model(name, cand, num_classes)
        except InputError as exc:
            last = exc
            continue
        if _runs(model, cand):
            return model, cand
        last = InputError(
            f"model {name!r} cannot run on input shape {cand} (one sample, no batch dimension)"
        )
    assert last is not None
    raise last


@app.command("estimate")
def estimate_cmd(
    target: Target,
    model: Annotated[
        str | None,
        typer.Option(
            help="linear, mlp, lenet5, conv1d, conv4, resnet20, vgg16, or module:function."
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Dataset whose sample shape and classes to use (default digits, unless "
            "--input-shape is given)."
        ),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Folder of file-based datasets.")] = None,
    input_shape: Annotated[
        str | None,
        typer.Option(help="Sample shape, e.g. 1,3,32,32 (a leading batch 1 is optional)."),
    ] = None,
    num_classes: Annotated[int, typer.Option(help="Classes when --input-shape is used.")] = 10,
    ticket: Annotated[
        Path | None, typer.Option(help="Saved ticket folder: its model, weights and masks.")
    ] = None,
    engine: Annotated[
        str | None, typer.Option(help="Engine of the profile (default: its first).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="fp32, fp16 or int8 (default: the engine runtime's).")
    ] = None,
    trust_code: TrustCode = False,
    as_json: AsJson = False,
) -> None:
    """FLOPs, memory and latency of a (sparse) model on a device profile.

    FLOPs follow fvcore: 1 multiply-add = 1 flop, batch 1. Latency is a per-layer roofline
    from the profile, with its uncertainty band; unknown profile numbers show as unknown.
    """
    with user_errors():
        profile = load_profile(target)
        masks = None
        if ticket is not None:
            from hwsparse.tickets import load_ticket

            loaded = load_ticket(ticket, trust_code=trust_code, model=model)
            if model is not None and model != loaded.model_name:
                raise InputError(
                    f"--model {model!r} disagrees with the ticket's model {loaded.model_name!r}"
                )
            net, shape, masks = loaded.model, tuple(loaded.input_shape), loaded.masks
            name = f"{loaded.model_name} (ticket {ticket})"
        else:
            if model is None:
                raise InputError("give --model NAME|module:function, or --ticket DIR")
            if dataset is not None and input_shape is not None:
                raise InputError("give --dataset D or --input-shape 1,3,32,32, not both")
            if input_shape is None:
                dataset = dataset or "digits"
                from hwsparse.data import load_dataset

                data = load_dataset(dataset, data_dir)
                net, shape = _build(model, tuple(data.input_shape), data.num_classes)
            else:
                net, shape = _build(model, parse_shape(str(input_shape)), num_classes)
            name = model
        report = estimate(net, shape, profile, masks=masks, dtype=dtype, engine=engine)
        if as_json:
            print_json({"model": name, **report.to_dict()})
            return
        _show_report(name, profile, report)


def _show_report(name: str, profile: DeviceProfile, r: CostReport) -> None:
    band = (
        f"{r.latency_ms:.3f} ms (band {r.latency_ms_low:.3f} - {r.latency_ms_high:.3f} ms,"
        f" +-{r.uncertainty_pct:g} %)"
        if r.latency_ms is not None
        and r.latency_ms_low is not None
        and r.latency_ms_high is not None
        else "unknown"
    )
    summary = Table(title=f"{name} on {profile.name} [{r.engine}: {r.runtime}, {r.dtype}]")
    summary.add_column("quantity")
    summary.add_column("value", justify="right")
    summary.add_column("note")
    density = r.flops / r.dense_flops if r.dense_flops else 1.0
    cap = profile.capacity

    def fit(key: str) -> str:
        value = r.fits.get(key)
        return "unknown" if value is None else ("fits" if value else "DOES NOT FIT")

    summary.add_row(
        "MFLOPs",
        f"{r.flops / 1e6:.4g}",
        f"{density:.1%} of dense {r.dense_flops / 1e6:.4g}; {CONVENTION}",
    )
    summary.add_row("parameters", f"{r.params:,}", f"{r.nonzero_params:,} left after masks")
    summary.add_row(
        "weights",
        _bytes(r.weight_bytes),
        f"{r.weight_bytes:,} B in the smallest format the runtime reads (dense"
        f" {_bytes(r.dense_weight_bytes)}); budget {_bytes(cap.weight_budget_bytes)}:"
        f" {fit('weights')}",
    )
    summary.add_row(
        "peak activations",
        _bytes(r.peak_activation_bytes),
        f"{r.peak_activation_bytes:,} B over the execution order; {fit('activations')}",
    )
    summary.add_row(
        "RAM",
        _bytes(r.ram_bytes),
        f"activations{' + weights' if cap.weights_in_ram else ''} + runtime reserve;"
        f" RAM {_bytes(cap.ram_bytes)}: {fit('ram')}",
    )
    summary.add_row("latency", band, "estimate (per-layer roofline of the profile)")
    summary.add_row(
        "energy",
        _num(r.energy_mj, "{:.3g}", "mJ"),
        "latency x the profile's active power" if r.energy_mj is not None else "power unknown",
    )
    out.print(summary)
    layers = Table(title="Per layer (own ops; '' = the root's forward)")
    for col, just in (
        ("layer", "left"),
        ("kind", "left"),
        ("MFLOPs", "right"),
        ("dense MFLOPs", "right"),
        ("latency us", "right"),
        ("share", "right"),
        ("bound", "left"),
        ("weights", "right"),
    ):
        layers.add_column(col, justify=just)  # type: ignore[arg-type]
    total_us = sum(row.latency_us or 0.0 for row in r.layers) or math.nan
    hidden = 0
    for row in r.layers:
        if row.bound == "fused" and not row.flops and row.weight_format is None:
            hidden += 1  # folded into its producer: nothing to show
            continue
        share = "" if row.latency_us is None else f"{row.latency_us / total_us:.0%}"
        weights = (
            "" if row.weight_format is None else f"{_bytes(row.weight_bytes)} {row.weight_format}"
        )
        layers.add_row(
            row.name or "''",
            row.kind,
            f"{row.flops / 1e6:.4g}",
            f"{row.dense_flops / 1e6:.4g}",
            _num(row.latency_us, "{:.1f}"),
            share,
            row.bound,
            weights,
        )
    out.print(layers)
    out.print(
        "bound: the term that dominates the layer: compute (MACs / peak x efficiency), memory"
        " (activation bytes), weights (weight traffic, incl. weights streamed past an on-chip"
        " cache), overhead (fixed per-op cost), fallback (runs on another engine).",
        highlight=False,
    )
    if hidden:
        out.print(f"{hidden} fused rows (folded into their producers) hidden; --json lists all.")
    for note in r.notes:
        err.print(f"note: {note}", highlight=False)


# --- calibrate -----------------------------------------------------------------------------------


@app.command()
def calibrate(
    out_path: Annotated[
        Path, typer.Option("--out", help="Where to write the profile YAML of this machine.")
    ],
    threads: Annotated[int, typer.Option(min=1, help="Threads to pin for every measurement.")] = 1,
    quick: Annotated[
        bool, typer.Option("--quick", help="A few seconds of tiny benchmarks (rough; for tests).")
    ] = False,
    profile_id: Annotated[str, typer.Option("--id", help="Id of the written profile.")] = (
        "this-machine"
    ),
    name: Annotated[str | None, typer.Option(help="Human-readable profile name.")] = None,
    runtime: Annotated[
        str,
        typer.Option(
            help="Runtime to calibrate: torch (PyTorch eager), onnxruntime (.onnx, CPU EP) or"
            " litert (.tflite, XNNPACK); the last two need pip install 'hwsparse[deploy]'."
        ),
    ] = "torch",
    as_json: AsJson = False,
) -> None:
    """Measure this machine (about a minute) and write a device profile that loads like any other.

    GEMM peak, copy bandwidth per cache level, per-op overheads and per-class efficiencies of
    PyTorch eager on this CPU, and the CSR sparse speed-up curve; warm-up, pinned threads and
    medians. Warns when the machine is busy. With --runtime onnxruntime or litert every layer
    micro-benchmark is written as an fp32 .onnx / .tflite file and timed in that runtime on
    one thread (a few minutes), and the profile is for that runtime.
    """
    from hwsparse.cost.calibrate import busy_warning
    from hwsparse.cost.calibrate import calibrate as run_calibration
    from hwsparse.cost.profiles import dump_profile, parse_profile

    with user_errors():
        warning = busy_warning(threads)
        if warning:
            err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
        result = run_calibration(
            threads=threads,
            quick=quick,
            profile_id=profile_id,
            name=name,
            progress=None if as_json else (lambda msg: err.print(f"calibrate: {msg}")),
            runtime=runtime,
        )
        flag = "" if runtime == "torch" else f" --runtime {runtime}"
        text = (
            f"# Written by `hwsparse calibrate{flag} --threads {threads}"
            f"{' --quick' if quick else ''}`. Loads with --target PATH.\n"
            + dump_profile(result.profile)
        )
        parse_profile(yaml.safe_load(text), origin=str(out_path))  # must load back
        try:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_path, text)  # the old profile or the new one, never half
        except OSError as exc:
            raise InputError(f"cannot write {out_path}: {exc.strerror}") from None
        for w in result.warnings:
            if w != warning:
                err.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
        eng = result.profile.engines[0]
        if as_json:
            print_json(
                {
                    "path": str(out_path),
                    "seconds": result.seconds,
                    "median_error_pct": result.median_error_pct,
                    "p90_error_pct": result.p90_error_pct,
                    "load_before": result.load_before,
                    "load_after": result.load_after,
                    "warnings": list(result.warnings),
                    "profile": profile_to_dict(result.profile),
                    "measurements": [m.__dict__ for m in result.measurements],
                    "networks": [m.__dict__ for m in result.networks],
                }
            )
            return
        table = Table(title=f"Calibrated {result.profile.name} in {result.seconds:.0f} s")
        table.add_column("quantity")
        table.add_column("value", justify="right")
        table.add_row("runtime", f"{eng.runtime} ({eng.artifact})")
        table.add_row("GEMM peak", f"{eng.peak.fp32_gflops} GFLOP/s")
        for lvl in result.profile.memory.levels:
            table.add_row(
                f"copy bandwidth {lvl.name} ({_bytes(lvl.size_bytes)})",
                f"{lvl.bandwidth_gbps} GB/s",
            )
        e = eng.efficiency
        table.add_row(
            "efficiency conv / pointwise / depthwise / fc",
            f"{e.conv} / {e.pointwise} / {e.depthwise} / {e.fc}",
        )
        o = eng.kernel_overhead_us
        table.add_row("overhead conv / fc / activation us", f"{o.conv} / {o.fc} / {o.activation}")
        table.add_row("overhead per invoke us", f"{eng.invoke_overhead_us}")
        table.add_row(
            "layer fit error median / p90",
            f"{result.median_error_pct:.0f} % / {result.p90_error_pct:.0f} %",
        )
        if result.networks:
            errors = [abs(m.estimated_us / m.measured_us - 1) * 100 for m in result.networks]
            table.add_row(
                f"refined on {len(errors)} synthetic networks: median error",
                f"{statistics.median(errors):.0f} %",
            )
        table.add_row("depthwise byte efficiency", f"{e.depthwise_bytes}")
        table.add_row(
            "load average before / after", f"{result.load_before:.2f} / {result.load_after:.2f}"
        )
        out.print(table)
        out.print(f"Wrote {out_path}; use it with --target {out_path}", highlight=False)
