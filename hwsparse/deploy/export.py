"""From ticket to device: compact, quantise, write the runtime's artifact, verify it, write a card.

:func:`export_ticket` is what ``hwsparse export`` runs, for a study's trial or a ticket folder:

1. the ticket's masked network (dead channels silenced, :mod:`hwsparse.deploy.compact`) is
   compacted: pruned channels are physically removed; the compacted network must give the
   masked one's logits (max abs diff <= :data:`COMPACT_ATOL`), else the export stops;
2. the estimate the search judged (:func:`hwsparse.cost.estimate.estimate` on the masked
   network, the same call as ``hwsparse estimate --ticket``) is taken at the artifact's dtype;
3. the artifact is written in the format the target's runtime reads (``engine.artifact``) at
   its dtype (``engine.dtype``), both overridable, and verified in that runtime on the test split
   (:mod:`hwsparse.deploy.artifacts`); the simulated accuracy the search scored with
   (:mod:`hwsparse.deploy.quantize`) is put beside the artifact's own;
4. ``card.json`` says what was written and what it was measured to be.

Units: bytes, milliseconds (batch 1), flops as fvcore counts them (1 multiply-add = 1 flop),
accuracies as fractions 0..1.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from hwsparse._files import atomic_write_text, staged_dir
from hwsparse._json import dumps
from hwsparse.cost.estimate import Budget, estimate
from hwsparse.cost.profiles import DeviceProfile, Engine
from hwsparse.data import Dataset
from hwsparse.deploy.artifacts import FORMATS, ArtifactReport, write_artifact
from hwsparse.deploy.compact import compact
from hwsparse.deploy.quantize import accuracy, calibration_batch, check_dtype, simulate
from hwsparse.errors import InputError, valid_names
from hwsparse.stats import interval_or_none
from hwsparse.tickets import Ticket

COMPACT_ATOL = 1e-4  # max |compacted - masked| logits accepted (fp32)
CARD_FILE = "card.json"


@dataclass(frozen=True)
class Export:
    """What :func:`export_ticket` wrote: the artifact's report and the card (also on disk)."""

    artifact: ArtifactReport
    card: dict[str, Any]
    out: Path

    @property
    def ok(self) -> bool:
        """The artifact agrees with the torch network (fp: max abs diff; int8: argmax)."""
        return bool(self.card["agreement"]["ok"])


def _param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _max_diff(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())


def export_ticket(
    ticket: Ticket,
    profile: DeviceProfile,
    data: Dataset,
    out_dir: str | Path,
    *,
    format: str | None = None,
    dtype: str | None = None,
    budget: Budget | None = None,
    found: dict[str, Any] | None = None,
    ticket_dir: str | Path | None = None,
) -> Export:
    """Deploy ``ticket`` for ``profile``'s first engine into ``out_dir`` (see module docstring).

    ``data`` gives the calibration inputs (training split) and the test split the artifact is
    measured on; ``found`` says how the ticket was found (study and trial, or its method); the
    files of ``ticket_dir`` (the ticket) are copied to ``out_dir/ticket``. The folder is built
    beside ``out_dir`` and swapped in when complete: a failed or killed export leaves the
    previous one whole (:func:`hwsparse._files.staged_dir`).
    """
    engine = profile.engine()
    fmt = format or engine.artifact
    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r}; valid: {valid_names(FORMATS)}")
    dt = check_dtype(dtype or engine.dtype)
    if tuple(data.input_shape) != tuple(ticket.input_shape):
        raise InputError(
            f"the ticket takes inputs of shape {list(ticket.input_shape)} but dataset "
            f"{data.name!r} has {list(data.input_shape)}"
        )
    with staged_dir(out_dir, marker=CARD_FILE) as stage:
        if ticket_dir is not None:
            shutil.copytree(ticket_dir, stage / "ticket")
        done = _export(ticket, profile, data, stage, fmt, dt, engine, budget, found)
    out = Path(out_dir)
    path = out / done.artifact.path.name
    return Export(replace(done.artifact, path=path), done.card, out)


def _export(
    ticket: Ticket,
    profile: DeviceProfile,
    data: Dataset,
    out: Path,
    fmt: str,
    dt: str,
    engine: Engine,
    budget: Budget | None,
    found: dict[str, Any] | None,
) -> Export:
    masked = ticket.model.eval()
    compacted = compact(masked, ticket.input_shape, ticket.masks)
    x_test, y_test = data.x_test.cpu(), data.y_test.cpu()
    diff = _max_diff(masked, compacted, x_test[:256])
    if not diff <= COMPACT_ATOL:
        raise InputError(
            f"the compacted network differs from the ticket by {diff:.2e} (> {COMPACT_ATOL}): "
            "its dead channels were not silenced while it trained; make it again with this "
            "version of hwsparse"
        )
    report = estimate(masked, ticket.input_shape, profile, ticket.masks, dtype=dt)
    calibration = calibration_batch(data.x_train)
    artifact = write_artifact(
        compacted,
        ticket.input_shape,
        out,
        format=fmt,
        dtype=dt,
        calibration=calibration,
        x_test=x_test,
        y_test=y_test,
    )
    simulated = accuracy(simulate(compacted, dt, calibration), x_test, y_test)
    agree_ok = artifact.argmax_agreement >= 0.95 if dt == "int8" else artifact.max_abs_diff <= 1e-2
    formats = sorted({row.weight_format for row in report.layers if row.weight_format})
    card: dict[str, Any] = {
        "format": fmt,
        "dtype": dt,
        "artifact": artifact.path.name,
        "artifact_bytes": artifact.bytes,
        "runtime_verified": artifact.runtime,
        "params": _param_count(compacted),
        "params_before_compaction": _param_count(masked),
        "compaction_max_abs_diff": diff,
        "estimate": {
            "weight_bytes": report.weight_bytes,
            "weight_formats": formats,
            "latency_ms": report.latency_ms,
            "latency_ms_low": report.latency_ms_low,
            "latency_ms_high": report.latency_ms_high,
            "flops": report.flops,
            "ram_bytes": report.ram_bytes,
            "peak_activation_bytes": report.peak_activation_bytes,
            "notes": list(report.notes),
        },
        "weight_bytes_note": _bytes_note(formats, fmt),
        "accuracy": {
            "dataset": data.name,
            "split": "test",
            "n": len(y_test),
            "fp32_test": artifact.torch_accuracy,
            "simulated_test": simulated,
            "artifact_test": artifact.artifact_accuracy,
            "artifact_test_interval": interval_or_none(artifact.artifact_accuracy, len(y_test)),
        },
        "agreement": {
            "max_abs_diff": artifact.max_abs_diff,
            "argmax": artifact.argmax_agreement,
            "n_checked": artifact.n_checked,
            "ok": agree_ok,
            "measure": "argmax agreement with fp32 torch"
            if dt == "int8"
            else "max abs logit difference from fp32 torch",
        },
        "input": {
            "shape": [1, *ticket.input_shape],
            "layout": "batch first, channels first (PyTorch order, NCHW for images)",
            "dtype": "float32",  # the artifact's own io (below) says otherwise when quantized
            **artifact.io.get("input", {}),
            "preprocessing": data.preprocessing,
        },
        "output": artifact.io.get("output", {}),
        "target": {
            "id": profile.id,
            "name": profile.name,
            "engine": engine.name,
            "runtime": engine.runtime,
        },
        "budget": None
        if budget is None
        else {k: v for k, v in budget.__dict__.items() if v is not None},
        "found": found or {},
        "model": ticket.model_name,
        "ticket_dataset": ticket.meta.get("dataset"),
        "note": artifact.note,
        "units": {
            "bytes": "bytes",
            "latency_ms": "milliseconds, batch 1, estimated from the device profile",
            "flops": "fvcore count, 1 multiply-add = 1 flop, batch 1, pruned weights removed",
            "accuracy": "fraction of the test split classified correctly",
            "accuracy_interval": "95 % Wilson score interval [low, high] over the n test "
            "samples (hwsparse.stats)",
        },
    }
    atomic_write_text(out / CARD_FILE, dumps(card))
    return Export(artifact, card, out)


def _bytes_note(formats: list[str], fmt: str) -> str:
    sparse = [f for f in formats if f != "dense"]
    if not sparse:
        return (
            "estimate.weight_bytes: the compacted weights stored dense at the dtype, as this "
            f".{fmt} file stores them; artifact_bytes adds biases, quantization scales and the "
            "container"
        )
    return (
        f"estimate.weight_bytes: weights in the sparse format(s) {', '.join(sparse)} the target "
        f"runtime reads; a .{fmt} file stores weights dense (zeros included), so artifact_bytes "
        "holds the dense compacted network and is larger; convert with the runtime's sparse "
        "tooling to reach the estimate"
    )
