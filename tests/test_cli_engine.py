"""`hwsparse ticket` and `hwsparse compare` end to end (tiny schedules)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hwsparse.cli import app

runner = CliRunner()
FAST = ["--epochs", "1", "--device", "cpu"]


def test_ticket_json_and_saved_ticket(tmp_path: Path) -> None:
    out = tmp_path / "t"
    r = runner.invoke(
        app,
        ["ticket", *FAST, "--search-epochs", "1", "--density", "0.2", "--out", str(out), "--json"],
    )
    assert r.exit_code == 0, r.stderr
    payload = json.loads(r.stdout)  # stdout is pure JSON
    for key in ("val_accuracy", "test_accuracy", "density", "flops", "dense_flops", "epochs"):
        assert key in payload
    assert payload["density"] == pytest.approx(0.2, abs=1e-3)
    assert payload["dense_flops"] == 64 * 300 + 300 * 100 + 100 * 10  # LeNet-300-100 on 8x8
    assert 0 < payload["flops"] < payload["dense_flops"]
    assert payload["epochs"] == 2
    assert (out / "ticket.json").is_file() and (out / "weights.pt").is_file()


def test_ticket_table_on_mnist1d() -> None:
    r = runner.invoke(
        app,
        [
            "ticket",
            "--dataset",
            "mnist1d",
            "--model",
            "conv1d",
            *FAST,
            "--search-epochs",
            "1",
            "--granularity",
            "channel",
        ],
    )
    assert r.exit_code == 0, r.stderr
    assert "test accuracy" in r.stdout and "FLOPs" in r.stdout


def test_compare_json_rows() -> None:
    r = runner.invoke(
        app,
        [
            "compare",
            *FAST,
            "--density",
            "0.3",
            "--methods",
            "log,random,imp",
            "--seeds",
            "2",
            "--search-epochs",
            "2",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.stderr
    payload = json.loads(r.stdout)
    rows = {row["method"]: row for row in payload["results"]}
    assert rows["log"]["epochs_total"] == 3  # 2 search epochs + the 1-epoch ticket
    assert set(rows) == {"log", "random", "imp"}
    for row in rows.values():
        for key in ("test_accuracy_mean", "test_accuracy_std", "density", "epochs_total"):
            assert key in row
        assert row["density"] == pytest.approx(0.3, abs=1e-3)
    assert rows["imp"]["epochs_total"] == 7  # 6 rounds of 20 % to reach 0.3, + the dense run
    assert len(payload["runs"]) == 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ticket", "--dataset", "imagenet"], "valid:"),
        (["ticket", "--model", "gpt"], "valid:"),
        (["ticket", "--penalty", "l0"], "valid:"),
        (["ticket", "--density", "1.5"], "density must be in (0, 1]"),
        (["ticket", "--strength", "strong"], "number or 'auto'"),
        (["ticket", "--dataset", "mnist"], "train-images-idx3-ubyte"),
        (["ticket", "--dataset", "npz:/nonexistent.npz"], "nonexistent"),
        (["compare", "--methods", "log,foo"], "unknown method 'foo'"),
        (["compare", "--seeds", "x"], "--seeds"),
        (["compare", "--density", "0"], "density"),
        (["ticket", "--device", "tpu"], "device"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    r = runner.invoke(app, args)
    assert r.exit_code == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_malformed_npz_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, X=np.zeros((20, 4)), labels=np.zeros(20))
    r = runner.invoke(app, ["ticket", "--dataset", f"npz:{path}"])
    assert r.exit_code == 2 and "y" in r.stderr
