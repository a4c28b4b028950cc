"""Write the file a runtime really reads (.onnx / .tflite; fp32, fp16 or int8) and verify it there.

Every artifact is checked in its own runtime (onnxruntime CPU, or the LiteRT interpreter with its
default XNNPACK delegate, one thread each) on a fixed set of inputs against the fp32 torch model:
max |logit difference| and argmax agreement, plus the artifact's accuracy when a test set is given.
int8 ``.tflite`` files are full-integer with int8 input and output; the report carries their
(scale, zero_point) so a deployer can quantize inputs and dequantize logits. int8 ``.onnx`` files
are QDQ with float32 input and output.

The heavy toolchains (onnx, onnxruntime, litert-torch, ai-edge-litert) are imported lazily, so
``hwsparse`` imports without them; a missing one raises :class:`InputError` naming
``pip install 'hwsparse[deploy]'``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from hwsparse._files import umask
from hwsparse.errors import InputError, valid_names

FORMATS = ("onnx", "tflite")
DTYPES = ("fp32", "fp16", "int8")
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}
INSTALL = "pip install 'hwsparse[deploy]'"
N_CHECK = 500  # inputs compared against torch (the first of x_test, else of calibration)
N_CALIB = 256  # calibration samples used for int8
OPSET = 17

_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8"}

Logits = NDArray[np.float32]


@dataclass(frozen=True)
class ArtifactReport:
    """What was written and how well it matches the fp32 torch model in its runtime."""

    format: str  # "onnx" | "tflite"
    dtype: str  # "fp32" | "fp16" | "int8"
    path: Path
    bytes: int  # file size
    runtime: str  # e.g. "onnxruntime 1.32.0", "LiteRT (ai-edge-litert 2.3.0)"
    # {"input": {"name", "dtype", "shape", "scale", "zero_point"}, "output": {...}};
    # scale / zero_point are None for float tensors. real = (q - zero_point) * scale.
    io: dict[str, dict[str, Any]]
    max_abs_diff: float  # max |artifact - torch fp32| logits (int8: after dequantizing)
    argmax_agreement: float  # fraction 0..1 of checked inputs with the same argmax as torch
    artifact_accuracy: float | None  # on all of (x_test, y_test); None without a test set
    n_checked: int  # inputs compared against torch
    torch_accuracy: float | None = None  # the fp32 torch model on the same test set
    convert_seconds: float = 0.0  # writing the file (export, calibration, quantization)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def write_artifact(
    model: nn.Module,
    input_shape: tuple[int, ...],
    out_dir: str | Path,
    *,
    format: str,
    dtype: str,
    calibration: torch.Tensor,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    name: str = "model",
) -> ArtifactReport:
    """Write ``out_dir/{name}_{dtype}.{onnx|tflite}`` atomically and verify it in its runtime.

    ``model`` is a plain fp32 module; ``input_shape`` is one sample's shape (no batch dim);
    ``calibration`` is N x input_shape training samples (int8 calibration, and the check inputs
    when no test set is given).
    """
    if format not in FORMATS:
        raise InputError(f"unknown artifact format {format!r}; valid: {valid_names(FORMATS)}")
    if dtype not in DTYPES:
        raise InputError(f"unknown artifact dtype {dtype!r}; valid: {valid_names(DTYPES)}")
    shape = tuple(int(s) for s in input_shape)
    calib = _samples(calibration, shape, "calibration")
    if (x_test is None) != (y_test is None):
        raise InputError("give both x_test and y_test, or neither")
    xt = yt = None
    if x_test is not None and y_test is not None:
        xt = _samples(x_test, shape, "x_test")
        yt = y_test.detach().cpu().reshape(-1).long()
        if len(yt) != len(xt):
            raise InputError(f"x_test has {len(xt)} samples but y_test has {len(yt)} labels")
    _require(format)  # fail fast, before any work

    model = copy.deepcopy(model).cpu().float().eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{name}_{dtype}{SUFFIX[format]}"
    # a hidden temp name that keeps the real suffix; os.replace makes the final name appear whole
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=out_dir
    )
    os.close(fd)
    tmp = Path(tmp_name)
    note = ""
    try:
        t0 = time.perf_counter()
        if format == "onnx":
            note = _write_onnx(model, shape, tmp, dtype, calib)
        else:
            note = _write_tflite(model, shape, tmp, dtype, calib)
        seconds = time.perf_counter() - t0
        runner = _load(tmp)
        check = xt if xt is not None else calib
        x_check = check[:N_CHECK]
        got_all = runner.run(xt.numpy() if xt is not None else x_check.numpy())
        got = got_all[: len(x_check)]
        with torch.no_grad():
            want = model(x_check).numpy()
        artifact_acc = torch_acc = None
        if xt is not None and yt is not None:
            artifact_acc = float((got_all.argmax(1) == yt.numpy()).mean())
            with torch.no_grad():
                torch_pred = torch.cat([model(b).argmax(1) for b in _batches(xt, 1024)])
            torch_acc = float((torch_pred == yt).double().mean())
        tmp.chmod(0o666 & ~umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return ArtifactReport(
        format=format,
        dtype=dtype,
        path=final,
        bytes=final.stat().st_size,
        runtime=runner.runtime,
        io=runner.io,
        max_abs_diff=float(np.max(np.abs(got - want))),
        argmax_agreement=float((got.argmax(1) == want.argmax(1)).mean()),
        artifact_accuracy=artifact_acc,
        n_checked=len(x_check),
        torch_accuracy=torch_acc,
        convert_seconds=seconds,
        note=note,
    )


def time_artifact(
    path: str | Path, input_shape: tuple[int, ...], *, runs: int = 500, warmup: int = 50
) -> float:
    """Median microseconds of one inference at batch 1, one thread, in the artifact's runtime.

    Each timed call includes setting the input and reading the output.
    """
    if runs < 1 or warmup < 0:
        raise InputError(f"runs must be >= 1 and warmup >= 0 (got {runs}, {warmup})")
    runner = _load(Path(path))
    x = np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)
    call = runner.timed_call(x)
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        t = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1e3


# ----------------------------------------------------------------------------- helpers


def _require(format: str) -> None:
    """Import the toolchain of ``format`` or raise a one-line InputError naming the install."""
    mods = ("onnx", "onnxruntime") if format == "onnx" else ("litert_torch", "ai_edge_litert")
    _quiet_litert()
    for mod in mods:
        try:
            with _silenced():
                importlib.import_module(mod)
        except ImportError:
            raise InputError(
                f"{format} artifacts need {mod.replace('_', '-')}, not installed: {INSTALL}"
            ) from None


def _quiet_litert() -> None:
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Silence third-party warnings, log records up to WARNING and stdout chatter.

    The converters print sizes, warn about deprecations and log that a PT2E graph module is
    "converted in training mode" (cosmetic: it cannot be put in eval mode, and it is correct).
    """
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            _native_stderr_muted(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def _native_stderr_muted() -> Iterator[None]:
    """Mute what native code writes to file descriptor 2 (absl, oneDNN and XNNPACK banners of
    the LiteRT converter and interpreter); Python's own errors are raised, not printed."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _samples(x: torch.Tensor, shape: tuple[int, ...], what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"{what} must be a float tensor of shape N x {shape}")
    if tuple(x.shape[1:]) != shape or len(x) == 0:
        raise InputError(f"{what} has shape {tuple(x.shape)}; expected N x {shape} with N >= 1")
    # contiguous_format: a numpy-born size-1 axis can carry stride 0, which exporters record
    return x.detach().cpu().float().clone(memory_format=torch.contiguous_format)


def _write_onnx(
    model: nn.Module, shape: tuple[int, ...], path: Path, dtype: str, calib: torch.Tensor
) -> str:
    import onnx

    example = calib[:1].clone(memory_format=torch.contiguous_format)
    fp32 = path if dtype == "fp32" else path.with_name(path.name + ".fp32.onnx")
    try:
        with _silenced():  # the TorchScript-based exporter warns it is deprecated
            torch.onnx.export(
                model,
                (example,),
                str(fp32),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        if dtype == "fp32":
            return ""
        if dtype == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            with _silenced():
                half = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
            onnx.save(half, str(path))
            return "float16 weights and compute; input and output stay float32"
        _quantize_onnx(fp32, path, calib[:N_CALIB])
        return "QDQ int8 per-channel weights, int8 activations; input and output stay float32"
    finally:
        if fp32 != path:
            fp32.unlink(missing_ok=True)


def _quantize_onnx(src: Path, dst: Path, calib: torch.Tensor) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self, xs: torch.Tensor) -> None:
            self.batches = iter(_batches(xs, 64))

        def get_next(self) -> dict[str, NDArray[np.float32]] | None:
            b = next(self.batches, None)
            return None if b is None else {"input": b.numpy()}

    pre = dst.with_name(dst.name + ".pre.onnx")
    try:
        with _silenced():
            quant_pre_process(str(src), str(pre))
            quantize_static(
                str(pre),
                str(dst),
                Reader(calib),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
    finally:
        pre.unlink(missing_ok=True)


def _write_tflite(
    model: nn.Module, shape: tuple[int, ...], path: Path, dtype: str, calib: torch.Tensor
) -> str:
    _quiet_litert()
    with _silenced():
        import litert_torch

        litert_torch.config.show_progress = False
        sample = (calib[:1].clone(memory_format=torch.contiguous_format),)
        if dtype == "fp32":
            litert_torch.convert(model, sample).export(str(path))
            return ""
        if dtype == "fp16":
            from litert_torch.generative.quantize.quant_recipes import full_fp16_recipe

            litert_torch.convert(model, sample, quant_config=full_fp16_recipe()).export(str(path))
            return "float16 weights (dequantized to float32 at load); input and output float32"
        from litert_torch.quantize.pt2e_quantizer import (
            PT2EQuantizer,
            get_symmetric_quantization_config,
        )
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        q = PT2EQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
        )
        pm = prepare_pt2e(torch.export.export(model, sample).module(), q)
        with torch.no_grad():
            for xb in _batches(calib[:N_CALIB], 1):  # exported shapes are static: batch 1
                pm(xb)
        pm = convert_pt2e(pm, fold_quantize=False)
        move_exported_model_to_eval(pm)
        cfg = QuantConfig(pt2e_quantizer=q)
        litert_torch.convert(pm, sample, quant_config=cfg).export(str(path))
        return "full-integer int8 (per-channel weights, int32 biases); int8 input and output"


class _Runner:
    runtime: str
    io: dict[str, dict[str, Any]]

    def run(self, x: NDArray[np.float32]) -> Logits:
        raise NotImplementedError

    def timed_call(self, x: NDArray[np.float32]) -> Callable[[], object]:
        raise NotImplementedError


def _load(path: Path) -> _Runner:
    """Open ``path`` in its runtime; the suffix decides which."""
    if path.suffix == ".onnx":
        return _OnnxRunner(path)
    if path.suffix == ".tflite":
        return _TfliteRunner(path)
    raise InputError(f"unknown artifact {path.name!r}; valid suffixes: .onnx, .tflite")


class _OnnxRunner(_Runner):
    def __init__(self, path: Path) -> None:
        _require("onnx")
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.runtime = f"onnxruntime {ort.__version__}"
        i, o = self.sess.get_inputs()[0], self.sess.get_outputs()[0]
        self.input_name = str(i.name)
        self.io = {"input": _onnx_io(i), "output": _onnx_io(o)}

    def run(self, x: NDArray[np.float32]) -> Logits:
        outs = [self.sess.run(None, {self.input_name: b})[0] for b in _chunks(x, 256)]
        return np.concatenate(outs).astype(np.float32)

    def timed_call(self, x: NDArray[np.float32]) -> Callable[[], object]:
        feed = {self.input_name: x}
        return lambda: self.sess.run(None, feed)


def _onnx_io(arg: Any) -> dict[str, Any]:
    shape = [d if isinstance(d, int) else str(d) for d in arg.shape]
    dtype = _ONNX_DTYPES.get(arg.type, arg.type)
    return {"name": arg.name, "dtype": dtype, "shape": shape, "scale": None, "zero_point": None}


class _TfliteRunner(_Runner):
    def __init__(self, path: Path) -> None:
        _require("tflite")
        from importlib.metadata import version

        from ai_edge_litert.interpreter import Interpreter

        with _native_stderr_muted():
            self.it = Interpreter(model_path=str(path), num_threads=1)  # XNNPACK by default
            self.it.allocate_tensors()  # applies the delegate, which prints a banner
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]
        self.runtime = f"LiteRT (ai-edge-litert {version('ai-edge-litert')})"
        self.io = {"input": _tflite_io(self.inp), "output": _tflite_io(self.out)}

    def _quantize(self, x: NDArray[np.float32]) -> NDArray[Any]:
        scale, zp = self.inp["quantization"]
        if self.inp["dtype"] == np.float32:
            return x
        info = np.iinfo(self.inp["dtype"])
        q: NDArray[Any] = np.clip(np.round(x / scale + zp), info.min, info.max)
        return q.astype(self.inp["dtype"])

    def _dequantize(self, y: NDArray[Any]) -> Logits:
        scale, zp = self.out["quantization"]
        if self.out["dtype"] == np.float32:
            return y.astype(np.float32)
        real: Logits = ((y.astype(np.float32) - zp) * scale).astype(np.float32)
        return real

    def run(self, x: NDArray[np.float32]) -> Logits:
        # exported shapes are static (batch 1) and XNNPACK refuses to resize past a flatten
        i, o = self.inp["index"], self.out["index"]
        q = self._quantize(x)
        outs = []
        for k in range(len(q)):
            self.it.set_tensor(i, q[k : k + 1])
            self.it.invoke()
            outs.append(self.it.get_tensor(o).copy())
        return self._dequantize(np.concatenate(outs))

    def timed_call(self, x: NDArray[np.float32]) -> Callable[[], object]:
        q, i, o = self._quantize(x), self.inp["index"], self.out["index"]

        def call() -> object:
            self.it.set_tensor(i, q)
            self.it.invoke()
            return self.it.get_tensor(o)

        return call


def _tflite_io(d: dict[str, Any]) -> dict[str, Any]:
    scale, zp = d["quantization"]
    quantized = np.dtype(d["dtype"]).kind in "iu" and scale != 0.0
    return {
        "name": d["name"],
        "dtype": np.dtype(d["dtype"]).name,
        "shape": [int(s) for s in d["shape"]],
        "scale": float(scale) if quantized else None,
        "zero_point": int(zp) if quantized else None,
    }


def _chunks(x: NDArray[np.float32], size: int) -> Iterator[NDArray[np.float32]]:
    for k in range(0, len(x), size):
        yield np.ascontiguousarray(x[k : k + size])


def _batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Contiguous batches (a numpy-born size-1 axis can carry stride 0, which export records)."""
    return [
        x[k : k + size].clone(memory_format=torch.contiguous_format)
        for k in range(0, len(x), size)
    ]
