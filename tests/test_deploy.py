"""From ticket to device: the simulated precision agrees with the real artifact, and `export`
hands over an artifact that matches its card, from a study or from a ticket folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from hwsparse.cli import app
from hwsparse.data import load_dataset
from hwsparse.deploy.artifacts import write_artifact
from hwsparse.deploy.quantize import accuracy, calibration_batch, simulate
from hwsparse.models import build_model

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def _trained(dataset: str, model: str, epochs: int) -> tuple[torch.nn.Module, object]:
    data = load_dataset(dataset)
    torch.manual_seed(0)
    net = build_model(model, data.input_shape, data.num_classes)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(data.x_train)).split(64):
            loss = F.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval(), data


@pytest.mark.parametrize(
    ("dataset", "model", "epochs"), [("digits", "mlp", 8), ("mnist10k", "lenet5", 1)]
)
def test_simulated_int8_matches_the_tflite_artifact(
    tmp_path: Path, dataset: str, model: str, epochs: int
) -> None:
    """The search scores int8 trials by simulation; the real LiteRT artifact must agree."""
    net, data = _trained(dataset, model, epochs)
    x, y = data.x_test, data.y_test
    calib = calibration_batch(data.x_train)
    sim = simulate(net, "int8", calib)
    art = write_artifact(net, data.input_shape, tmp_path, format="tflite", dtype="int8",
                         calibration=calib, x_test=x, y_test=y)  # fmt: skip
    assert art.artifact_accuracy is not None
    assert abs(accuracy(sim, x, y) - art.artifact_accuracy) <= 0.005  # the 0.5 points
    with torch.no_grad():
        same = float((sim(x).argmax(1) == net(x).argmax(1)).float().mean())
    assert 0.95 <= same < 1.0 or accuracy(net, x, y) == accuracy(sim, x, y)  # it quantises


def test_fp32_simulation_is_the_model_and_fp16_is_close() -> None:
    net, data = _trained("digits", "mlp", 2)
    calib = calibration_batch(data.x_train)
    x = data.x_test[:64]
    with torch.no_grad():
        assert torch.equal(simulate(net, "fp32", calib)(x), net(x))
        diff = (simulate(net, "fp16", calib)(x) - net(x)).abs().max()
    assert 0 < float(diff) < 0.05


def _ticket(tmp_path: Path, granularity: str = "channel") -> Path:
    out = tmp_path / "t"
    r = runner.invoke(app, ["ticket", "--model", "mlp", "--density", "0.3", "--epochs", "2",
                            "--search-epochs", "2", "--granularity", granularity,
                            "--out", str(out), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    return out


def test_export_ticket_for_nrf52840_is_a_verified_int8_tflite(tmp_path: Path) -> None:
    ticket = _ticket(tmp_path)
    out = tmp_path / "deploy"
    r = runner.invoke(app, ["export", "--ticket", str(ticket), "--target", "nrf52840",
                            "--out", str(out), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    card = json.loads((out / "card.json").read_text())
    assert (card["format"], card["dtype"]) == ("tflite", "int8")
    assert card["input"]["dtype"] == "int8" and card["output"]["dtype"] == "int8"
    assert (out / card["artifact"]).stat().st_size == card["artifact_bytes"]
    assert card["agreement"]["ok"] and card["agreement"]["argmax"] >= 0.95
    acc = card["accuracy"]
    assert abs(acc["artifact_test"] - acc["simulated_test"]) <= 0.01
    # the channel ticket was compacted: fewer parameters than the dense-shaped network
    assert card["params"] < card["params_before_compaction"]
    assert card["compaction_max_abs_diff"] <= 1e-4
    # `estimate --ticket` reports the same weight bytes as the card
    r = runner.invoke(app, ["estimate", "--ticket", str(ticket), "--target", "nrf52840",
                            "--dataset", "digits", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["weight_bytes"] == card["estimate"]["weight_bytes"]


def test_export_ticket_as_onnx_fp32_and_int8(tmp_path: Path) -> None:
    ticket = _ticket(tmp_path, "weight")
    for dtype in ("fp32", "int8"):
        out = tmp_path / dtype
        r = runner.invoke(app, ["export", "--ticket", str(ticket), "--target", "x86-laptop",
                                "--dtype", dtype, "--out", str(out), "--json"])  # fmt: skip
        assert r.exit_code == 0, r.stderr
        card = json.loads(r.stdout)
        assert (card["format"], card["dtype"], card["artifact"]) == (
            "onnx", dtype, f"model_{dtype}.onnx")  # fmt: skip
        assert card["agreement"]["ok"]
        if dtype == "fp32":
            assert card["agreement"]["max_abs_diff"] <= 1e-4
            assert card["accuracy"]["artifact_test"] == card["accuracy"]["fp32_test"]


def test_export_bad_input_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticket = _ticket(tmp_path)
    base = ["export", "--ticket", str(ticket), "--out", str(tmp_path / "o")]
    cases = [
        ([*base, "--target", "nrf52840", "--format", "pte"], "valid: onnx, tflite"),
        ([*base, "--target", "nrf52840", "--dtype", "int4"], "valid: fp32, fp16, int8"),
        ([*base, "--target", "nope"], "nope"),
        (base, "--target"),
        (
            [
                "export",
                "--ticket",
                str(tmp_path / "missing"),
                "--target",
                "nrf52840",
                "--out",
                str(tmp_path / "o"),
            ],
            "not a ticket directory",
        ),  # fmt: skip
        (["export", "--out", str(tmp_path / "o")], "study name or --ticket"),
    ]
    for args, needle in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # a tampered ticket: its model cannot be rebuilt, or its weights are not tensors
    meta = json.loads((ticket / "ticket.json").read_text())
    (ticket / "ticket.json").write_text(json.dumps({**meta, "model": "no-such-model"}))
    r = runner.invoke(app, [*base, "--target", "nrf52840"])
    assert r.exit_code == 2 and "no-such-model" in r.stderr
    (ticket / "ticket.json").write_text(json.dumps(meta))
    (ticket / "weights.pt").write_bytes(b"not a torch file")
    r = runner.invoke(app, [*base, "--target", "nrf52840"])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    # a missing extra names the exact pip command, and a failed export leaves the last one whole
    fresh = _ticket(tmp_path / "again")
    o2 = tmp_path / "o2"
    args = ["export", "--ticket", str(fresh), "--target", "nrf52840", "--out", str(o2)]
    assert runner.invoke(app, args).exit_code == 0
    before = {p.name: p.read_bytes() for p in o2.iterdir() if p.is_file()}
    assert {"card.json", "model_int8.tflite"} <= set(before) and (o2 / "ticket").is_dir()
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "pip install 'hwsparse[deploy]'" in r.stderr
    assert {p.name: p.read_bytes() for p in o2.iterdir() if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o2")] == []
    # a folder that is not an earlier export is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    r = runner.invoke(app, [*args[:-1], str(tmp_path / "mine")])
    assert r.exit_code == 2 and "not an earlier output" in r.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
