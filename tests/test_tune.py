"""`hwsparse tune` end to end on real journal storages: the answer, resume, show/studies,
presets read by `ticket` and `search`, bad input in one line."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from hwsparse import search, tune
from hwsparse import storage as stores
from hwsparse.cli import app
from hwsparse.errors import InputError
from hwsparse.preset import load_preset, parse_preset

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _tune(tmp: Path, *extra: str, trials: str = "2") -> dict:  # type: ignore[type-arg]
    args = ["tune", "--dataset", "digits", "--model", "mlp", "--density", "0.05",
            "--trials", trials, "--epochs", "1", "--seeds", "2", "--device", "cpu",
            "--storage", str(tmp / "s.journal"), "--study", "t", "--json", *extra]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.stderr + repr(r.exception)
    return json.loads(r.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    tmp = tmp_path_factory.mktemp("tune")
    return tmp, _tune(tmp, "--out", str(tmp / "p.yaml"))


def test_json_answer_has_the_evidence(tuned: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    tmp, out = tuned
    assert out["study"] == "t"
    best = out["best"]
    for key in ("params", "val_accuracy", "test_accuracy", "density"):
        assert best[key] is not None, key
    assert best["reproduced"]  # the re-run on the trial's seed is the trial's ticket
    assert len(best["test_accuracy_seeds"]) == 2
    assert abs(best["density"] - 0.05) < 0.01
    assert {"penalty", "mask_lr"} <= set(best["params"])
    assert "density" not in best["params"]  # a preset carries the regularizer only
    assert {"val_accuracy", "test_accuracy"} <= set(out["default"])
    assert out["imp"]["epochs"] > 1 and out["imp"]["test_accuracy"] is not None
    assert isinstance(out["importance"], dict)
    assert out["config"]["kind"] == "tune"
    assert out["n_complete"] >= 1
    study = optuna.load_study(
        study_name="t", storage=stores.open_storage(tmp / "s.journal").backend
    )
    assert study.trials[0].user_attrs.get("default_regularizer")  # trial 0: the default
    assert study.trials[0].params["penalty"] == "log"
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert t.user_attrs["dtype"] == "fp32" and "val_accuracy" in t.user_attrs
        assert "test_accuracy" not in t.user_attrs  # selection never sees test


def test_resume_show_studies(tuned: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    tmp, first = tuned
    again = _tune(tmp, trials="3")  # the total: one more trial runs
    assert again["ran"] == 1 and again["total"] == 3
    st = ["--storage", str(tmp / "s.journal")]
    r = runner.invoke(app, ["show", "t", *st])
    assert r.exit_code == 0, r.stderr
    assert "Tuned regularizer" in r.stdout and "default" in r.stdout
    r = runner.invoke(app, ["studies", *st, "--json"])
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)["studies"][0]
    assert row["study"] == "t" and row["objective"] == "tune"
    r = runner.invoke(app, ["plot", "t", *st, "--out", str(tmp / "t.png")])
    assert r.exit_code == 0, r.stderr
    # a search must not resume a tune study, nor tune a search study
    r = runner.invoke(app, ["search", "--study", "t", *st, "--trials", "1", "--epochs", "1"])
    assert r.exit_code == 2 and "tune" in r.stderr
    with pytest.raises(InputError, match="different density"):
        tune.check_resume(
            stores.load_study("t", stores.open_storage(tmp / "s.journal")),
            tune.TuneConfig(density=0.1, space=first["config"]["space"]),
        )


def test_tune_refuses_a_search_study(tmp_path: Path) -> None:
    st = ["--storage", str(tmp_path / "s.journal")]
    r = runner.invoke(app, ["search", "--study", "x", *st, "--trials", "1", "--epochs", "1",
                            "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, ["tune", "--study", "x", *st, "--trials", "1", "--epochs", "1"])
    assert r.exit_code == 2 and "not hwsparse tune" in r.stderr


def test_preset_written_and_read_by_ticket(tuned: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    tmp, out = tuned
    p = load_preset(tmp / "p.yaml")
    assert p.model == "mlp" and p.dataset == "digits" and p.density == 0.05
    assert p.regularizer == out["best"]["params"]
    r = runner.invoke(app, ["ticket", "--preset", str(tmp / "p.yaml"), "--epochs", "1",
                            "--device", "cpu", "--out", str(tmp / "tk"), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert "note" not in r.stderr  # same dataset, model, density
    meta = json.loads((tmp / "tk" / "ticket.json").read_text())
    cfg = meta["config"]["ticket"]
    assert cfg["penalty"] == p.regularizer["penalty"]
    assert cfg["mask_lr"] == pytest.approx(p.regularizer["mask_lr"])
    assert cfg["density"] == 0.05
    assert cfg["auto_strength"] == (p.values()["strength_mode"] == "auto")
    # elsewhere: a note; a flag given wins over the preset
    r = runner.invoke(app, ["ticket", "--preset", str(tmp / "p.yaml"), "--dataset", "mnist1d",
                            "--epochs", "1", "--search-epochs", "1", "--penalty", "l1",
                            "--device", "cpu", "--out", str(tmp / "tk2")])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert "note" in r.stderr and "tuned on digits" in r.stderr
    assert (
        json.loads((tmp / "tk2" / "ticket.json").read_text())["config"]["ticket"]["penalty"]
        == "l1"
    )


def test_search_with_preset_fixes_or_warm_starts(tuned: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    tmp, _ = tuned
    p = load_preset(tmp / "p.yaml")
    st = ["--storage", str(tmp / "d.journal"), "--trials", "2", "--epochs", "1",
          "--device", "cpu", "--preset", str(tmp / "p.yaml")]  # fmt: skip
    r = runner.invoke(app, ["search", "--study", "fixed", *st])
    assert r.exit_code == 0, r.stderr
    store = stores.open_storage(tmp / "d.journal")
    s = stores.load_study("fixed", store)
    for t in s.trials:
        assert "penalty" not in t.params and "mask_lr" not in t.params  # fixed, not searched
        assert {"density", "granularity"} <= set(t.params)  # the budget decides these
    fixed = s.user_attrs[search.CONFIG_ATTR]["space"]["fixed"]
    assert fixed["penalty"] == p.regularizer["penalty"]
    r = runner.invoke(app, ["search", "--study", "warm", *st[:-2], "--warm-start", st[-1]])
    assert r.exit_code == 0, r.stderr
    first = stores.load_study("warm", store).trials[0]
    assert first.user_attrs.get("warm_start")
    if p.regularizer["penalty"] in ("log", "l1", "exp", "mcp"):  # in the default space
        assert first.params["penalty"] == p.regularizer["penalty"]
    assert "penalty" in stores.load_study("warm", store).trials[1].params  # searched after


def test_preset_for_another_model_is_refused(tuned: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    tmp, _ = tuned
    r = runner.invoke(app, ["ticket", "--preset", str(tmp / "p.yaml"), "--model", "linear"])
    assert r.exit_code == 2
    assert r.stderr.strip().count("\n") == 0 and "tuned for model 'mlp'" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--density", "1.5"], "--density must be in (0, 1)"),
        (["--density", "0"], "--density must be in (0, 1)"),
        (["--density-range", "0.1,0.01"], "LO < HI"),
        (["--density-range", "x"], "--density-range takes LO,HI"),
        (["--density", "0.1", "--density-range", "0.01,0.1"], "one of them"),
        (["--granularity", "row"], "granularity"),
        (["--out", "p.txt"], "--out must be a .yaml"),
    ],
)
def test_bad_tune_input_exits_2_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    r = runner.invoke(app, ["tune", "--storage", str(tmp_path / "s.journal"), "--trials", "1",
                            "--epochs", "1", *args])  # fmt: skip
    assert r.exit_code == 2, r.stderr
    assert message in r.stderr and r.stderr.strip().count("\n") == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "kind: hwsparse-preset\nversion: 1\ntuned_for: {dataset: digits, model: mlp, "
            "density: 0.05}\nregularizer: {penalty: log, density: 0.1}\n",
            "unknown knob 'density'",
        ),
        (
            "kind: hwsparse-preset\ntuned_for: {dataset: digits, model: mlp, density: 0.05}\n"
            "regularizer: {penalty: l3}\n",
            "valid: exp, l1",
        ),
        (
            "kind: hwsparse-preset\ntuned_for: {dataset: digits, model: mlp, density: 0.05}\n"
            "regularizer: {penalty: log}\nextra: 1\n",
            "unknown key 'extra'",
        ),
        (
            "kind: hwsparse-preset\ntuned_for: {dataset: digits, density: 0.05}\n"
            "regularizer: {penalty: log}\n",
            "no 'model'",
        ),
        ("kind: other\n", "not a preset"),
        ("[1, 2", "malformed YAML"),
    ],
)
def test_malformed_preset_exits_2(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    r = runner.invoke(app, ["ticket", "--preset", str(bad)])
    assert r.exit_code == 2, r.stderr
    assert message in r.stderr and r.stderr.strip().count("\n") == 0


def test_preset_round_trip() -> None:
    data = {"kind": "hwsparse-preset", "version": 1,
            "tuned_for": {"dataset": "digits", "model": "mlp", "density": 0.01},
            "regularizer": {"penalty": "mcp", "strength_mode": "fixed",
                            "strength": 1e-4}}  # fmt: skip
    p = parse_preset(yaml.safe_load(yaml.safe_dump(data)))
    assert p.as_dict()["regularizer"] == data["regularizer"]
    assert p.notes("mnist10k", "mlp", 0.05) == [
        "<preset> was tuned on digits, used here on mnist10k",
        "<preset> was tuned at density 0.01, used here at 0.05",
    ]
