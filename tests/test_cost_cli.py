"""`hwsparse devices`, `estimate` and `calibrate` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hwsparse.cli import app
from hwsparse.cost.calibrate import busy_warning
from hwsparse.cost.profiles import load_profile, profile_ids
from hwsparse.models import build_model

runner = CliRunner()


def _json(args: list[str]) -> object:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_devices_list_and_show() -> None:
    listed = _json(["devices", "--json"])
    assert isinstance(listed, list)
    assert {item["id"] for item in listed} == set(profile_ids())
    assert all({"id", "name", "class"} <= set(item) for item in listed)
    shown = _json(["devices", "raspberry-pi-4", "--json"])
    assert isinstance(shown, dict) and shown["id"] == "raspberry-pi-4" and shown["class"] == "cpu"
    table = runner.invoke(app, ["devices", "nrf52840"])
    assert table.exit_code == 0 and "Nordic nRF52840" in table.stdout and "unknown" in table.stdout


def test_devices_check_lists_anchor_errors() -> None:
    shown = _json(["devices", "stm32h7", "--check", "--json"])
    assert isinstance(shown, dict)
    checks = shown["anchor_checks"]
    assert [c["model"] for c in checks][:2] == ["mlperf_tiny_ic", "mlperf_tiny_vww"]
    assert all(abs(c["error_pct"]) < 60 for c in checks)  # fitted to them (in-sample)
    # every anchor also carries its leave-one-network-out estimate (hwsparse.cost.fit)
    for c in checks:
        assert c["loo_ms"] > 0
        assert c["loo_error_pct"] == pytest.approx((c["loo_ms"] / c["published_ms"] - 1) * 100)
    text = runner.invoke(app, ["devices", "stm32h7", "--check"], env={"COLUMNS": "200"}).stdout
    assert "mcu: 4 anchors; in-sample median error" in " ".join(text.split())
    assert "leave-one-network-out median" in " ".join(text.split())


def test_estimate_json_exact_flops_for_lenet_300_100() -> None:
    # mlp = LeNet-300-100 on (1, 8, 8): 64*300 + 300*100 + 100*10 multiply-adds.
    out = _json(
        ["estimate", "--model", "mlp", "--input-shape", "1,1,8,8", "--target", "stm32h7", "--json"]
    )
    assert isinstance(out, dict)
    assert out["flops"] == out["dense_flops"] == 64 * 300 + 300 * 100 + 100 * 10
    assert out["params"] == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    for key in (
        "weight_bytes",
        "peak_activation_bytes",
        "latency_ms",
        "latency_ms_low",
        "latency_ms_high",
        "layers",
    ):
        assert key in out
    assert out["latency_ms_low"] < out["latency_ms"] < out["latency_ms_high"]
    same = _json(
        ["estimate", "--model", "mlp", "--dataset", "digits", "--target", "stm32h7", "--json"]
    )
    assert isinstance(same, dict) and same["flops"] == out["flops"]  # digits samples are 1x8x8


def test_estimate_table_and_ticket(tmp_path: Path) -> None:
    from hwsparse.tickets import save_ticket

    model = build_model("mlp", (1, 8, 8), 10)
    masks = {
        n: torch.ones_like(m.weight)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    masks["fc1"][150:] = 0  # prune half of the first hidden layer
    save_ticket(
        tmp_path / "t", model, masks, model_name="mlp", input_shape=(1, 8, 8), num_classes=10
    )
    out = _json(
        ["estimate", "--ticket", str(tmp_path / "t"), "--target", "raspberry-pi-4", "--json"]
    )
    assert isinstance(out, dict)
    assert out["flops"] == 64 * 150 + 150 * 100 + 100 * 10  # hidden units 150..299 are dead
    table = runner.invoke(
        app,
        ["estimate", "--model", "lenet5", "--input-shape", "1,1,28,28", "--target", "jetson-nano"],
    )
    assert table.exit_code == 0 and "latency" in table.stdout and "MFLOPs" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["estimate", "--model", "mlp", "--input-shape", "1,8,8", "--target", "pi9"],
            "unknown target 'pi9'; valid: coral-edge-tpu",
        ),
        (
            ["estimate", "--model", "lenet5", "--input-shape", "3,2,2", "--target", "stm32h7"],
            "lenet5",
        ),
        (
            ["estimate", "--model", "mlp", "--input-shape", "a,b", "--target", "stm32h7"],
            "--input-shape takes integers",
        ),
        (
            [
                "estimate",
                "--model",
                "mlp",
                "--target",
                "stm32h7",
                "--dataset",
                "digits",
                "--input-shape",
                "1,8,8",
            ],
            "not both",
        ),  # fmt: skip
        (["estimate", "--model", "nope", "--input-shape", "4", "--target", "stm32h7"], "nope"),
        (["devices", "nowhere.yaml"], "not found"),
        (
            [
                "estimate",
                "--model",
                "mlp",
                "--input-shape",
                "8",
                "--target",
                "stm32h7",
                "--engine",
                "gpu",
            ],
            "no engine 'gpu'; valid: mcu",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.stdout
    assert message in result.stderr and result.stderr.strip().count("\n") == 0


def test_bad_profile_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (Path(load_profile("stm32h7").path or ""))
        .read_text()
        .replace("class: mcu", "class: mcu\ncolor: red")
    )
    result = runner.invoke(
        app, ["estimate", "--model", "mlp", "--input-shape", "8", "--target", str(bad)]
    )
    assert result.exit_code == 2 and "color: unknown key; valid:" in result.stderr


def test_calibrate_quick_writes_a_profile_that_loads(tmp_path: Path) -> None:
    path = tmp_path / "me.yaml"
    out = _json(["calibrate", "--out", str(path), "--quick", "--id", "me", "--json"])
    assert isinstance(out, dict) and out["path"] == str(path)
    profile = load_profile(path)
    eng = profile.engine()
    assert profile.id == "me" and eng.threads == 1 and eng.conv_dispatch == "pytorch_cpu"
    assert eng.peak.fp32_gflops and eng.peak.fp32_gflops > 0.1
    assert all(lvl.bandwidth_gbps and lvl.bandwidth_gbps > 0 for lvl in profile.memory.levels)
    assert out["measurements"] and out["load_before"] >= 0
    # step 6: whole synthetic networks timed and the profile refined on them
    assert len(out["networks"]) == 6 and all(n["measured_us"] > 0 for n in out["networks"])
    est = _json(
        ["estimate", "--model", "mlp", "--input-shape", "64", "--target", str(path), "--json"]
    )
    assert isinstance(est, dict) and est["latency_ms"] > 0
    assert busy_warning(10_000) is None or "busy" in str(busy_warning(10_000))
