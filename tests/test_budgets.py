"""Budgets: per-profile defaults, floors refused before training, priors for unknown numbers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from test_cost_profiles import minimal_profile
from torch import nn
from typer.testing import CliRunner

from hwsparse import train as T
from hwsparse.cli import app
from hwsparse.cli._search import DEFAULT_BUDGET, _budget
from hwsparse.cost.budget import below_floor, check_floors, floors, smallest_masks
from hwsparse.cost.dataflow import trace
from hwsparse.cost.estimate import Budget, estimate
from hwsparse.cost.latency import estimate_latency, widened_pct
from hwsparse.cost.profiles import list_profiles, load_profile, parse_profile
from hwsparse.errors import InputError
from hwsparse.models import build_model

runner = CliRunner()
TINY = ["--trials", "1", "--epochs", "1", "--device", "cpu"]


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a budget below the floor must be refused before training")

    monkeypatch.setattr(T, "run_ticket", fail)


# --- default budgets -----------------------------------------------------------------------------


def test_every_profile_has_a_default_budget_the_default_models_can_meet() -> None:
    for profile in list_profiles():
        db = profile.default_budget
        assert db is not None and db.reason and db.limits(), profile.id
        budget = Budget(**db.limits())
        for shape in ((1, 8, 8), (1, 28, 28)):  # digits, mnist10k
            for name in ("linear", "mlp", "lenet5"):
                model = build_model(name, shape, 10)
                fl = floors(profile, model, shape, model_name=name)
                if (profile.id, name, shape) == ("nrf52840", "lenet5", (1, 28, 28)):
                    # the one exception: even one channel per conv (as compaction keeps at
                    # least, rounded up to CMSIS-NN's 4) over 28x28 takes more than 1 ms at
                    # 64 MHz; the refusal names that floor
                    (message,) = below_floor(budget, fl)
                    assert "smallest network lenet5 can be" in message, message
                    continue
                assert below_floor(budget, fl) == [], (profile.id, name, shape)
                # every limit the default sets can be judged on this device
                budget.values(estimate(model, shape, profile, smallest_masks(model)))


def test_nrf52840_default_is_the_historic_default_budget() -> None:
    # the `default` study of `hwsparse search` with no options resumes with the same budget
    assert _budget(None, None, None, None, None) == (
        "nrf52840",
        DEFAULT_BUDGET,
        "the default budget of nrf52840 (device_profiles/nrf52840.yaml; "
        "see hwsparse devices nrf52840)",
    )


def test_target_alone_uses_its_default_budget_flags_replace_it() -> None:
    for profile in list_profiles():
        tgt, budget, source = _budget(profile.id, None, None, None, None)
        assert profile.default_budget is not None
        assert budget == Budget(**profile.default_budget.limits())
        assert f"default budget of {profile.id}" in source
    tgt, budget, source = _budget("stm32h7", 2.0, None, None, None)
    assert budget == Budget(latency_ms=2.0) and "command line" in source


def test_search_reports_the_budget_and_its_source(tmp_path: Path) -> None:
    store = str(tmp_path / "j.journal")
    args = ["search", "--study", "s", "--storage", store, "--target", "stm32h7", *TINY]
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.stderr
    assert "budget: latency <= 1 ms, weights <= 32 KiB, RAM <= 64 KiB on stm32h7; from the " \
        "default budget of stm32h7" in r.stderr  # fmt: skip
    payload = json.loads(r.stdout)
    assert payload["budget"]["latency_ms"] == 1.0 and payload["budget"]["ram_kb"] == 64.0
    assert payload["budget"]["source"].startswith("the default budget of stm32h7")
    assert payload["config"]["budget"] == {"latency_ms": 1.0, "weight_kb": 32.0, "ram_kb": 64.0}


def test_help_says_the_default_comes_from_the_profile() -> None:
    r = runner.invoke(app, ["search", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "default_budget" in r.stdout


def test_schema_default_budget_is_optional_and_checked() -> None:
    data = copy.deepcopy(minimal_profile())
    assert parse_profile(data).default_budget is None
    data["default_budget"] = {"latency_ms": 2, "reason": "test"}
    assert parse_profile(data).default_budget.limits() == {"latency_ms": 2.0}  # type: ignore[union-attr]
    data["default_budget"] = {"latency_ms": 0, "reason": "test"}
    with pytest.raises(InputError, match=r"default_budget\.latency_ms: must be > 0"):
        parse_profile(data)
    data["default_budget"] = {"latency": 1, "reason": "test"}
    with pytest.raises(InputError, match=r"default_budget\.latency: unknown key"):
        parse_profile(data)


# --- floors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--target", "raspberry-pi-4", "--latency-ms", "0.05", "--flash-kb", "64"],
            "--latency-ms 0.05 is below raspberry-pi-4's floor of 0.0995 ms (per-invoke overhead"
            " of engine cpu); the smallest network mlp can be costs 0.17 ms",
        ),
        (
            ["--target", "raspberry-pi-4", "--latency-ms", "0.15"],
            "--latency-ms 0.15 is below the 0.17 ms that the smallest network mlp can be",
        ),
        (
            ["--target", "stm32h7", "--ram-kb", "8"],
            "--ram-kb 8 is below stm32h7's floor of 16.0 KiB (runtime RAM reserve)",
        ),
        (
            ["--target", "stm32h7", "--ram-kb", "16"],
            "--ram-kb 16 is below the 16.1 KiB of RAM that the smallest network mlp can be needs"
            " on stm32h7 (16.0 KiB reserve + activations)",
        ),
    ],
)
def test_budget_below_the_floor_exits_2_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], message: str
) -> None:
    _no_training(monkeypatch)
    store = str(tmp_path / "j.journal")
    r = runner.invoke(app, ["search", "--study", "f", "--storage", store, *flags, *TINY])
    assert r.exit_code == 2, r.stderr
    assert message in " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr


def test_floors_are_lower_bounds_and_the_device_floor_is_the_invoke_overhead() -> None:
    pi4 = load_profile("raspberry-pi-4")
    model = build_model("mlp", (1, 8, 8), 10)
    fl = floors(pi4, model, (1, 8, 8), model_name="mlp")
    # the floor is the fitted per-call cost of the default engine (issue 9 refit: 99.55 us)
    assert fl.invoke_ms == pytest.approx(pi4.engines[0].invoke_overhead_us / 1e3)
    assert 0.05 < fl.invoke_ms < 0.2 and fl.runtime_reserve_kb == 200 * 1024
    dense = estimate(model, (1, 8, 8), pi4)
    assert dense.latency_ms is not None and fl.smallest_latency_ms is not None
    assert fl.invoke_ms < fl.smallest_latency_ms < dense.latency_ms
    check_floors(Budget(latency_ms=fl.smallest_latency_ms), fl)  # the floor itself is allowed
    with pytest.raises(InputError, match="floor of 0.0995 ms"):
        check_floors(Budget(latency_ms=0.01), fl)
    assert floors(pi4).smallest_latency_ms is None  # device floors only


def test_devices_shows_floors_and_default_budget() -> None:
    r = runner.invoke(app, ["devices", "stm32h7"], env={"COLUMNS": "300"})
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    assert "Floors: latency 0.0519 ms per invoke on mcu" in text
    assert "RAM 16.0 KiB runtime reserve" in text
    assert "Default budget (hwsparse search --target stm32h7): latency_ms 1, weight_kb 32" in text
    r = runner.invoke(app, ["devices", "raspberry-pi-4", "--json"])
    payload = json.loads(r.stdout)
    assert payload["floors"][0]["invoke_ms"] == pytest.approx(0.09955)
    assert payload["default_budget"]["latency_ms"] == 1.0


# --- priors for unknown numbers ------------------------------------------------------------------


def test_mnist10k_on_nrf52840_gets_a_latency_with_the_flash_prior() -> None:
    model = build_model("mlp", (1, 28, 28), 10)  # 262 KiB of int8 weights: only flash holds them
    r = estimate(model, (1, 28, 28), "nrf52840")
    assert r.latency_ms is not None
    assert r.uncertainty_pct == pytest.approx(widened_pct(50)) == pytest.approx(200)
    assert r.latency_ms_high == pytest.approx(3 * r.latency_ms)
    assert (
        "flash bandwidth unknown: prior 0.064 GB/s (1 byte per cycle at 0.064 GHz) assumed,"
        " band widened to +-200 %" in r.notes
    )
    Budget(latency_ms=1.0).violations(r)  # checkable: no InputError


def test_mnist10k_search_on_the_default_target_completes(tmp_path: Path) -> None:
    store = str(tmp_path / "j.journal")
    r = runner.invoke(
        app, ["search", "--study", "m", "--storage", store, "--dataset", "mnist10k", *TINY]
    )
    assert r.exit_code == 0, r.stderr
    assert "1 complete" in r.stdout


def test_efficiency_prior_and_no_prior_without_a_clock() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    data = copy.deepcopy(minimal_profile())
    data["engines"][0]["efficiency"]["conv"] = None
    data["engines"][0]["efficiency"]["fc"] = 0.25  # the lowest compute efficiency
    est = estimate_latency(trace(net, (3, 8, 8)), parse_profile(data))
    assert est.latency_ms is not None and est.uncertainty_pct == pytest.approx(widened_pct(20))
    assert any(n.startswith("efficiency.conv unknown: prior 0.25") for n in est.notes)
    data = copy.deepcopy(minimal_profile())
    level = data["memory"]["levels"][-1]
    level["bandwidth_gbps"] = level["bandwidth_gbps_peak"] = None
    data["engines"][0]["clock_ghz"] = None  # no clock: no bandwidth prior, stays unknown
    est = estimate_latency(trace(net, (3, 8, 8)), parse_profile(data))
    assert est.latency_ms is None
    assert any("bandwidth" in n and "unknown" in n for n in est.notes)
    data["engines"][0]["clock_ghz"] = 2.0
    est = estimate_latency(trace(net, (3, 8, 8)), parse_profile(data))
    assert est.latency_ms is not None
    assert any("prior 2 GB/s" in n for n in est.notes)


def test_smallest_masks_cover_every_conv_and_linear() -> None:
    model = build_model("lenet5", (1, 28, 28), 10)
    masks = smallest_masks(model)
    assert masks and all(not bool(m.any()) and m.dtype == torch.bool for m in masks.values())
