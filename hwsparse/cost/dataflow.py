"""One instrumented forward pass: the executed ops in order, their shapes and live channels.

The latency and memory estimates need what a runtime executes, not just the module tree:
functional ops in ``forward`` (residual adds, ``torch.relu``), in-place ops and views, and how
long each tensor lives. :func:`trace` runs the model once under a ``TorchDispatchMode`` and
records every ATen op (batch 1). It runs the *reachability* version of the network described
in :mod:`hwsparse.cost.flops` (weights replaced by their 0/1 masks, biases zeroed, batch-norm
neutral, all-ones input, GEMM outputs binarised), so for every tensor it also knows which
channels carry data once pruned channels are compacted away. Shapes and the op sequence are
those of the real model (no op depends on weight values unless the model has data-dependent
control flow, which is then frozen to the path taken by the all-ones input).

Op kinds (the profile's efficiency/overhead classes):

- ``conv``: convolution with a kernel larger than 1 and ``groups == 1`` (or grouped, not
  depthwise); ``pointwise``: 1x1 convolution, ``groups == 1``; ``depthwise``: ``groups == C_in``;
- ``fc``: matrix products (``addmm``, ``mm``, ``bmm``; a Linear layer at batch 1 is a GEMV);
- ``batch_norm``, ``activation``, ``add`` (binary elementwise), ``elementwise`` (copies, cat,
  padding, softmax, reductions such as global average pooling, anything else that touches
  memory); ``pool`` (windowed max/average pooling);
- ``view``: ops that move no data (view, reshape, transpose, allocation without a kernel).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hwsparse.cost.flops import (
    _positive_state,
    _run_forward,
    check_input_shape,
    check_masks,
    example_input,
)

OP_KINDS = (
    "conv",
    "pointwise",
    "depthwise",
    "fc",
    "batch_norm",
    "activation",
    "add",
    "elementwise",
    "pool",
    "view",
)
COMPUTE_KINDS = ("conv", "pointwise", "depthwise", "fc")

_FC = {"addmm", "mm", "bmm", "baddbmm", "addmv", "mv", "dot", "addbmm"}
_NORM = {
    "native_batch_norm",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit",
    "batch_norm",
    "native_layer_norm",
    "native_group_norm",
    "instance_norm",
}
_ACTIVATION = {
    "relu", "relu6", "hardtanh", "sigmoid", "silu", "gelu", "hardswish", "hardsigmoid",
    "leaky_relu", "elu", "selu", "celu", "tanh", "clamp", "clamp_min", "clamp_max", "threshold",
    "_prelu_kernel", "prelu", "softplus", "mish", "log_sigmoid_forward", "rrelu_with_noise",
}  # fmt: skip
_BINARY = {"add", "mul", "sub", "div", "maximum", "minimum", "addcmul", "where"}
_POOL = {
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "_adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d",
}  # fmt: skip
# Reductions (global average pooling is ``mean``) stream their input like a copy: elementwise.
_VIEW = {
    "view", "_unsafe_view", "reshape", "_reshape_alias", "t", "transpose", "permute", "expand",
    "squeeze", "unsqueeze", "flatten", "alias", "detach", "slice", "select", "as_strided",
    "split", "split_with_sizes", "chunk", "unbind", "narrow", "lift_fresh", "empty",
    "empty_like", "empty_strided", "numpy_T", "view_as", "unflatten", "_to_copy_noop",
}  # fmt: skip


@dataclass(frozen=True)
class Op:
    """One executed ATen op (batch 1).

    Element counts are per tensor; ``live_*`` counts keep only channels that carry data (the
    tensor of the channel-compacted network). MAC counts use 1 multiply-add = 1 MAC.

    Attributes:
        index: position in execution order.
        aten: ATen op name, e.g. ``convolution``, ``addmm``, ``relu_``.
        kind: one of :data:`OP_KINDS`.
        module: innermost module qualified name that ran it ("" = the root's forward).
        macs: multiply-adds of the dense op (0 for non-GEMM ops).
        live_macs: multiply-adds of the same op after compacting dead channels.
        kept_macs: multiply-adds that remain after the mask too (unstructured zeros removed).
        in_elems, live_in_elems: elements read from floating activation inputs.
        out_elems, live_out_elems: elements written.
        weight_elems, live_weight_elems: weight elements of conv/fc ops (dense, compacted).
        c_out, live_c_out: output channels (conv) / features (fc), dense and live.
        groups: convolution groups (1 otherwise).
        out_pixels: output positions of a conv (H x W), rows of a matrix product (0 otherwise).
        kernel: kernel size of a convolution (empty otherwise).
        stride, dilation: largest stride / dilation of a convolution (1 otherwise).
        reads, writes: storage ids of activation tensors read and newly allocated.
    """

    index: int
    aten: str
    kind: str
    module: str
    macs: int
    live_macs: int
    kept_macs: int
    in_elems: int
    live_in_elems: int
    out_elems: int
    live_out_elems: int
    weight_elems: int
    live_weight_elems: int
    c_out: int
    live_c_out: int
    groups: int
    out_pixels: int
    kernel: tuple[int, ...]
    stride: int
    dilation: int
    reads: tuple[int, ...]
    writes: tuple[int, ...]


@dataclass(frozen=True)
class Storage:
    """An activation buffer: its size and the ops that create and last use it."""

    elems: int
    live_elems: int
    first: int  # op index that allocates it (-1: the model input)
    last: int  # last op index that reads it (len(ops): a model output)


@dataclass(frozen=True)
class Trace:
    """Result of :func:`trace`: the op sequence and the activation buffers."""

    ops: tuple[Op, ...]
    storages: Mapping[int, Storage]
    module_kinds: Mapping[str, str]  # module name -> class name
    container_calls: int = 0  # calls of non-root modules that have children (Sequential, blocks)


def op_kind(aten: str, args: tuple[Any, ...]) -> str:
    """Classify an ATen op name (overload packet, e.g. ``relu_``) into an op kind."""
    base = aten.rstrip("_")
    if "convolution" in base:
        weight, groups = args[1], int(args[8]) if len(args) > 8 else 1
        c_in = int(args[0].shape[1])
        if groups > 1 and groups == c_in and weight.shape[1] == 1:
            return "depthwise"
        if groups == 1 and all(int(k) == 1 for k in weight.shape[2:]):
            return "pointwise"
        return "conv"
    if base in _FC:
        return "fc"
    if base in _NORM:
        return "batch_norm"
    if base in _ACTIVATION:
        return "activation"
    if base in _BINARY:
        return (
            "add"
            if sum(isinstance(a, Tensor) and a.dim() > 0 for a in args) >= 2
            else "activation"
        )
    if base in _POOL:
        return "pool"
    if base in _VIEW:
        return "view"
    return "elementwise"


def _live_channels(t: Tensor) -> Tensor:
    """Bool vector over dim 1 (channels/features): True where any element is non-zero."""
    if t.dim() < 2:
        return (
            (t != 0).reshape(1, -1).any(dim=0) if t.numel() else torch.zeros(0, dtype=torch.bool)
        )
    return (t != 0).transpose(0, 1).reshape(t.shape[1], -1).any(dim=1)


def _live_elems(t: Tensor) -> int:
    if t.dim() < 2 or t.shape[1] == 0:
        return int(t.numel())
    return int(t.numel()) * int(_live_channels(t).sum()) // int(t.shape[1])


class _Recorder(TorchDispatchMode):  # type: ignore[no-untyped-call]
    def __init__(
        self,
        weight_ptrs: set[int],
        stack: list[str],
        kept: tuple[Mapping[str, Tensor], Mapping[str, Tensor]],
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.weight_ptrs = weight_ptrs
        self.stack = stack
        self.kept_out, self.kept_in = kept
        self.ops: list[Op] = []
        self.ptr_to_sid: dict[int, int] = {}
        self.sizes: dict[int, tuple[int, int]] = {}
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}

    def add_input(self, x: Tensor) -> None:
        sid = self._new(x, -1)
        self.last[sid] = -1

    def _new(self, t: Tensor, index: int) -> int:
        sid = len(self.sizes)
        self.ptr_to_sid[t.untyped_storage().data_ptr()] = sid
        self.sizes[sid] = (int(t.numel()), _live_elems(t))
        self.first[sid] = index
        return sid

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        aten = func.overloadpacket.__name__
        kind = op_kind(aten, args)
        if kind in COMPUTE_KINDS and isinstance(out, Tensor):
            out = (out != 0).to(out.dtype)  # reachability, bounded values (see module doc)
        index = len(self.ops)
        in_tensors = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, Tensor)]
        reads: list[int] = []
        in_elems = live_in = 0
        for t in in_tensors:
            if not t.is_floating_point() or t.untyped_storage().data_ptr() in self.weight_ptrs:
                continue
            sid = self.ptr_to_sid.get(t.untyped_storage().data_ptr())
            if sid is not None and sid not in reads:
                reads.append(sid)
                self.last[sid] = index
            if kind != "view":
                in_elems += int(t.numel())
                live_in += _live_elems(t)
        writes: list[int] = []
        out_elems = live_out = 0
        read_ptrs = {t.untyped_storage().data_ptr() for t in in_tensors}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor) or not t.is_floating_point() or t.numel() == 0:
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr in read_ptrs:  # in-place op or view: same buffer
                sid = self.ptr_to_sid.get(ptr)
                if sid is not None:
                    self.last[sid] = index
            else:
                writes.append(self._new(t, index))
            if kind != "view":
                out_elems += int(t.numel())
                live_out += _live_elems(t)
        macs = live_macs = kept = w_elems = live_w = c_out = live_c_out = pixels = 0
        groups = stride = dilation = 1
        kernel: tuple[int, ...] = ()
        if "convolution" in aten and len(args) > 5:
            kernel = tuple(int(k) for k in args[1].shape[2:])
            stride = max((int(v) for v in args[3]), default=1)
            dilation = max((int(v) for v in args[5]), default=1)
        if kind in COMPUTE_KINDS and isinstance(out, Tensor):
            module = self.stack[-1] if self.stack else ""
            gemm = _gemm_counts(
                aten, kind, args, out, self.kept_out.get(module), self.kept_in.get(module)
            )
            macs, live_macs, kept, w_elems, live_w, c_out, live_c_out, groups, pixels = gemm
        self.ops.append(
            Op(
                index=index,
                aten=aten,
                kind=kind,
                module=self.stack[-1] if self.stack else "",
                macs=macs,
                live_macs=live_macs,
                kept_macs=kept,
                in_elems=in_elems,
                live_in_elems=live_in,
                out_elems=out_elems,
                live_out_elems=live_out,
                weight_elems=w_elems,
                live_weight_elems=live_w,
                c_out=c_out,
                live_c_out=live_c_out,
                groups=groups,
                out_pixels=pixels,
                kernel=kernel,
                stride=stride,
                dilation=dilation,
                reads=tuple(reads),
                writes=tuple(writes),
            )
        )
        return out


def _gemm_counts(
    aten: str,
    kind: str,
    args: tuple[Any, ...],
    out: Tensor,
    kept_out: Tensor | None = None,
    kept_in: Tensor | None = None,
) -> tuple[int, int, int, int, int, int, int, int, int]:
    """(macs, live_macs, kept, weight, live_weight, c_out, live_c_out, groups, pixels).

    ``kept_out``/``kept_in``: output and input channels a compacted network still has though
    they are dead (:attr:`hwsparse.cost.flops.Liveness.kept_outputs`, ``kept_inputs``): counted
    as live, so a dense runtime is charged for them.
    """
    if kind != "fc":
        x, w = args[0], args[1]
        groups = int(args[8]) if len(args) > 8 else 1
        if len(args) > 6 and bool(args[6]):  # transposed: weight (C_in, C_out/g, k...), dense
            macs = int(w.numel()) * int(x[0, 0].numel())
            c_out = int(out.shape[1])
            pixels = int(out[0, 0].numel())
            return macs, macs, macs, int(w.numel()), int(w.numel()), c_out, c_out, groups, pixels
        c_out, c_in_g = int(w.shape[0]), int(w.shape[1])
        k = int(w[0, 0].numel())
        spatial = int(out[0, 0].numel()) * int(out.shape[0])
        live_in = _live_channels(x)
        if kept_in is not None and kept_in.numel() == live_in.numel():
            live_in = live_in | kept_in.to(live_in.device)
        live_in = live_in.view(groups, 1, c_in_g)
        live_out = _live_channels(out)
        if kept_out is not None and kept_out.numel() == c_out:
            live_out = live_out | kept_out.to(live_out.device)
        live_out = live_out.view(groups, c_out // groups, 1)
        live_pairs = (live_out & live_in).reshape(c_out, c_in_g)
        kept = (w != 0).reshape(c_out, c_in_g, k) & live_pairs.unsqueeze(-1)
        return (
            c_out * c_in_g * k * spatial,
            int(live_pairs.sum()) * k * spatial,
            int(kept.sum()) * spatial,
            int(w.numel()),
            int(live_pairs.sum()) * k,
            c_out,
            int(live_out.sum()),
            groups,
            int(out[0, 0].numel()),
        )
    # Matrix products: the last two dims are (M, K) @ (K, N); leading dims batch.
    mats = [a for a in args if isinstance(a, Tensor) and a.dim() >= 2]
    a, b = mats[-2], mats[-1]
    batch = int(a[..., 0, 0].numel())
    m, kk, n = int(a.shape[-2]), int(a.shape[-1]), int(b.shape[-1])
    live_k = (a != 0).reshape(-1, kk).any(dim=0)
    if kept_in is not None and kept_in.numel() == kk:
        live_k = live_k | kept_in.to(live_k.device)
    live_n = (out != 0).reshape(-1, n).any(dim=0)
    if kept_out is not None and kept_out.numel() == n:
        live_n = live_n | kept_out.to(live_n.device)
    live_pairs = live_k.view(kk, 1) & live_n.view(1, n)
    kept = (b != 0).reshape(-1, kk, n).any(dim=0) & live_pairs
    return (
        batch * m * kk * n,
        batch * m * int(live_pairs.sum()),
        batch * m * int(kept.sum()),
        int(b.numel()),
        int(live_pairs.sum()),
        n,
        int(live_n.sum()),
        1,
        batch * m,
    )


def trace(
    model: nn.Module,
    input_shape: tuple[int, ...],
    masks: Mapping[str, Tensor] | None = None,
    kept_outputs: Mapping[str, Tensor] | None = None,
    kept_inputs: Mapping[str, Tensor] | None = None,
) -> Trace:
    """Run one batch-1 reachability forward pass and record every executed op.

    Args:
        model: a plain ``nn.Module``; run in eval mode, its training flag is restored.
        input_shape: one sample's shape, no batch dimension.
        masks: optional binary masks keyed by Conv/Linear names (weight-shaped).
        kept_outputs, kept_inputs: :class:`hwsparse.cost.flops.Liveness`'s for these masks:
            dead channels that compaction keeps are costed as computed.

    Raises:
        InputError: the model cannot run on ``input_shape`` or a mask does not fit.
    """
    input_shape = check_input_shape(input_shape)
    checked = check_masks(model, masks)
    stack: list[str] = []
    handles = []

    def push(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            stack.append(name)

        return hook

    def pop(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if stack:
            stack.pop()

    kinds: dict[str, str] = {}
    containers = [0]

    def count(mod: nn.Module, args: tuple[Any, ...]) -> None:
        containers[0] += 1

    for name, mod in model.named_modules():
        kinds[name] = type(mod).__name__
        if name:
            handles.append(mod.register_forward_pre_hook(push(name)))
            handles.append(mod.register_forward_hook(pop, always_call=True))
            if any(True for _ in mod.children()):
                handles.append(mod.register_forward_pre_hook(count))
    was_training = model.training
    model.eval()
    try:
        state = _positive_state(model, checked)
        weight_ptrs = {t.untyped_storage().data_ptr() for t in state.values()}
        x = example_input(model, input_shape)
        recorder = _Recorder(weight_ptrs, stack, (kept_outputs or {}, kept_inputs or {}))
        recorder.add_input(x)

        def run() -> Any:
            with torch.no_grad(), recorder:
                return functional_call(model, state, (x,))

        out = _run_forward(model, run, input_shape)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    n = len(recorder.ops)
    for t in tree_flatten(out)[0]:
        if isinstance(t, Tensor):
            sid = recorder.ptr_to_sid.get(t.untyped_storage().data_ptr())
            if sid is not None:
                recorder.last[sid] = n
    storages = {
        sid: Storage(
            elems=size[0],
            live_elems=size[1],
            first=recorder.first[sid],
            last=max(recorder.last.get(sid, recorder.first[sid]), recorder.first[sid]),
        )
        for sid, size in recorder.sizes.items()
    }
    return Trace(
        ops=tuple(recorder.ops),
        storages=storages,
        module_kinds=kinds,
        container_calls=containers[0],
    )
