"""Memory cost: parameter count, weight storage bytes per format, peak activation bytes.

Weights. Each Conv/Linear weight is stored as a matrix of ``rows = live output channels`` by
``cols = live input channels x kernel elements`` (dead channels are compacted away, as an
exported channel-pruned network would be), holding ``nnz`` kept weights. The bytes of each
format, for a value width of ``v`` bytes (fp32 4, fp16 2, int8 1):

- ``dense``:   rows x cols x v
- ``bitmask``: ceil(rows x cols / 8) + nnz x v (one bit per position, packed values)
- ``csr16``:   nnz x (v + 2) + (rows + 1) x p (16-bit column indices; row pointers p = 2 bytes
  when nnz < 65536, else 4)
- ``csr8``:    (nnz + pad) x (v + 1) + (rows + 1) x p (8-bit column *deltas* within a row; a
  gap longer than 255 columns costs ``pad`` explicit zero entries)

Each layer takes the smallest format the target runtime can read (the profile's
``sparsity.weight_formats``); reference/devices.md §4.5 has the break-even points. Other
parameters (biases, batch-norm) are stored dense; at int8 a bias is int32 (4 bytes), as in
TFLite/CMSIS-NN. The bias of a dead Conv/Linear output channel and the batch-norm (gamma, beta)
of a dead channel go with their channel and are not counted (``nonzero_params`` is then exactly
the live parameter count of :func:`hwsparse.deploy.compact.compact`'s network). Masked weights
are counted once even if a layer is called several times.

Activations. The peak is taken over the execution order recorded by
:func:`hwsparse.cost.dataflow.trace`: a buffer is live from the op that writes it to the last
op that reads it (residual shortcuts stay live until their add; in-place ops and views reuse
their buffer; the model input and outputs are included). This is what an arena planner that
frees at last use (TFLite Micro, ncnn) needs, not what eager PyTorch's allocator holds. Integer
side outputs (max-pool indices) and kernel scratch space (im2col) are not counted; channel-pruned
tensors count their live channels only. Weight sparsity does not shrink activations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hwsparse.cost.dataflow import Trace
from hwsparse.cost.flops import MASKABLE, Liveness, kept_weights

DTYPE_BYTES: Mapping[str, int] = {"fp32": 4, "fp16": 2, "int8": 1}
WEIGHT_FORMATS = ("dense", "bitmask", "csr16", "csr8")


@dataclass(frozen=True)
class LayerWeights:
    """Storage of one Conv/Linear weight.

    Attributes:
        name: module qualified name.
        rows, cols: compacted matrix shape (live outputs x live inputs * kernel elements).
        nnz: weights kept by the mask in the compacted matrix.
        format: the chosen storage format (smallest the runtime reads).
        bytes: bytes in that format.
        dense_bytes: bytes of the uncompacted dense weight in the same dtype.
    """

    name: str
    rows: int
    cols: int
    nnz: int
    format: str
    bytes: int
    dense_bytes: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Result of :func:`memory_cost` (all sizes in bytes, batch 1).

    Attributes:
        params: number of parameters of the model as built (dense, all parameters).
        nonzero_params: parameters left after masks and channel compaction.
        weight_bytes: storage of all parameters, each Conv/Linear weight in its best format.
        dense_weight_bytes: storage of all parameters dense, in the same dtype.
        peak_activation_bytes: largest sum of simultaneously live activation buffers.
        peak_op: index of the op at which the peak occurs (-1: before the first op).
        dtype: value type used for weights and activations.
        layers: per Conv/Linear storage rows.
    """

    params: int
    nonzero_params: int
    weight_bytes: int
    dense_weight_bytes: int
    peak_activation_bytes: int
    peak_op: int
    dtype: str
    layers: tuple[LayerWeights, ...]


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def format_bytes(keep: Tensor, value_bytes: int, fmt: str) -> int:
    """Bytes to store a 2-D kept-weight pattern ``keep`` (rows x cols, bool) in ``fmt``."""
    rows, cols = int(keep.shape[0]), int(keep.shape[1])
    nnz = int(keep.sum())
    ptr = 2 if nnz < 2**16 else 4
    if fmt == "dense":
        return rows * cols * value_bytes
    if fmt == "bitmask":
        return math.ceil(rows * cols / 8) + nnz * value_bytes
    if fmt == "csr16":
        return nnz * (value_bytes + 2) + (rows + 1) * ptr
    if fmt == "csr8":
        return (nnz + _delta8_padding(keep)) * (value_bytes + 1) + (rows + 1) * ptr
    raise ValueError(f"unknown weight format {fmt!r}; valid: {', '.join(WEIGHT_FORMATS)}")


def _delta8_padding(keep: Tensor) -> int:
    """Explicit zeros needed when column gaps within a row exceed 255 (8-bit deltas)."""
    if keep.numel() == 0 or keep.shape[1] <= 256:
        return 0
    rows, cols = keep.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return 0
    # Delta to the previous kept column in the same row (the first one counts from -1).
    prev = torch.cat([torch.tensor([-1]), cols[:-1]])
    new_row = torch.cat([torch.tensor([True]), rows[1:] != rows[:-1]])
    prev = torch.where(new_row, torch.full_like(prev, -1), prev)
    gaps = cols - prev
    return int(((gaps - 1) // 255).clamp(min=0).sum())


def _compact(
    keep: Tensor, live_in: Tensor | None, mod: nn.Module, live_out: Tensor | None = None
) -> Tensor:
    """Kept-weight matrix with the output rows and input columns a compacted network drops
    removed: rows where ``live_out`` is False (without it, rows that keep no weight on a live
    input), columns of dead inputs.
    """
    rows = keep.reshape(keep.shape[0], -1)
    if live_in is not None and not isinstance(mod, nn.Linear):
        groups = int(getattr(mod, "groups", 1))
        if groups == 1:
            k = int(keep[0, 0].numel())
            cols = live_in.to(keep.device).repeat_interleave(k)
            rows = rows[:, cols]
    elif live_in is not None:
        rows = rows[:, live_in.to(keep.device)]
    if live_out is not None:
        return rows[live_out.to(keep.device)]
    return rows[rows.any(dim=1)]


def _kept_rows(liveness: Liveness | None, name: str) -> Tensor | None:
    """The output rows a compacted network stores: its kept outputs (dead ones that a coupled
    group keeps are stored as zero rows), else the live ones."""
    if liveness is None:
        return None
    kept = liveness.kept_outputs.get(name)
    return kept if kept is not None else liveness.live_outputs.get(name)


def weight_storage(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    liveness: Liveness | None,
    dtype: str,
    formats: Sequence[str] = WEIGHT_FORMATS,
) -> tuple[LayerWeights, ...]:
    """Storage rows for every Conv/Linear weight (``masks`` as from ``check_masks``)."""
    value_bytes = DTYPE_BYTES[dtype]
    rows: list[LayerWeights] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, MASKABLE):
            continue
        live_in = liveness.live_inputs.get(name) if liveness is not None else None
        live_out = _kept_rows(liveness, name)
        keep = kept_weights(mod, masks.get(name), live_in)
        cols = liveness.kept_inputs.get(name, live_in) if liveness is not None else None
        compact = _compact(keep, cols, mod, live_out)
        options = {fmt: format_bytes(compact, value_bytes, fmt) for fmt in formats}
        best = min(options, key=lambda f: (options[f], WEIGHT_FORMATS.index(f)))
        rows.append(
            LayerWeights(
                name=name,
                rows=int(compact.shape[0]),
                cols=int(compact.shape[1]),
                nnz=int(compact.sum()),
                format=best,
                bytes=options[best],
                dense_bytes=int(mod.weight.numel()) * value_bytes,
            )
        )
    return tuple(rows)


def dead_channel_params(model: nn.Module, liveness: Liveness | None) -> int:
    """Bias entries of dead Conv/Linear outputs and BatchNorm (gamma, beta) of dead channels.

    They go with their channel when it is compacted away (``hwsparse.deploy.compact`` keeps them
    at exactly zero while a ticket trains), so they are not parameters left after compaction.
    """
    if liveness is None:
        return 0
    dead = 0
    seen: set[int] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, MASKABLE):
            live, params = liveness.live_outputs.get(name), [mod.bias]
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            live, params = liveness.live_norms.get(name), [mod.weight, mod.bias]
        else:
            continue
        if live is None:
            continue
        for p in params:
            if isinstance(p, Tensor) and id(p) not in seen and p.numel() == live.numel():
                seen.add(id(p))
                dead += int((~live).sum())
    return dead


def peak_activation(trace: Trace, dtype: str) -> tuple[int, int]:
    """(peak bytes, op index) of live activation buffers over the execution order."""
    value_bytes = DTYPE_BYTES[dtype]
    n = len(trace.ops)
    delta = [0] * (n + 3)  # index i + 1 holds changes at op i (op -1 -> slot 0)
    for st in trace.storages.values():
        size = st.live_elems * value_bytes
        delta[st.first + 1] += size
        delta[min(st.last, n) + 2] -= size
    peak, at, live = 0, -1, 0
    for slot in range(n + 2):
        live += delta[slot]
        if live > peak:
            peak, at = live, slot - 1
    return peak, at


def memory_cost(
    model: nn.Module,
    trace: Trace,
    masks: Mapping[str, Tensor],
    liveness: Liveness | None,
    dtype: str = "fp32",
    formats: Sequence[str] = WEIGHT_FORMATS,
) -> MemoryEstimate:
    """Parameters, weight bytes and peak activation bytes of a (masked) model.

    Args:
        model: the model the trace was taken from.
        trace: :func:`hwsparse.cost.dataflow.trace` of the model with the same masks.
        masks: validated masks (``check_masks``), name -> bool keep tensor.
        liveness: :func:`hwsparse.cost.flops.channel_liveness` for the masks (None: dense).
        dtype: ``fp32``, ``fp16`` or ``int8`` (weights and activations).
        formats: weight formats the runtime can read; ``dense`` is always allowed.

    Returns:
        A :class:`MemoryEstimate`.
    """
    allowed = tuple(dict.fromkeys(("dense", *formats)))
    layers = weight_storage(model, masks, liveness, dtype, allowed)
    masked_weights = {
        id(mod.weight) for _, mod in model.named_modules() if isinstance(mod, MASKABLE)
    }
    other_bytes = DTYPE_BYTES[dtype] if dtype != "int8" else 4
    other = [p for p in model.parameters() if id(p) not in masked_weights]
    other_elems = sum(p.numel() for p in other)
    live_other = other_elems - dead_channel_params(model, liveness)
    params = count_params(model)
    peak, at = peak_activation(trace, dtype)
    return MemoryEstimate(
        params=params,
        nonzero_params=sum(r.nnz for r in layers) + live_other,
        weight_bytes=sum(r.bytes for r in layers) + live_other * other_bytes,
        dense_weight_bytes=sum(r.dense_bytes for r in layers) + other_elems * other_bytes,
        peak_activation_bytes=peak,
        peak_op=at,
        dtype=dtype,
        layers=layers,
    )
