"""Where and how training runs: the torch device, the training precision, determinism, and
the one evaluation routine that val and test share.

Plain PyTorch. Every decision that the CUDA path takes is a function of explicit inputs (the
number of CUDA devices, whether the GPU supports bf16), so CPU tests cover all of it:

- ``resolve_device``: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``; a ``cuda:N`` past the last
  device is an :class:`InputError` that lists the valid ones.
- Workers on several GPUs: each ``--workers`` process sees one GPU through
  ``CUDA_VISIBLE_DEVICES`` (:mod:`hwsparse.workers`), so ``auto``/``cuda`` is its own GPU.
- ``select_precision``: ``fp32`` | ``bf16`` | ``fp16`` | ``auto``. bf16 on CUDA only where the
  GPU supports it; fp16 always with a gradient scaler; ``auto`` is bf16 on a GPU that supports
  it and fp32 everywhere else.
- ``evaluate``: top-1 accuracy in fp32, in batches of ``EVAL_BATCH``, on the model's device,
  for validation during training and for the test split alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hwsparse.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
EVAL_BATCH = 2048  # samples per forward pass when evaluating (val and test alike)


def cuda_count() -> int:
    """CUDA devices torch can use (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _valid_devices(count: int) -> str:
    cudas = ", ".join(f"cuda:{i}" for i in range(count))
    return "auto, cpu" + (f", cuda, {cudas}" if count else "")


def resolve_device(name: str, count: int | None = None) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is present, else CPU; otherwise the named device.

    ``count`` is the number of CUDA devices (default: what torch sees). Unknown names, CUDA
    without a GPU and a ``cuda:N`` past the last GPU raise :class:`InputError`, one line.
    """
    count = cuda_count() if count is None else count
    if name == "auto":
        return torch.device("cuda:0" if count else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown --device {name!r}; valid: {_valid_devices(count)}") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported --device {name!r}; valid: {_valid_devices(count)}")
    if device.type == "cuda" and count == 0:
        raise InputError("--device cuda asked for, but no CUDA device is available; use auto")
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise InputError(
            f"--device {name}: this machine has {count} CUDA device(s); "
            f"valid: {_valid_devices(count)}"
        )
    return device


@dataclass(frozen=True)
class Precision:
    """The resolved training precision: autocast dtype (None = fp32) and loss scaling."""

    name: str  # fp32 | bf16 | fp16
    dtype: torch.dtype | None  # autocast dtype; None: no autocast
    scaler: bool  # fp16 only: scale the loss so small gradients do not flush to zero

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        """The forward pass's context: autocast to ``dtype`` on ``device``, or nothing."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A GradScaler that is active for fp16 only (a disabled one passes values through)."""
        return torch.amp.GradScaler(device.type, enabled=self.scaler)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively (any CPU; a CUDA GPU per torch's check)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return True


def select_precision(name: str, device: torch.device, bf16_ok: bool | None = None) -> Precision:
    """Resolve ``--precision`` for ``device``; ``bf16_ok`` defaults to :func:`bf16_supported`.

    ``auto``: bf16 on a GPU that supports it, else fp32 (CPUs train fastest in fp32 here).
    ``bf16`` on a GPU without it is an :class:`InputError` naming what is valid.
    """
    if name not in PRECISIONS:
        raise InputError(f"unknown --precision {name!r}; valid: {', '.join(PRECISIONS)}")
    ok = bf16_supported(device) if bf16_ok is None else bf16_ok
    if name == "auto":
        name = "bf16" if device.type == "cuda" and ok else "fp32"
    if name == "bf16" and not ok:
        raise InputError(
            f"--precision bf16: {device} does not support bf16; valid here: auto, fp32, fp16"
        )
    if name == "fp32":
        return Precision("fp32", None, False)
    if name == "bf16":
        return Precision("bf16", torch.bfloat16, False)
    return Precision("fp16", torch.float16, True)


@contextmanager
def deterministic(on: bool) -> Iterator[None]:
    """With ``on``: deterministic algorithms (an op without one raises), no cuDNN autotuning,
    and the cuBLAS workspace setting that makes CUDA matmuls repeatable; restored afterwards."""
    if not on:
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]
        if before[2] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = before[2]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``: fp32, eval mode, ``EVAL_BATCH`` samples per
    forward pass, on the device of ``x`` (the same routine for val and test)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for i in range(0, len(x), EVAL_BATCH):
        correct += (model(x[i : i + EVAL_BATCH]).argmax(1) == y[i : i + EVAL_BATCH]).sum()
    model.train(was_training)
    return int(correct) / max(len(x), 1)
