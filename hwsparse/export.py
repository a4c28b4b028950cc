"""Export a ticket for deployment: ONNX, checked against the torch model in onnxruntime.

The ONNX graph is the plain (dense-shaped) network with the pruned weights stored as zeros;
runtimes that exploit sparsity read the zeros from the initializers. The export is verified by
running the same random batch through torch and onnxruntime and comparing the logits.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwsparse.errors import InputError

ATOL = 1e-4  # max |torch - onnxruntime| accepted on the logits (fp32)


@dataclass(frozen=True)
class OnnxCheck:
    path: Path
    max_abs_diff: float  # on a random batch of 4 inputs
    opset: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= ATOL


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], path: str | Path, opset: int = 17
) -> OnnxCheck:
    """Write ``model`` as ONNX (dynamic batch) and check it in onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError(
            "ONNX export needs onnx and onnxruntime: pip install 'hwsparse[export]'"
        ) from None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    example = torch.randn(1, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter warns it is legacy
        torch.onnx.export(
            model,
            (example,),
            str(out),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    batch = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(batch).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": batch.numpy()})[0]
    return OnnxCheck(out, float(np.max(np.abs(got - expected))), opset)
