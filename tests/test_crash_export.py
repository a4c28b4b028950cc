"""An export killed at a random moment leaves the old export or the new one, whole (issue 14)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwsparse import api
from hwsparse.train import TrainConfig

pytest.importorskip("onnxruntime")
ENV = {**os.environ, "OMP_NUM_THREADS": "2"}


def _whole(out: Path) -> dict[str, object]:
    card = json.loads((out / "card.json").read_text())
    artifact = out / str(card["artifact"])
    assert artifact.stat().st_size == card["artifact_bytes"]
    return card


def test_a_killed_export_leaves_the_old_or_the_new_one_whole(tmp_path: Path) -> None:
    ticket = tmp_path / "t"
    api.ticket("digits", "mlp", density=0.2, auto_strength=True, search_epochs=1,
               train=TrainConfig(epochs=1, device="cpu"), out=ticket)  # fmt: skip
    out = tmp_path / "e"
    cmd = [sys.executable, "-m", "hwsparse", "export", "--ticket", str(ticket), "--target",
           "x86-laptop", "--format", "onnx", "--dtype", "fp32", "--out", str(out)]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=ENV, timeout=300)
    full = time.perf_counter() - start
    _whole(out)
    rng = random.Random(14)
    for _ in range(4):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        time.sleep(rng.uniform(0.3 * full, 1.1 * full))  # mostly late: the write and the swap
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        card = _whole(out)  # old or new, never a mix
        assert card["format"] == "onnx"
        visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
        assert visible == ["e", "t"], visible  # staging folders are hidden, never "e"
        for hidden in tmp_path.glob(".e.*"):
            assert hidden.name.startswith((".e.partial-", ".e.old-")), hidden
