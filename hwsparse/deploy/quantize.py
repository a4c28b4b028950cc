"""The target's precision in torch: what an int8 or fp16 runtime computes, simulated exactly enough
to score a trial by the network as it will run, without writing an artifact.

``dtype`` is the engine's (``hwsparse.cost.profiles.Engine.dtype``): ``fp32`` changes nothing.

int8 follows full-integer post-training static quantization as TFLite/LiteRT (litert-torch's
PT2E quantizer, what :mod:`hwsparse.deploy.artifacts` writes) and onnxruntime QDQ compute it:

- Conv/Linear weights: per output channel, symmetric, ``q = round(w / s)`` in [-127, 127],
  ``s = max|w| / 127``. A following batch-norm is folded into the weights by the runtime; per
  channel scales absorb its factor, so quantising the unfolded weight gives the same numbers.
- Biases stay float here (the runtime keeps them as int32 at scale ``s_in * s_w``: relative
  error below 1e-6).
- Activations: per tensor, asymmetric, ``q`` in [-128, 127], the range the min/max of the
  calibration batch (widened to include 0), at the model's input and at the output of every
  op the runtime materialises: a conv/GEMM with its batch-norm and activation fused in, a
  residual add (with its activation), pooling, concatenation, reductions and any other op
  that writes memory. Views and reshapes move no data and are not requantised.

fp16 rounds every weight and every op output to float16 (what an fp16 engine stores; its
accumulators are wider, so this errs on the pessimistic side).

The simulation runs the model's own forward under a ``TorchDispatchMode``, so functional ops
(``torch.relu``, ``a + b`` in a residual block) are seen like modules. A test compares the
simulated accuracy with the real ``.tflite`` artifact's (tests/test_deploy.py).
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hwsparse.cost.flops import MASKABLE
from hwsparse.errors import InputError

DTYPES = ("fp32", "fp16", "int8")
QMIN, QMAX = -128, 127  # activations (asymmetric int8)
WMAX = 127  # weights (symmetric int8, -127..127)

_VIEWS = {
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "squeeze",
    "unsqueeze", "flatten", "alias", "detach", "slice", "select", "as_strided", "contiguous",
    "clone", "_to_copy", "lift_fresh",
}  # fmt: skip
_GEMMS = {"convolution", "addmm", "mm", "bmm"}
_NORMS = {"_native_batch_norm_legit_no_training", "native_batch_norm", "batch_norm"}
_ACTIVATIONS = {"relu", "relu6", "hardtanh", "clamp", "clamp_min", "threshold"}  # fusable


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    return dtype


def quantize_weights(model: nn.Module, dtype: str) -> nn.Module:
    """A copy of ``model`` with every Conv/Linear weight rounded as the runtime stores it."""
    out = copy.deepcopy(model).eval()
    with torch.no_grad():
        for module in out.modules():
            if not isinstance(module, MASKABLE):
                continue
            w = module.weight
            if dtype == "int8":
                scale = w.abs().reshape(w.shape[0], -1).amax(dim=1) / WMAX
                scale = scale.clamp_min(torch.finfo(w.dtype).tiny).reshape(
                    -1, *[1] * (w.dim() - 1)
                )
                w.copy_(torch.clamp(torch.round(w / scale), -WMAX, WMAX) * scale)
            elif dtype == "fp16":
                w.copy_(w.half().float())
    return out


def _name(func: Any) -> str:
    return str(func.overloadpacket.__name__)


def _tensors(tree: Any) -> list[Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, Tensor)]


class _Tagged:
    """Tensors seen so far with a tag each, by identity (a freed tensor's id may be reused by a
    new one, so membership also checks the object itself through a weak reference)."""

    def __init__(self) -> None:
        self._refs: dict[int, tuple[weakref.ref[Tensor], int]] = {}

    def set(self, t: Tensor, tag: int) -> None:
        self._refs[id(t)] = (weakref.ref(t), tag)

    def get(self, t: Tensor) -> int | None:
        entry = self._refs.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None


@dataclass
class _Plan:
    """Per op (by its position in the forward pass): quantise its output, and with what range."""

    names: list[str] = field(default_factory=list)  # aten op names in execution order
    quantize: list[bool] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    input_range: tuple[float, float] = (0.0, 0.0)


class _Structure(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Records which op outputs a runtime materialises (see the module docstring)."""

    def __init__(self, x: Tensor) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.source = _Tagged()  # tensor -> producing op (views followed; -1: the input)
        self.source.set(x, -1)
        self.names: list[str] = []
        self.consumers: list[list[str]] = []

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        name = _name(func)
        sources = [s for t in _tensors((args, kwargs)) if (s := self.source.get(t)) is not None]
        if not sources:
            return out  # weight preprocessing (a transpose of a Linear weight): no activation
        outputs = _tensors(out)
        if name in _VIEWS:
            for t in outputs:
                self.source.set(t, sources[0])
            return out
        index = len(self.names)
        self.names.append(name)
        self.consumers.append([])
        for s in sources:
            if s >= 0:
                self.consumers[s].append(name)
        if outputs:
            self.source.set(outputs[0], index)
        return out

    def decisions(self) -> list[bool]:
        """Quantise every op's output except one the runtime fuses into its single consumer:
        a conv/GEMM followed by its batch-norm, or a conv/GEMM/norm/add by its activation."""
        out = []
        for name, consumers in zip(self.names, self.consumers, strict=True):
            fused = len(consumers) == 1 and (
                (consumers[0] in _NORMS and name in _GEMMS)
                or (consumers[0] in _ACTIVATIONS and name in _GEMMS | _NORMS | {"add"})
            )
            out.append(not fused)
        return out


class _Run(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Calibrates (``observe``) or applies (``fake``) the plan's activation quantisation."""

    def __init__(self, plan: _Plan, dtype: str, observe: bool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.plan, self.dtype, self.observe = plan, dtype, observe
        self.index = 0
        self.active = _Tagged()  # tensors computed from the input (the rest are weights)

    def start(self, x: Tensor) -> Tensor:
        self.active.set(x, 0)
        return x

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        name = _name(func)
        if all(self.active.get(t) is None for t in _tensors((args, kwargs))):
            return out
        if name in _VIEWS:
            for t in _tensors(out):
                self.active.set(t, 0)
            return out
        i = self.index
        self.index += 1
        if i >= len(self.plan.names) or self.plan.names[i] != name:
            raise RuntimeError(
                f"the model ran op {name!r} at position {i} where calibration saw "
                f"{self.plan.names[i] if i < len(self.plan.names) else 'none'}: its forward "
                "depends on the input, which a deployed graph cannot"
            )
        first = out[0] if isinstance(out, tuple) else out
        if self.plan.quantize[i] and first.is_floating_point():
            if self.observe:
                self.plan.low[i] = min(self.plan.low[i], float(first.min()))
                self.plan.high[i] = max(self.plan.high[i], float(first.max()))
            else:
                q = _fake(first, self.plan.low[i], self.plan.high[i], self.dtype)
                out = (q, *out[1:]) if isinstance(out, tuple) else q
                first = q
        self.active.set(first, 0)
        return out


def _fake(x: Tensor, low: float, high: float, dtype: str) -> Tensor:
    if dtype == "fp16":
        return x.half().float()
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / (QMAX - QMIN) or 1.0
    zero = round(QMIN - low / scale)
    return (torch.clamp(torch.round(x / scale) + zero, QMIN, QMAX) - zero) * scale


class Simulated(nn.Module):
    """``model`` as an ``dtype`` runtime computes it (see the module docstring).

    Build with :func:`simulate`; call it like the model (any batch size).
    """

    def __init__(self, model: nn.Module, dtype: str, plan: _Plan) -> None:
        super().__init__()
        self.inner, self.dtype, self.plan = model, dtype, plan

    def forward(self, x: Tensor) -> Tensor:
        if self.dtype == "fp32":
            return self.inner(x)  # type: ignore[no-any-return]
        low, high = self.plan.input_range
        x = _fake(x, low, high, self.dtype)
        mode = _Run(self.plan, self.dtype, observe=False)
        with torch.no_grad(), mode:
            out = self.inner(mode.start(x))
        return out  # type: ignore[no-any-return]


def simulate(model: nn.Module, dtype: str, calibration: Tensor) -> Simulated:
    """``model`` (plain, eval) at ``dtype``, activation ranges calibrated on ``calibration``
    (a batch of training inputs; 256 samples or more is plenty)."""
    check_dtype(dtype)
    quantized = quantize_weights(model, dtype)
    plan = _Plan()
    if dtype == "fp32":
        return Simulated(quantized, dtype, plan)
    calibration = calibration.detach().cpu().float()
    with torch.no_grad():
        probe = calibration[:1].clone()
        structure = _Structure(probe)
        with structure:
            quantized(probe)
        plan.names = structure.names
        plan.quantize = structure.decisions()
        plan.low = [0.0] * len(plan.names)
        plan.high = [0.0] * len(plan.names)
        plan.input_range = (float(calibration.min()), float(calibration.max()))
        mode = _Run(plan, dtype, observe=True)
        with mode:
            quantized(mode.start(calibration))
    return Simulated(quantized, dtype, plan)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` (CPU, eval)."""
    correct = 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / max(len(x), 1)


def calibration_batch(x_train: Tensor, n: int = 256, seed: int = 0) -> Tensor:
    """A fixed random subset of the training inputs for activation ranges."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x_train), generator=g)[:n]
    return x_train[idx].detach().cpu().float().clone()
