"""Saving and loading tickets (weights + binary mask + config) without executing pickled code.

A ticket directory holds two files:

- ``ticket.json``: ``{"format": "hwsparse-ticket", "version": 1, "model": NAME,
  "input_shape": [...], "num_classes": K, "dataset": ..., "method": ..., "config": {...},
  "metrics": {...}, "layers": [{"name", "kept", "total"}, ...]}``.
- ``weights.pt``: ``{"state_dict": {name: tensor}, "masks": {layer: 0/1 tensor}}`` written by
  ``torch.save``; it holds tensors only and is read back with ``torch.load(weights_only=True)``,
  which refuses anything that would run code. Pruned weights are stored as zeros and ``masks``
  say which zeros are structural (a weight can also be zero by chance). Masks have the weight's
  shape, keyed by the layer's name in ``named_modules()``.

The model is rebuilt from its registry name (``hwsparse.models``); a ``package.module:function``
model imports that module, so load tickets of user models only from sources you trust as code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwsparse._files import atomic_write, atomic_write_text, staged_dir
from hwsparse._json import dumps
from hwsparse.errors import InputError
from hwsparse.masks import Masks, layer_densities
from hwsparse.models import build_model

FORMAT = "hwsparse-ticket"
VERSION = 1
META_FILE = "ticket.json"
WEIGHTS_FILE = "weights.pt"


@dataclass(frozen=True)
class Ticket:
    """A loaded ticket: the plain model with its sparse weights, and its binary masks."""

    model: nn.Module
    masks: Masks
    model_name: str
    input_shape: tuple[int, ...]
    num_classes: int
    meta: dict[str, Any]


def save_ticket(
    directory: str | Path,
    model: nn.Module,
    masks: Masks,
    *,
    model_name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    **meta: Any,
) -> Path:
    """Write ``model`` (plain, masks baked in) and ``masks`` to ``directory``; returns it.

    The folder is built beside ``directory`` and swapped in whole
    (:func:`hwsparse._files.staged_dir`): an interrupted save leaves the old ticket or the new
    one, never a mix. An existing ``directory`` that is not a ticket folder is refused.
    """
    out = Path(directory)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_name,
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        **meta,
        "layers": [
            {"name": r.name, "kept": r.kept, "total": r.total}
            for r in layer_densities(model, masks)
        ],
    }
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "masks": {k: v.detach().cpu() for k, v in masks.items()},
    }
    with staged_dir(out, marker=META_FILE) as stage:
        atomic_write(stage / WEIGHTS_FILE, lambda f: torch.save(payload, f))
        atomic_write_text(stage / META_FILE, dumps(header))
    return out


def load_ticket(directory: str | Path) -> Ticket:
    """Load a ticket saved by :func:`save_ticket`; bad or missing files raise InputError."""
    folder = Path(directory)
    meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise InputError(
                f"not a ticket directory: {p} is missing (expected {META_FILE} and {WEIGHTS_FILE})"
            )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{meta_path} is not an hwsparse ticket (no format {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise InputError(f"{meta_path}: unsupported ticket version {meta.get('version')!r}")
    try:
        input_shape = tuple(int(v) for v in meta["input_shape"])
        num_classes = int(meta["num_classes"])
        model_name = str(meta["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{meta_path}: missing or bad field {exc}") from None
    try:
        payload = torch.load(weights_path, map_location="cpu", weights_only=True)
        state, masks = payload["state_dict"], payload["masks"]
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{weights_path} cannot be read as ticket weights: {first}") from None
    model = build_model(model_name, input_shape, num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{weights_path} does not fit model {model_name!r}: {first}") from None
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        layer = modules.get(name)
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.shape != mask.shape:
            raise InputError(f"{weights_path}: mask {name!r} does not match a layer's weight")
    model.eval()
    return Ticket(model, dict(masks), model_name, input_shape, num_classes, meta)
