"""What a newcomer sees in the first hour: progress, resume semantics, narrow terminals,
readable results, the card's preprocessing and the plot (real CLI, real storages)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console
from typer.testing import CliRunner

from hwsparse import report, search
from hwsparse import storage as stores
from hwsparse.cli import _search as search_cli
from hwsparse.cli import app
from hwsparse.data import load_dataset

runner = CliRunner()
TINY = ["--model", "mlp", "--epochs", "1", "--device", "cpu"]
BUDGET = ["--target", "raspberry-pi-4", "--latency-ms", "10", "--ram-kb", "300000"]


def _cli(*args: str, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    """The installed entry point in a fresh process: stdout and stderr are pipes."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env.pop("COLUMNS", None)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-m", "hwsparse", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A finished 3-trial study in a journal; returns the journal path."""
    journal = str(tmp_path_factory.mktemp("study") / "c.journal")
    r = runner.invoke(
        app,
        ["search", "--study", "c", "--storage", journal, *BUDGET, *TINY, "--trials", "3",
         "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    return journal


# --- 1. progress -----------------------------------------------------------------------------


def test_piped_search_ends_clean_with_one_summary_line(tmp_path: Path) -> None:
    journal = str(tmp_path / "p.journal")
    r = _cli("search", "--study", "p", "--storage", journal, *BUDGET, *TINY, "--trials", "1",
             "--threads", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "\x1b" not in r.stderr  # no live display, no escapes
    assert "━" not in r.stderr  # no stale progress bar
    lines = r.stderr.strip().splitlines()
    assert lines[-1] == "study p: ran 1 trial(s), 1 in total"
    assert sum(line.startswith("trial 0: ") for line in lines) == 1  # a plain line per trial


def test_progress_shows_epochs_inside_a_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    buf = io.StringIO()
    terminal = Console(file=buf, force_terminal=True, width=120)
    monkeypatch.setattr(search_cli, "err", terminal)
    monkeypatch.setattr(search_cli, "live_progress", lambda as_json: True)
    r = runner.invoke(
        app,
        ["search", "--study", "e", "--storage", str(tmp_path / "e.journal"), *BUDGET, *TINY,
         "--trials", "1"],
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    shown = buf.getvalue()
    assert "trial 0: ticket epoch 1/1, val " in shown  # the per-epoch task
    assert "study e: ran 1 trial(s), 1 in total" in shown


def test_threads_option_sets_torch_threads() -> None:
    before = torch.get_num_threads()
    try:
        r = runner.invoke(app, ["ticket", *TINY, "--search-epochs", "1", "--threads", "1",
                                "--json"])  # fmt: skip
        assert r.exit_code == 0, r.stderr
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for cmd in (["ticket"], ["compare"], ["search"]):
        r = runner.invoke(app, [*cmd, "--threads", "0"])
        assert r.exit_code == 2 and "--threads must be >= 1" in r.stderr


# --- 2. resume semantics ---------------------------------------------------------------------


def test_trials_is_the_study_total_and_more_adds(tmp_path: Path) -> None:
    args = ["search", "--study", "r", "--storage", str(tmp_path / "r.journal"), *BUDGET, *TINY]

    def run(*extra: str) -> tuple[dict[str, object], str]:
        r = runner.invoke(app, [*args, *extra, "--json"])
        assert r.exit_code == 0, r.stderr
        return json.loads(r.stdout), r.stderr

    first, note = run("--trials", "2")
    assert (first["ran"], first["total"]) == (2, 2) and "ran 2 trial(s), 2 in total" in note
    again, note = run("--trials", "2")  # the same command again runs nothing
    assert (again["ran"], again["total"]) == (0, 2)
    assert "study r already has 2 trials" in note and "--more K" in note
    assert again["picked"] == first["picked"]  # and still shows the result
    more, note = run("--more", "1")
    assert (more["ran"], more["total"]) == (1, 3) and "ran 1 trial(s), 3 in total" in note
    up, _ = run("--trials", "4")  # a larger total runs only the missing one
    assert (up["ran"], up["total"]) == (1, 4)
    r = runner.invoke(app, [*args, "--trials", "2"])  # tables, not JSON
    assert r.exit_code == 0 and "already has 4 trials" in r.stderr and "Picked" in r.stdout
    r = runner.invoke(app, [*args, "--more", "0"])
    assert r.exit_code == 2 and "--more must be >= 1" in r.stderr


def test_count_finished_does_not_count_a_failed_trial_queued_again(tmp_path: Path) -> None:
    storage = stores.open_storage(tmp_path / "f.journal", create=True)
    s = optuna.create_study(study_name="f", storage=storage.backend)
    dist = {"x": FloatDistribution(0, 1)}
    s.add_trial(create_trial(params={"x": 0.1}, distributions=dist, value=1.0))
    s.add_trial(create_trial(params={"x": 0.2}, distributions=dist, state=TrialState.PRUNED))
    s.add_trial(create_trial(params={"x": 0.3}, distributions=dist, state=TrialState.FAIL))
    assert search.count_finished(s) == 3
    s.enqueue_trial({"x": 0.3}, user_attrs={"retry_of": 2})  # its re-run will count instead
    assert search.count_finished(s) == 2


# --- 3. narrow terminals ---------------------------------------------------------------------


def _fits_80(text: str) -> None:
    assert text.strip()
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, wide
    assert "…" not in text  # nothing truncated


def test_tables_fit_80_columns_without_truncating_ids(study: str) -> None:
    r = _cli("devices", columns=80)
    assert r.returncode == 0, r.stderr
    _fits_80(r.stdout)
    for device_id in ("snapdragon-8-gen-2", "jetson-orin-nano", "raspberry-pi-4"):
        assert device_id in r.stdout  # on one line, whole
    r = _cli("devices", "raspberry-pi-4", columns=80)
    assert r.returncode == 0, r.stderr
    _fits_80(r.stdout)
    for engine in ("cpu-ncnn-1t", "cpu-ncnn"):
        assert engine in r.stdout
    r = _cli("devices", "raspberry-pi-4", "--check")  # piped, no COLUMNS: 80 as well
    assert r.returncode == 0, r.stderr
    _fits_80(r.stdout)
    r = _cli("show", "c", "--storage", study, columns=80)
    assert r.returncode == 0, r.stderr
    _fits_80(r.stdout)
    assert "RAM" in r.stdout and "achieved density" in r.stdout
    r = _cli("studies", "--storage", study, columns=80)
    assert r.returncode == 0, r.stderr
    _fits_80(r.stdout)
    assert "raspberry-pi-4" in r.stdout


# --- 4. reading results ----------------------------------------------------------------------


def test_show_labels_densities_lambda_ram_and_budget_flags(study: str) -> None:
    r = runner.invoke(app, ["show", "c", "--storage", study])
    assert r.exit_code == 0, r.stderr
    text = r.stdout
    assert "budget: --latency-ms 10 --ram-kb 300000" in text
    assert "weight_kb" not in text and "{" not in text.splitlines()[0]
    assert "achieved density" in text
    assert "λ, penalty strength at the end" in text
    assert "RAM (--ram-kb checks)" in text
    payload = json.loads(runner.invoke(app, ["show", "c", "--storage", study, "--json"]).stdout)
    picked = payload["picked"]
    if "density" in picked["params"]:
        assert "target density (sampled)" in text
    if "eps_factor" in picked["params"]:
        assert "eps_factor scales the penalty's default eps" in text
    assert picked["strength_final"] > 0 and picked["ram_bytes"] > 0
    for row in payload["trials"]:
        assert "strength_final" in row and "ram_bytes" in row


def test_skipped_trial_shows_not_trained(tmp_path: Path) -> None:
    storage = stores.open_storage(tmp_path / "s.journal", create=True)
    s = optuna.create_study(study_name="s", storage=storage.backend, direction="maximize")
    config = {"dataset": "digits", "model": "mlp", "target": "nrf52840",
              "objective": "budget", "budget": {"latency_ms": 1.0, "weight_kb": 16.0}}  # fmt: skip
    s.set_user_attr(search.CONFIG_ATTR, config)
    attrs = {"val_accuracy": 0.42, "status": "skipped", "fits_budget": False, "density": 0.01,
             "flops": 1000, "latency_ms": 2.0, "weight_bytes": 40_000,
             "peak_activation_bytes": 100, "ram_bytes": 2000,
             "violations": {"latency_ms": 1.0}}  # fmt: skip
    s.add_trial(
        create_trial(
            params={"density": 0.05},
            distributions={"density": FloatDistribution(0.01, 0.5)},
            value=0.42,
            user_attrs=attrs,
        )
    )
    r = runner.invoke(app, ["show", "s", "--storage", storage.url])
    assert r.exit_code == 0, r.stderr
    assert "not trained" in r.stdout and "42.00" not in r.stdout
    assert "budget: --latency-ms 1 --flash-kb 16" in r.stdout
    png = tmp_path / "s.png"
    r = runner.invoke(app, ["plot", "s", "--storage", storage.url, "--out", str(png)])
    assert r.exit_code == 0, r.stderr


def test_version() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"hwsparse {version('hwsparse')}"


def test_estimate_defaults_to_digits_and_still_takes_an_input_shape() -> None:
    r = runner.invoke(app, ["estimate", "--model", "mlp", "--target", "stm32h7", "--json"])
    assert r.exit_code == 0, r.stderr
    digits = json.loads(r.stdout)
    r = runner.invoke(app, ["estimate", "--model", "mlp", "--target", "stm32h7",
                            "--input-shape", "1,8,8", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["flops"] == digits["flops"] == 64 * 300 + 300 * 100 + 100 * 10


# --- 5. card preprocessing -------------------------------------------------------------------


def test_every_loader_records_its_preprocessing(tmp_path: Path) -> None:
    digits = load_dataset("digits").preprocessing
    assert digits["scale"] == pytest.approx(1 / 16) and digits["description"] == "pixel / 16"
    assert load_dataset("mnist10k").preprocessing["scale"] == pytest.approx(1 / 255)
    assert load_dataset("mnist1d").preprocessing["scale"] == 1.0
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(60, 4)).astype(np.float32)
    np.savez(tmp_path / "t.npz", X=x, y=np.arange(60) % 3)
    data = load_dataset(f"npz:{tmp_path / 't.npz'}")
    prep = data.preprocessing
    assert "standardised" in prep["description"] and len(prep["mean"]) == 4
    # the recorded numbers reproduce the model's inputs from the raw file
    raw = x[:5]
    rebuilt = (raw * prep["scale"] - np.asarray(prep["mean"])) / np.asarray(prep["std"])
    assert any(np.allclose(rebuilt[0], row, atol=1e-4) for row in data.x_train.numpy()) or any(
        np.allclose(rebuilt[0], row, atol=1e-4)
        for row in np.concatenate([data.x_val.numpy(), data.x_test.numpy()])
    )
    images = rng.integers(0, 256, size=(40, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "i.npz", X=images, y=np.arange(40) % 2)
    assert load_dataset(f"npz:{tmp_path / 'i.npz'}").preprocessing["scale"] == pytest.approx(
        1 / 255
    )


def test_card_records_input_shape_dtype_layout_and_preprocessing(
    study: str, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    r = runner.invoke(app, ["export", "c", "--storage", study, "--out", str(out), "--format",
                            "onnx", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    card = json.loads((out / "card.json").read_text())
    inp = card["input"]
    assert inp["shape"][1:] == [1, 8, 8] and inp["dtype"] == "float32"  # [batch, C, H, W]
    assert "channels first" in inp["layout"]
    prep = inp["preprocessing"]
    assert prep["scale"] == pytest.approx(1 / 16) and prep["mean"] == [0.0]
    assert prep["std"] == [1.0] and prep["description"] == "pixel / 16"


# --- 6. the plot -----------------------------------------------------------------------------


def test_front_2d_is_the_non_dominated_staircase() -> None:
    # (x, accuracy, id): 2 is dominated by 1 (costlier, less accurate); 4 ties 3's x but is worse
    points = [(1.0, 50.0, 0), (2.0, 70.0, 1), (3.0, 60.0, 2), (4.0, 80.0, 3), (4.0, 75.0, 4),
              (0.5, 40.0, 5)]  # fmt: skip
    assert [p[2] for p in report.front_2d(points)] == [5, 0, 1, 3]


def test_plot_defaults_to_runs_study_png(
    study: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["plot", "c", "--storage", study])
    assert r.exit_code == 0, r.stderr
    png = tmp_path / "runs" / "c.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and "runs/c.png" in r.stdout
