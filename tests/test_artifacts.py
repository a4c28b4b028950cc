"""Artifacts in their real runtimes: .onnx in onnxruntime, .tflite in the LiteRT interpreter.

Two nets trained briefly on sklearn digits (1,297 train / 500 test): an MLP on flat (64,) inputs
(the 1-D case) and a conv net with BN, a residual add and a depthwise-separable block on (1, 8, 8).
Each artifact is written once per module (the .tflite conversions take 1-3 s each).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from hwsparse.deploy.artifacts import ArtifactReport, time_artifact, write_artifact
from hwsparse.errors import InputError

INSTALL = "pip install 'hwsparse[deploy]'"


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.res = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.ds = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),  # depthwise
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 1),  # pointwise
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(h + self.res(h))
        return self.fc(self.ds(h).mean((2, 3)))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                         nn.Linear(64, 10))  # fmt: skip


NETS = {"mlp": ((64,), _mlp, 150, 0.3), "conv": ((1, 8, 8), ConvNet, 80, 0.1)}


@pytest.fixture(scope="module")
def nets() -> dict[str, tuple[nn.Module, tuple[int, ...], torch.Tensor, torch.Tensor]]:
    torch.set_num_threads(1)
    x_all, y_all = load_digits(return_X_y=True)
    x = torch.tensor(x_all / 16, dtype=torch.float32)
    y = torch.tensor(y_all)
    out = {}
    for key, (shape, make, steps, zeros) in NETS.items():
        torch.manual_seed(0)
        model = make()
        xs = x.reshape(-1, *shape)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[:1297]), y[:1297]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():  # a ticket carries exact zeros: zero the smallest weights
            for m in model.modules():
                if isinstance(m, nn.Linear | nn.Conv2d):
                    m.weight[m.weight.abs() <= m.weight.abs().quantile(zeros)] = 0.0
        out[key] = (model, shape, xs, y)
    return out


@pytest.fixture(scope="module")
def artifact(nets, tmp_path_factory):  # type: ignore[no-untyped-def]
    cache: dict[tuple[str, str, str], ArtifactReport] = {}
    root = tmp_path_factory.mktemp("artifacts")

    def get(net: str, fmt: str, dtype: str) -> ArtifactReport:
        if (net, fmt, dtype) not in cache:
            model, shape, xs, y = nets[net]
            cache[net, fmt, dtype] = write_artifact(
                model, shape, root / net, format=fmt, dtype=dtype, calibration=xs[:1297],
                x_test=xs[1297:], y_test=y[1297:], name=net,
            )  # fmt: skip
        return cache[net, fmt, dtype]

    return get


@pytest.mark.parametrize("net", ["mlp", "conv"])
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "int8"])
def test_artifact_matches_torch_in_its_runtime(nets, artifact, net, fmt, dtype):  # type: ignore[no-untyped-def]
    model, shape, xs, y = nets[net]
    r = artifact(net, fmt, dtype)
    assert r.path.is_file() and r.path.suffix == f".{fmt}" and r.bytes == r.path.stat().st_size
    assert r.format == fmt and r.dtype == dtype and r.n_checked == 500
    assert r.runtime.startswith("onnxruntime" if fmt == "onnx" else "LiteRT")
    with torch.no_grad():
        scale = float(model(xs[1297:]).abs().max())
    if dtype == "fp32":
        assert r.max_abs_diff <= 1e-4
        assert r.argmax_agreement == 1.0
    elif dtype == "fp16":
        assert r.max_abs_diff <= 1e-2 * scale
        assert r.argmax_agreement >= 0.99
    else:
        assert r.argmax_agreement >= 0.95
        assert r.max_abs_diff < 0.25 * scale
    assert r.torch_accuracy is not None and r.torch_accuracy > 0.8
    assert r.artifact_accuracy is not None
    assert abs(r.artifact_accuracy - r.torch_accuracy) <= 0.03
    d = r.to_dict()
    assert d["path"] == str(r.path) and set(d["io"]) == {"input", "output"}
    assert not [p for p in r.path.parent.iterdir() if ".tmp" in p.name]  # no temp left over


def test_tflite_int8_has_int8_io_with_quant_params(artifact):  # type: ignore[no-untyped-def]
    r = artifact("conv", "tflite", "int8")
    for side in ("input", "output"):
        t = r.io[side]
        assert t["dtype"] == "int8"
        assert t["scale"] > 0 and -128 <= t["zero_point"] <= 127
    assert r.io["input"]["shape"] == [1, 1, 8, 8]  # NCHW signature kept, batch 1
    assert r.io["output"]["shape"] == [1, 10]
    # inputs are digits / 16 in [0, 1]: the input range maps onto int8 as ~1/255, zp -128
    assert r.io["input"]["scale"] == pytest.approx(1 / 255, rel=0.05)


def test_onnx_keeps_float_io_and_dynamic_batch(artifact):  # type: ignore[no-untyped-def]
    for dtype in ("fp32", "fp16", "int8"):
        r = artifact("conv", "onnx", dtype)
        assert r.io["input"]["name"] == "input" and r.io["output"]["name"] == "logits"
        assert r.io["input"]["dtype"] == r.io["output"]["dtype"] == "float32"
        assert r.io["input"]["shape"] == ["batch", 1, 8, 8]
        assert r.io["input"]["scale"] is None


def test_int8_file_size_is_about_one_byte_per_param(nets, artifact):  # type: ignore[no-untyped-def]
    model = nets["mlp"][0]
    params = sum(p.numel() for p in model.parameters())  # 17,226: 17,024 weights, 202 biases
    int8 = artifact("mlp", "tflite", "int8").bytes  # measured 25,176 B = 1.46 B/param
    fp32 = artifact("mlp", "tflite", "fp32").bytes  # measured 71,032 B = 4.12 B/param
    # int8 weights (1 B each) + int32 biases + per-channel (float32 scale, int64 zero point) for
    # both weights and biases (24 B per output channel) + ~2.5 KB of flatbuffer and op metadata
    n_weights, n_out = 17_024, 202
    assert n_weights < int8 < n_weights + 4 * n_out + 24 * n_out + 4096
    assert 4 * params < fp32 < 4.2 * params + 4096
    assert artifact("mlp", "onnx", "int8").bytes < 0.4 * artifact("mlp", "onnx", "fp32").bytes


def test_time_artifact_returns_median_microseconds(artifact):  # type: ignore[no-untyped-def]
    for fmt in ("onnx", "tflite"):
        us = time_artifact(artifact("conv", fmt, "int8").path, (1, 8, 8), runs=50, warmup=5)
        assert 0.0 < us < 50_000


def test_conversion_failure_leaves_no_file(tmp_path):  # type: ignore[no-untyped-def]
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_artifact(Broken(), (4,), tmp_path, format="onnx", dtype="fp32",
                       calibration=torch.zeros(3, 4))  # fmt: skip
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "pte"}, "unknown artifact format 'pte'; valid: onnx, tflite"),
        ({"dtype": "int4"}, "unknown artifact dtype 'int4'; valid: fp16, fp32, int8"),
        ({"calibration": torch.zeros(3, 5)}, "calibration has shape"),
        ({"x_test": torch.zeros(3, 4)}, "give both x_test and y_test"),
        ({"x_test": torch.zeros(3, 4), "y_test": torch.zeros(2)}, "y_test has 2 labels"),
    ],
)
def test_bad_input_is_one_line_input_error(tmp_path, kwargs, message):  # type: ignore[no-untyped-def]
    args = {"format": "onnx", "dtype": "fp32", "calibration": torch.zeros(3, 4)} | kwargs
    with pytest.raises(InputError, match=message) as err:
        write_artifact(nn.Linear(4, 2), (4,), tmp_path, **args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("fmt", "module"),
    [("onnx", "onnxruntime"), ("onnx", "onnx"), ("tflite", "litert_torch"),
     ("tflite", "ai_edge_litert")],
)  # fmt: skip
def test_missing_extra_names_the_install_command(tmp_path, monkeypatch, fmt, module):  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, module, None)  # simulates the package being absent
    with pytest.raises(InputError) as err:
        write_artifact(nn.Linear(4, 2), (4,), tmp_path, format=fmt, dtype="fp32",
                       calibration=torch.zeros(3, 4))  # fmt: skip
    msg = str(err.value)
    assert INSTALL in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


def test_package_imports_without_the_deploy_extras() -> None:
    code = (
        "import sys; sys.modules.update(dict.fromkeys("
        "['onnx', 'onnxruntime', 'litert_torch', 'ai_edge_litert', 'torchao']));"
        "import hwsparse.deploy.artifacts"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)


def test_time_artifact_rejects_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="valid suffixes"):
        time_artifact(tmp_path / "m.pte", (4,))
