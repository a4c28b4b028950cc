"""How sure a pick is and how a study is reused: binomial intervals, parameter importance,
warm starts from a finished study."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from hwsparse import search
from hwsparse import storage as stores
from hwsparse.cli import app
from hwsparse.cost.estimate import Budget
from hwsparse.cost.profiles import load_profile
from hwsparse.models import build_model
from hwsparse.space import load_space
from hwsparse.stats import interval_or_none, wilson_interval

runner = CliRunner()
TINY = ["--model", "mlp", "--epochs", "1", "--device", "cpu", "--target", "raspberry-pi-4",
        "--latency-ms", "10"]  # fmt: skip


@pytest.mark.parametrize(
    ("p", "n", "low", "high"),
    [  # textbook Wilson intervals (Brown, Cai & DasGupta 2001; Newcombe 1998 table I)
        (0.5, 100, 0.4038, 0.5962),
        (0.0, 10, 0.0, 0.2775),
        (1.0, 10, 0.7225, 1.0),
        (81 / 263, 263, 0.2553, 0.3662),
    ],
)
def test_wilson_interval_matches_published_values(
    p: float, n: int, low: float, high: float
) -> None:
    lo, hi = wilson_interval(p, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_interval_narrows_with_more_samples_and_unknown_stays_unknown() -> None:
    small, large = wilson_interval(0.9, 144), wilson_interval(0.9, 10_000)
    assert small[1] - small[0] > 5 * (large[1] - large[0])
    assert small[0] < 0.9 < small[1]
    assert interval_or_none(0.9, None) is None and interval_or_none(None, 10) is None
    with pytest.raises(ValueError):
        wilson_interval(1.2, 10)


def test_importance_ranks_the_knob_that_makes_accuracy_high() -> None:
    """Accuracy is high only for x near 0.5; low accuracy comes from small y anywhere. The knob
    that matters for *high* accuracy is x (ranking for low accuracy would give y)."""
    study = optuna.create_study(direction="maximize")
    rng = random.Random(0)
    dist = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}
    for _ in range(200):
        x, y = rng.random(), rng.random()
        acc = 0.5 + 0.4 * (abs(x - 0.5) < 0.05) + 0.1 * y
        study.add_trial(create_trial(params={"x": x, "y": y}, distributions=dist, value=acc,
                                     user_attrs={"val_accuracy": acc}))  # fmt: skip
    shares = search.importance(study)
    assert shares["x"] > shares["y"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    journal = tmp_path_factory.mktemp("warm") / "w.journal"
    r = runner.invoke(app, ["search", "--study", "src", "--storage", str(journal), *TINY,
                            "--trials", "5"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    return journal


def test_warm_start_from_a_study_tries_its_best_regularizers_first(source: Path) -> None:
    store = stores.open_storage(source)
    src = stores.load_study("src", store)
    ok = [t for t in src.get_trials(states=(TrialState.COMPLETE,)) if search.feasible(t)]
    best = max(ok, key=lambda t: t.user_attrs["val_accuracy"])
    r = runner.invoke(app, ["search", "--study", "next", "--storage", str(source), *TINY,
                            "--trials", "2", "--warm-start", "src"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    first = stores.load_study("next", store).trials[0]
    assert first.user_attrs.get("warm_start")
    regularizer = {"penalty", "param", "temperature", "mask_lr", "eps_factor"}
    for k in regularizer & set(best.params):
        assert first.params[k] == best.params[k], k
    assert "density" in first.params  # the new budget decides density: sampled, not copied


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "linear"], "is on model 'mlp', this search on 'linear'"),
        (["--warm-start", "nope"], "no study 'nope'"),
    ],
)
def test_warm_start_refusals_exit_2(source: Path, args: list[str], message: str) -> None:
    cmd = ["search", "--study", "other", "--storage", str(source), *TINY, "--trials", "1",
           "--warm-start", "src", *args]  # fmt: skip
    r = runner.invoke(app, cmd)
    assert r.exit_code == 2 and message in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0
    names = optuna.study.get_all_study_names(stores.open_storage(source).backend)
    assert "other" not in names  # nothing was created


def test_show_importance_and_intervals(source: Path) -> None:
    r = runner.invoke(app, ["show", "src", "--storage", str(source), "--importance", "--json"])
    assert r.exit_code == 0, r.stderr
    payload = json.loads(r.stdout)
    shares = payload["importance"]
    assert shares and sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    picked = payload["picked"]
    lo, hi = picked["test_accuracy_interval"]
    assert lo <= picked["test_accuracy"] <= hi and picked["test_samples"] > 0
    lo, hi = picked["val_accuracy_interval"]
    assert lo <= picked["val_accuracy"] <= hi
    r = runner.invoke(app, ["show", "src", "--storage", str(source), "--importance"])
    assert r.exit_code == 0 and "What mattered" in r.stdout
    assert "95 % Wilson" in r.stdout


def test_initial_design_queues_the_default_regularizer_where_it_fits(tmp_path: Path) -> None:
    """A new study starts with the default regularizer at fractions of the largest density
    that fits, for each granularity that can fit; the cost model places them, so they fit."""
    space = search.apply_epochs(load_space("default"), 1)
    budget = Budget(latency_ms=0.2, weight_kb=64.0)  # dense: 0.208 ms on the Pi 4 estimate
    config = search.SearchConfig(dataset="digits", model="mlp", target="raspberry-pi-4",
                                 budget=budget, space=space.as_dict())  # fmt: skip
    design = search.initial_design(config, space, load_profile("raspberry-pi-4"),
                                   lambda: build_model("mlp", (64,), 10), (64,))  # fmt: skip
    assert {p["granularity"] for p in design} == {"weight", "channel"}
    for p in design:
        assert (p["penalty"], p["param"], p["eps_factor"]) == ("log", "projected", 1.0)
    channel = [p["density"] for p in design if p["granularity"] == "channel"]
    assert channel == sorted(channel, reverse=True) and len(channel) == 3
    assert [p["granularity"] for p in design[:2]] == ["weight", "channel"]  # both, early
    storage = stores.open_storage(tmp_path / "d.journal", create=True)
    outcome = search.run_search("d", storage, config, space, trials=len(design), device="cpu")
    ran = sorted(outcome.study.trials, key=lambda t: t.number)
    assert [t.params["density"] for t in ran] == [p["density"] for p in design]
    assert all(t.user_attrs["warm_start"] for t in ran)
    assert all(search.feasible(t) for t in ran if t.state == TrialState.COMPLETE)
    none = search.run_search("n", storage, config, space, trials=1, device="cpu", design=False)
    assert not none.study.trials[0].user_attrs.get("warm_start")
    short = search.run_search("short", storage, config, space, trials=2, device="cpu")
    assert len(short.study.trials) == 2  # the design is cut to the run: nothing left waiting


def test_a_budget_no_granularity_meets_gets_no_design() -> None:
    space = load_space("default")
    config = search.SearchConfig(dataset="digits", model="mlp", target="nrf52840",
                                 budget=Budget(latency_ms=0.3))  # fmt: skip
    design = search.initial_design(config, space, load_profile("nrf52840"),
                                   lambda: build_model("mlp", (64,), 10), (64,))  # fmt: skip
    assert design == []


def _judged(x: float, val: float, fits: bool = True) -> optuna.trial.FrozenTrial:
    return create_trial(params={"x": x}, distributions={"x": FloatDistribution(0, 1)}, value=val,
                        user_attrs={"val_accuracy": val, "fits_budget": fits, "latency_ms": 1.0,
                                    "flops": 1})  # fmt: skip


def test_redraw_takes_the_best_settings_in_turn() -> None:
    """Of the three best distinct feasible settings, the one trained fewest times comes next
    (ties: the more accurate); a setting that never fit is never redrawn."""
    study = optuna.create_study(direction="maximize")
    assert search.redraw(study) is None
    study.add_trial(_judged(0.1, 0.99, fits=False))
    assert search.redraw(study) is None
    for x, val in [(0.2, 0.9), (0.3, 0.8), (0.2, 0.7), (0.4, 0.85), (0.5, 0.6)]:
        study.add_trial(_judged(x, val))

    def nxt() -> tuple[dict[str, float], int]:
        best = search.redraw(study)
        assert best is not None
        return best.params, best.number  # the setting, and its best trial

    assert nxt() == ({"x": 0.4}, 4)  # 0.2 was drawn twice already
    study.add_trial(_judged(0.4, 0.1))
    assert nxt() == ({"x": 0.3}, 2)
    study.add_trial(_judged(0.3, 0.1))
    assert nxt() == ({"x": 0.2}, 1)  # all three twice: the best


def test_the_last_quarter_of_a_budget_study_redraws_its_best_settings(tmp_path: Path) -> None:
    space = search.apply_epochs(load_space("default"), 1)
    budget = Budget(latency_ms=10.0)  # everything fits
    config = search.SearchConfig(dataset="digits", model="mlp", target="raspberry-pi-4",
                                 budget=budget, space=space.as_dict())  # fmt: skip
    storage = stores.open_storage(tmp_path / "r.journal", create=True)
    study = search.run_search("r", storage, config, space, trials=8, device="cpu",
                              design=False).study  # fmt: skip
    trials = sorted(study.trials, key=lambda t: t.number)
    redrawn = [t for t in trials if "redraw_of" in t.user_attrs]
    assert [t.number for t in redrawn] == [6, 7]  # floor(8 / 4), at the end
    first = search.pick_among([t for t in trials[:6] if search.feasible(t)])
    assert first is not None and redrawn[0].user_attrs["redraw_of"] == first.number
    for t in redrawn:  # the settings of a feasible earlier trial, with its own seed
        source = trials[t.user_attrs["redraw_of"]]
        assert source.number < t.number and search.feasible(source)
        assert source.params == t.params
    batched = search.run_search("b", storage, config, space, trials=8, device="cpu",
                                design=False, batch_trials=2).study  # fmt: skip
    assert any("redraw_of" in t.user_attrs for t in batched.trials)  # queued as members leave
    assert {t.state for t in batched.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    off = search.run_search("off", storage, config, space, trials=8, device="cpu",
                            design=False, redraws=False).study  # fmt: skip
    assert not any("redraw_of" in t.user_attrs for t in off.trials)
    pareto = replace(config, objective="pareto")
    front = search.run_search("p", storage, pareto, space, trials=4, device="cpu",
                              design=False).study  # fmt: skip
    assert not any("redraw_of" in t.user_attrs for t in front.trials)  # one pick per front


def test_the_cli_says_which_trials_are_redraws(tmp_path: Path) -> None:
    journal = tmp_path / "r.journal"
    r = runner.invoke(app, ["search", "--study", "r", "--storage", str(journal), *TINY,
                            "--trials", "8"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    trials = sorted(stores.load_study("r", stores.open_storage(journal)).trials,
                    key=lambda t: t.number)  # fmt: skip
    again = [t for t in trials if "redraw_of" in t.user_attrs]
    assert again and all(t.number >= 6 for t in again)  # the last quarter, after the design
    for t in again:
        assert f"trial {t.number}: " in r.output
        assert f"(redraw of {t.user_attrs['redraw_of']})" in r.output
    table = runner.invoke(app, ["show", "r", "--storage", str(journal)])
    assert table.exit_code == 0, table.stderr
    for t in trials:  # the trial table marks each redraw with the trial it redraws
        mark = f"{t.number} r{t.user_attrs['redraw_of']}" if t in again else f"{t.number} r"
        assert (mark in table.output) == (t in again)
    shown = runner.invoke(app, ["show", "r", "--storage", str(journal), "--json"])
    assert shown.exit_code == 0, shown.stderr
    pick = json.loads(shown.stdout)["picked"]
    assert pick["redraw_of"] == trials[pick["trial"]].user_attrs.get("redraw_of")
