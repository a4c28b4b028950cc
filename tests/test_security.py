"""What a ticket or study file can cause (issue 14): no code import unless trusted, systematic
errors stop a study, no process-wide side effects of the library, worker liveness by flock."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState
from typer.testing import CliRunner

from hwsparse import recovery, search
from hwsparse import storage as stores
from hwsparse.cli import app
from hwsparse.cost.estimate import Budget
from hwsparse.errors import InputError
from hwsparse.models import build_model
from hwsparse.space import load_space
from hwsparse.tickets import load_ticket, save_ticket

runner = CliRunner()
ENV = {**os.environ, "OMP_NUM_THREADS": "2"}


def _ticket(folder: Path, model_name: str = "mlp") -> Path:
    model = build_model("mlp", (1, 8, 8), 10)
    masks = {n: torch.ones_like(m.weight) for n, m in model.named_modules() if n.startswith("fc")}
    return save_ticket(
        folder, model, masks, model_name=model_name, input_shape=(1, 8, 8), num_classes=10,
        dataset="digits", method="log",
    )  # fmt: skip


def _set_model(folder: Path, name: str) -> None:
    meta = json.loads((folder / "ticket.json").read_text())
    meta["model"] = name
    (folder / "ticket.json").write_text(json.dumps(meta))


@pytest.fixture()
def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A module whose import leaves a marker file: evidence that its code ran."""
    marker = tmp_path / "imported"
    name = f"hwsparse_evil_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("ran")
        from hwsparse.models import mlp as make
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return f"{name}:make", marker


# --- 1. a ticket or a study decides no code import ---------------------------------------------


def test_a_ticket_naming_a_module_is_refused_unless_trusted(
    tmp_path: Path, evil_module: tuple[str, Path]
) -> None:
    spec, marker = evil_module
    folder = _ticket(tmp_path / "t")
    _set_model(folder, spec)
    module = spec.partition(":")[0]
    with pytest.raises(InputError, match=f"import \\(run\\) module '{module}'.*--trust-code"):
        load_ticket(folder)
    assert not marker.exists()
    r = runner.invoke(app, ["estimate", "--ticket", str(folder), "--target", "nrf52840"])
    assert r.exit_code == 2 and "--trust-code" in r.stderr and module in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not marker.exists()
    r = runner.invoke(app, ["export", "--ticket", str(folder), "--target", "x86-laptop",
                            "--out", str(tmp_path / "e")])  # fmt: skip
    assert r.exit_code == 2 and "--trust-code" in r.stderr and not marker.exists()
    # the user names the same model: that is consent
    assert load_ticket(folder, model=spec).model_name == spec and marker.exists()
    marker.unlink()
    r = runner.invoke(
        app, ["estimate", "--ticket", str(folder), "--target", "nrf52840", "--trust-code"]
    )
    assert r.exit_code == 0, r.stderr


def test_this_x_prints_no_zen(tmp_path: Path) -> None:
    folder = _ticket(tmp_path / "t")
    _set_model(folder, "this:x")
    cmd = [sys.executable, "-m", "hwsparse", "estimate", "--ticket", str(folder),
           "--target", "nrf52840"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 2
    assert "Beautiful is better" not in r.stdout + r.stderr
    assert "module 'this'" in r.stderr and "--trust-code" in r.stderr


def test_a_study_of_a_user_model_exports_only_when_trusted(
    tmp_path: Path, evil_module: tuple[str, Path]
) -> None:
    spec, marker = evil_module
    journal = tmp_path / "s.journal"
    args = ["search", "--study", "u", "--storage", str(journal), "--model", spec,
            "--target", "raspberry-pi-4", "--latency-ms", "10", "--epochs", "1",
            "--trials", "1", "--device", "cpu", "--json"]  # fmt: skip
    r = runner.invoke(app, args)  # the user names the model: imported, no flag needed
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(
        app,
        ["export", "u", "--storage", str(journal), "--trial", "0", "--out", str(tmp_path / "e")],
    )
    assert r.exit_code == 2 and f"study 'u' names model {spec!r}" in r.stderr
    assert "--trust-code" in r.stderr


# --- 3. a systematic error stops the study ---------------------------------------------------


def test_every_trial_failing_the_same_way_stops_the_study(tmp_path: Path) -> None:
    space = tmp_path / "channel.yaml"  # logistic regression has no layer for channel masks
    space.write_text(
        "params: {density: {low: 0.05, high: 0.5}}\n"
        "fixed: {granularity: channel, binarize: density, epochs: 1, search_epochs: 1}\n"
    )
    journal = tmp_path / "s.journal"
    args = ["search", "--study", "c", "--storage", str(journal), "--model", "linear",
            "--space", str(space), "--target", "raspberry-pi-4", "--latency-ms", "10",
            "--trials", "30", "--device", "cpu"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.stdout
    assert "last 3 trials failed with the same error" in r.stderr
    assert "no layer left" in r.stderr
    study = stores.load_study("c", stores.open_storage(journal))
    assert len(study.trials) == 3  # stopped, not 30 pruned trials
    assert all(t.state == TrialState.PRUNED for t in study.trials)
    r = runner.invoke(app, ["show", "c", "--storage", str(journal), "--json"])
    assert r.exit_code == 0, r.stderr
    (group,) = json.loads(r.stdout)["pruned"]
    assert group["count"] == 3 and group["trials"] == [0, 1, 2]
    assert "no layer left" in group["reason"]
    r = runner.invoke(app, ["show", "c", "--storage", str(journal)])
    assert "pruned x3 (trials 0, 1, 2):" in r.stdout


# --- 4. the library leaves its caller's process state alone ----------------------------------


def test_importing_the_library_changes_no_process_state() -> None:
    code = textwrap.dedent("""
        import logging, warnings, torch, optuna
        before = (optuna.logging.get_verbosity(), list(warnings.filters),
                  torch.get_num_threads(), list(logging.getLogger().handlers),
                  list(logging.getLogger("optuna.study._optimize").filters))
        import hwsparse, hwsparse.api, hwsparse.search, hwsparse.report, hwsparse.tickets
        import hwsparse.cost.calibrate, hwsparse.cost.flops, hwsparse.deploy.export
        after = (optuna.logging.get_verbosity(), list(warnings.filters),
                 torch.get_num_threads(), list(logging.getLogger().handlers),
                 list(logging.getLogger("optuna.study._optimize").filters))
        assert before == after, (before, after)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_calibrate_and_flops_restore_what_they_change() -> None:
    from hwsparse.cost.calibrate import _flushes_denormals, calibrate
    from hwsparse.cost.flops import count_flops

    threads = torch.get_num_threads()
    level = logging.getLogger("fvcore.nn.jit_analysis").level
    for flush in (False, True):
        torch.set_flush_denormal(flush)
        try:
            calibrate(threads=1, quick=True)
            assert _flushes_denormals() == flush
        finally:
            torch.set_flush_denormal(False)
    count_flops(build_model("lenet5", (1, 12, 12), 3), (1, 12, 12))
    assert torch.get_num_threads() == threads
    assert logging.getLogger("fvcore.nn.jit_analysis").level == level


def test_plot_does_not_switch_the_matplotlib_backend(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import matplotlib
        matplotlib.use("svg")
        from hwsparse import report, search
        from hwsparse import storage as stores
        from hwsparse.cost.estimate import Budget
        from hwsparse.space import load_space
        space = search.apply_epochs(load_space("default"), 1)
        cfg = search.SearchConfig(model="mlp", target="raspberry-pi-4",
                                  budget=Budget(latency_ms=10.0), space=space.as_dict())
        st = stores.open_storage({str(tmp_path / "p.journal")!r}, create=True)
        out = search.run_search("p", st, cfg, space, trials=1, device="cpu")
        report.plot_study(out.study, {str(tmp_path / "p.png")!r})
        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".p.png")] == []


# --- 5. a dead worker is known by its lock, not its PID -------------------------------------


def test_a_running_trial_whose_lock_is_free_is_recovered_though_its_pid_lives(
    tmp_path: Path,
) -> None:
    import socket

    journal = tmp_path / "s.journal"
    storage = stores.open_storage(journal, create=True)
    study = optuna.create_study(study_name="x", storage=storage.backend)
    # a worker in another PID namespace: its PID is this (live) process's, same hostname
    dead = study.ask()
    dead.suggest_float("density", 0.01, 0.5, log=True)
    dead.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    gone = "0" * 32  # its lock file is there, but nobody holds it: the process died
    folder = recovery.workers_folder(journal)
    folder.mkdir()
    (folder / f"{gone}.lock").write_text("")
    dead.set_user_attr(recovery.WORKER_LOCK_ATTR, gone)
    # a live worker in another process, holding its lock (whatever PID it claims)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from hwsparse import recovery; "
         f"print(recovery.worker_lock({str(journal)!r}), flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        held = holder.stdout.readline().strip()
        alive = study.ask()
        alive.suggest_float("density", 0.01, 0.5, log=True)
        alive.set_user_attr("worker", "elsewhere:1")
        alive.set_user_attr(recovery.WORKER_LOCK_ATTR, held)
        assert recovery.recover_interrupted(study, storage) == [dead.number]
        states = {t.number: t.state for t in study.get_trials()}
        assert states[dead.number] == TrialState.FAIL
        assert states[alive.number] == TrialState.RUNNING
        assert not (folder / f"{gone}.lock").exists()  # the dead lock is cleaned up
        assert (folder / f"{held}.lock").exists()
    finally:
        holder.communicate("", timeout=30)  # it exits: its lock goes with it
    assert recovery.recover_interrupted(study, storage) == [alive.number]
    assert not (folder / f"{held}.lock").exists()


def test_trials_record_their_worker_lock(tmp_path: Path) -> None:
    space = search.apply_epochs(load_space("default"), 1)
    config = search.SearchConfig(
        model="mlp", target="raspberry-pi-4", budget=Budget(latency_ms=10.0),
        space=space.as_dict(),
    )  # fmt: skip
    storage = stores.open_storage(tmp_path / "s.journal", create=True)
    held: list[bool] = []

    def on_trial(study: optuna.Study, trial: FrozenTrial) -> None:  # while the worker runs
        lock_id = trial.user_attrs[recovery.WORKER_LOCK_ATTR]
        held.append((tmp_path / "s.workers" / f"{lock_id}.lock").exists())
        held.append(not recovery.lock_is_free(tmp_path / "s.journal", lock_id))

    out = search.run_search("s", storage, config, space, trials=1, device="cpu", on_trial=on_trial)
    assert held == [True, True]  # held by this process while it runs trials
    (trial,) = out.study.trials
    # released when it stops running them: a trial it had left RUNNING (its end state could
    # not be written) is then dead to the next run, even one in this same process
    assert recovery.lock_is_free(
        tmp_path / "s.journal", trial.user_attrs[recovery.WORKER_LOCK_ATTR]
    )
