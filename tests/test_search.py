"""The Optuna study end to end on real storages: run, pick, resume, crash recovery, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from hwsparse import recovery, search
from hwsparse import storage as stores
from hwsparse.cli import app
from hwsparse.cost.estimate import Budget
from hwsparse.data import load_dataset
from hwsparse.errors import InputError
from hwsparse.space import load_space

runner = CliRunner()
TINY = ["--model", "mlp", "--epochs", "1", "--device", "cpu"]


def _config(**kw: object) -> search.SearchConfig:
    space = search.apply_epochs(load_space("default"), 1)
    base: dict[str, object] = {
        "dataset": "digits",
        "model": "mlp",
        "target": "raspberry-pi-4",
        "budget": Budget(latency_ms=10.0),
        "space": space.as_dict(),
    }
    base.update(kw)
    return search.SearchConfig(**base)  # type: ignore[arg-type]


def _run(tmp: Path, trials: int = 3, **kw: object) -> search.SearchOutcome:
    """A short study from sampled trials (no initial design: tests/test_selection.py)."""
    config = _config(**kw)
    space = search.apply_epochs(load_space("default"), 1)
    storage = stores.open_storage(tmp / "s.journal", create=True)
    return search.run_search(
        "s", storage, config, space, trials=trials, device="cpu", design=False
    )


def test_search_records_trials_and_picks_a_feasible_ticket(tmp_path: Path) -> None:
    outcome = _run(tmp_path)
    trials = outcome.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    for t in trials:  # everything a user inspects later is in the storage
        for key in ("val_accuracy", "density", "flops", "latency_ms", "latency_ms_low",
                    "latency_ms_high", "weight_bytes", "peak_activation_bytes",
                    "train_seconds", "device", "fits_budget", "artifact:weights.pt"):  # fmt: skip
            assert key in t.user_attrs, key
        assert t.constraints.keys() == {"latency_ms"}  # Optuna 5 constraint API
        assert t.user_attrs["latency_ms_low"] <= t.user_attrs["latency_ms"]
    assert outcome.pick is not None and outcome.pick.user_attrs["fits_budget"]
    best = max(t.user_attrs["val_accuracy"] for t in trials if t.user_attrs["fits_budget"])
    assert outcome.pick.user_attrs["val_accuracy"] == best  # picked on validation
    assert outcome.test_accuracy is not None and 0.0 <= outcome.test_accuracy <= 1.0
    stored = outcome.study.user_attrs[search.PICK_ATTR]
    assert stored["trial"] == outcome.pick.number


def test_impossible_budget_picks_nothing_and_shows_the_closest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InputError, match="floor of 0.0995 ms"):  # below the floor: refused
        _run(tmp_path, trials=2, budget=Budget(latency_ms=1e-4))
    monkeypatch.setattr(search, "check_floors", lambda *a: None)  # the path behind the check
    outcome = _run(tmp_path, trials=2, budget=Budget(latency_ms=1e-4))
    assert outcome.pick is None and outcome.closest is not None
    assert all(v > 0 for v in outcome.closest.user_attrs["violations"].values())
    # nothing that cannot fit spends ticket training
    assert {t.user_attrs["status"] for t in outcome.study.trials} == {"skipped"}


def test_budget_cut_makes_a_candidate_fit(tmp_path: Path) -> None:
    # weights budget below the dense size: candidates are cut instead of thrown away
    outcome = _run(tmp_path, trials=3, budget=Budget(weight_kb=20.0))
    done = outcome.study.get_trials(states=(TrialState.COMPLETE,))
    cut = [t for t in done if t.user_attrs["cut_to_density"] is not None]
    assert cut, "no trial was cut"
    for t in cut:
        assert t.user_attrs["cut_to_density"] < t.user_attrs["cut_from_density"]
        if t.user_attrs["status"] == "ok":
            assert t.user_attrs["fits_budget"]


def test_resume_continues_and_mismatch_is_an_error(tmp_path: Path) -> None:
    _run(tmp_path, trials=2)
    again = _run(tmp_path, trials=1)
    assert len(again.study.trials) == 3  # continued, nothing lost
    with pytest.raises(InputError, match="different budget"):
        _run(tmp_path, trials=1, budget=Budget(latency_ms=5.0))
    with pytest.raises(InputError, match="different target"):
        _run(tmp_path, trials=1, target="stm32h7")


def test_pareto_mode(tmp_path: Path) -> None:
    outcome = _run(tmp_path, trials=2, objective="pareto")
    assert len(outcome.study.directions) == 3  # accuracy, latency, MFLOPs
    assert outcome.study.user_attrs["metrics"] == ["val_accuracy", "latency_ms", "mflops"]


def test_interrupted_trial_is_rerun_on_resume(tmp_path: Path) -> None:
    config = _config()
    space = search.apply_epochs(load_space("default"), 1)
    storage = stores.open_storage(tmp_path / "s.journal", create=True)

    def ctrl_c(info: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search.run_search("s", storage, config, space, trials=2, device="cpu", on_epoch=ctrl_c,
                          batch_trials=1, design=False)  # fmt: skip
    study = stores.load_study("s", storage)
    (first,) = study.trials
    assert first.state == TrialState.FAIL and first.user_attrs["interrupted"]
    outcome = search.run_search("s", storage, config, space, trials=1, device="cpu", design=False)
    assert outcome.retried == [first.number]
    rerun = outcome.study.trials[-1]
    assert rerun.params == first.params and rerun.state == TrialState.COMPLETE
    assert rerun.user_attrs["retry_of"] == first.number


def test_an_interrupted_redraw_is_rerun_as_that_redraw(tmp_path: Path) -> None:
    config = _config()
    space = search.apply_epochs(load_space("default"), 1)
    storage = stores.open_storage(tmp_path / "s.journal", create=True)
    (done,) = search.run_search("s", storage, config, space, trials=1, device="cpu",
                                design=False).study.trials  # fmt: skip
    stores.load_study("s", storage).enqueue_trial(done.params, user_attrs={"redraw_of": 0})

    def ctrl_c(info: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search.run_search("s", storage, config, space, trials=1, device="cpu", on_epoch=ctrl_c,
                          design=False)  # fmt: skip
    outcome = search.run_search("s", storage, config, space, trials=1, device="cpu", design=False)
    assert outcome.retried == [1]
    rerun = outcome.study.trials[-1]
    assert rerun.state == TrialState.COMPLETE and rerun.params == done.params
    assert rerun.user_attrs["retry_of"] == 1 and rerun.user_attrs["redraw_of"] == 0


def test_a_batched_study_tells_every_trial(tmp_path: Path) -> None:
    config = _config()
    space = search.apply_epochs(load_space("default"), 2)
    storage = stores.open_storage(tmp_path / "s.journal", create=True)
    told: list[int] = []
    outcome = search.run_search(
        "s",
        storage,
        config,
        space,
        trials=5,
        device="cpu",
        batch_trials=3,
        on_trial=lambda s, t: told.append(t.number),
    )
    assert outcome.ran == outcome.total == 5 and sorted(told) == [0, 1, 2, 3, 4]
    states = {t.state for t in outcome.study.trials}
    assert states <= {TrialState.COMPLETE, TrialState.PRUNED}
    done = [t for t in outcome.study.trials if t.state == TrialState.COMPLETE]
    assert done and all("val_accuracy" in t.user_attrs and "flops" in t.user_attrs for t in done)
    assert all(len(t.user_attrs["val_curve"]) == 2 for t in done)  # ticket epochs reported


def test_interrupted_batch_reruns_every_member_on_resume(tmp_path: Path) -> None:
    config = _config()
    space = search.apply_epochs(load_space("default"), 1)
    storage = stores.open_storage(tmp_path / "s.journal", create=True)

    def ctrl_c(info: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search.run_search("s", storage, config, space, trials=3, device="cpu", on_epoch=ctrl_c,
                          batch_trials=2, design=False)  # fmt: skip
    study = stores.load_study("s", storage)
    assert len(study.trials) == 2  # two trained together; the third was never asked for
    assert all(t.state == TrialState.FAIL and t.user_attrs["interrupted"] for t in study.trials)
    outcome = search.run_search("s", storage, config, space, trials=2, device="cpu", design=False)
    assert sorted(outcome.retried) == [0, 1]
    reruns = outcome.study.trials[2:]
    assert sorted(t.user_attrs["retry_of"] for t in reruns) == [0, 1]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in reruns)


def test_trial_of_a_dead_worker_is_failed_and_requeued(tmp_path: Path) -> None:
    storage = stores.open_storage(tmp_path / "s.journal", create=True)
    study = optuna.create_study(study_name="x", storage=storage.backend)
    trial = study.ask()
    trial.suggest_float("density", 0.01, 0.5, log=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    import socket

    trial.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    live = study.ask()  # this process's own running trial must be left alone
    live.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    assert recovery.recover_interrupted(study, storage) == [trial.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[trial.number] == TrialState.FAIL
    assert states[live.number] == TrialState.RUNNING
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == trial.params
    assert recovery.recover_interrupted(study, storage) == []  # only once


def test_killed_worker_loses_nothing(tmp_path: Path) -> None:
    journal = tmp_path / "k.journal"
    cmd = [sys.executable, "-m", "hwsparse", "search", "--study", "k", "--storage", str(journal),
           "--target", "raspberry-pi-4", "--latency-ms", "10", "--model", "mlp",
           "--trials", "50", "--epochs", "3", "--device", "cpu", "--json"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = stores.open_storage(journal, create=True)
    deadline = time.time() + 120
    complete = 0
    while time.time() < deadline and complete < 2:
        time.sleep(0.5)
        if journal.exists() and "k" in optuna.study.get_all_study_names(storage.backend):
            study = optuna.load_study(study_name="k", storage=storage.backend)
            complete = len(study.get_trials(states=(TrialState.COMPLETE,)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = optuna.load_study(study_name="k", storage=storage.backend)
    done_before = {t.number for t in before.get_trials(states=(TrialState.COMPLETE,))}
    assert len(done_before) >= 2
    # the same search, one more trial (--trials is the study's total; --more adds)
    resume = ["--more" if a == "--trials" else "1" if a == "50" else a for a in cmd[3:]]
    r = runner.invoke(app, resume)
    assert r.exit_code == 0, r.stderr
    after = optuna.load_study(study_name="k", storage=stores.open_storage(journal).backend)
    done_after = {t.number for t in after.get_trials(states=(TrialState.COMPLETE,))}
    assert done_before <= done_after  # no finished trial lost
    assert not after.get_trials(states=(TrialState.RUNNING,))  # the killed one is not stuck


def test_two_workers_share_one_journal(tmp_path: Path) -> None:
    journal = tmp_path / "w.journal"
    args = ["search", "--study", "w", "--storage", str(journal), "--target", "raspberry-pi-4",
            "--latency-ms", "10", *TINY, "--more", "2", "--json"]  # fmt: skip
    # create the study once (1 trial), then start two workers at the same time, 2 more each
    assert runner.invoke(app, [*args[:-3], "--trials", "1", "--json"]).exit_code == 0
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hwsparse", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    study = optuna.load_study(study_name="w", storage=stores.open_storage(journal).backend)
    states = [t.state for t in study.trials]
    assert len(states) == 5  # 1 + 2 x 2 trials, none lost or doubled
    assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}


def test_cli_search_show_plot_export(tmp_path: Path) -> None:
    journal = str(tmp_path / "c.journal")
    base = ["--storage", journal]
    r = runner.invoke(app, ["search", "--study", "c", *base, "--target", "raspberry-pi-4",
                            "--latency-ms", "10", *TINY, "--trials", "2", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    payload = json.loads(r.stdout)
    assert payload["study"] == "c" and payload["storage"] == str(Path(journal).resolve())
    assert payload["n_complete"] == 2
    picked = payload["picked"]
    for key in ("trial", "params", "val_accuracy", "test_accuracy", "density", "flops",
                "latency_ms", "fits_budget"):  # fmt: skip
        assert key in picked
    digits = load_dataset("digits")  # a small val split: the pick's settings cross-validated
    n_cv = len(digits.y_train) + len(digits.y_val)
    assert picked["cv_samples"] == n_cv and 0.0 < picked["cv_accuracy"] <= 1.0
    r = runner.invoke(app, ["show", "c", *base, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["picked"]["trial"] == picked["trial"]
    r = runner.invoke(app, ["show", "c", *base])
    assert r.exit_code == 0 and "Picked ticket" in r.stdout
    r = runner.invoke(app, ["studies", *base, "--json"])
    assert [s["study"] for s in json.loads(r.stdout)["studies"]] == ["c"]
    png = tmp_path / "c.png"
    r = runner.invoke(app, ["plot", "c", *base, "--out", str(png)])
    assert r.exit_code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    out = tmp_path / "export"
    r = runner.invoke(app, ["export", "c", *base, "--out", str(out), "--json"])
    assert r.exit_code == 0, r.stderr
    card = json.loads((out / "card.json").read_text())
    assert card == {k: v for k, v in json.loads(r.stdout).items() if k != "out"}
    assert card["found"]["trial"] == picked["trial"] and card["agreement"]["ok"]
    assert card["found"]["cv_samples"] == n_cv  # the export card shows it, with its interval
    assert card["found"]["cv_accuracy"] == pytest.approx(picked["cv_accuracy"])
    cv_low, cv_high = card["found"]["cv_accuracy_interval"]
    assert cv_low < card["found"]["cv_accuracy"] < cv_high
    assert card["budget"] == {"latency_ms": 10.0}
    # Raspberry Pi 4's first engine is XNNPACK (LiteRT), fp32: a .tflite verified in LiteRT
    assert (card["format"], card["dtype"]) == ("tflite", "fp32")
    assert (out / card["artifact"]).stat().st_size == card["artifact_bytes"]
    assert card["accuracy"]["artifact_test"] == pytest.approx(card["accuracy"]["fp32_test"])
    low, high = card["accuracy"]["artifact_test_interval"]  # 95 % Wilson over n test samples
    assert low < card["accuracy"]["artifact_test"] < high and high - low < 0.2
    assert card["params"] <= card["params_before_compaction"]
    assert (out / "ticket" / "weights.pt").is_file()
    # the optuna CLI reads the same storage
    optuna_cli = Path(sys.executable).with_name("optuna")
    res = subprocess.run(
        [
            str(optuna_cli),
            "trials",
            "--storage",
            journal,
            "--storage-class",
            "JournalFileBackend",
            "--study-name",
            "c",
            "-f",
            "json",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(res.stdout)
    assert len(rows) == 2 and "val_accuracy" in rows[0]["user_attrs"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "nope"], "no study 'nope'"),
        (["search", "--target", "toaster"], "valid:"),
        (["search", "--latency-ms", "-1"], "--latency-ms must be > 0"),
        (["search", "--objective", "fastest"], "valid: budget, pareto"),
        (["search", "--space", "nope"], "unknown search space"),
        (["export", "nope", "--out", "x"], "no study"),
        (["plot", "nope", "--out", "x.pdf"], ".png"),
    ],
)
def test_bad_input_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    journal = tmp_path / "b.journal"
    journal.write_text("")  # an empty journal is a valid, empty storage
    r = runner.invoke(app, [*args, "--storage", str(journal)])
    assert r.exit_code == 2, r.stdout
    assert message in r.stderr and "Traceback" not in r.stderr


def test_unreadable_storage_and_malformed_space(tmp_path: Path) -> None:
    garbage = tmp_path / "g.db"
    garbage.write_text("this is not a database\n")
    r = runner.invoke(app, ["studies", "--storage", f"sqlite:///{garbage}"])
    assert r.exit_code == 2 and "cannot open storage" in r.stderr
    r = runner.invoke(app, ["studies", "--storage", str(tmp_path)])  # a folder, not a file
    assert r.exit_code == 2 and "no storage" in r.stderr
    r = runner.invoke(app, ["studies", "--storage", str(tmp_path / "missing.journal")])
    assert r.exit_code == 2 and "no storage" in r.stderr
    space = tmp_path / "s.yaml"
    space.write_text("params: {lambda: {low: 1, high: 2}}\n")
    r = runner.invoke(app, ["search", "--space", str(space), "--storage", str(tmp_path / "j")])
    assert r.exit_code == 2 and "unknown knob 'lambda'" in r.stderr


def test_a_space_combination_the_model_cannot_take_prunes_that_trial(tmp_path: Path) -> None:
    # logistic regression has one layer: channel masks (never on the output layer) have none
    outcome = _run(tmp_path, trials=4, model="linear")
    for t in outcome.study.trials:
        if t.params.get("granularity") == "channel":
            assert t.state == TrialState.PRUNED and "no layer left" in t.user_attrs["message"]
        else:
            assert t.state == TrialState.COMPLETE


def test_pareto_pruning_compares_with_no_costlier_tickets() -> None:
    from optuna.distributions import FloatDistribution

    def done(acc: float, flops: int, latency: float) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(
            params={"density": 0.1},
            distributions={"density": FloatDistribution(0.01, 0.5)},
            values=[acc, latency, flops / 1e6],
            user_attrs={"val_curve": [acc] * 5, "flops": flops, "latency_ms": latency},
        )

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for acc in (0.9, 0.9, 0.9, 0.9, 0.9):
        study.add_trial(done(acc, flops=5000, latency=1.0))  # accurate but costly
    for acc in (0.5, 0.5, 0.5, 0.5, 0.5):
        study.add_trial(done(acc, flops=1000, latency=0.2))  # cheap
    from hwsparse.cost.estimate import estimate
    from hwsparse.models import build_model

    cheap = estimate(build_model("linear", (1, 8, 8), 10), (1, 8, 8), "raspberry-pi-4")
    assert cheap.flops < 1000
    # a cheap ticket is only compared with tickets at least as cheap: none here
    assert search._no_costlier(study, cheap) == []
    peers = search._no_costlier(study, None)
    assert len(peers) == 10
    assert search._below_median(peers, [0.6] * 4, 3)  # median of all ten is 0.7
    cheap_peers = [t for t in peers if t.user_attrs["flops"] == 1000]
    assert not search._below_median(cheap_peers, [0.6] * 4, 3)  # best among the cheap ones


def test_optuna_dashboard_reads_the_study(tmp_path: Path) -> None:
    import io

    import optuna_dashboard

    outcome = _run(tmp_path, trials=2)
    app_ = optuna_dashboard.wsgi(outcome.storage.backend)
    status: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/api/studies",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
        "wsgi.url_scheme": "http",
    }
    body = b"".join(app_(environ, lambda s, h, *exc: status.append(s)))
    assert status[0].startswith("200")
    (summary,) = json.loads(body)["study_summaries"]
    assert summary["study_name"] == "s"
