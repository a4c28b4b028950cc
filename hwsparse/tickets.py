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

The model is rebuilt from its registry name (``hwsparse.models``). A ``package.module:function``
model would import that module, so :func:`load_ticket` refuses it unless the caller trusts the
ticket as code (``trust_code=True``, CLI ``--trust-code``) or named that same model itself
(``model=``).
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
from hwsparse.models import build_model, require_trust

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


def load_ticket(
    directory: str | Path, *, trust_code: bool = False, model: str | None = None
) -> Ticket:
    """Load a ticket saved by :func:`save_ticket`; bad or missing files raise InputError.

    A ticket of a ``package.module:function`` model is built (its module imported) only with
    ``trust_code=True`` or when ``model`` is that same name (the caller named it); otherwise
    InputError names the module. Registry models need neither.
    """
    folder = Path(directory)
    meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise InputError(
                f"not a ticket directory: {p} is missing (expected {META_FILE} and {WEIGHTS_FILE})"
            )
    try:
        meta = json.loads(meta_path.read_bytes())
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, huge ints, deep nesting
        line = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise InputError(f"{meta_path} is not valid JSON: {line}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{meta_path} is not an hwsparse ticket (no format {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise InputError(f"{meta_path}: unsupported ticket version {meta.get('version')!r:.40}")
    input_shape, num_classes, model_name = _header(meta, meta_path)
    try:
        payload = torch.load(weights_path, map_location="cpu", weights_only=True)
        state, masks = payload["state_dict"], payload["masks"]
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{weights_path} cannot be read as ticket weights: {first}") from None
    if not _tensor_dict(state) or not _tensor_dict(masks):
        raise InputError(
            f"{weights_path} cannot be read as ticket weights: state_dict and masks must map "
            "names to tensors"
        )
    require_trust(model_name, str(meta_path), trust_code=trust_code, named=model)
    if ":" not in model_name:  # registry models: check the shapes before allocating any
        _check_shapes(model_name, input_shape, num_classes, state, weights_path)
    built = build_model(model_name, input_shape, num_classes)
    try:
        built.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{weights_path} does not fit model {model_name!r}: {first}") from None
    modules = dict(built.named_modules())
    for name, mask in masks.items():
        layer = modules.get(name)
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.shape != mask.shape:
            raise InputError(f"{weights_path}: mask {name!r:.60} does not match a layer's weight")
    built.eval()
    return Ticket(built, dict(masks), model_name, input_shape, num_classes, meta)


MAX_INPUT_ELEMENTS = 1 << 22
"""Largest per-sample input a ticket may declare (4 Mi values, e.g. 3 x 1024 x 1024): a larger
one would make every forward pass of the cost model allocate without bound."""


def _header(meta: dict[str, Any], meta_path: Path) -> tuple[tuple[int, ...], int, str]:
    """``input_shape``, ``num_classes`` and ``model`` of a ticket header, checked."""
    shape, classes, name = meta.get("input_shape"), meta.get("num_classes"), meta.get("model")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
        or not 1 <= len(shape) <= 4
    ):
        raise InputError(
            f"{meta_path}: input_shape must be a list of 1 to 4 positive integers, got "
            f"{shape!r:.60}"
        )
    elements = 1
    for d in shape:
        elements *= d
        if elements > MAX_INPUT_ELEMENTS:
            raise InputError(
                f"{meta_path}: input_shape {shape!r:.60} has more than {MAX_INPUT_ELEMENTS:,} "
                "values per sample"
            )
    if not isinstance(classes, int) or isinstance(classes, bool) or not 1 <= classes <= 1 << 20:
        raise InputError(
            f"{meta_path}: num_classes must be an integer from 1 to {1 << 20}, got {classes!r:.40}"
        )
    if not isinstance(name, str) or not name:
        raise InputError(f"{meta_path}: model must be a model name, got {name!r:.60}")
    return tuple(shape), classes, name


def _tensor_dict(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _check_shapes(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    state: dict[str, torch.Tensor],
    weights_path: Path,
) -> None:
    """Build the model on the meta device (no memory) and compare its tensors' shapes with the
    weights file's: a header cannot make the loader allocate more than the file holds."""
    with torch.device("meta"):
        skeleton = build_model(name, input_shape, num_classes)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    for key, shape in expected.items():
        got = state.get(key)
        if got is None or tuple(got.shape) != shape:
            have = "missing" if got is None else f"shape {tuple(got.shape)}"
            raise InputError(
                f"{weights_path} does not fit model {name!r} on input {input_shape}: "
                f"{key!r} is {have}, the model needs {shape}"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise InputError(
            f"{weights_path} does not fit model {name!r}: unexpected tensor {extra[0]!r:.60}"
        )
