"""Side check: lone conv layers whose widths are / are not multiples of 16, in both runtimes.

    python benchmarks/deploy/alignment.py      # -> prints a markdown table (results/alignment.md)

Each layer is written as an fp32 artifact and timed like the benchmark does (lowest of 5
medians, one thread, batch 1, invoke overhead included).
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from hwsparse.deploy.artifacts import time_artifact, write_artifact  # noqa: E402

LAYERS = [
    ("depthwise 3x3, 48 ch @32", 48, 48, 48),
    ("depthwise 3x3, 45 ch @32", 45, 45, 45),
    ("depthwise 3x3, 40 ch @32", 40, 40, 40),
    ("depthwise 3x3, 32 ch @32", 32, 32, 32),
    ("depthwise 3x3, 24 ch @32", 24, 24, 24),
    ("depthwise 3x3, 16 ch @32", 16, 16, 16),
    ("depthwise 3x3, 13 ch @32", 13, 13, 13),
    ("conv 3x3, 32->32 @32", 32, 32, 1),
    ("conv 3x3, 32->20 @32", 32, 20, 1),
    ("conv 3x3, 20->32 @32", 20, 32, 1),
    ("conv 3x3, 16->16 @32", 16, 16, 1),
    ("conv 3x3, 13->13 @32", 13, 13, 1),
    ("conv 1x1, 16->32 @32", 16, 32, 1),
    ("conv 1x1, 13->29 @32", 13, 29, 1),
]


def main() -> None:
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="hwsparse-align-")
    print("| layer | onnxruntime us | LiteRT us |\n|---|---|---|")
    for i, (name, ci, co, groups) in enumerate(LAYERS):
        k = 1 if "1x1" in name else 3
        layer = nn.Conv2d(ci, co, k, 1, k // 2, groups=groups, bias=False).eval()
        shape = (ci, 32, 32)
        times = []
        for fmt in ("onnx", "tflite"):
            rep = write_artifact(layer, shape, work, format=fmt, dtype="fp32",
                                 calibration=torch.randn(2, *shape), name=f"l{i}")  # fmt: skip
            times.append(
                min(time_artifact(rep.path, shape, runs=400, warmup=50) for _ in range(5))
            )
        print(f"| {name} | {times[0]:.1f} | {times[1]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
