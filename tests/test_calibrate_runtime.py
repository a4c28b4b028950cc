"""`hwsparse calibrate --runtime onnxruntime|litert`: profiles of graph runtimes here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hwsparse.cli import app
from hwsparse.cost import calibrate as cal
from hwsparse.cost.profiles import load_profile
from hwsparse.errors import InputError

runner = CliRunner()


def _calibrate(tmp_path: Path, runtime: str) -> tuple[dict[str, object], Path]:
    path = tmp_path / f"{runtime}.yaml"
    result = runner.invoke(
        app,
        ["calibrate", "--runtime", runtime, "--quick", "--out", str(path), "--id", "me", "--json"],
    )
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert isinstance(out, dict) and out["path"] == str(path)
    return out, path


def _check_graph_profile(path: Path, artifact: str, runtime_word: str) -> None:
    profile = load_profile(path)
    eng = profile.engine()
    assert profile.id == "me" and eng.threads == 1 and eng.artifact == artifact
    assert runtime_word in eng.runtime and "1 thread" in eng.runtime
    assert eng.container_overhead_us == 0.0
    assert eng.invoke_overhead_us is not None and eng.invoke_overhead_us > 0
    assert set(eng.fused_ops) == {"batch_norm", "activation"}
    assert eng.conv_dispatch == "uniform"
    assert not eng.sparsity.unstructured.exploited and eng.sparsity.channel_pruning
    for kind in ("conv", "pointwise", "depthwise", "fc", "add", "pool", "elementwise"):
        assert getattr(eng.efficiency, kind) is not None
        assert getattr(eng.kernel_overhead_us, kind) is not None
    assert eng.efficiency.batch_norm is None and eng.kernel_overhead_us.activation is None
    est = runner.invoke(
        app,
        ["estimate", "--model", "resnet20", "--input-shape", "3,32,32", "--target", str(path)],
    )
    assert est.exit_code == 0, est.stderr
    est_json = runner.invoke(
        app,
        ["estimate", "--model", "lenet5", "--input-shape", "1,28,28", "--target", str(path)]
        + ["--json"],
    )
    report = json.loads(est_json.stdout)
    assert report["latency_ms"] > 0 and report["runtime"] == profile.engine().runtime


def test_calibrate_onnxruntime_quick_writes_a_profile_that_loads(tmp_path: Path) -> None:
    out, path = _calibrate(tmp_path, "onnxruntime")
    _check_graph_profile(path, "onnx", "onnxruntime")
    assert out["measurements"] and float(out["seconds"]) < 60  # type: ignore[arg-type]
    assert path.read_text().startswith("# Written by `hwsparse calibrate --runtime onnxruntime")


@pytest.mark.slow
def test_calibrate_litert_quick_writes_a_profile_that_loads(tmp_path: Path) -> None:
    out, path = _calibrate(tmp_path, "litert")  # about 30 s: ~35 conversions to .tflite
    _check_graph_profile(path, "tflite", "LiteRT")
    assert out["measurements"]


def test_calibrate_runtime_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = runner.invoke(
        app, ["calibrate", "--runtime", "tvm", "--quick", "--out", str(tmp_path / "x.yaml")]
    )
    assert bad.exit_code == 2 and "unknown runtime 'tvm'; valid: litert, onnxruntime, torch" in (
        bad.stderr
    )
    with pytest.raises(InputError, match="one thread"):
        cal.calibrate(threads=2, quick=True, runtime="onnxruntime")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real(name, *a),
    )
    with pytest.raises(InputError, match=r"needs onnxruntime.*pip install 'hwsparse\[deploy\]'"):
        cal.calibrate(quick=True, runtime="onnxruntime")
    assert not (tmp_path / "x.yaml").exists()


def test_calibrate_module_imports_no_cli_or_runtime() -> None:
    code = (
        "import sys, hwsparse.cost.calibrate;"
        "bad = {'typer', 'optuna', 'onnxruntime', 'onnx', 'litert_torch', 'ai_edge_litert'};"
        "print(sorted(bad & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"
